"""Sharded fits on tf.distribute, and Parquet/Arrow input.

The multi-device checks run tests/distributed_check.py in subprocesses: one with three
logical CPU devices (``MIXEDFX_CPU_DEVICES=3``; logical devices must be configured
before TensorFlow starts, which importing mixedfx does, so the rest of the suite keeps
its single device), and two that are the workers of a MultiWorkerMirroredStrategy on
the loopback interface.  The script fits crossed_small on a MirroredStrategy over the three
devices (read from a Parquet file) and on the two workers, with the random_state of the
suite's single-device fit (``crossed_small_fit``), and a Poisson model and a REML model
with random slopes on the MirroredStrategy; and it evaluates the exact log-likelihood
both ways.
"""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import mixedfx
from mixedfx import DataError, MixedEffectsRegressor, ParameterError
from mixedfx._tf import tf
from mixedfx.design import read_arrow

from conftest import correlation_tolerance, subprocess_env, lme4_fixed_effects, lme4_fixed_effects_se, lme4_sds, load_lme4
from distributed_check import summary

HERE = Path(__file__).parent


def load_glmm(name: str) -> dict:
    """A reference fit written by tests/fixtures/make_glmm_fixtures.R."""
    return json.loads((HERE / "fixtures" / f"glmm_{name}.json").read_text())
FORMULA = "y ~ x + (1 | g1) + (1 | g2)"

#: Sharded and single-device fits with the same random_state draw the same random numbers,
#: but sum in a different order (per shard, then across replicas), and HMC amplifies
#: rounding differences: the two are equal within Monte Carlo error, not bitwise.  The
#: tolerance is four combined Monte Carlo standard errors of the two fits' estimates.
MC_ERRORS = 4.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def runs():
    """The check script's three processes, started together: the logical-device checks,
    and the two workers of a MultiWorkerMirroredStrategy on the loopback interface."""
    script = [sys.executable, str(HERE / "distributed_check.py")]
    ports = ",".join(str(port) for port in _free_ports(2))
    env = subprocess_env()  # the mixedfx this run imports (installed under CI), not the source tree
    env.pop("TF_CONFIG", None)
    processes = {
        "devices": subprocess.Popen(script, env={**env, "MIXEDFX_CPU_DEVICES": "3"}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True),
        **{f"worker{k}": subprocess.Popen(script + ["--worker", str(k), ports], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for k in (0, 1)},
    }
    out = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=900)
            assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
            out[name] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    return out


@pytest.fixture(scope="module")
def sharded(runs):
    return runs["devices"]


@pytest.mark.slow
def test_the_sharded_fits_ran_on_their_replicas(sharded):
    assert sharded["devices"] == [f"/device:CPU:{k}" for k in range(3)]
    assert sharded["mirrored_replicas"] == 3
    # every compiled call of the EM loop went through the sharded path, on that many replicas
    assert sharded["sharded_calls"] and set(sharded["sharded_calls"]) == {3}


def assert_same_fit(one, many):
    """Two fits agree within :data:`MC_ERRORS` combined Monte Carlo standard errors."""
    assert one["converged"] and many["converged"]
    assert one["names"] == many["names"]
    estimate, other = np.array(one["estimate"]), np.array(many["estimate"])
    mc_error = np.hypot(one["mcse"], many["mcse"])
    assert np.all(np.abs(estimate - other) <= MC_ERRORS * mc_error), dict(
        zip(one["names"], (np.abs(estimate - other) / mc_error).round(2)))
    # the ML log-likelihood is flat at its maximum: both fits sit within 0.01 of each other
    assert many["log_likelihood"] == pytest.approx(one["log_likelihood"], abs=0.01)


@pytest.mark.slow
def test_a_sharded_fit_matches_the_single_device_fit(sharded, crossed_small_fit):
    assert_same_fit(summary(crossed_small_fit), sharded["sharded"])
    # a model read from Parquet has the DataFrame's levels in the same order
    assert sharded["sharded"]["ranef_g1_index"] == summary(crossed_small_fit)["ranef_g1_index"]


@pytest.mark.slow
def test_a_fit_on_two_workers_matches_the_single_device_fit(runs, crossed_small_fit):
    """MultiWorkerMirroredStrategy with two worker processes talking over the loopback
    interface (collective ops over gRPC), one replica each: the rows split between them."""
    workers = [runs["worker0"], runs["worker1"]]
    for k, worker in enumerate(workers):
        assert worker["replicas"] == 2 and worker["devices"] == [f"/job:worker/replica:0/task:{k}/device:CPU:0"]
        one, many = worker["exact"]
        assert many == pytest.approx(one, rel=1e-6)
    # both workers hold the same replicated parameters, to the last bit
    assert workers[0]["fit"] == workers[1]["fit"]
    assert_same_fit(summary(crossed_small_fit), workers[0]["fit"])


