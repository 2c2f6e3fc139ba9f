"""The benchmark baselines run (timings are printed by benchmarks/, never asserted here)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import mixedfx

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_baseline_runs_and_moves_its_parameters():
    tutorial = load("tfp_tutorial")
    data = mixedfx.datasets.make_mixed_data(
        500, groups={"s": 30, "d": 12, "dept": 4}, fixed_effects={"Intercept": 3.0, "service": -0.1}, random_state=0
    )
    data["service"] = (data["service"] > 0).astype(int)
    codes = {c: data[c].cat.codes.to_numpy() for c in ("s", "d", "dept")}
    result = tutorial.fit_tutorial(codes["s"], codes["d"], codes["dept"], data["service"].to_numpy(),
                                   data["y"].to_numpy(), num_warmup_iters=5, num_iters=20)
    assert result["hmc_steps"] == 5 + 5 * 20
    assert result["sigma"] == 1.0  # the tutorial's fault: the residual sd is fixed
    # one Adam step of size 0.01 per iteration: 20 iterations move the intercept by at most 0.2
    assert 0.0 < result["Intercept"] <= 0.2 + 1e-6
    assert np.all(np.isfinite(result["loss_history"]))


def test_benchmark_reference_reads_the_lme4_fixture():
    insteval = load("insteval")
    values, se, loglik = insteval.reference()
    assert values["sd(dept)"] == 0.0785193483495863 and loglik == -118860.884387946
    assert set(insteval.PARAMS) <= set(values)


# -- the peers' comparison: pure functions of benchmarks/report.py and benchmarks/peers.py -------------------
def _rows():
    report = load("report")
    return report, [
        report.make_row("c", "mixedfx, first fit", "mixedfx", seconds=8.0, import_seconds=9.0, memory=1.2),
        report.make_row("c", "mixedfx, compiled refit", "mixedfx", seconds=0.5, memory=1.2),
        report.make_row("c", "lmer (lme4)", "lme4", seconds=2.0, memory=0.2),
        report.make_row("c", "glmm 0.6.2", "peer", seconds=0.25, memory=0.1),
        report.make_row("c", "mixedlm 1.3.0", "peer", seconds=1.0, memory=0.1),
        report.failed_row("c", "gpboost 1.8.0", "peer", "cannot fit: no correlated slopes"),
    ]


def test_ratio_is_against_the_fastest_peer_that_fitted():
    report, rows = _rows()
    fastest = report.fastest_peer(rows)
    assert fastest["method"] == "glmm 0.6.2"  # the failed gpboost row (no seconds) is not a candidate
    assert report.speed_ratio(fastest, rows[1]) == 0.5  # 0.25 s / 0.5 s: the peer is twice as fast
    assert report.speed_ratio(report.lme4_row(rows), rows[1]) == 4.0
    assert report.speed_ratio(fastest, rows[5]) is None
    assert report.fastest_peer(rows[:3]) is None
    assert [report.format_ratio(v) for v in (4.0, 0.5, 0.0016, None)] == ["4.0x", "0.50x", "0.0016x", "-"]


def test_table_prints_ratios_and_the_reason_of_a_missing_peer():
    report, rows = _rows()
    lines = report.format_table(rows).splitlines()
    assert len(lines) == 1 + len(rows)
    refit = next(line for line in lines if "compiled refit" in line)
    assert "glmm 0.50x" in refit and "4.0x" in refit
    assert "(fastest peer)" in next(line for line in lines if line.split()[1] == "glmm")
    gpboost = next(line for line in lines if "gpboost" in line)
    assert gpboost.endswith("cannot fit: no correlated slopes") and "x " not in gpboost.split("gpboost 1.8.0")[1]


def test_errors_against_lme4_in_ses_relative_sds_and_loglik():
    report = load("report")
    with open(Path(__file__).parent / "fixtures" / "lme4_sleepstudy_slopes_ml.json") as handle:
        import json

        ref = report.reference_from_fixture(json.load(handle))
    assert set(ref["estimates"]) == {"Intercept", "Days", "sd(Subject)", "sd(Subject:Days)",
                                     "cor(Subject:(Intercept),Days)", "sigma"}
    assert ref["loglik"] == -875.969672244495 and ref["se"]["Days"] == 1.50223021383204
    fit = dict(ref["estimates"])
    fit["Days"] += 0.5 * ref["se"]["Days"]  # half a standard error off
    fit["sd(Subject:Days)"] *= 1.02  # 2 % off
    fit["cor(Subject:(Intercept),Days)"] = -0.9  # correlations are not scored
    out = report.errors(fit, ref, loglik=ref["loglik"] - 0.25)
    assert abs(out["fe_error_se"] - 0.5) < 1e-12 and abs(out["sd_error"] - 0.02) < 1e-12
    assert abs(out["loglik_diff"] + 0.25) < 1e-9
    assert report.format_accuracy(out) == "sd 2.0%, FE 0.50 SE, dlogLik -0.25"
    truth = {"estimates": {"x": 1.0, "sd(g)": 0.5}, "se": {}, "loglik": None}  # a simulated truth: FE absolute
    assert report.errors({"x": 1.1, "sd(g)": 0.4}, truth) == pytest.approx({"sd_error": 0.2, "fe_abs_error": 0.1})


def test_a_peers_json_line_or_its_failure_is_parsed():
    peers = load("peers")
    line = '{"version": "0.6.2", "import_seconds": 0.01, "fit_seconds": 0.02, "estimates": {"x": 1.0}}'
    assert peers.parse_peer_output("[GPBoost] [Info] threads\n" + line + "\n")["fit_seconds"] == 0.02
    assert peers.parse_peer_output('{"error": "cannot fit: no slopes"}')["error"] == "cannot fit: no slopes"
    crashed = peers.parse_peer_output("", "Traceback ...\nMemoryError: out of memory", returncode=1)
    assert crashed["error"] == "failed (exit status 1): MemoryError: out of memory"
    assert peers.parse_peer_output("not json", "", 0)["error"].startswith("no result printed")


def test_peers_venv_path_and_fixed_design_as_r_codes_it(monkeypatch, tmp_path):
    import pandas as pd

    peers = load("peers")
    monkeypatch.setenv("MIXEDFX_PEERS_VENV", str(tmp_path / "v"))
    assert peers.peers_venv() == tmp_path / "v" and peers.peers_venv("/x/y") == Path("/x/y")
    monkeypatch.delenv("MIXEDFX_PEERS_VENV")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert peers.peers_venv() == tmp_path / "mixedfx-bench" / "peers-venv"
    data = pd.DataFrame({"Anger": [1.0, 2.0, 3.0], "btype": ["shout", "curse", "scold"]})
    design = peers.fixed_design(data, {"fixed": ["Anger", "btype"], "categorical": ["btype"]})
    assert list(design.columns) == ["Intercept", "Anger", "btypescold", "btypeshout"]  # R's names, curse the base
    assert design["btypeshout"].tolist() == [1.0, 0.0, 0.0] and design["btypescold"].tolist() == [0.0, 0.0, 1.0]


def test_mixedfx_and_lme4_name_verbaggs_coefficients_alike():
    run = load("run")
    ref = run.reference("verbagg")  # glmer's committed fit, from benchmarks/data/make_verbagg.R
    assert ref["estimates"]["GenderM"] == 0.320602638853499 and ref["loglik"] == -4075.70024509549
    formulaic = ["Intercept", "Anger", "Gender[T.M]", "btype[T.scold]", "btype[T.shout]", "situ[T.self]"]
    assert [run._mixedfx_name(n) for n in formulaic] == [k for k in ref["estimates"] if k in ref["se"]]
    assert set(ref["estimates"]) - set(ref["se"]) == {"sd(id)", "sd(item)"}


def test_zip_benchmark_simulates_its_declared_crossed_zero_inflated_rows():
    """benchmarks/zip_1m.py's rows at 20,000 (the benchmark fits a million): the declared
    columns and crossed levels, and the simulated zeros at the share the truth implies."""
    from scipy import special, stats

    zip_1m = load("zip_1m")
    data = zip_1m.simulate(20_000, seed=3)
    assert list(data.columns) == ["y", "x", "z", "A", "B"] and len(data) == 20_000
    assert {g: len(data[g].cat.categories) for g in ("A", "B")} == zip_1m.LEVELS == {"A": 1000, "B": 100}
    assert data["A"].nunique() == 1000 and data["B"].nunique() == 100  # every level drawn
    assert data.groupby(["A", "B"], observed=True).ngroups > 15_000  # crossed, not nested
    truth = zip_1m.TRUTH
    assert truth == {"Intercept": 0.5, "x": 0.3, "sd(A)": 0.5, "sd(B)": 0.3, "zi Intercept": -1.0, "zi z": 0.5}
    # P(y = 0) = pi + (1 - pi) E[exp(-mu)], the expectation over x and the two effects by Monte Carlo
    rng = np.random.default_rng(0)
    eta = truth["Intercept"] + truth["x"] * rng.normal(size=200_000) + np.hypot(0.5, 0.3) * rng.normal(size=200_000)
    pi = special.expit(truth["zi Intercept"] + truth["zi z"] * rng.normal(size=200_000))
    expected = float(np.mean(pi + (1 - pi) * np.exp(-np.exp(eta))))
    zero_share = float((data["y"] == 0).mean())
    # the realized effects of 1000 + 100 levels move the share by about 0.01: a 4-sd band
    assert abs(zero_share - expected) < 0.04, (zero_share, expected)
    # the zero-inflation is there: far more zeros than the Poisson part alone gives, and more where z is high
    assert zero_share > float(np.mean(np.exp(-np.exp(eta)))) + 0.15
    high_z = data["z"] > 0
    assert (data.loc[high_z, "y"] == 0).mean() > (data.loc[~high_z, "y"] == 0).mean() + 0.05
    assert stats.pearsonr(data["x"], np.log1p(data["y"]))[0] > 0.05


@pytest.mark.parametrize("e_step, kernel", [("auto", "gibbs"), ("hmc", "hmc")])
def test_scale_fit_runs_the_e_step_it_is_given(e_step, kernel):
    """benchmarks/scale.py's fit (run.py --e-step, gpu.sh's Gibbs and HMC rows): the kernel
    asked for is the one that ran, and the estimates are near the simulated truth."""
    result = load("scale").fit_one(3000, 0, e_step=e_step)
    assert result["e_step"] == kernel
    assert result["estimates"]["x"] == pytest.approx(load("scale").TRUTH["x"], abs=0.1)
