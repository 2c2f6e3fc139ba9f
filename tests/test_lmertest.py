"""Denominator degrees of freedom and type III tables against lmerTest and pbkrtest.

The fixtures are written by tests/fixtures/make_lmertest_fixtures.R.  The df code is
deterministic given the variance parameters, so each case is first evaluated AT lme4's
estimates (theta, sigma, beta from the fixture), isolating it from the Monte Carlo error
of the fit: there the issue's tolerances hold (Satterthwaite df 0.5 %, Kenward-Roger 1 %,
p-values 2 %).  At mixedfx's own fitted values the df move with the fitted variance
parameters, which the lme4-fidelity tests hold within 2 % of lme4's (sds and standard
errors): a df is a ratio of squared variances, so 4 % on df and 2 % on t there; p-values
of t near 7 or 37 move by far more than 2 % under a 1 % change of t, so they are checked
at lme4's values only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedfx
from mixedfx.inference import FixedIterations
from mixedfx.lmertest import anova_type3, contrast_df, fixed_effects_table, type3_hypotheses
from mixedfx.model import ModelParameters
from mixedfx.model.ddf import satterthwaite_pieces

from conftest import FIXTURES, subprocess_env

FORMULAS = {
    "sleepstudy": "Reaction ~ Days + (Days | Subject)",
    "crossed_small": "y ~ x + (1 | g1) + (1 | g2)",
    "cake": "angle ~ recipe * temp + (1 | batch)",
    "cake_heat": "angle ~ recipe * heat + (1 | batch)",
    # sum-to-zero coding (the same in R): other coefficients and hypotheses, the same type III table
    "cake_sum": "angle ~ C(recipe, contr.sum) * C(heat, contr.sum) + (1 | batch)",
}
DATA = {"sleepstudy": "sleepstudy.csv", "crossed_small": "crossed_small.csv", "cake": "cake.csv",
        "cake_heat": "cake.csv", "cake_sum": "cake.csv"}
CASES = [(name, method) for name in FORMULAS for method in ("reml", "ml")]


def load(name: str, method: str) -> dict:
    with open(FIXTURES / f"lmertest_{name}_{method}.json") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def bound_models():
    """Each case's bound MixedModel and fixed design (two MCEM iterations: only the design is used)."""
    out = {}
    for name, formula in FORMULAS.items():
        data = pd.read_csv(FIXTURES / DATA[name])
        fit = mixedfx.MixedEffectsRegressor(formula, random_state=0, verbose=0,
                                            stopping_rule=FixedIterations(n_iter=2, n_average=1)).fit(data)
        out[name] = fit
    return out


def at_lme4(fit, fixture: dict):
    """A stand-in for a fitted estimator holding lme4's estimates on ``fit``'s design."""
    sigma = fixture["sigma"]
    theta = {t["grp"]: np.ravel(np.asarray(t["theta"], dtype=np.float64)) for t in fixture["theta"]}
    scale_trils = []
    for term in fit.model_.random_terms:
        rows, cols = np.tril_indices(term.dim)
        order = np.lexsort((rows, cols))  # lme4's theta is column-wise
        T = np.zeros((term.dim, term.dim))
        T[rows[order], cols[order]] = theta[term.name]
        scale_trils.append(sigma * T)
    assert len(fixture["fixed_names"]) == len(fit.fixed_design_.column_names)
    params = ModelParameters(np.asarray(fixture["fixed_effects"]), tuple(scale_trils), {"sigma": sigma})
    return SimpleNamespace(model_=fit.model_, model_parameters_=params, fixed_design_=fit.fixed_design_,
                           fixed_effects_cov_=np.asarray(fixture["fixed_effects_cov"]),
                           method=fixture["method"].lower())


def reference(fixture: dict, key: str) -> pd.DataFrame:
    return pd.DataFrame(fixture[key]).set_index("name")