@pytest.mark.slow
def test_the_sharded_fit_matches_lme4(sharded):
    reference = load_lme4("crossed_small_ml")
    fit = sharded["sharded"]
    ref_sds = lme4_sds(reference)
    for group in ("g1", "g2", "Residual"):
        assert fit["sds"][group] == pytest.approx(ref_sds[group], rel=0.02), group
    distance = (pd.Series(fit["fixed_effects"]) - lme4_fixed_effects(reference)) / lme4_fixed_effects_se(reference)
    assert np.all(np.abs(distance) < 0.25), distance
    assert fit["log_likelihood"] == pytest.approx(reference["logLik"], abs=0.5)


@pytest.mark.slow
def test_a_sharded_poisson_fit_with_an_offset_matches_glmer(sharded):
    """The Newton M-step sharded: glmer's fit (tests/fixtures/make_glmm_fixtures.R), with
    test_families.py's tolerances: sds within 5%, fixed effects within 0.25 SE."""
    assert sharded["poisson_calls"] and set(sharded["poisson_calls"]) == {3}
    assert sharded["poisson"]["rows"] == 2000  # 667 rows per replica, the last one padded
    fit, reference = sharded["poisson"], load_glmm("poisson_crossed")
    assert fit["converged"]
    for row in reference["varcorr"]:
        assert fit["sds"][row["grp"]] == pytest.approx(row["sdcor"], rel=0.05), row["grp"]
    for name, value in reference["fixed_effects"].items():
        name = name.replace("(Intercept)", "Intercept")
        se = reference["fixed_effects_se"][name.replace("Intercept", "(Intercept)")]
        assert abs(fit["fixed_effects"][name] - value) < 0.25 * se, name
    np.testing.assert_allclose(fit["fixed_effects_se"], list(reference["fixed_effects_se"].values()), rtol=0.05)
    assert fit["log_likelihood"] == pytest.approx(reference["logLik"], abs=0.5)


@pytest.mark.slow
def test_a_sharded_reml_fit_with_random_slopes_matches_lme4(sharded):
    """REML's sharded sums (X'Z per level, the projected statistics) and a term of two
    correlated coefficients: lmer's REML fit of sleepstudy, with test_results.py's
    tolerances (the default tol here: sds within 3%, correlation within a quarter of its SE, fixed
    effects within 0.25 SE, the REML criterion within 0.05)."""
    assert sharded["reml_slopes_calls"] and set(sharded["reml_slopes_calls"]) == {3}
    fit = sharded["reml_slopes"]
    fixture = json.loads((HERE / "fixtures" / "lme4_results.json").read_text())["sleepstudy_slopes_reml"]
    assert fit["converged"] and fit["method"] == "reml" == fixture["method"].lower()
    sds = [row["sdcor"] for row in fixture["varcorr"] if row["var2"] is None]
    cor = [row["sdcor"] for row in fixture["varcorr"] if row["var2"] is not None]
    np.testing.assert_allclose(fit["sds"], sds, rtol=0.03)
    np.testing.assert_allclose(fit["cor"], cor, atol=correlation_tolerance(cor[0], fixture["n_levels"]["Subject"]))
    distance = (pd.Series(fit["fixed_effects"]) - lme4_fixed_effects(fixture)) / lme4_fixed_effects_se(fixture)
    assert np.all(np.abs(distance) < 0.25), distance
    np.testing.assert_allclose(fit["fixed_effects_se"], lme4_fixed_effects_se(fixture).to_numpy(), rtol=0.05)
    assert fit["log_likelihood"] == pytest.approx(fixture["logLik"], abs=0.05)


@pytest.mark.slow
def test_a_sharded_ar1_fit_matches_glmmtmb_and_nlme(sharded):
    """A structured term (ar1 over six times, 100 subjects) fitted on three replicas, with
    test_covariance_structures.py's tolerances: sd and sigma within 3 % of glmmTMB's, rho
    within 0.05 of nlme's, logLik within 0.5, fixed effects within 0.015."""
    assert sharded["ar1_calls"] and set(sharded["ar1_calls"]) == {3}
    fit = sharded["ar1"]
    reference = json.loads((HERE / "fixtures" / "covariance_structures.json").read_text())
    glmmtmb, nlme = reference["ar1_glmmTMB"], reference["ar1_nlme"]
    assert fit["converged"]
    assert fit["sd"] == pytest.approx(np.ravel(glmmtmb["sds"])[0], rel=0.03)
    assert fit["sigma"] == pytest.approx(glmmtmb["sigma"], rel=0.03)
    assert abs(fit["rho"] - nlme["rho"]) < 0.05
    assert fit["log_likelihood"] == pytest.approx(glmmtmb["logLik"], abs=0.5)
    np.testing.assert_allclose(fit["fixed_effects"], list(glmmtmb["fixed_effects"].values()), atol=0.015)


