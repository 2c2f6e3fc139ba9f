"""glmmTMB's ``dispformula`` for the Gaussian and t families (log sigma = X_disp @ disp; t's
df stays the family's) and together with ``ziformula`` (nbinom2): the density against the
JointDistribution and the base family, fits against glmmTMB and the simulated truth, and
the refusals (REML, an exact fit, r2).

The reference fits and their simulated data come from
tests/fixtures/make_dispformula2_fixtures.R (true values in the script and in ``truth``;
glmmTMB 1.1.5's Gaussian coefficients, log sigma^2, are halved there to log sigma).
"""

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

import mixedfx
from mixedfx import DataError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData, bind_data
from mixedfx.formula import parse_formula
from mixedfx.model import (RESPONSE, Gaussian, MixedModel, ModelParameters, NegativeBinomial, StudentT, bind_model,
                           build_joint_distribution, get_family, joint_log_prob, marginal_log_likelihood)

with open(FIXTURES / "glmmtmb_dispformula2.json") as _handle:
    REFERENCE = json.load(_handle)

#: The fitted cases: (family, ziformula).
FITTED = {"gaussian": ("gaussian", "~0"), "t": ("t", "~0"), "zi_nbinom2": ("nbinom2", "~1")}


def load(case: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / REFERENCE[case]["data"])


@pytest.fixture(scope="module")
def fits():
    cache = {}

    def get(case):
        if case not in cache:
            family, zi = FITTED[case]
            cache[case] = mixedfx.glmer("y ~ x + (1 | g)", load(case), family=family, ziformula=zi,
                                        dispformula=REFERENCE[case]["dispformula"], tol=0.05, random_state=0,
                                        verbose=0)
        return cache[case]

    return get


# -- the density --------------------------------------------------------------------------------
def _family(case):
    """``(family, its parameters, the base family's parameters but the driven one, the
    zero-inflation design's columns)``."""
    if case == "gaussian":
        return Gaussian(), {"disp": np.array([-0.3, 0.5])}, {}, 0
    if case == "t":
        return StudentT(), {"df": np.float64(4.0), "disp": np.array([-0.2, 0.4])}, {"df": np.float64(4.0)}, 0
    zi = NegativeBinomial().zero_inflated(("Intercept",))
    return zi, {"zi": np.array([-1.0]), "disp": np.array([0.5, 0.8])}, {"zi": np.array([-1.0])}, 1


