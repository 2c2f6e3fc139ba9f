"""lmerTest's tables, emmeans, R²/ICC and profile intervals through the ESTIMATORS.

The engines are tested in test_lmertest.py, test_marginal_means.py and test_profile.py;
here the estimators' ``ddf`` parameter, ``summary()``, ``fixed_effects_table()``,
``mixedfx.anova(model)``, ``r2()``, ``icc()``, ``confint(method="profile")`` and the
top-level ``mixedfx.emmeans`` are checked against the same R fixtures
(tests/fixtures/make_lmertest_fixtures.R, make_emmeans_fixtures.R,
make_profile_fixtures.R).

The df are deterministic given the variance parameters, so the issue's tolerances
(Satterthwaite df 0.5 %, Kenward-Roger df 1 %, p 2 %) are checked on a fitted estimator
whose estimates are set to lme4's (the estimator's own methods, caches and parameter
do the rest).  At the Monte Carlo EM estimates themselves the df move with the fitted
variance parameters (test_lmertest.py: 4 % on df, 2 % on t); p-values of t near 7 or 37
move by far more than 2 % under a 1 % change of t, so at the fit they are checked where
they are moderate (cake's recipe and recipe:heat terms).
"""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.base import clone

import mixedfx
from mixedfx.model import ModelParameters

from conftest import FIXTURES
from test_profile import assert_matches_lme4

SLEEPSTUDY = "Reaction ~ Days + (Days | Subject)"


def lmertest_fixture(name: str) -> dict:
    with open(FIXTURES / f"lmertest_{name}.json") as handle:
        return json.load(handle)