@pytest.mark.parametrize("name,method", CASES)
def test_satterthwaite_at_lme4_estimates(bound_models, name, method):
    fixture = load(name, method)
    model = at_lme4(bound_models[name], fixture)
    table = fixed_effects_table(model)
    ref = reference(fixture, "coef_satterthwaite")
    np.testing.assert_allclose(table["df"], ref["df"], rtol=0.005)
    np.testing.assert_allclose(table["t value"], ref["t value"], rtol=1e-5)
    np.testing.assert_allclose(table["Pr(>|t|)"], ref["Pr(>|t|)"], rtol=0.02)
    anova = anova_type3(model)
    ref = reference(fixture, "anova3_satterthwaite")
    assert list(anova.index) == list(ref.index)
    np.testing.assert_allclose(anova["DenDF"], ref["DenDF"], rtol=0.005)
    np.testing.assert_array_equal(anova["NumDF"], ref["NumDF"])
    for column in ("Sum Sq", "Mean Sq", "F value"):
        np.testing.assert_allclose(anova[column], ref[column], rtol=1e-5, err_msg=column)
    np.testing.assert_allclose(anova["Pr(>F)"], ref["Pr(>F)"], rtol=0.02)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_kenward_roger_at_lme4_estimates(bound_models, name):
    fixture = load(name, "reml")
    model = at_lme4(bound_models[name], fixture)
    table = fixed_effects_table(model, ddf="kenward-roger")
    ref = reference(fixture, "coef_kenward_roger")
    np.testing.assert_allclose(table["df"], ref["df"], rtol=0.01)
    np.testing.assert_allclose(table["Std. Error"], ref["Std. Error"], rtol=1e-5)
    np.testing.assert_allclose(table["Pr(>|t|)"], ref["Pr(>|t|)"], rtol=0.02)
    anova = anova_type3(model, ddf="kenward-roger")
    ref = reference(fixture, "anova3_kenward_roger")
    np.testing.assert_allclose(anova["DenDF"], ref["DenDF"], rtol=0.01)
    np.testing.assert_allclose(anova["F value"], ref["F value"], rtol=1e-5)
    np.testing.assert_allclose(anova["Sum Sq"], ref["Sum Sq"], rtol=1e-5)
    np.testing.assert_allclose(anova["Pr(>F)"], ref["Pr(>F)"], rtol=0.02)


@pytest.mark.parametrize("name", ["sleepstudy", "cake_heat"])
def test_autodiff_varpar_covariance_matches_lmertest_numderiv(bound_models, name):
    """The Hessian by autodiff against lmerTest's numDeriv one (one random term: the same varpar order)."""
    fixture = load(name, "reml")
    model = at_lme4(bound_models[name], fixture)
    pieces = satterthwaite_pieces(model.model_, model.model_parameters_, reml=True)
    np.testing.assert_allclose(pieces.varpar_cov, np.asarray(fixture["vcov_varpar"]), rtol=1e-4)
    np.testing.assert_allclose(pieces.fixed_cov, np.asarray(fixture["fixed_effects_cov"]), rtol=1e-6)


@pytest.mark.parametrize("name", ["cake", "cake_heat", "cake_sum"])
def test_type3_hypotheses_are_lmertests(bound_models, name):
    fixture = load(name, "reml")
    hypotheses = type3_hypotheses(bound_models[name].fixed_design_)
    expected = {h["term"]: np.asarray(h["L"], dtype=np.float64) for h in fixture["anova3_hypotheses"]}
    assert list(hypotheses) == list(expected)
    for term, L in expected.items():
        np.testing.assert_allclose(hypotheses[term], L, atol=1e-6, err_msg=term)


def test_residual_and_asymptotic_df(bound_models):
    fixture = load("sleepstudy", "reml")
    model = at_lme4(bound_models["sleepstudy"], fixture)
    ref = reference(fixture, "coef_satterthwaite")
    residual = fixed_effects_table(model, ddf="residual")
    np.testing.assert_array_equal(residual["df"], [180 - 2, 180 - 2])
    np.testing.assert_allclose(residual["Pr(>|t|)"], 2 * stats.t.sf(np.abs(ref["t value"]), 178), rtol=1e-4)
    asymptotic = fixed_effects_table(model, ddf="asymptotic")
    assert list(asymptotic.columns) == ["Estimate", "Std. Error", "df", "z value", "Pr(>|z|)"]
    assert np.isinf(asymptotic["df"]).all()
    np.testing.assert_allclose(asymptotic["Pr(>|z|)"], 2 * stats.norm.sf(np.abs(ref["t value"])), rtol=1e-4)


def test_contrast_df_of_a_marginal_mean(bound_models):
    """A combination of coefficients: its Satterthwaite df between the two coefficients' (lmerTest: 17.0)."""
    fixture = load("sleepstudy", "reml")
    model = at_lme4(bound_models["sleepstudy"], fixture)
    day5 = contrast_df(model, pd.DataFrame({"Days": [5.0], "Intercept": [1.0]}, index=["day 5"]))
    beta = np.asarray(fixture["fixed_effects"])
    assert day5.loc["day 5", "Estimate"] == pytest.approx(beta[0] + 5 * beta[1], rel=1e-12)
    assert day5.loc["day 5", "df"] == pytest.approx(17.0, rel=0.005)
    with pytest.raises(ValueError, match="3 columns; the model has 2 fixed effects"):
        contrast_df(model, [[1.0, 0.0, 1.0]])


