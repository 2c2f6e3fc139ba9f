"""The mixedfx console script and the shipped data."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import FIXTURES, subprocess_env

from mixedfx import DataError
from mixedfx.cli import load_data, main
from mixedfx.datasets import load_insteval, make_mixed_data


def test_fit_prints_the_summary(capsys):
    status = main(["fit", "y ~ x + (1 | g1) + (1 | g2)", "--data", str(FIXTURES / "crossed_small.csv"), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Random effects:" in out and "Number of obs: 1500, groups:  g1, 60; g2, 25" in out


def test_fit_by_reml_and_a_classifier_family(capsys):
    sleepstudy = str(FIXTURES / "sleepstudy.csv")
    assert main(["fit", "Reaction ~ Days + (Days | Subject)", "--data", sleepstudy, "--method", "reml", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fit by REML" in out and "REML criterion at convergence: 1743.6" in out
    status = main(["fit", "Reaction ~ Days + (1 | Subject)", "--data", sleepstudy, "--family", "bernoulli",
                   "--method", "reml", "--quiet"])
    assert status == 2 and "--method reml is for the gaussian family" in capsys.readouterr().err


def test_parquet_input(tmp_path, capsys):
    path = tmp_path / "data.parquet"
    pd.read_csv(FIXTURES / "crossed_small.csv").to_parquet(path)
    assert load_data(str(path)).shape == (1500, 4)
    assert main(["fit", "y ~ x + (1 | g1) + (1 | g2)", "--data", str(path), "--quiet"]) == 0
    assert "Fixed effects:" in capsys.readouterr().out


def test_bad_input_exits_with_a_message(capsys):
    status = main(["fit", "y ~ x + (1 | gg)", "--data", str(FIXTURES / "crossed_small.csv"), "--quiet"])
    assert status == 2
    assert "mixedfx: error: grouping column 'gg'" in capsys.readouterr().err


def test_unknown_data_source():
    with pytest.raises(DataError, match=r"neither a shipped data set \(insteval\) nor an existing file. Did you mean 'insteval'\?"):
        load_data("insteval2")


def test_console_script_runs_as_a_module(tmp_path):
    # outside the source tree, so that "-m mixedfx" runs the mixedfx this run imports
    done = subprocess.run(
        [sys.executable, "-m", "mixedfx", "fit", "y ~ x + (1 | g)", "--data", "missing.csv"],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(),
    )
    assert done.returncode == 2
    assert "mixedfx: error: --data 'missing.csv' is neither" in done.stderr
    assert "Traceback" not in done.stderr


def test_installed_console_script():
    script = Path(sys.executable).parent / "mixedfx"
    assert script.exists(), "pip install . puts the mixedfx console script next to the interpreter"
    done = subprocess.run([str(script), "fit", "y ~ x + (1 | g1)", "--data", "nowhere.parquet"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "mixedfx: error: --data 'nowhere.parquet'" in done.stderr


@pytest.mark.slow
def test_fit_insteval_by_name(insteval_fit, capsys):
    # the same shapes as the run's InstEval fit: where this worker fitted it (conftest.fitted_once_per_run),
    # the compiled code is reused
    assert main(["fit", "y ~ service + (1 | s) + (1 | d) + (1 | dept)", "--data", "insteval", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Number of obs: 73421, groups:  s, 2972; d, 1128; dept, 14" in out
    assert "service" in out and "Residual" in out


def test_insteval_ships_with_the_documented_types():
    data = load_insteval()
    assert list(data.columns) == ["s", "d", "studage", "lectage", "service", "dept", "y"]
    assert data.shape == (73421, 7)
    for column in ("s", "d", "dept"):
        assert isinstance(data[column].dtype, pd.CategoricalDtype)
    assert data["studage"].cat.ordered and data["lectage"].cat.ordered
    assert data["service"].dtype.kind == "i" and set(data["service"].unique()) == {0, 1}
    assert data["y"].dtype.kind == "i" and set(data["y"].unique()) == {1, 2, 3, 4, 5}
    assert load_insteval() is not data  # a fresh frame each call


def test_make_mixed_data_is_reproducible_and_shaped():
    data, effects = make_mixed_data(200, groups={"a": 7, "b": 3}, fixed_effects={"Intercept": 1.0, "x": 2.0},
                                    return_effects=True, random_state=5)
    again = make_mixed_data(200, groups={"a": 7, "b": 3}, fixed_effects={"Intercept": 1.0, "x": 2.0}, random_state=5)
    pd.testing.assert_frame_equal(data, again)
    assert list(data["a"].cat.categories) == [f"a{i}" for i in range(7)]
    assert effects["b"].shape == (3,)
