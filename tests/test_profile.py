"""Profile confidence intervals against lme4's ``confint(m, method = "profile")``.

The reference is tests/fixtures/profile_intervals.json, written by
tests/fixtures/make_profile_fixtures.R (lme4 1.1-31).  Each endpoint must be within
2 % of lme4's: 2 % of the endpoint or of lme4's interval width, whichever is smaller (the
width is the stricter scale for a fixed effect far from 0), but at least 2 % of a quarter of
the width (for endpoints near 0: an sd's lower limit, a correlation's).

Most tests profile at lme4's own estimates (the model bound from a fitted estimator's
designs, the parameters from the fixture's theta, sigma and beta), which isolates the
profiling from the Monte Carlo error of the fit; one profiles a fitted estimator.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.exceptions import ParameterError
from mixedfx.model import MixedModel, ModelParameters
from mixedfx.profile import profile_intervals, profile_intervals_at

from conftest import FIXTURES

SLOPES = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="session")
def profile_reference() -> dict:
    with open(FIXTURES / "profile_intervals.json") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def sleepstudy_frame() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "sleepstudy.csv")


@pytest.fixture(scope="session")
def sleepstudy_ml_fit(sleepstudy_frame):
    return mixedfx.MixedEffectsRegressor(SLOPES, method="ml", tol=0.02, max_iter=5000, random_state=0,
                                         verbose=0).fit(sleepstudy_frame)


@pytest.fixture(scope="session")
def cbpp_fit():
    data = pd.read_csv(FIXTURES / "cbpp.csv")
    model = mixedfx.glmer("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", data, family="binomial",
                          tol=0.05, random_state=0, verbose=0)
    return data, model


def at_lme4_estimates(fit, data: pd.DataFrame, reference: dict):
    """The model bound to ``data`` by ``fit``'s designs, and lme4's estimates as ModelParameters."""
    X = fit.fixed_design_.transform(data)
    terms = fit.random_design_.materialize(data)
    response, trials = fit.response_design_.evaluate(data)
    names = fit.fixed_design_.column_names
    bound = MixedModel(fit.family_, X, response, terms, names, offset=fit.fixed_design_.offset(data), trials=trials)
    theta = np.atleast_1d(reference["theta"])
    relative, start = {}, 0
    for name in np.atleast_1d(reference["term_order"]):  # lme4's theta: each term's factor, column-major
        dim = next(t.dim for t in terms if t.name == name)
        factor = np.zeros((dim, dim))
        for j in range(dim):
            for i in range(j, dim):
                factor[i, j] = theta[start]
                start += 1
        relative[name] = factor
    gaussian = reference["family"] == "gaussian"
    scale = reference["sigma"] if gaussian else 1.0
    params = ModelParameters(np.array([reference["fixed_effects"][n] for n in names]),
                             tuple(scale * relative[t.name] for t in terms),
                             {"sigma": reference["sigma"]} if gaussian else {})
    return bound, params


def assert_matches_lme4(table: pd.DataFrame, reference: dict, *, share: float = 0.02):
    lower, upper = pd.Series(reference["lower"]), pd.Series(reference["upper"])
    assert set(table.index) <= set(lower.index)
    for name in table.index:
        width = upper[name] - lower[name]
        for column, ref in zip(table.columns, (lower[name], upper[name])):
            tolerance = share * max(min(abs(ref), width), 0.25 * width)
            assert abs(table.loc[name, column] - ref) <= tolerance, (name, column, table.loc[name, column], ref)


def test_sleepstudy_ml_at_lme4_estimates(sleepstudy_ml_fit, sleepstudy_frame, profile_reference):
    reference = profile_reference["sleepstudy_ml"]
    bound, params = at_lme4_estimates(sleepstudy_ml_fit, sleepstudy_frame, reference)
    table = profile_intervals_at(bound, params)
    assert table.index.tolist() == list(sleepstudy_ml_fit.fit_summary_.parameter_names)
    assert table.columns.tolist() == ["2.5 %", "97.5 %"]
    assert_matches_lme4(table, reference)
    # the re-optimized estimate is lme4's ML estimate
    assert table.attrs["estimate"]["sigma"] == pytest.approx(reference["sigma"], rel=1e-4)


def test_sleepstudy_reml_is_profiled_by_ml_as_lme4(sleepstudy_ml_fit, sleepstudy_frame, profile_reference):
    """lme4's profile() refits a REML fit by ML: its REML intervals equal the ML ones, and so do ours
    from the REML estimates."""
    reference = profile_reference["sleepstudy_reml"]
    assert reference["reml"] and reference["sigma"] != pytest.approx(profile_reference["sleepstudy_ml"]["sigma"])
    bound, params = at_lme4_estimates(sleepstudy_ml_fit, sleepstudy_frame, reference)
    table = profile_intervals_at(bound, params, which=["sd(Subject, Days)", "sigma", "Days"])
    assert table.index.tolist() == ["Days", "sd(Subject, Days)", "sigma"]  # in the parameters' order
    assert_matches_lme4(table, reference)
    assert table.attrs["estimate"]["sigma"] == pytest.approx(profile_reference["sleepstudy_ml"]["sigma"], rel=1e-4)


def test_crossed_at_lme4_estimates(crossed_small_fit, crossed_small, profile_reference):
    reference = profile_reference["crossed_small_ml"]
    bound, params = at_lme4_estimates(crossed_small_fit, crossed_small, reference)
    table = profile_intervals_at(bound, params)
    assert table.index.tolist() == ["Intercept", "x", "sd(g1)", "sd(g2)", "sigma"]
    assert_matches_lme4(table, reference)


def test_fitted_estimator(crossed_small_fit, profile_reference):
    """From the MCEM fit: the optimum is re-found on the exact deviance, so the same 2 % holds."""
    table = profile_intervals(crossed_small_fit, level=0.95)
    assert_matches_lme4(table, profile_reference["crossed_small_ml"])


def test_glmm_laplace_at_lme4_estimates(cbpp_fit, profile_reference):
    """cbpp's binomial GLMM on the Laplace deviance: the herd sd and a fixed effect."""
    data, fit = cbpp_fit
    reference = profile_reference["cbpp_binomial"]
    bound, params = at_lme4_estimates(fit, data, reference)
    table = profile_intervals_at(bound, params, which=["sd(herd)", "C(period)[T.2]"])
    assert table.attrs["criterion"].startswith("Laplace")
    assert_matches_lme4(table, reference)


