"""The benchmark baselines run (timings are printed by benchmarks/, never asserted here)."""

import importlib.util
from pathlib import Path

import numpy as np

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
