"""re_form, update, drop1 and the Laplace log-likelihood (issue #18), against lme4.

The numbers come from tests/fixtures/make_reform_fixtures.R (lme4 1.1-31), written to
tests/fixtures/reform_fixtures.json.
"""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

import mixedfx
from mixedfx.drop_terms import droppable_terms
from mixedfx.formula.update import select_random_terms, update_formula
from mixedfx.model import ModelParameters, marginal_log_likelihood

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "reform_fixtures.json").read_text())

# Gaussian predictions: mixedfx's ML estimates match lme4's to ~1e-4 in the fixed effects
# and ~0.3% in the sds, which moves the conditional means by < 0.001 (measured 0.00096);
# the re_form variants differ from one another by up to ~2, so 0.005 separates them.
PREDICT_TOL = 0.005


# -- formulas -------------------------------------------------------------------------------
@pytest.mark.parametrize("old, new, expected", [
    ("y ~ x + z + (1 | g)", "~ . - z", "y ~ x + (1 | g)"),
    ("y ~ x + (1 | g)", ". ~ . + (1|h)", "y ~ x + (1 | g) + (1 | h)"),
    ("y ~ x + (1 | g) + (1 | h)", "~ . - (1|h)", "y ~ x + (1 | g)"),
    ("y ~ x + (1 | g)", "log(y) ~ .", "log(y) ~ x + (1 | g)"),
    ("y ~ x * z + (1 | g)", "~ . - x:z", "y ~ x * z - x:z + (1 | g)"),
    ("y ~ x + (1 | g)", "~ z + (1 | g)", "y ~ z + (1 | g)"),
])
def test_update_formula_follows_r_dot(old, new, expected):
    assert update_formula(old, new) == expected


def test_update_formula_interaction_removal_leaves_main_effects():
    from mixedfx.design.fixed import evaluate_formula
    spec = mixedfx.parse_formula(update_formula("y ~ x * z + (1 | g)", "~ . - x:z"))
    frame = pd.DataFrame({"x": [0.0, 1, 2, 3], "z": [1.0, 0, 1, 0]})
    assert list(evaluate_formula(spec.fixed, frame)[1].column_names) == ["Intercept", "x", "z"]


def test_update_formula_unknown_random_term_is_named():
    with pytest.raises(mixedfx.FormulaError, match=r"\(1 \| h\)"):
        update_formula("y ~ x + (1 | g)", "~ . - (1 | h)")


def test_select_random_terms_matches_by_spec_not_text():
    spec = mixedfx.parse_formula("y ~ x + (1 | g1) + (Days | g2)")
    assert select_random_terms(spec, "~ ( 1|g1 )") == (True, False)
    assert select_random_terms(spec, "~ (1 + Days | g2)") == (False, True)
    assert select_random_terms(spec, np.nan) == select_random_terms(spec, "NA") == (False, False)
    same_factor = mixedfx.parse_formula("y ~ x + (1 | g) + (0 + x | g)")
    assert select_random_terms(same_factor, "~ (0+x|g)") == (False, True)


def test_re_form_unknown_term_is_a_formula_error(crossed_small_fit, crossed_small):
    with pytest.raises(mixedfx.FormulaError, match=r"\(1 \| g3\)"):
        crossed_small_fit.predict(crossed_small.head(3), re_form="~ (1 | g3)")
    with pytest.raises(mixedfx.FormulaError, match="re_form"):
        crossed_small_fit.predict(crossed_small.head(3), re_form=3)
    with pytest.raises(mixedfx.ParameterError, match="include_random"):
        crossed_small_fit.predict(crossed_small.head(3), re_form="~0", include_random=False)


# -- re_form ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key, re_form", [("re_na", "~0"), ("re_na", "NA"), ("re_g1", "~ (1 | g1)"),
                                          ("re_g2", "~(1|g2)"), ("re_null", None)])