def test_fitted_sleepstudy_reml(sleepstudy_reml_fit):
    fixture = load("sleepstudy", "reml")
    for ddf, key in (("satterthwaite", "coef_satterthwaite"), ("kenward-roger", "coef_kenward_roger")):
        table, ref = fixed_effects_table(sleepstudy_reml_fit, ddf=ddf), reference(fixture, key)
        np.testing.assert_allclose(table["df"], ref["df"], rtol=0.04, err_msg=ddf)
        np.testing.assert_allclose(table["t value"], ref["t value"], rtol=0.02, err_msg=ddf)


def test_fitted_crossed_ml(crossed_small_fit):
    fixture = load("crossed_small", "ml")
    table, ref = fixed_effects_table(crossed_small_fit), reference(fixture, "coef_satterthwaite")
    np.testing.assert_allclose(table["df"], ref["df"], rtol=0.04)
    np.testing.assert_allclose(table["t value"], ref["t value"], rtol=0.02)


def test_fitted_cake_anova(cake_heat_reml_fit):
    fixture = load("cake_heat", "reml")
    for ddf, key in (("satterthwaite", "anova3_satterthwaite"), ("kenward-roger", "anova3_kenward_roger")):
        anova, ref = anova_type3(cake_heat_reml_fit, ddf=ddf), reference(fixture, key)
        np.testing.assert_allclose(anova["DenDF"], ref["DenDF"], rtol=0.04, err_msg=ddf)
        np.testing.assert_allclose(anova["F value"], ref["F value"], rtol=0.04, err_msg=ddf)


def test_kenward_roger_refuses_an_ml_fit(crossed_small_fit):
    with pytest.raises(ValueError, match="Kenward-Roger degrees of freedom need a REML fit"):
        fixed_effects_table(crossed_small_fit, ddf="kenward-roger")


def test_unknown_ddf_is_named(crossed_small_fit):
    with pytest.raises(ValueError, match="ddf must be one of .*'satterthwaite'.*got 'lme4'"):
        fixed_effects_table(crossed_small_fit, ddf="lme4")


def test_glmm_keeps_wald_z():
    data = mixedfx.datasets.make_mixed_data(300, groups={"g": 15}, fixed_effects={"Intercept": 0.2, "x": 0.8},
                                            random_sd={"g": 0.7}, family="bernoulli", random_state=3)
    fit = mixedfx.glmer("y ~ x + (1 | g)", data, family="bernoulli", random_state=0, verbose=0,
                        stopping_rule=FixedIterations(n_iter=20, n_average=10))
    table = fixed_effects_table(fit)
    assert "Wald z" in table.attrs["note"] and table.attrs["ddf"] == "asymptotic"
    assert np.isinf(table["df"]).all()
    se = np.sqrt(np.diag(np.asarray(fit.fixed_effects_cov_)))
    np.testing.assert_allclose(table["z value"], np.asarray(fit.fixed_effects_) / se, rtol=1e-12)
    anova = anova_type3(fit)
    assert np.isinf(anova.loc["x", "DenDF"])
    assert anova.loc["x", "F value"] == pytest.approx(table.loc["x", "z value"] ** 2, rel=1e-10)


