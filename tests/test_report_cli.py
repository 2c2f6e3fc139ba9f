"""``mixedfx report``: a fit's summary, tables, plots and Markdown report in a directory."""

import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.cli import main

# the fit may stop on an R-hat or iteration warning; the report is written all the same
pytestmark = pytest.mark.filterwarnings("ignore::mixedfx.ConvergenceWarning")

FORMULA = "y ~ x + (1 + x | g) + (1 | h)"
PNGS = ["objective.png", "trace_g.png", "residuals.png", "random_effects.png", "caterpillar_g.png",
        "caterpillar_h.png", "qq.png"]
CSVS = ["fixed_effects.csv", "variance_components.csv", "ranef.csv", "fit_summary.csv"]


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    data = mixedfx.datasets.make_mixed_data(
        600, groups={"g": 12, "h": 8}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        random_sd={"g": 0.8, "h": 0.5}, random_state=3)
    slopes = np.random.default_rng(4).normal(0.0, 0.4, 12)
    data["y"] = data["y"] + slopes[data["g"].cat.codes.to_numpy()] * data["x"]
    path = tmp_path_factory.mktemp("data") / "simulated.csv"
    data.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def report(data_csv, tmp_path_factory):
    """The report of FORMULA on the simulated CSV, run once: (status, out directory)."""
    out = tmp_path_factory.mktemp("report") / "out"
    status = main(["report", FORMULA, "--data", str(data_csv), "--out", str(out), "--quiet"])
    return status, out


def test_report_writes_every_file(report):
    status, out = report
    assert status == 0
    expected = ["summary.txt", "report.md"] + CSVS + PNGS
    assert sorted(path.name for path in out.iterdir()) == sorted(expected)
    for name in expected:
        assert (out / name).stat().st_size > 0, name
    assert "Random effects:" in (out / "summary.txt").read_text()


@pytest.mark.parametrize("name", PNGS)
def test_plots_are_readable_images(report, name):
    _, out = report
    image = matplotlib.image.imread(out / name)
    height, width = image.shape[:2]
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert 200 <= height <= 2000 and 300 <= width <= 2000
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_tables_have_the_expected_columns_and_rows(report):
    _, out = report
    fixed = pd.read_csv(out / "fixed_effects.csv", index_col=0)
    assert list(fixed.index) == ["Intercept", "x"]
    # lmerTest's table: Satterthwaite's df is the regressor's default (ddf="satterthwaite")
    assert list(fixed.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    assert (fixed["df"] > 1).all() and (fixed["df"] < 480 - 2).all()  # between 1 and n - p
    components = pd.read_csv(out / "variance_components.csv")
    assert list(components.columns) == ["group", "var1", "var2", "vcov", "sdcor"]
    assert list(components["group"]) == ["g", "g", "g", "h", "Residual"]
    ranef = pd.read_csv(out / "ranef.csv")
    assert list(ranef.columns) == ["group", "term", "level", "condval", "condsd"]
    assert len(ranef) == 12 * 2 + 8
    assert (ranef["condsd"] > 0).all()
    fit = pd.read_csv(out / "fit_summary.csv", index_col=0)
    assert list(fit.columns) == ["initial", "estimate", "mcse", "tolerance"]
    assert {"Intercept", "x", "sigma"} <= set(fit.index)


def test_markdown_report_embeds_every_plot_and_table(report):
    _, out = report
    text = (out / "report.md").read_text()
    for name in PNGS:
        assert f"]({name})" in text, name
    assert f"`{FORMULA}`" in text
    assert "480 fitted, 120 held out" in text  # --test-fraction 0.2 of 600 rows
    assert "| term | Estimate | Std. Error |" in text
    assert "| group | term | level | condval | condsd |" in text  # 32 rows: the whole table
    assert text.count("\n| g | ") >= 3 + 12 * 2
    assert "Residuals on the held-out rows" in text and "```text" in text


def test_markdown_tables_are_well_formed(report):
    _, out = report
    lines = (out / "report.md").read_text().splitlines()
    tables, current = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) == 4  # fixed effects, variance components, random effects, Monte Carlo EM
    for table in tables:
        cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
        assert len(cells) == 1, table  # as many cells on every line: pipes in names are escaped
        assert set(table[1].replace(" ", "")) <= set("|-:")
    assert tables[0][0].startswith("| term | Estimate | Std. Error | df | t value | Pr(>\\|t\\|) |")


def test_progress_lines_go_to_stderr(data_csv, tmp_path, capsys):
    # the same shapes as the module's report, so the compiled fit is reused
    status = main(["report", FORMULA, "--data", str(data_csv), "--out", str(tmp_path / "again")])
    captured = capsys.readouterr()
    assert status == 0
    stages = [line for line in captured.err.splitlines() if line.startswith("mixedfx report: ")]
    assert stages[:2] == [f"mixedfx report: loading data {data_csv}",
                          f"mixedfx report: fitting {FORMULA} on 480 rows (120 held out)"]
    assert "mixedfx report: plotting caterpillar_h.png" in stages
    assert captured.out.strip() == str(tmp_path / "again" / "report.md")


def test_bad_formula_exits_with_the_error_on_stderr(data_csv, tmp_path, capsys):
    status = main(["report", "y ~ x + (1 | nope)", "--data", str(data_csv), "--out", str(tmp_path / "out"),
                   "--quiet"])
    captured = capsys.readouterr()
    assert status == 2
    assert "mixedfx: error: grouping column 'nope'" in captured.err
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_bad_test_fraction(data_csv, tmp_path, capsys):
    status = main(["report", FORMULA, "--data", str(data_csv), "--out", str(tmp_path), "--test-fraction", "1",
                   "--quiet"])
    assert status == 2
    assert "mixedfx: error: --test-fraction must be at least 0 and below 1, got 1.0" in capsys.readouterr().err