def test_predict_re_form_matches_lme4(crossed_small_fit, crossed_small, key, re_form):
    reference = REFERENCE["crossed"]
    rows = crossed_small.head(reference["rows"])
    predicted = crossed_small_fit.predict(rows, re_form=re_form)
    np.testing.assert_allclose(predicted, reference[key], atol=PREDICT_TOL)


def test_re_form_variants_differ_by_more_than_the_tolerance():
    reference = REFERENCE["crossed"]
    keys = ["re_na", "re_g1", "re_g2", "re_null"]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert np.abs(np.subtract(reference[a], reference[b])).max() > 100 * PREDICT_TOL


def test_include_random_false_is_re_form_na(crossed_small_fit, crossed_small):
    rows = crossed_small.head(20)
    np.testing.assert_array_equal(crossed_small_fit.predict(rows, include_random=False),
                                  crossed_small_fit.predict(rows, re_form="~0"))


def test_predict_interval_re_form_drops_the_terms_variance(crossed_small_fit, crossed_small):
    rows = crossed_small.head(20)
    fixed = crossed_small_fit.predict_interval(rows, kind="mean", re_form="~0")
    one = crossed_small_fit.predict_interval(rows, kind="mean", re_form="~(1|g1)")
    both = crossed_small_fit.predict_interval(rows, kind="mean")
    width = [table["upper"] - table["lower"] for table in (fixed, one, both)]
    assert (width[0] < width[1]).all() and (width[1] < width[2]).all()
    np.testing.assert_allclose(one["fit"], REFERENCE["crossed"]["re_g1"][:20], atol=PREDICT_TOL)
    sd_fixed = (width[0] / 2 / 1.959964).to_numpy()
    X = crossed_small_fit.fixed_design_.transform(rows)
    cov = crossed_small_fit.fixed_effects_cov_.to_numpy()
    np.testing.assert_allclose(sd_fixed, np.sqrt(np.einsum("np,pq,nq->n", X, cov, X)), rtol=1e-6)


def test_simulate_re_form_holds_conditional_means(crossed_small_fit, crossed_small):
    assert REFERENCE["simulate_default_re_form"] == "NA"  # lme4's simulate draws every term anew by default
    rows = crossed_small.head(30)
    sigma = REFERENCE["crossed"]["sd"]["sigma"]
    held = crossed_small_fit.simulate(400, X=rows, re_form=None, random_state=0).to_numpy()
    centre = np.asarray(REFERENCE["crossed"]["re_null"])
    # mean of 400 draws: sd sigma / 20 ~ 0.05 per row; 0.25 is 5 sds
    assert np.abs(held.mean(axis=1) - centre).max() < 5 * sigma / 20
    new = crossed_small_fit.simulate(400, X=rows, random_state=0).to_numpy()
    assert np.abs(new.mean(axis=1) - centre).max() > 1.0  # the default draws g1 and g2 anew


# -- update -----------------------------------------------------------------------------------
def test_update_refits_with_the_changed_formula_keeping_parameters(crossed_small_fit):
    smaller = crossed_small_fit.update("~ . - (1 | g2)")
    assert smaller.formula == "y ~ x + (1 | g1)"
    assert smaller.get_params()["random_state"] == 0 and smaller.method_ == "ml"
    assert list(smaller.variance_components_["group"]) == ["g1", "Residual"]
    assert crossed_small_fit.formula == "y ~ x + (1 | g1) + (1 | g2)"  # the original is unchanged
    assert smaller.log_likelihood_ < crossed_small_fit.log_likelihood_ - 50


def test_update_on_unfitted_model_raises():
    with pytest.raises(NotFittedError):
        mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)").update("~ . - x")


def test_training_data_survives_pickle(crossed_small_fit):
    import pickle
    copy = pickle.loads(pickle.dumps(crossed_small_fit))
    pd.testing.assert_frame_equal(copy.training_data_, crossed_small_fit.training_data_)


