"""The Monte Carlo error a fit reports is the error its estimates have (issue 15).

Twenty fits of one model with twenty seeds scatter by their Monte Carlo error alone:
the spread of each sd estimate across seeds must match the ``fit_summary_.mcse`` the
fits report (within a factor of 2), and the seeds' mean must agree with a long run (a
fit that stopped early, while EM still drifted, would be off it by more than its error).
Cases: lme4's grouseticks (Poisson, 118 broods and 63 locations; R script
fixtures/make_grouseticks_fixture.R) and the Gaussian crossed_small (60 x 25 levels).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.inference import MonteCarloErrorRule, monte_carlo_standard_error
from mixedfx.inference.stopping import ar1_coefficient

from conftest import FIXTURES

N_SEEDS = 20
#: The long run's tolerance.  The issue asks for tol=0.01, 1/10 of the default's error:
#: with the AR(1) error that is 100x the default fit's iterations (about 25,000 on
#: grouseticks, six minutes); tol=0.03 (about 11x) keeps the long run's own error at a
#: third of one default fit's, which the comparison below includes.
LONG_TOL = 0.03


def ar1(rng, *, rho, n, size):
    """``size`` independent AR(1) series of length ``n`` with unit innovations, started
    from their stationary law."""
    x = np.empty((n, size))
    x[0] = rng.normal(size=size) / np.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + rng.normal(size=size)
    return x


@pytest.mark.parametrize("rho, n", [(0.93, 300), (0.5, 60), (0.0, 40)])
def test_error_of_the_mean_matches_the_spread_of_means(rng, rho, n):
    # 400 windows: the reported error (rho from a lead-in as long again) against the
    # spread of the window means, which has a relative error of 3.5 %.
    series = ar1(rng, rho=rho, n=2 * n, size=400)
    mcse = np.array([monte_carlo_standard_error(series[n:, [k]], lead_in=series[:n, [k]])[0] for k in range(400)])
    spread = series[n:].mean(axis=0).std(ddof=1)
    assert np.mean(mcse) / spread == pytest.approx(1.0, abs=0.15)


def test_effective_sample_size_of_a_short_window_is_not_trusted(rng):
    # 20 iterates of an AR(1) with rho = 0.93 hold about 0.7 effective iterations; the
    # error from tfp's effective sample size was 3x too small there.
    series = ar1(rng, rho=0.93, n=20, size=400)
    mcse = np.array([monte_carlo_standard_error(series[:, [k]])[0] for k in range(400)])
    spread = series.mean(axis=0).std(ddof=1)
    assert np.median(mcse[np.isfinite(mcse)]) / spread > 0.6
    # and the rule refuses to stop on so few effective iterations even when the error looks small
    rule = MonteCarloErrorRule(tol=0.1)
    trace = np.concatenate([series[:, :3], series[:, :3]])
    decision = rule.assess(trace, window_start=10, scale=np.full(3, 1e3))
    assert not decision.converged and "effective iterations" in decision.message


def test_random_walk_gives_an_infinite_error_not_nan(rng):
    walk = np.cumsum(rng.normal(size=(50, 2)), axis=0)
    assert np.all(ar1_coefficient(walk) > 0.95)
    mcse = monte_carlo_standard_error(np.vstack([walk, walk[-1] + np.cumsum(rng.normal(size=(50, 2)), axis=0)]))
    assert not np.any(np.isnan(mcse))
    assert np.all(monte_carlo_standard_error(walk[:2]) == np.inf)
    assert monte_carlo_standard_error(np.ones((10, 1)))[0] == 0.0


def test_drift_projected_to_the_fixed_point_keeps_the_window_open(rng):
    # An EM approach at rate 0.95: over 40 iterations the slope is small against the
    # noise step by step, but the iterates are still 0.13 from the fixed point.
    steps = np.arange(100)
    trace = (1.0 * 0.95**steps + 0.002 * rng.normal(size=100))[:, None]
    decision = MonteCarloErrorRule(tol=0.1).assess(trace, window_start=60, scale=np.full(1, 0.1))
    assert not decision.converged and decision.window_start > 60


def seed_runs(data, *, formula, family, names):
    """Twenty fits with seeds 0-19 and one long run: the sd estimates and reported errors."""
    estimates, mcse = [], []
    for seed in range(N_SEEDS):
        model = mixedfx.MixedEffectsRegressor(formula, family=family, random_state=seed, verbose=0,
                                              max_iter=2000).fit(data)
        summary = model.fit_summary_
        assert summary.converged, summary.message
        index = [summary.parameter_names.index(name) for name in names]
        estimates.append(summary.estimate[index])
        mcse.append(summary.mcse[index])
    long = mixedfx.MixedEffectsRegressor(formula, family=family, random_state=1000, verbose=0, tol=LONG_TOL,
                                         max_iter=8000).fit(data).fit_summary_
    index = [long.parameter_names.index(name) for name in names]
    return np.array(estimates), np.array(mcse), long.estimate[index], long.mcse[index]


@pytest.fixture(scope="module")
def grouseticks_runs():
    data = pd.read_csv(FIXTURES / "grouseticks.csv", dtype={"BROOD": str, "LOCATION": str, "YEAR": str})
    return seed_runs(data, formula="TICKS ~ YEAR + cHEIGHT + (1|BROOD) + (1|LOCATION)", family="poisson",
                     names=["sd(BROOD)", "sd(LOCATION)"])


@pytest.fixture(scope="module")
def crossed_runs():
    data = pd.read_csv(FIXTURES / "crossed_small.csv")
    return seed_runs(data, formula="y ~ x + (1|g1) + (1|g2)", family="gaussian",
                     names=["sd(g1)", "sd(g2)", "sd(Residual)"])


def check_reported_error(runs):
    estimates, mcse, long_estimate, long_mcse = runs
    spread = estimates.std(axis=0, ddof=1)
    ratio = spread / mcse.mean(axis=0)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), f"seed spread / mean reported MCSE = {ratio}"
    se = np.sqrt(spread**2 / N_SEEDS + long_mcse**2)
    z = (estimates.mean(axis=0) - long_estimate) / se
    assert np.all(np.abs(z) < 3.0), f"seeds' mean - long run = {z} standard errors"


@pytest.mark.slow
def test_grouseticks_reported_error_is_the_seed_spread(grouseticks_runs):
    check_reported_error(grouseticks_runs)


@pytest.mark.slow
def test_grouseticks_near_glmer(grouseticks_runs):
    # glmer's Laplace approximation is not the ML estimate MCEM converges to for a
    # Poisson GLMM with a few counts per location, but within 5 % of it here.
    reference = json.loads((FIXTURES / "glmm_grouseticks.json").read_text())["random_sd"]
    estimates = grouseticks_runs[0].mean(axis=0)
    np.testing.assert_allclose(estimates, [reference["BROOD"], reference["LOCATION"]], rtol=0.05)


@pytest.mark.slow
def test_crossed_gaussian_reported_error_is_the_seed_spread(crossed_runs):
    check_reported_error(crossed_runs)
