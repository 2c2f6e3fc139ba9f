"""emmeans and performance: marginal means, contrasts, R² and ICC against R.

References: tests/fixtures/make_emmeans_fixtures.R (emmeans 1.8.4, performance 0.10.2,
lme4 ML fits).  Each quantity is checked twice: at lme4's own parameter values (a
stand-in estimator built from the fixture, no fit: the formulas must agree to rounding),
and at mixedfx's fitted values (Monte Carlo EM; the issue's tolerances).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import EMMEANS_FITS, FIXTURES

from mixedfx.design import RandomDesign, build_fixed_design
from mixedfx.exceptions import ParameterError
from mixedfx.explained_variance import icc, r2, variance_decomposition
from mixedfx.formula import parse_formula
from mixedfx.marginal_means import contrast, emmeans, p_adjust
from mixedfx.model import get_family


def lme4_stand_in(name: str, reference: dict):
    """An object with the fitted attributes emmeans and r2 read, at lme4's values."""
    path, formula, family_name = EMMEANS_FITS[name]
    data, fit = pd.read_csv(FIXTURES / path), reference[name]
    spec = parse_formula(formula)
    design, X = build_fixed_design(spec.fixed, data)
    random_design = RandomDesign.from_spec(spec, data)
    terms = random_design.materialize(data, new_levels="error")
    beta = np.array([fit["fixed_effects"][n] for n in fit["fixed_names"]])
    names = list(design.column_names)
    if len(names) == len(beta) + 1:  # clmm: the cutpoints stand in for the intercept
        names.remove("Intercept")
        beta_internal = np.insert(beta, design.column_names.index("Intercept"), 0.0)
    else:
        beta_internal = beta
    assert len(names) == len(beta)
    covs = tuple(np.array(fit["random_cov"][t.name], dtype=float).reshape(t.dim, t.dim)
                 for t in random_design.terms)
    family_params = {} if fit["sigma"] is None else {"sigma": fit["sigma"]}
    return SimpleNamespace(
        fixed_design_=design, family_=get_family(family_name),
        fixed_effects_=pd.Series(beta, index=names),
        fixed_effects_cov_=pd.DataFrame(np.array(fit.get("fixed_effects_cov", np.eye(len(beta))), dtype=float)),
        random_cov_=covs, model_=SimpleNamespace(fixed_design=X, random_terms=terms, n_obs=len(data)),
        model_parameters_=SimpleNamespace(fixed_effects=beta_internal, family_params=family_params),
    )


def df_from(means: list, contrasts: list | None = None):
    """The pluggable df source returning emmeans' own df: the means' rows (intercept
    coefficient 1) get ``means``, the pairwise contrasts' rows (coefficient 0)
    ``contrasts``; another family of contrasts (trt.vs.ctrl) gets the first pair's df."""
    def df(model, L):
        values = means if L[0, 0] == 1.0 else contrasts
        if len(values) != L.shape[0]:
            values = [values[0]] * L.shape[0]
        return np.array([np.inf if v is None else v for v in values], dtype=float)
    return df


def column(rows: list, name: str) -> np.ndarray:
    return np.array([np.inf if row[name] is None else row[name] for row in rows], dtype=float)


CASES = [("cake", "recipe"), ("cake", "temperature"), ("cake_interaction", "recipe"), ("crossed", "trt"),
         ("cbpp01", "period")]