@pytest.mark.parametrize("case", ["gaussian", "t", "zi_nbinom2"])
def test_fit_objective_is_the_joint_distributions_log_prob(case):
    """The fit's objective equals the JointDistribution's log_prob to 1e-10 relative (an
    offset, two factors), and each row's density is the base family's at that row's sigma
    (size) ``exp(X_disp @ disp)``, zero inflation's design travelling with the dispersion's."""
    rng = np.random.default_rng(17)
    base, params, others, n_zi = _family(case)
    family = base.with_dispersion_model(("Intercept", "z"))
    n, levels = 90, (7, 4)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    designs = {"disp": np.column_stack([np.ones(n), rng.normal(size=n)])}
    if n_zi:
        designs["zi"] = np.ones((n, 1))
    terms = tuple(RandomTermData(f"g{k}", rng.integers(0, q, n).astype(np.int32), None, q)
                  for k, q in enumerate(levels))
    offset, beta, sds = 0.3 * rng.normal(size=n), np.array([0.8, 0.4]), np.array([0.5, 0.3])
    tril = [np.array([[s]]) for s in sds]
    placeholder = MixedModel(family, X, np.full(n, 1.0), terms, ("Intercept", "x"), offset=offset,
                             family_design=designs)
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta, random_scale_tril=tril,
                                     family=family, family_params=params)
    draw = joint.sample(seed=(5, 7))
    model = MixedModel(family, X, draw[RESPONSE].numpy(), terms, ("Intercept", "x"), offset=offset,
                       family_design=designs)
    effects = [draw[f"g{k}"].numpy() for k in range(len(levels))]
    objective = joint_log_prob(model.tensors(), effects, fixed_effects=beta, random_scale_tril=tril, family=family,
                               family_params=params)
    record = joint.log_prob({**{f"g{k}": b for k, b in enumerate(effects)}, RESPONSE: model.response})
    assert float(objective) == pytest.approx(float(record), rel=1e-10)
    eta = X @ beta + offset + sum(b[t.group_index, 0] for b, t in zip(effects, terms))
    driven = np.exp(designs["disp"] @ params["disp"])
    expected = [float(base.log_prob(tf.constant([e]), {**others, base.dispersion_parameter: np.float64(d)},
                                    tf.constant([y]), trials=tf.ones((1, 1), tf.float64) if n_zi else None)[0])
                for e, d, y in zip(eta, driven, model.response)]
    got = family.log_prob(tf.constant(eta), params, tf.constant(model.response),
                          trials=tf.constant(model.family_rows)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    if case == "zi_nbinom2":
        assert np.mean(model.response == 0) > 0.3  # the zero inflation is there


def test_gaussian_weights_are_precisions():
    """Prior weights stay the Gaussian's precisions (row sd ``sigma_i / sqrt(w_i)``): the
    marginal likelihood with every weight 4 at a disp intercept raised by log 2 is the
    unweighted one (to 1e-9), and the rows' weighted densities are normal ones."""
    data = load("gaussian")
    family = Gaussian().with_dispersion_model(("Intercept", "z"))
    X = np.column_stack([np.ones(len(data)), data["x"]])
    terms = (RandomTermData("g", data["g"].to_numpy(np.int32) - 1, None, 20),)
    design = np.column_stack([np.ones(len(data)), data["z"]])
    fixture = REFERENCE["gaussian"]
    disp = np.array(list(fixture["disp_effects"].values()))
    beta, sd = np.array(list(fixture["fixed_effects"].values())), np.array([fixture["sds"]["g"]])
    y = data["y"].to_numpy(np.float64)

    def loglik(weights, shift):
        model = MixedModel(family, X, y, terms, ("Intercept", "x"), weights=weights, family_design={"disp": design})
        params = ModelParameters(beta, sd, {"disp": disp + np.array([shift, 0.0])})
        return marginal_log_likelihood(model, params, n_draws=0).laplace

    assert loglik(np.full(len(y), 4.0), np.log(2.0)) == pytest.approx(loglik(None, 0.0), abs=1e-9)
    weights = np.linspace(0.5, 2.0, len(y))
    got = family.weighted_log_prob(tf.constant(X @ beta), {"disp": disp}, tf.constant(y), trials=tf.constant(design),
                                   weights=tf.constant(weights)).numpy()
    sigma = np.exp(design @ disp) / np.sqrt(weights)
    expected = -0.5 * ((y - X @ beta) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_loglik_at_glmmtmbs_estimates(case):
    """Our Laplace log-likelihood at glmmTMB's estimates is glmmTMB's logLik (to 1e-3): the
    same density, dispersion scale (log sigma) and design columns, the factor case too."""
    fixture, data = REFERENCE[case], load(case)
    family, zi = FITTED.get(case, ("gaussian", "~0"))
    bound = bind_model(get_family(family), bind_data(parse_formula("y ~ x + (1 | g)"), data, ziformula=zi,
                                                     dispformula=fixture["dispformula"]))
    r_names = [name.replace("(Intercept)", "Intercept") for name in fixture["disp_effects"]]
    assert [name.replace("[T.", "").rstrip("]") for name in bound.family.disp_names] == r_names
    family_params = {"disp": np.array(list(fixture["disp_effects"].values()))}
    if "zi_effects" in fixture:
        family_params["zi"] = np.array(list(fixture["zi_effects"].values()))
    if "df" in fixture:
        family_params["df"] = np.float64(fixture["df"])
    params = ModelParameters(np.array(list(fixture["fixed_effects"].values())), np.array([fixture["sds"]["g"]]),
                             family_params)
    assert marginal_log_likelihood(bound, params, n_draws=0).laplace == pytest.approx(fixture["logLik"], abs=1e-3)


# -- the fits -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FITTED))
def test_matches_glmmtmb(fits, case):
    """Fixed, dispersion and zero-inflation coefficients within 0.1 glmmTMB SE, their SEs
    within 5 %, sd(g) within 5 %, t's df within 5 %; our Laplace logLik close below
    glmmTMB's (its maximum)."""
    model, fixture = fits(case), REFERENCE[case]
    assert model.fit_summary_.converged
    tables = [(model.fixed_effects_table(), fixture["fixed_effects"], fixture["fixed_effects_se"], ""),
              (model.disp_fixed_effects_, fixture["disp_effects"], fixture["disp_effects_se"], "d~")]
    if "zi_effects" in fixture:
        tables.append((model.zi_fixed_effects_, fixture["zi_effects"], fixture["zi_effects_se"], "zi~"))
    for table, values, ses, prefix in tables:
        for name, value in values.items():
            ours, se = name.replace("(Intercept)", "Intercept"), ses[prefix + name if prefix + name in ses else name]
            assert abs(table.loc[ours, "Estimate"] - value) < 0.1 * se, (prefix, name, table.loc[ours])
            assert table.loc[ours, "Std. Error"] == pytest.approx(se, rel=0.05), (prefix, name)
    sd = model.variance_components_.set_index("group").loc["g", "sdcor"]
    assert sd == pytest.approx(fixture["sds"]["g"], rel=0.05)
    if "df" in fixture:
        assert model.model_parameters_.family_params["df"] == pytest.approx(fixture["df"], rel=0.05)
    assert fixture["logLik"] - 0.05 < model.log_likelihood_laplace_ < fixture["logLik"] + 0.01


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FITTED))
def test_recovers_the_simulated_dispersion(fits, case):
    """The dispersion model's coefficients (and zi's) lie within 2.5 of our SEs of the values
    the data were simulated with."""
    model, truth = fits(case), REFERENCE[case]["truth"]
    for table, prefix in ((model.disp_fixed_effects_, "disp_"), (getattr(model, "zi_fixed_effects_", None), "zi_")):
        for name in [] if table is None else table.index:
            error = table.loc[name, "Estimate"] - truth[prefix + name]
            assert abs(error) < 2.5 * table.loc[name, "Std. Error"], (prefix, name, error)


