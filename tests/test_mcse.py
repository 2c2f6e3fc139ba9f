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
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx._tf import tf, tfp
from mixedfx.inference import MonteCarloErrorRule, monte_carlo_standard_error
from mixedfx.inference.stopping import ar1_coefficient

from conftest import FIXTURES

N_SEEDS = 20
#: The long run: tol=0.01, 1/10 of the default fit's Monte Carlo error, as issue 15
#: asks.  With the AR(1) error that needs about 100x the default fit's iterations; the
#: Gaussian case meets it in a few hundred, grouseticks would need about 30,000 (sd(LOCATION)
#: has rho = 0.93) and stops at LONG_MAX_ITER, with its own error (about 1/4 of one
#: default fit's) counted in the comparison.
LONG_TOL, LONG_MAX_ITER = 0.01, 3000


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


def test_short_window_error_uses_the_lead_in(rng):
    # A window of 20 iterates of an AR(1) with rho = 0.93 (about 0.7 effective
    # iterations) after 100 iterations of lead-in, as in a fit: tfp's effective sample
    # size from the window put the error of its mean 3x too low; the AR(1) error with
    # rho from the lead-in is about right.
    series = ar1(rng, rho=0.93, n=120, size=400)
    window, lead_in = series[100:], series[:100]
    spread = window.mean(axis=0).std(ddof=1)
    mcse = np.array([monte_carlo_standard_error(window[:, [k]], lead_in=lead_in[:, [k]])[0] for k in range(400)])
    ess = tfp.mcmc.effective_sample_size(tf.constant(window)).numpy()
    ess_mcse = window.std(axis=0, ddof=1) / np.sqrt(np.clip(ess, 1.0, 20.0))
    assert np.median(ess_mcse) / spread < 0.5
    assert np.median(mcse) / spread == pytest.approx(1.0, abs=0.25)


def test_rule_waits_for_effective_iterations(rng):
    # However small the error looks, a window needs min_effective effective iterations:
    # 40 of white noise are about 40, 40 of an AR(1) with rho = 0.9 about 2.
    noise = rng.normal(size=(60, 3))
    rule = MonteCarloErrorRule(tol=0.1, min_effective=30)
    assert rule.assess(noise, window_start=20, scale=np.full(3, 1e3)).converged
    decision = MonteCarloErrorRule(tol=0.1).assess(ar1(rng, rho=0.9, n=80, size=3), window_start=40,
                                                   scale=np.full(3, 1e3))
    assert not decision.converged


def test_window_waits_for_the_approach_to_settle(rng):
    # rho = 0.9: seven e-foldings are 70 iterations; a window opened at 10 moves to 70 or later.
    trace = 0.9 ** np.arange(120)[:, None] + 0.01 * ar1(rng, rho=0.9, n=120, size=1)
    decision = MonteCarloErrorRule(tol=0.1).assess(trace, window_start=10, scale=np.ones(1))
    assert decision.window_start >= 70 and "e-foldings" in decision.message


def test_near_unit_root_gives_an_infinite_error_not_nan(rng):
    walk = np.cumsum(rng.normal(size=(50, 2)), axis=0)
    assert np.all(ar1_coefficient(walk) > 0.9)
    assert not np.any(np.isnan(monte_carlo_standard_error(walk)))
    trend = np.linspace(0.0, 1.0, 30)[:, None] + 1e-6 * rng.normal(size=(30, 1))
    assert monte_carlo_standard_error(trend)[0] == np.inf
    assert np.all(monte_carlo_standard_error(walk[:2]) == np.inf)
    assert monte_carlo_standard_error(np.ones((10, 1)))[0] == 0.0


def test_approach_to_the_fixed_point_is_not_convergence(rng):
    # EM approaching at rate 0.8 under small noise, the window opened too early: its
    # mean is 0.018 from the fixed point, twice the tolerance.  The approach reads as
    # an AR(1) excursion with rho ~ 0.9, too few effective iterations to stop on.
    trace = (0.8 ** np.arange(40) + 0.002 * rng.normal(size=40))[:, None]
    decision = MonteCarloErrorRule(tol=0.1).assess(trace, window_start=10, scale=np.full(1, 0.1))
    assert not decision.converged
    # A linear drift of the window: its first half is dropped.
    trace = np.concatenate([np.zeros(20), np.linspace(0.0, 0.5, 40)])[:, None] + 0.01 * rng.normal(size=(60, 1))
    decision = MonteCarloErrorRule(tol=0.1).assess(trace, window_start=20, scale=np.full(1, 0.1))
    assert decision.window_start == 40 and "first half dropped" in decision.message


def test_a_parameter_still_over_the_window_is_settled(rng):
    # A hurdle's zero part without random effects: the M-step computes it exactly, so it
    # moves to its value and stays; the approach reads as a unit root (rho = 1).  Still over
    # the window, it must neither keep the window's first half dropped nor block stopping.
    noise = 1.0 + 0.001 * rng.normal(size=(60, 2))
    step = np.minimum(0.5 + 0.01 * np.arange(60), 0.8)[:, None]  # 0.8 from iteration 30 on
    trace = np.column_stack([noise, step])
    assert ar1_coefficient(trace[5:])[2] == 1.0
    decision = MonteCarloErrorRule(tol=0.1).assess(trace, window_start=30, scale=np.ones(3))
    assert decision.converged and decision.window_start == 30, decision.message
    # Moving by more than STILL_FRACTION of its tolerance, the same column is judged.
    trace[30:, 2] += np.linspace(0.0, 0.01, 30)
    assert not MonteCarloErrorRule(tol=0.1).assess(trace, window_start=30, scale=np.ones(3)).converged