def reference(fixture: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame(fixture[key]).set_index("name")


def at_lme4(fit, fixture: dict):
    """A copy of a fitted estimator holding lme4's estimates (theta, sigma, beta, vcov)."""
    sigma = fixture["sigma"]
    theta = {t["grp"]: np.ravel(np.asarray(t["theta"], dtype=np.float64)) for t in fixture["theta"]}
    scale_trils = []
    for term in fit.model_.random_terms:
        rows, cols = np.tril_indices(term.dim)
        order = np.lexsort((rows, cols))  # lme4's theta is column-wise
        T = np.zeros((term.dim, term.dim))
        T[rows[order], cols[order]] = theta[term.name]
        scale_trils.append(sigma * T)
    names = list(fit.fixed_design_.column_names)
    beta = np.asarray(fixture["fixed_effects"], dtype=np.float64)
    model = copy.copy(fit)
    model.model_parameters_ = ModelParameters(beta, tuple(scale_trils), {"sigma": sigma})
    model.fixed_effects_ = pd.Series(beta, index=names, name="estimate")
    model.fixed_effects_cov_ = pd.DataFrame(np.asarray(fixture["fixed_effects_cov"]), index=names, columns=names)
    return model


# -- the ddf parameter -------------------------------------------------------------------------
def test_ddf_is_a_parameter_checked_in_fit(sleepstudy):
    assert mixedfx.MixedEffectsRegressor().get_params()["ddf"] == "satterthwaite"
    assert "ddf" not in mixedfx.MixedEffectsClassifier().get_params()  # GLMMs: Wald z, nothing to choose
    bad = mixedfx.MixedEffectsRegressor(SLEEPSTUDY, ddf="lme4", verbose=0)
    assert bad.ddf == "lme4"  # __init__ only assigns
    with pytest.raises(mixedfx.ParameterError, match=r"ddf must be one of \('satterthwaite', 'kenward-roger', "
                                                     r"'residual', 'asymptotic'\), got 'lme4'"):
        bad.fit(sleepstudy)
    with pytest.raises(mixedfx.ParameterError, match="ddf='kenward-roger' needs method='reml'"):
        mixedfx.MixedEffectsRegressor(SLEEPSTUDY, ddf="kenward-roger", verbose=0).fit(sleepstudy)


def test_ddf_survives_clone_and_pickle(sleepstudy_reml_fit):
    estimator = mixedfx.MixedEffectsRegressor(SLEEPSTUDY, method="reml", ddf="kenward-roger")
    assert clone(estimator).get_params()["ddf"] == "kenward-roger"
    fit = copy.copy(sleepstudy_reml_fit)
    fit.set_params(ddf="kenward-roger")
    table = fit.fixed_effects_table()
    assert table.attrs["ddf"] == "kenward-roger" and "_ddf_cache" in fit.__dict__
    state = fit.__getstate__()
    assert "_ddf_cache" not in state and state["ddf"] == "kenward-roger"  # the df pieces stay out of pickles
    restored = pickle.loads(pickle.dumps(fit))
    assert restored.ddf == "kenward-roger" and "_ddf_cache" not in restored.__dict__
    pd.testing.assert_frame_equal(restored.fixed_effects_table(), table, rtol=1e-10)


@pytest.mark.filterwarnings("ignore::mixedfx.SamplerWarning")  # the kept draws of the 200-row refit: not used here
def test_refit_drops_the_cached_df_pieces():
    data = mixedfx.datasets.make_mixed_data(300, groups={"g": 12}, fixed_effects={"Intercept": 1.0, "x": 0.5},
                                            random_sd={"g": 0.8}, random_state=2)
    model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", method="reml", random_state=0, verbose=0).fit(data)
    first = model.fixed_effects_table()
    cache = model.__dict__["_ddf_cache"]
    assert cache["parameters"] is model.model_parameters_ and "satterthwaite" in cache
    model.set_params(random_state=1).fit(data.iloc[:200])  # other rows: other variance parameters
    assert "_ddf_cache" not in model.__dict__
    second = model.fixed_effects_table()
    uncached = copy.copy(model)  # copying goes through __getstate__, which leaves the cache out
    assert "_ddf_cache" in model.__dict__ and "_ddf_cache" not in uncached.__dict__
    pd.testing.assert_frame_equal(second, uncached.fixed_effects_table())  # computed for this fit
    assert abs(second.loc["Intercept", "df"] - first.loc["Intercept", "df"]) > 0.01


# -- lmerTest's numbers through the estimator ---------------------------------------------------
@pytest.mark.parametrize("ddf, key, df_rtol", [("satterthwaite", "coef_satterthwaite", 0.005),
                                               ("kenward-roger", "coef_kenward_roger", 0.01)])
def test_summary_table_follows_ddf_at_lme4_estimates(sleepstudy_reml_fit, ddf, key, df_rtol):
    fixture = lmertest_fixture("sleepstudy_reml")
    model = at_lme4(sleepstudy_reml_fit, fixture)
    model.set_params(ddf=ddf)
    table, ref = model.fixed_effects_table(), reference(fixture, key)
    assert table.attrs["ddf"] == ddf  # the estimator's parameter (sleepstudy is balanced: both df are 17)
    assert table.columns.tolist() == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    np.testing.assert_allclose(table["df"], ref["df"], rtol=df_rtol)
    np.testing.assert_allclose(table["Std. Error"], ref["Std. Error"], rtol=1e-4)
    np.testing.assert_allclose(table["Pr(>|t|)"], ref["Pr(>|t|)"], rtol=0.02)
    anova, ref3 = mixedfx.anova(model), reference(fixture, key.replace("coef", "anova3"))
    assert anova.attrs["ddf"] == ddf
    np.testing.assert_allclose(anova["DenDF"], ref3["DenDF"], rtol=df_rtol)
    np.testing.assert_allclose(anova["F value"], ref3["F value"], rtol=1e-3)
    np.testing.assert_allclose(anova["Pr(>F)"], ref3["Pr(>F)"], rtol=0.02)


@pytest.mark.parametrize("ddf, df_rtol", [("satterthwaite", 0.005), ("kenward-roger", 0.01)])
def test_anova_type3_at_lme4_estimates(cake_heat_reml_fit, ddf, df_rtol):
    """cake, unbalanced, ``recipe * heat``: terms of 2, 1 and 2 numerator df."""
    fixture = lmertest_fixture("cake_heat_reml")
    model = at_lme4(cake_heat_reml_fit, fixture)
    table = mixedfx.anova(model, ddf=ddf)  # ddf= overrides the estimator's
    assert table.attrs["ddf"] == ddf
    ref = reference(fixture, f"anova3_{ddf.replace('-', '_')}")
    assert table.index.tolist() == ref.index.tolist() == ["recipe", "heat", "recipe:heat"]
    assert table["NumDF"].tolist() == ref["NumDF"].tolist()
    np.testing.assert_allclose(table["DenDF"], ref["DenDF"], rtol=df_rtol)
    np.testing.assert_allclose(table["F value"], ref["F value"], rtol=1e-3)
    np.testing.assert_allclose(table["Pr(>F)"], ref["Pr(>F)"], rtol=0.02)


def test_fitted_estimators_against_lmertest(sleepstudy_reml_fit, cake_heat_reml_fit):
    """At the Monte Carlo EM estimates: the fidelity tolerances of test_lmertest.py."""
    fixture = lmertest_fixture("sleepstudy_reml")
    table, ref = sleepstudy_reml_fit.fixed_effects_table(), reference(fixture, "coef_satterthwaite")
    assert table.attrs["ddf"] == "satterthwaite"  # the default, as lmerTest's
    np.testing.assert_allclose(table["df"], ref["df"], rtol=0.04)
    np.testing.assert_allclose(table["t value"], ref["t value"], rtol=0.02)
    anova, ref3 = mixedfx.anova(cake_heat_reml_fit), reference(lmertest_fixture("cake_heat_reml"),
                                                               "anova3_satterthwaite")
    np.testing.assert_allclose(anova["DenDF"], ref3["DenDF"], rtol=0.04)
    np.testing.assert_allclose(anova["F value"], ref3["F value"], rtol=0.04)
    moderate = ["recipe", "recipe:heat"]  # p 0.83 and 0.70; heat's 6e-9 moves with every digit of F
    np.testing.assert_allclose(anova.loc[moderate, "Pr(>F)"], ref3.loc[moderate, "Pr(>F)"], rtol=0.02)


def test_residual_and_asymptotic_ddf(sleepstudy_reml_fit):
    model = copy.copy(sleepstudy_reml_fit)
    model.set_params(ddf="residual")
    residual = model.fixed_effects_table()
    assert residual["df"].tolist() == [180.0 - 2, 180.0 - 2]  # n - p
    np.testing.assert_allclose(residual["Pr(>|t|)"], 2 * stats.t.sf(np.abs(residual["t value"]), 178), rtol=1e-10)
    model.set_params(ddf="asymptotic")
    z = model.fixed_effects_table()
    assert z.columns.tolist() == ["Estimate", "Std. Error", "df", "z value", "Pr(>|z|)"]
    assert np.isinf(z["df"]).all()
    se = np.sqrt(np.diag(model.fixed_effects_cov_.to_numpy()))
    np.testing.assert_allclose(z["z value"], model.fixed_effects_.to_numpy() / se, rtol=1e-10)
    np.testing.assert_allclose(z["Pr(>|z|)"], 2 * stats.norm.sf(np.abs(z["z value"])), rtol=1e-10)


def test_summary_prints_the_df_and_the_method(sleepstudy_reml_fit, capsys):
    model = copy.copy(sleepstudy_reml_fit)
    for ddf, line in (("satterthwaite", "t-tests use Satterthwaite's method"),
                      ("kenward-roger", "t-tests use the Kenward-Roger method"),
                      ("asymptotic", "Wald z tests (ddf='asymptotic')")):
        model.set_params(ddf=ddf)
        model.summary()
        text = capsys.readouterr().out
        assert line in text
        table = model.fixed_effects_table()
        shown = [c for c in table.columns if c != "df" or ddf != "asymptotic"]  # no column of infinities
        assert " ".join(shown) in " ".join(text.split())
        days_df = f"{table.loc['Days', 'df']:.4g}"
        assert (days_df in text.split("Fixed effects:")[1]) is (ddf != "asymptotic")


def test_glmm_table_says_wald_z(emmeans_fits, capsys):
    fit = emmeans_fits("cbpp01")  # a MixedEffectsClassifier, bernoulli
    table = fit.fixed_effects_table()
    assert table.columns.tolist() == ["Estimate", "Std. Error", "df", "z value", "Pr(>|z|)"]
    assert np.isinf(table["df"]).all() and "Wald z" in table.attrs["note"]
    se = np.sqrt(np.diag(fit.fixed_effects_cov_.to_numpy()))
    np.testing.assert_allclose(table["z value"], fit.fixed_effects_.to_numpy() / se, rtol=1e-10)
    fit.summary()
    text = capsys.readouterr().out
    assert "Wald z tests (GLMM): no denominator df" in text
    assert "z value" in text and " df " not in text.split("Fixed effects:")[1].splitlines()[1]
    anova = mixedfx.anova(fit)
    assert np.isinf(anova["DenDF"]).all() and anova.loc["period", "NumDF"] == 3


# -- R², ICC, profile and emmeans through the estimator ----------------------------------------
@pytest.mark.parametrize("name", ["sleepstudy", "cbpp01"])
def test_r2_and_icc_methods(name, emmeans_fits, emmeans_reference):
    fit, ref = emmeans_fits(name), emmeans_reference[name]
    np.testing.assert_allclose(fit.r2(), [ref["r2_conditional"], ref["r2_marginal"]], atol=0.01)
    np.testing.assert_allclose(fit.icc(), [ref["icc_adjusted"], ref["icc_unadjusted"]], atol=0.01)
    pd.testing.assert_series_equal(mixedfx.r2(fit), fit.r2())
    pd.testing.assert_series_equal(mixedfx.icc(fit), fit.icc())


def test_confint_profile(crossed_small_fit):
    with open(FIXTURES / "profile_intervals.json") as handle:
        ref = json.load(handle)["crossed_small_ml"]
    table = crossed_small_fit.confint(method="profile", which=["sigma", "x", "sd(g1)"])
    assert table.index.tolist() == ["x", "sd(g1)", "sigma"]  # in the parameters' order
    assert table.columns.tolist() == ["2.5 %", "97.5 %"]
    assert_matches_lme4(table, ref)
    with pytest.raises(mixedfx.ParameterError, match="unknown parameter 'sd\\(nope\\)'"):
        crossed_small_fit.confint(method="profile", which=["sd(nope)"])


def test_top_level_emmeans_follow_the_model_ddf(emmeans_fits, emmeans_reference):
    """cake is balanced: Satterthwaite's df equal emmeans' Kenward-Roger ones (45)."""
    fit, ref = emmeans_fits("cake"), emmeans_reference["cake"]["recipe"]
    emm = mixedfx.emmeans(fit, "recipe")
    assert isinstance(emm, mixedfx.EMMeans)
    np.testing.assert_allclose(emm.table["df"], [r["df"] for r in ref["emmeans"]], rtol=0.01)
    pairs = mixedfx.contrast(emm, "pairwise", adjust="tukey")
    np.testing.assert_allclose(pairs["df"], [r["df"] for r in ref["pairs_tukey"]], rtol=0.01)
    np.testing.assert_allclose(pairs["estimate"], [r["estimate"] for r in ref["pairs_tukey"]], atol=0.1)


def test_summary_of_a_model_too_large_for_exact_df_falls_back_to_z(sleepstudy_reml_fit, monkeypatch, capsys):
    """InstEval-sized random-effects designs exceed the dense df path: summary() still prints."""
    monkeypatch.setattr(mixedfx.model.ddf, "MAX_DENSE_DDF_ENTRIES", 100)  # sleepstudy's 180 x 36 is over it
    model = copy.copy(sleepstudy_reml_fit)
    with pytest.warns(mixedfx.DataWarning, match="dense path need 6,480 entries.*falls back to Wald z"):
        model.summary()
    assert "Wald z tests (ddf='asymptotic')" in capsys.readouterr().out
    with pytest.raises(mixedfx.DataError, match="use ddf='residual' or 'asymptotic'"):
        model.fixed_effects_table(ddf="satterthwaite")  # asked for explicitly: no fallback