def test_lower_limit_zero_and_levels():
    """An sd whose profile stays below the level down to 0 gets the lower limit 0 (as lme4);
    a lower level's interval lies inside a higher one's."""
    from mixedfx.design import RandomTermData
    from mixedfx.model import Gaussian

    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(12), 6).astype(np.int32)
    y = 0.05 * rng.normal(size=12)[g] + rng.normal(size=72)  # a group sd far below what 72 rows can tell from 0
    bound = MixedModel(Gaussian(), np.ones((72, 1)), y, (RandomTermData("g", g, None, 12),), ("Intercept",))
    params = ModelParameters(np.array([0.0]), np.array([0.1]), {"sigma": 1.0})
    wide = profile_intervals_at(bound, params, level=0.95)
    narrow = profile_intervals_at(bound, params, level=0.5)
    assert narrow.columns.tolist() == ["25 %", "75 %"]
    assert wide.loc["sd(g)", "2.5 %"] == 0.0
    assert 0.0 < wide.loc["sd(g)", "97.5 %"] < 1.0
    for name in ("Intercept", "sigma"):
        assert wide.loc[name, "2.5 %"] < narrow.loc[name, "25 %"] < narrow.loc[name, "75 %"] < wide.loc[name, "97.5 %"]


@pytest.mark.parametrize("kwargs, message", [({"level": 1.5}, "level must be"),
                                             ({"which": ["sd(nope)"]}, "unknown parameter 'sd\\(nope\\)'")])