def test_criteria_met_then_a_fresh_window_as_long(rng):
    # The criteria pass over iterations 20-60: the estimate comes from 60-100, a window
    # whose length was fixed before it was seen (optional stopping biases the first).
    trace = 1.0 + 0.001 * ar1(rng, rho=0.5, n=100, size=2)
    rule = MonteCarloErrorRule(tol=0.1, confirm=True)
    first = rule.assess(trace[:60], window_start=20, scale=np.ones(2))
    assert (first.converged, first.window_start, first.stop_at) == (False, 60, 100), first.message
    waiting = rule.assess(trace[:80], window_start=60, scale=np.ones(2), stop_at=100)
    assert (waiting.converged, waiting.window_start, waiting.stop_at) == (False, 60, 100), waiting.message
    done = rule.assess(trace, window_start=60, scale=np.ones(2), stop_at=100)
    assert done.converged and done.window_start == 60 and done.stop_at is None
    # Its error is the fresh window's (the criteria's window has another).
    np.testing.assert_allclose(done.mcse, monte_carlo_standard_error(trace[60:], lead_in=trace[5:60]))
    assert np.all(np.abs(done.mcse / first.mcse - 1.0) > 1e-3)
    assert MonteCarloErrorRule(tol=0.1).assess(trace[:60], window_start=20, scale=np.ones(2)).converged


def test_a_fit_cut_by_max_iter_in_its_fresh_window_has_converged():
    # Gaussian, 3 x 10 levels: the criteria pass in the first few dozen iterations, and a
    # max_iter just past them cuts the fresh window short: the fit reports converged, its
    # window starting where the criteria passed, shorter than the window before it.
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 12)
    data = pd.DataFrame({"g": g.astype(str), "x": rng.normal(size=120)})
    data["y"] = 1.0 + 0.5 * data["x"] + rng.normal(size=10)[g] + rng.normal(size=120)
    rule = MonteCarloErrorRule(confirm=True)
    full = mixedfx.MixedEffectsRegressor("y ~ x + (1|g)", random_state=0, verbose=0, stopping_rule=rule).fit(data)
    full = full.fit_summary_
    assert full.converged and "fresh window" in full.message and full.n_iter > full.window_start, full.message
    cut = full.window_start + 5
    short = mixedfx.MixedEffectsRegressor("y ~ x + (1|g)", random_state=0, verbose=0, max_iter=cut,
                                          stopping_rule=rule).fit(data)
    summary = short.fit_summary_
    assert summary.converged and summary.n_iter == cut and summary.window_start == full.window_start, summary.message
    window = summary.trace[full.window_start:]
    expected = window.mean(axis=0)
    sd = summary.parameter_names.index("sd(g)")
    expected[sd] = np.sqrt(np.mean(window[:, sd] ** 2))  # a covariance's mean, as an sd
    np.testing.assert_allclose(summary.estimate, expected, rtol=1e-9)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mixedfx.ConvergenceWarning)  # grouseticks: LONG_MAX_ITER
        long = mixedfx.MixedEffectsRegressor(formula, family=family, random_state=1000, verbose=0, tol=LONG_TOL,
                                             max_iter=LONG_MAX_ITER).fit(data).fit_summary_
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
                     names=["sd(g1)", "sd(g2)", "sigma"])


def check_reported_error(runs):
    """The spread of each sd across the seeds is within a factor of 2 of the mean reported MCSE."""
    estimates, mcse, _, _ = runs
    ratio = estimates.std(axis=0, ddof=1) / mcse.mean(axis=0)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), f"seed spread / mean reported MCSE = {ratio}"


def check_mean_against_long_run(runs):
    """The seeds' mean is within 3 standard errors (its own and the long run's) of the long run."""
    estimates, _, long_estimate, long_mcse = runs
    se = np.sqrt(estimates.var(axis=0, ddof=1) / N_SEEDS + long_mcse**2)
    z = (estimates.mean(axis=0) - long_estimate) / se
    assert np.all(np.abs(z) < 3.0), f"seeds' mean - long run = {z} standard errors"


@pytest.mark.slow
def test_grouseticks_reported_error_is_the_seed_spread(grouseticks_runs):
    check_reported_error(grouseticks_runs)


@pytest.mark.slow
@pytest.mark.xfail(reason="open (issue 15): default fits still end about one Monte Carlo error short of the "
                          "long run (z = -3.4 and 2.5 for sd(BROOD) and sd(LOCATION)); with "
                          "MonteCarloErrorRule(confirm=True), whose fresh window removes the optional-stopping "
                          "bias on replayed traces, z = -4.0 and 3.1: a slow drift, sd(BROOD) up and sd(LOCATION) "
                          "down together, remains (20 traces of 800 iterations: slopes +0.0006 and -0.0011 per 100 "
                          "iterations, 1.5 and 1.8 of their SEs)", strict=False)
def test_grouseticks_mean_is_the_long_run(grouseticks_runs):
    check_mean_against_long_run(grouseticks_runs)


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


@pytest.mark.slow
def test_crossed_gaussian_mean_is_the_long_run(crossed_runs):
    check_mean_against_long_run(crossed_runs)