@pytest.mark.slow
def test_the_exact_log_likelihood_from_sharded_sums_equals_the_single_device_one(sharded):
    # at the fitted parameters, away from them, and on 1,499 rows (the last shard padded)
    assert len(sharded["exact"]) == 3
    for row in sharded["exact"]:
        # ML, profiled ML and REML log-likelihoods, and the conditional means
        np.testing.assert_allclose(row["mirrored"], row["single"], rtol=1e-6, atol=0)
        assert row["means_max_diff"] < 1e-9
    assert sharded["exact"][0]["single"][0] != sharded["exact"][1]["single"][0]


@pytest.mark.slow
def test_padded_shards_leave_the_e_and_m_step_sums_unchanged(sharded):
    padded = sharded["padded"]
    assert padded["n_rows"] == 1499 and padded["rows_per_replica"] == 500  # one padding row
    for name in ("log_likelihood", "gradient", "statistics"):
        assert padded[name] < 1e-12, name


# -- validation, in this process --------------------------------------------------------------
def test_distribute_must_be_a_strategy(crossed_small):
    with pytest.raises(ParameterError, match="distribute must be a tf.distribute.Strategy .* got 'gpu'"):
        MixedEffectsRegressor(FORMULA, distribute="gpu", verbose=0).fit(crossed_small)


def test_a_clone_shares_the_strategy():
    from sklearn.base import clone

    strategy = tf.distribute.get_strategy()
    model = MixedEffectsRegressor(FORMULA, distribute=strategy, tol=0.05, random_state=3)
    copy = clone(model)
    assert copy.distribute is strategy and copy is not model
    assert copy.get_params() == model.get_params()
    assert clone(MixedEffectsRegressor(FORMULA)).distribute is None


def test_a_strategy_is_not_pickled():
    strategy = tf.distribute.get_strategy()
    model = MixedEffectsRegressor(FORMULA, distribute=strategy)
    restored = pickle.loads(pickle.dumps(model))
    assert restored.distribute is None and model.distribute is strategy
    assert restored.get_params()["formula"] == FORMULA


# -- Parquet and Arrow input ------------------------------------------------------------------
def test_read_arrow_reads_only_the_named_columns_with_sorted_levels(tmp_path):
    table = pa.table({"y": [1.0, 2.0, 3.0, 4.0], "x": [0.1, 0.2, 0.3, 0.4], "xx": [9, 9, 9, 9],
                      "g1": ["b", "c", "a", "b"], "g2": pa.array(["s2", "s1", "s2", "s1"]).dictionary_encode()})
    path = tmp_path / "d.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    frame = read_arrow(path, formula=FORMULA, grouping=["g1", "g2"])
    assert list(frame.columns) == ["y", "x", "g1", "g2"]  # not xx, whose name contains x
    assert list(frame["g1"].cat.categories) == ["a", "b", "c"]
    assert frame["g1"].cat.codes.tolist() == [1, 2, 0, 1]
    # a dictionary column keeps its dictionary's order (as a categorical keeps its categories')
    assert list(frame["g2"].cat.categories) == ["s2", "s1"] and frame["g2"].cat.codes.tolist() == [0, 1, 0, 1]


def test_fit_from_an_arrow_table_equals_the_dataframe_fit(crossed_small, crossed_small_fit):
    table = pa.Table.from_pandas(crossed_small.assign(unused="z"), preserve_index=False)
    model = MixedEffectsRegressor(FORMULA, random_state=0, verbose=0).fit(table)
    pd.testing.assert_series_equal(model.fixed_effects_, crossed_small_fit.fixed_effects_)
    pd.testing.assert_frame_equal(model.random_effects_["g1"], crossed_small_fit.random_effects_["g1"])
    np.testing.assert_allclose(model.predict(table.slice(0, 5)), crossed_small_fit.predict(crossed_small.head()))


def test_missing_grouping_values_in_arrow_input_name_the_column(crossed_small):
    table = pa.Table.from_pandas(crossed_small, preserve_index=False)
    g1 = table.column("g1").to_pylist()
    g1[3] = None
    table = table.set_column(table.column_names.index("g1"), "g1", pa.array(g1))
    with pytest.raises(DataError, match=r"1 of 1500 rows have missing values .* \('g1': 1\)"):
        MixedEffectsRegressor(FORMULA, verbose=0, missing="raise").fit(table)
    # by default the row is dropped, as from a DataFrame (lme4's na.omit), and said so
    with pytest.warns(mixedfx.DataWarning, match="'g1': 1"):
        dropped = MixedEffectsRegressor(FORMULA, verbose=0, random_state=0).fit(table)
    assert dropped.n_obs_ == 1499 and list(dropped.dropped_rows_) == [3]


def test_an_unreadable_parquet_path_is_a_data_error(tmp_path):
    bad = tmp_path / "not.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="cannot read .*not.parquet.* as Parquet"):
        MixedEffectsRegressor(FORMULA, verbose=0).fit(str(bad))
    assert mixedfx.design.is_arrow_source([str(bad)])