@pytest.mark.parametrize("name, spec", CASES)
def test_emmeans_at_lme4_values(name, spec, emmeans_reference):
    ref = emmeans_reference[name][spec]
    fit = lme4_stand_in(name, emmeans_reference)
    emm = emmeans(fit, spec, df=df_from([r["df"] for r in ref["emmeans"]], [r["df"] for r in ref["pairs_tukey"]]))
    table = emm.table
    assert list(table[spec]) == [r[spec] for r in ref["emmeans"]]
    np.testing.assert_allclose(table["emmean"], column(ref["emmeans"], "emmean"), rtol=1e-6)
    np.testing.assert_allclose(table["SE"], column(ref["emmeans"], "SE"), rtol=1e-5)
    low = "lower.CL" if "lower.CL" in table else "asymp.LCL"
    np.testing.assert_allclose(table[low], column(ref["emmeans"], low), rtol=1e-5)
    for adjust in ("tukey", "holm", "bonferroni", "none"):
        pairs = emm.pairs(adjust=adjust)
        expected = ref[f"pairs_{adjust}"]
        assert list(pairs["contrast"]) == [r["contrast"] for r in expected]
        np.testing.assert_allclose(pairs["estimate"], column(expected, "estimate"), rtol=1e-6, atol=1e-9)
        # R's ptukey is accurate to about 1e-12 absolute: below that, only the magnitude is checked
        np.testing.assert_allclose(pairs["p.value"], column(expected, "p.value"), rtol=1e-4, atol=1e-11)
    control = contrast(emm, "trt.vs.ctrl", adjust="none")
    np.testing.assert_allclose(control["estimate"], column(ref["trt_vs_ctrl"], "estimate"), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(control["SE"], column(ref["trt_vs_ctrl"], "SE"), rtol=1e-5)


def test_emmeans_response_scale_at_lme4_values(emmeans_reference):
    """cbpp 0/1 on the response scale: probabilities, delta-method SEs, odds ratios."""
    ref = emmeans_reference["cbpp01"]["period"]
    emm = emmeans(lme4_stand_in("cbpp01", emmeans_reference), "period", type="response")
    for key in ("prob", "SE", "asymp.LCL", "asymp.UCL"):
        np.testing.assert_allclose(emm.table[key], column(ref["emmeans_response"], key), rtol=1e-5)
    assert np.isinf(emm.table["df"]).all()
    pairs = emm.pairs()
    assert list(pairs["contrast"]) == [r["contrast"] for r in ref["pairs_ratio"]]
    for key in ("odds.ratio", "SE", "z.ratio", "p.value"):
        np.testing.assert_allclose(pairs[key], column(ref["pairs_ratio"], key), rtol=1e-4)


def test_emmeans_at_and_by_at_lme4_values(emmeans_reference):
    """A covariate given by at= and a by= variable (recipe | temp at 180 and 220)."""
    ref = emmeans_reference["cake_interaction"]["recipe_by_temp"]
    fit = lme4_stand_in("cake_interaction", emmeans_reference)
    emm = emmeans(fit, "recipe", by="temp", at={"temp": [180, 220]},
                  df=df_from([r["df"] for r in ref["emmeans"]], [r["df"] for r in ref["pairs_tukey"]]))
    assert list(emm.table["temp"]) == [r["temp"] for r in ref["emmeans"]]
    np.testing.assert_allclose(emm.table["emmean"], column(ref["emmeans"], "emmean"), rtol=1e-6)
    np.testing.assert_allclose(emm.table["SE"], column(ref["emmeans"], "SE"), rtol=1e-5)
    pairs = emm.pairs()
    np.testing.assert_allclose(pairs["p.value"], column(ref["pairs_tukey"], "p.value"), rtol=1e-4)


def test_emmeans_numeric_grid_sleepstudy_at_lme4_values(emmeans_reference):
    ref = emmeans_reference["sleepstudy"]["days"]
    fit = lme4_stand_in("sleepstudy", emmeans_reference)
    emm = emmeans(fit, "Days", at={"Days": [0, 4.5, 9]},
                  df=df_from([r["df"] for r in ref["emmeans"]], [r["df"] for r in ref["pairs_tukey"]]))
    np.testing.assert_allclose(emm.table["emmean"], column(ref["emmeans"], "emmean"), rtol=1e-6)
    np.testing.assert_allclose(emm.table["SE"], column(ref["emmeans"], "SE"), rtol=1e-5)
    pairs = emm.pairs()
    assert list(pairs["contrast"]) == [r["contrast"] for r in ref["pairs_tukey"]]
    np.testing.assert_allclose(pairs["p.value"], column(ref["pairs_tukey"], "p.value"), rtol=1e-4)
    np.testing.assert_allclose(emm.pairs(adjust="holm")["p.value"], column(ref["pairs_holm"], "p.value"), rtol=1e-4)


@pytest.mark.parametrize("name", ["cake", "sleepstudy", "crossed", "cbpp01", "poisson", "wine"])
def test_r2_icc_at_lme4_values(name, emmeans_reference):
    ref = emmeans_reference[name]
    fit = lme4_stand_in(name, emmeans_reference)
    parts = variance_decomposition(fit, null_intercept=ref.get("null_intercept"))
    for key in ("var_fixed", "var_random", "var_residual", "var_distribution"):
        assert parts[key] == pytest.approx(ref[key], rel=1e-5)
    null = {"null_intercept": ref.get("null_intercept")}
    np.testing.assert_allclose(r2(fit, **null), [ref["r2_conditional"], ref["r2_marginal"]], rtol=1e-5)
    np.testing.assert_allclose(icc(fit, **null), [ref["icc_adjusted"], ref["icc_unadjusted"]], rtol=1e-5)


def test_p_adjust_matches_r():
    """Values printed by R 4's ``p.adjust(c(0.01, 0.04, 0.03, 0.02, 0.05), method)``."""
    p = [0.01, 0.04, 0.03, 0.02, 0.05]
    np.testing.assert_allclose(p_adjust(p, "holm"), [0.05, 0.09, 0.09, 0.08, 0.09])
    np.testing.assert_allclose(p_adjust(p, "bonferroni"), [0.05, 0.2, 0.15, 0.1, 0.25])
    np.testing.assert_allclose(p_adjust(p, "fdr"), [0.05, 0.05, 0.05, 0.05, 0.05])


def test_bad_input_names_the_variable(emmeans_reference):
    fit = lme4_stand_in("cake", emmeans_reference)
    with pytest.raises(ParameterError, match="'recipee'"):
        emmeans(fit, "recipee", df=10.0)
    with pytest.raises(ParameterError, match="'Z'"):
        emmeans(fit, "recipe", at={"recipe": ["A", "Z"]}, df=10.0)
    with pytest.raises(ParameterError, match="type"):
        emmeans(fit, "recipe", type="probability", df=10.0)
    with pytest.raises(ParameterError, match="Tukey"):
        contrast(emmeans(fit, "recipe", df=10.0), "trt.vs.ctrl", adjust="tukey")
    with pytest.raises(ParameterError, match="ordinal"):
        emmeans(lme4_stand_in("wine", emmeans_reference), "temp")


# -- at mixedfx's own fits (Monte Carlo EM): the issue's tolerances ---------------------------
# Tolerances at the fitted values.  Means 1 % everywhere.  SEs 1 % for the Gaussian fits
# (exact GLS given the variance parameters).  Tukey p 2 %, except crossed's small p-values
# (0.008, 4e-5): d log p / d t is about |t| (up to 4.4 here), so the fit's ~1 % Monte Carlo
# error in the variance parameters moves them 4-8 %; there the t ratios are held to 1.5 %
# and the p-values to 10 %.  The bernoulli GLMM's SEs are mixedfx's fixed-effects
# covariance at its Monte Carlo EM estimates, 1.7-2.7 % from glmer's Laplace one on cbpp,
# so they are held to 3 % and its z ratios to 5 %; its Tukey p-values (z near 3.3, where
# a 4 % error in z moves p by about 25 %) are checked at lme4's values only (above, 1e-4).
FITTED_CASES = [("cake", "recipe", 0.01, 0.015, 0.02), ("crossed", "trt", 0.01, 0.015, 0.10),
                ("cbpp01", "period", 0.03, 0.05, None)]


@pytest.mark.parametrize("name, spec, se_rtol, ratio_rtol, p_rtol", FITTED_CASES)
def test_emmeans_fitted(name, spec, se_rtol, ratio_rtol, p_rtol, emmeans_reference, emmeans_fits):
    ref = emmeans_reference[name][spec]
    fit = emmeans_fits(name)
    emm = emmeans(fit, spec, df=df_from([r["df"] for r in ref["emmeans"]], [r["df"] for r in ref["pairs_tukey"]]))
    np.testing.assert_allclose(emm.table["emmean"], column(ref["emmeans"], "emmean"), rtol=0.01)
    np.testing.assert_allclose(emm.table["SE"], column(ref["emmeans"], "SE"), rtol=se_rtol)
    pairs = emm.pairs(adjust="tukey")
    ratio = "t.ratio" if "t.ratio" in pairs else "z.ratio"
    np.testing.assert_allclose(pairs[ratio], column(ref["pairs_tukey"], ratio), rtol=ratio_rtol)
    if p_rtol is not None:
        np.testing.assert_allclose(pairs["p.value"], column(ref["pairs_tukey"], "p.value"), rtol=p_rtol)


@pytest.mark.parametrize("name", ["cake", "sleepstudy", "crossed", "cbpp01"])
def test_r2_icc_fitted(name, emmeans_reference, emmeans_fits):
    ref = emmeans_reference[name]
    fit = emmeans_fits(name)
    np.testing.assert_allclose(r2(fit), [ref["r2_conditional"], ref["r2_marginal"]], atol=0.01)
    np.testing.assert_allclose(icc(fit), [ref["icc_adjusted"], ref["icc_unadjusted"]], atol=0.01)


def test_r2_poisson_fitted_null_model(emmeans_reference, emmeans_fits):
    """A log link: the null model (same random terms, intercept alone) is fitted for the
    lognormal approximation; performance's distribution variance 0.2650 (mu = 3.3)."""
    ref = emmeans_reference["poisson"]
    parts = variance_decomposition(emmeans_fits("poisson"))
    assert parts["var_distribution"] == pytest.approx(ref["var_distribution"], abs=0.005)
    np.testing.assert_allclose(r2(emmeans_fits("poisson")), [ref["r2_conditional"], ref["r2_marginal"]], atol=0.01)


def test_r2_icc_ordinal_fitted(emmeans_reference, emmeans_fits):
    """clmm's wine model: performance's R² and ICC within 0.02 (72 rows; the fit's Monte Carlo
    and Laplace-versus-importance-sampling differences in the judge sd, 1.13, are ~2 %)."""
    ref = emmeans_reference["wine"]
    fit = emmeans_fits("wine")
    np.testing.assert_allclose(r2(fit), [ref["r2_conditional"], ref["r2_marginal"]], atol=0.02)
    np.testing.assert_allclose(icc(fit), [ref["icc_adjusted"], ref["icc_unadjusted"]], atol=0.02)


def test_covariate_through_a_transform_needs_data():
    """emmeans takes the covariate's mean, then transforms it: log(mean(x)), not the mean
    of log(x); a mean that the design cannot give is asked for by name."""
    frame = pd.DataFrame({"f": ["a", "b"] * 3, "x": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]})
    design, X = build_fixed_design("f + np.log(x)", frame)
    fit = SimpleNamespace(fixed_design_=design, family_=get_family("gaussian"),
                          fixed_effects_=pd.Series([1.0, 2.0, 0.5], index=design.column_names),
                          fixed_effects_cov_=pd.DataFrame(np.eye(3)), model_=SimpleNamespace(fixed_design=X))
    with pytest.raises(ParameterError, match="'x'.*data="):
        emmeans(fit, "f", df=5.0)
    table = emmeans(fit, "f", df=5.0, data=frame).table
    np.testing.assert_allclose(table["emmean"], [1.0 + 0.5 * np.log(10.5), 3.0 + 0.5 * np.log(10.5)])
    at = emmeans(fit, "f", df=5.0, at={"x": 10.5}).table
    np.testing.assert_allclose(at["emmean"], table["emmean"])