def test_bad_arguments(crossed_small_fit, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        profile_intervals(crossed_small_fit, **kwargs)


def test_unfitted_estimator():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        profile_intervals(mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)"))


# -- structured covariances, against glmmTMB's profile --------------------------------------------

@pytest.fixture(scope="session")
def structure_profiles() -> dict:
    """glmmTMB 1.1.5's profile intervals (tests/fixtures/make_structure_profile_fixtures.R)."""
    with open(FIXTURES / "structure_profiles.json") as handle:
        return json.load(handle)


def _at_glmmtmb_estimates(reference: dict):
    """The structured model bound to its data, and glmmTMB's estimates."""
    from mixedfx.design import bind_data
    from mixedfx.formula import parse_formula
    from mixedfx.model import get_family
    from mixedfx.model.binding import bind_model

    gaussian = reference["family"] == "gaussian"
    data = pd.read_csv(FIXTURES / ("covariance_replicates.csv" if gaussian else "glmm_structure_ar1.csv"))
    bound = bind_model(get_family(reference["family"]), bind_data(parse_formula(reference["formula"]), data))
    beta = np.array([reference["fixed_effects"][n.replace("Intercept", "(Intercept)")] for n in bound.fixed_names])
    root = np.linalg.cholesky(np.array(reference["covariance"]))
    return bound, ModelParameters(beta, (root,), {"sigma": reference["sigma"]} if gaussian else {})


def _glmmtmb_ends(reference: dict) -> pd.DataFrame:
    """glmmTMB's ends under mixedfx's names: fixed effects, the sds (one common sd for ar1,
    else one per time), ``rho(subject)`` or toep's ``lag1(subject)``..."""
    ends = {n.replace("(Intercept)", "Intercept"): (reference["fixed_lower"][n], reference["fixed_upper"][n])
            for n in reference["fixed_lower"]}
    common = np.size(reference["sd_lower"]) == 1
    sds = ["sd(subject)"] if common else [f"sd(subject, timef[t{k}])" for k in range(1, 6)]
    ends.update(zip(sds, zip(np.atleast_1d(reference["sd_lower"]), np.atleast_1d(reference["sd_upper"]))))
    if "rho_lower" in reference:
        ends["rho(subject)"] = (reference["rho_lower"], reference["rho_upper"])
    for k, lower, upper in zip(range(1, 5), reference.get("lag_lower", ()), reference.get("lag_upper", ())):
        ends[f"lag{k}(subject)"] = (lower, upper)
    return pd.DataFrame(ends, index=["lower", "upper"]).T


@pytest.mark.parametrize("case, which", [
    ("replicates_ar1", None),
    ("replicates_cs", ["sd(subject, timef[t5])", "rho(subject)"]),
    ("replicates_diag", ["Intercept", "sd(subject, timef[t2])", "sd(subject, timef[t4])"]),
    ("replicates_toep", ["lag2(subject)", "lag4(subject)"]),
    pytest.param("poisson_ar1", ["time", "sd(subject)", "rho(subject)"], marks=pytest.mark.slow),
])
def test_structured_terms_match_glmmtmbs_profile(structure_profiles, case, which):
    """A structured term is profiled on its own parameters (its sds, ``rho``), as glmmTMB
    profiles its theta (toep: its lag correlations); every end within 0.5 % of the
    interval's width of glmmTMB's, for ar1, cs, diag and toep (exact Gaussian ML deviance)
    and a Poisson ar1 (Laplace)."""
    reference = structure_profiles[case]
    bound, params = _at_glmmtmb_estimates(reference)
    table = profile_intervals_at(bound, params, which=which)
    expected = _glmmtmb_ends(reference)
    names = [n for n in table.index if n != "sigma"]
    assert set(names) <= set(expected.index) and len(names) >= 2
    if which is None:
        assert table.index.tolist() == ["Intercept", "time", "sd(subject)", "rho(subject)", "sigma"]
    for name in names:
        width = expected.loc[name, "upper"] - expected.loc[name, "lower"]
        got = table.loc[name].to_numpy()
        np.testing.assert_allclose(got, expected.loc[name].to_numpy(), atol=0.005 * width, rtol=0, err_msg=name)


@pytest.mark.parametrize("structure, pairs", [
    ("homdiag", {"sd(g)": "sd(t0)"}),
    ("diag", {"sd(g, c0)": "sd(t0)", "sd(g, c2)": "sd(t2)"}),
])
def test_a_linear_structure_profiles_as_its_lme4_spelling(structure, pairs):
    """``homdiag(0 + f | g)`` is ``(1 | g:f)`` and ``diag(1 + x + w | g)`` is
    ``(1 + x + w || g)``: the structure's sds (through its bijectors) have the intervals of
    the lme4 spelling's (the ``us`` path, which matches lme4), and so do ``x`` and ``sigma``,
    to 1e-3 of the interval's width."""
    import dataclasses

    from test_lmertest import _structure_pair

    rng = np.random.default_rng(8)
    (structured, at), (lme4, same) = _structure_pair(structure, rng)
    n_cells = 3 * int(structured.random_terms[0].num_levels)
    cell = structured.random_terms[0].group_index * 3 + np.argmax(structured.random_terms[0].z, axis=1)
    y = 0.5 * structured.fixed_design[:, 3] + 0.8 * rng.normal(size=n_cells)[cell] + 0.7 * rng.normal(size=len(cell))
    structured, lme4 = (dataclasses.replace(m, response=y) for m in (structured, lme4))
    got = profile_intervals_at(structured, at, which=[*pairs, "x", "sigma"])
    expected = profile_intervals_at(lme4, same, which=[*pairs.values(), "x", "sigma"])
    for ours, theirs in {**pairs, "x": "x", "sigma": "sigma"}.items():
        width = np.ptp(expected.loc[theirs].to_numpy())
        np.testing.assert_allclose(got.loc[ours].to_numpy(), expected.loc[theirs].to_numpy(), atol=1e-3 * width,
                                   rtol=0, err_msg=ours)