def test_the_df_computation_prints_nothing_to_the_terminal():
    """In a fresh process, a fit and its Satterthwaite table write nothing to stderr: the
    Jacobians' vectorized graphs made TensorFlow 2.21 log a oneDNN error line there."""
    script = (
        "import mixedfx\n"
        "from mixedfx.lmertest import fixed_effects_table\n"
        "data = mixedfx.datasets.make_mixed_data(120, groups={'g': 8}, fixed_effects={'Intercept': 1.0, 'x': 0.5},\n"
        "                                        random_sd={'g': 0.8}, random_state=0)\n"
        "fit = mixedfx.MixedEffectsRegressor('y ~ x + (1 | g)', method='reml', random_state=0, verbose=0,\n"
        "                                    stopping_rule=mixedfx.inference.FixedIterations(n_iter=10, n_average=5))\n"
        "print(fixed_effects_table(fit.fit(data))['df'].round(1).tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", done.stderr
    assert done.stdout.startswith("[")


def _structure_pair(structure: str, rng):
    """One model with a structured term of dimension 3 on ``g`` and the same model in
    lme4's spelling (scalar terms), at covariance values that are one and the same
    ``Sigma``: ``homdiag(0 + f | g)`` is ``(1 | g:f)``, ``homcs(0 + f | g)`` is
    ``(1 | g) + (1 | g:f)`` (``Sigma = a I + b 11'``), ``diag(1 + x + w | g)`` is
    ``(1 + x + w || g)``."""
    from mixedfx.design import RandomTermData
    from mixedfx.model import Gaussian, MixedModel

    n_groups, rows = 8, 12
    g = np.repeat(np.arange(n_groups), rows).astype(np.int32)
    f = np.tile(np.repeat(np.arange(3), rows // 3), n_groups)
    x, w = rng.normal(size=g.size), rng.normal(size=g.size)
    X = np.column_stack([np.ones(g.size), f == 1, f == 2, x])
    sigma, a, b = 0.7, 0.4, 0.9  # a: the within-group part, b: the shared part
    if structure == "diag":
        z, sds = np.column_stack([np.ones(g.size), x, w]), np.array([0.8, 0.3, 0.5])
        structured_L = np.diag(sds)
        plain = [(g, z[:, [j]], n_groups, np.array([[s]])) for j, s in enumerate(sds)]
    else:
        z = np.eye(3)[f]
        cov = a * np.eye(3) + (b * np.ones((3, 3)) if structure == "homcs" else 0.0)
        structured_L = np.linalg.cholesky(cov)
        cell = (g * 3 + f).astype(np.int32)
        plain = [(cell, None, 3 * n_groups, np.array([[np.sqrt(a)]]))]
        if structure == "homcs":
            plain.insert(0, (g, None, n_groups, np.array([[np.sqrt(b)]])))
    names = ("Intercept", "f1", "f2", "x")
    y = rng.normal(size=g.size)
    structured = MixedModel(Gaussian(), X, y, (RandomTermData("g", g, z, n_groups, ("c0", "c1", "c2"),
                                                              covariance=structure),), names)
    lme4 = MixedModel(Gaussian(), X, y, tuple(RandomTermData(f"t{k}", index, zk, q)
                                              for k, (index, zk, q, _) in enumerate(plain)), names)
    beta = np.zeros(4)
    return ((structured, ModelParameters(beta, (structured_L,), {"sigma": sigma})),
            (lme4, ModelParameters(beta, tuple(L for *_, L in plain), {"sigma": sigma})))


@pytest.mark.parametrize("structure", ["homdiag", "homcs", "diag"])
def test_kenward_roger_of_a_linear_structure_is_its_lme4_spellings(structure):
    """Kenward-Roger works in the linear parametrization ``Sigma = sum gamma_i G_i``; a
    structure linear in its variances (``diag``, ``homdiag``, ``homcs``) has one
    (:meth:`~mixedfx.model.covariance.CovarianceStructure.linear_basis`), and its adjusted
    covariance and df must be those of the same model in lme4's spelling (pbkrtest's
    parametrization, checked against pbkrtest above)."""
    from mixedfx.lmertest import _kenward_roger_df
    from mixedfx.model.ddf import kenward_roger_pieces

    (structured, at), (lme4, same) = _structure_pair(structure, np.random.default_rng(3))
    got, expected = kenward_roger_pieces(structured, at), kenward_roger_pieces(lme4, same)
    np.testing.assert_allclose(got.fixed_cov, expected.fixed_cov, rtol=1e-10)
    np.testing.assert_allclose(got.adjusted_cov, expected.adjusted_cov, rtol=1e-8)
    assert not np.allclose(got.adjusted_cov, got.fixed_cov, rtol=1e-3)  # the adjustment is there to compare
    for L in (np.eye(4)[[1]], np.eye(4)[[3]], np.eye(4)[[1, 2]]):
        np.testing.assert_allclose(_kenward_roger_df(L, got), _kenward_roger_df(L, expected), rtol=1e-8)


def test_kenward_roger_refuses_a_nonlinear_structure_naming_it():
    from mixedfx.design import RandomTermData
    from mixedfx.model import Gaussian, MixedModel
    from mixedfx.model.ddf import kenward_roger_pieces

    g = np.repeat(np.arange(4), 3).astype(np.int32)
    term = RandomTermData("g", g, np.tile(np.eye(3), (4, 1)), 4, ("t1", "t2", "t3"), covariance="ar1")
    model = MixedModel(Gaussian(), np.ones((12, 1)), np.zeros(12), (term,), ("Intercept",))
    with pytest.raises(mixedfx.ParameterError, match=r"nonlinear in their parameters \(ar1; us, diag, homdiag"):
        kenward_roger_pieces(model, ModelParameters(np.zeros(1), (np.eye(3),), {"sigma": 1.0}))