@pytest.mark.slow
def test_zero_inflation_with_dispersion_model(fits, tmp_path):
    """Both tables in the summary; predictions: the conditional mean times one minus the
    zero probability (glmmTMB's type="response"), the same after save and load."""
    model, data = fits("zi_nbinom2"), load("zi_nbinom2")
    out = io.StringIO()
    model.summary(file=out)
    assert "Dispersion model:" in out.getvalue() and "Zero-inflation model:" in out.getvalue()
    zprob = 1.0 / (1.0 + np.exp(-model.zi_fixed_effects_.loc["Intercept", "Estimate"]))
    conditional = model.predict(data.head(5), type="conditional")
    np.testing.assert_allclose(model.predict(data.head(5), type="response"), conditional * (1 - zprob), rtol=1e-10)
    model.save(tmp_path / "zi_disp.mixedfx")
    loaded = mixedfx.load(tmp_path / "zi_disp.mixedfx")
    assert loaded.family_ == model.family_
    np.testing.assert_allclose(loaded.predict(data.head(5), type="response"),
                               model.predict(data.head(5), type="response"), rtol=1e-12)


@pytest.mark.slow
def test_gaussian_summary_and_refusals(fits):
    """A Gaussian fit with a dispersion model reports glmmTMB's Wald z tests (no lmerTest
    denominator df: infinite, in the table and in anova), and refuses r2 (a variance per
    row) by name."""
    model = fits("gaussian")
    out = io.StringIO()
    model.summary(file=out)
    assert "Wald z tests" in out.getvalue() and "Dispersion model:" in out.getvalue()
    assert np.isinf(model.fixed_effects_table()["df"]).all() and np.isinf(mixedfx.anova(model)["DenDF"]).all()
    with pytest.raises(ParameterError, match="dispersion model .dispformula. has a variance per row"):
        mixedfx.r2(model)


def test_refusals():
    """REML and an exact fit with a Gaussian dispersion model, and a family without a
    dispersion (zero-inflated Poisson) are refused by name."""
    data = load("gaussian").head(120)
    with pytest.raises(ParameterError, match="method='reml' is not supported for the gaussian .* dispersion model"):
        mixedfx.lmer("y ~ x + (1 | g)", data, dispformula="~ z", method="reml", verbose=0)
    with pytest.raises(DataError, match="reproduce the response exactly"):
        mixedfx.lmer("y ~ x + (1 | g)", data.assign(y=1.0 + 2.0 * data["x"]), dispformula="~ z", verbose=0)
    with pytest.raises(ParameterError, match="dispformula is for families .* not poisson"):
        mixedfx.glmer("y ~ x + (1 | g)", load("zi_nbinom2").head(120), family="poisson", ziformula="~1",
                      dispformula="~ z", verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ParameterError, match="dispformula is for families .* not binomial"):
            mixedfx.glmer("y ~ x + (1 | g)", data.assign(y=(data["y"] > 1).astype(int)), family="binomial",
                          dispformula="~ z", verbose=0)