# -- drop1 ------------------------------------------------------------------------------------
def _assert_drop1_matches(table, reference, *, tol):
    assert list(table.index) == reference["term"]
    np.testing.assert_array_equal(table["Df"].to_numpy()[1:], reference["Df"][1:])
    np.testing.assert_allclose(table["AIC"], reference["AIC"], atol=tol)
    np.testing.assert_allclose(table["LRT"].to_numpy()[1:], reference["LRT"][1:], atol=tol)
    np.testing.assert_allclose(table["Pr(Chi)"].to_numpy()[1:], reference["p"][1:], atol=0.01, rtol=0.01)


def test_drop1_lmer_matches_lme4(cake):
    # lme4 refits; mixedfx's ML log-likelihoods are within ~0.01 of lme4's here (measured
    # 0.013 in LRT), while the LRTs are 0.39 and 49.4.
    reference = REFERENCE["drop1_lmer"]
    model = mixedfx.lmer(reference["formula"], cake, random_state=0, verbose=0)
    _assert_drop1_matches(mixedfx.drop1(model), reference, tol=0.05)
    assert list(mixedfx.drop1(model, test="none").columns) == ["Df", "AIC"]


def test_drop1_glmer_matches_lme4():
    reference = REFERENCE["drop1_glmer"]
    cbpp = pd.read_csv(FIXTURES / "cbpp.csv", dtype={"herd": str, "period": str})
    model = mixedfx.glmer(reference["formula"], cbpp, family="binomial", random_state=0, verbose=0)
    _assert_drop1_matches(mixedfx.drop1(model), reference, tol=0.05)


def test_drop1_respects_marginality(cake_heat_reml_fit):
    assert REFERENCE["drop1_lmer_interaction"]["term"] == ["<none>", "recipe:temp"]
    assert droppable_terms(cake_heat_reml_fit) == ["recipe:heat"]


def test_drop1_rejects_unknown_test(crossed_small_fit):
    with pytest.raises(mixedfx.ParameterError, match="test"):
        mixedfx.drop1(crossed_small_fit, test="F")


# -- Laplace log-likelihood -------------------------------------------------------------------
@pytest.fixture(scope="module")
def verbagg_fit():
    data = pd.read_csv(FIXTURES / "reform_verbagg.csv", dtype={"id": str})
    return mixedfx.glmer(REFERENCE["verbagg"]["formula"], data, random_state=0, verbose=0)


def test_laplace_at_lme4_estimates_is_glmers_loglik(verbagg_fit):
    reference = REFERENCE["verbagg"]
    params = ModelParameters(np.array(list(reference["fixef"].values())),
                             tuple(np.array([[reference["sd"][g]]]) for g in ("id", "item")), {})
    laplace = marginal_log_likelihood(verbagg_fit.model_, params).laplace
    assert laplace == pytest.approx(reference["logLik"], abs=1e-3)  # measured 6e-5


def test_log_likelihood_laplace_matches_glmer(verbagg_fit):
    # At mixedfx's own estimates (sd(id) 0.8% from lme4's): glmer's logLik moves by 0.12
    # when sd(id) moves 5% (fixture logLik_sd_id_plus5), quadratically, so ~0.005 here
    # (measured 0.004); 0.05 is the bound and well below the importance-sampled
    # value's distance from it (measured 1.1).
    reference = REFERENCE["verbagg"]
    assert verbagg_fit.log_likelihood_laplace_ == pytest.approx(reference["logLik"], abs=0.05)
    assert abs(verbagg_fit.log_likelihood_ - verbagg_fit.log_likelihood_laplace_) > 0.3
    out = io.StringIO()
    verbagg_fit.summary(file=out)
    assert "AIC, BIC and logLik use the log-likelihood by importance sampling" in out.getvalue()
    assert f"Laplace approximation (glmer's): {verbagg_fit.log_likelihood_laplace_:.1f}" in out.getvalue()


def test_gaussian_laplace_is_the_exact_log_likelihood(crossed_small_fit):
    assert crossed_small_fit.log_likelihood_laplace_ == crossed_small_fit.log_likelihood_
