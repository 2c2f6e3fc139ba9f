"""The full random-effects grammar against lme4: slopes, ||, nested and crossed designs.

lme4's tolerances (sds within 3%, correlations within a quarter of their standard error
(1 - r^2) / sqrt(levels), fixed effects within 0.25 SE,
logLik within 0.5) are tighter than the statistical uncertainty of these small data
sets (the sd of sleepstudy's 18 random intercepts has a standard error near 20%), so the
fits ask for a Monte Carlo error of at most 2% of each standard error (``tol=0.02``).
"""

import numpy as np
import pandas as pd
import pytest
from conftest import (FIXTURES, assert_draws_centre_on_conditional_means, assert_ranef_match_lme4,
                      correlation_tolerance, load_house, lme4_fixed_effects, lme4_fixed_effects_se)

import mixedfx

#: six fits to a Monte Carlo error of 2% of each SE: minutes on 2 CPU cores
pytestmark = pytest.mark.slow

CASES = {
    "sleepstudy_slopes": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)"),
    "sleepstudy_uncorrelated": ("sleepstudy.csv", "Reaction ~ Days + (Days || Subject)"),
    "sleepstudy_slope_only": ("sleepstudy.csv", "Reaction ~ Days + (0 + Days | Subject)"),
    "pastes_nested": ("pastes.csv", "strength ~ 1 + (1 | batch/cask)"),
    "crossed_slopes": ("crossed_slopes.csv", "y ~ x + (1 + x | g1) + (1 | g2)"),
    # a large correlation (0.70 in lme4, on 150 levels): 0.1 absolute could not tell it from 0.6
    "correlated_slopes": ("correlated_slopes.csv", "y ~ x + (1 + x | g)"),
}


def lme4_components(fixture):
    """lme4's VarCorr rows keyed by (sorted grouping columns, var1, var2)."""
    out = {}
    for row in fixture["varcorr"]:
        group = ":".join(sorted(row["grp"].split(".")[0].split(":")))
        out[(group, row["var1"], row["var2"])] = row["sdcor"]
    return out


def mixedfx_components(model):
    out = {}
    for row in model.variance_components_.itertuples(index=False):
        group = ":".join(sorted(row.group.split(":")))
        out[(group, row.var1, row.var2)] = row.sdcor
    return out


@pytest.fixture(scope="module")
def fits():
    """Every case fitted once: name -> (data, model)."""
    out = {}
    for name, (data_file, formula) in CASES.items():
        data = pd.read_csv(FIXTURES / data_file)
        model = mixedfx.MixedEffectsRegressor(formula, tol=0.02, max_iter=5000, random_state=0, verbose=0).fit(data)
        out[name] = (data, model)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_lme4(fits, name):
    _, model = fits[name]
    reference = load_house(name)  # the same lme4 ML fits as lme4_<name>_ml.json, with ranef
    ours, theirs = mixedfx_components(model), lme4_components(reference)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key[2] is None:  # a standard deviation
            assert ours[key] == pytest.approx(value, rel=0.03), (key, ours[key], value)
        else:  # a correlation: a quarter of its standard error
            tolerance = correlation_tolerance(value, reference["n_levels"][key[0]])
            assert abs(ours[key] - value) < tolerance, (key, ours[key], value, tolerance)
    distance = (model.fixed_effects_ - lme4_fixed_effects(reference)) / lme4_fixed_effects_se(reference)
    assert np.all(np.abs(distance) < 0.25), distance
    assert model.log_likelihood_ == pytest.approx(reference["logLik"], abs=0.5)
    assert model.fit_summary_.converged


@pytest.mark.parametrize("name", sorted(CASES))
def test_conditional_means_match_lme4(fits, name):
    """random_effects_ and their conditional sds against lme4's ranef(condVar = TRUE)."""
    assert_ranef_match_lme4(fits[name][1], load_house(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_draws_centre_on_the_conditional_means(fits, name):
    assert_draws_centre_on_conditional_means(fits[name][1])


def test_varcorr_layout_with_correlations():
    data = pd.read_csv(FIXTURES / "sleepstudy.csv")
    model = mixedfx.MixedEffectsRegressor("Reaction ~ Days + (Days | Subject)", random_state=0, verbose=0).fit(data)
    components = model.variance_components_
    assert components[["group", "var1", "var2"]].values.tolist() == [
        ["Subject", "(Intercept)", None],
        ["Subject", "Days", None],
        ["Subject", "(Intercept)", "Days"],
        ["Residual", None, None],
    ]
    cov = model.random_cov_[0]
    assert components["vcov"].iloc[2] == pytest.approx(cov.loc["(Intercept)", "Days"])
    assert components["sdcor"].iloc[2] == pytest.approx(
        cov.loc["(Intercept)", "Days"] / np.sqrt(cov.loc["(Intercept)", "(Intercept)"] * cov.loc["Days", "Days"]))
    assert list(model.random_effects_["Subject"].columns) == ["(Intercept)", "Days"]
    assert model.random_effects_["Subject"].shape == (18, 2)
    text = _summary(model)
    assert "Corr" in text and "Subject  (Intercept)" in text


def _summary(model):
    import io

    buffer = io.StringIO()
    model.summary(file=buffer)
    return buffer.getvalue()


def test_prediction_with_slopes_and_partial_information(fits):
    data, model = fits["crossed_slopes"]
    rows = data.head(5).copy()
    beta = model.fixed_effects_
    fixed = beta["Intercept"] + beta["x"] * rows["x"].to_numpy()
    np.testing.assert_allclose(model.predict(rows, include_random=False), fixed)
    g1 = model.random_effects_["g1"].loc[rows["g1"]].to_numpy()
    g2 = model.random_effects_["g2"].loc[rows["g2"], "(Intercept)"].to_numpy()
    full = fixed + g1[:, 0] + g1[:, 1] * rows["x"].to_numpy() + g2
    np.testing.assert_allclose(model.predict(rows), full)
    # an unseen level drops all of its term's coefficients (intercept and slope)
    unseen = rows.assign(g1="never")
    np.testing.assert_allclose(model.predict(unseen), fixed + g2)
    # a row set without one grouping column: that factor's terms drop out, with a warning
    with pytest.warns(UserWarning, match="grouping column 'g2' is missing"):
        np.testing.assert_allclose(model.predict(rows.drop(columns="g2")), full - g2)
    with pytest.raises(mixedfx.NewLevelError):
        model.predict(rows.drop(columns="g2"), new_levels="error")
