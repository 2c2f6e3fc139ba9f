"""A log-linear dispersion, glmmTMB's ``dispformula`` (mixedfx/model/dispersion_model.py):
the density against the JointDistribution and the base family, and fits against glmmTMB.

The reference fits and their simulated data come from
tests/fixtures/make_dispformula_fixtures.R (true values in the script and in ``truth``).
"""

import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import objective_and_record, FIXTURES

import mixedfx
from mixedfx import FormulaError, ParameterError
from mixedfx._tf import tf
from mixedfx.design import RandomTermData
from mixedfx.model import (RESPONSE, Beta, Gamma, MixedModel, ModelParameters, NegativeBinomial, NegativeBinomial1,
                           build_joint_distribution, marginal_log_likelihood)

with open(FIXTURES / "glmmtmb_dispformula.json") as _handle:
    REFERENCE = json.load(_handle)

CASES = {"nbinom2": "nbinom2", "gamma": "gamma"}


def load(case: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / REFERENCE[case]["data"])


@pytest.fixture(scope="module")
def fits():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = mixedfx.glmer("y ~ x + (1 | g)", load(case), family=CASES[case], dispformula="~ z",
                                        tol=0.05, random_state=0, verbose=0)
        return cache[case]

    return get


def _random_model(base, rng, *, n=80, levels=(7, 4)):
    """A two-factor model with an offset and a dispersion design (intercept and z), its
    response drawn from the JointDistribution."""
    family = base.with_dispersion_model(("Intercept", "z"))
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    X_disp = np.column_stack([np.ones(n), rng.normal(size=n)])
    terms = tuple(RandomTermData(f"g{k}", rng.integers(0, q, n).astype(np.int32), None, q)
                  for k, q in enumerate(levels))
    offset = 0.3 * rng.normal(size=n)
    beta, sds = np.array([0.3, 0.4]), rng.uniform(0.3, 1.0, size=len(levels))
    params = {"disp": np.array([1.0 if base.name != "gamma" else 1.5, 0.4])}
    placeholder = MixedModel(family, X, np.full(n, 0.5), terms, ("Intercept", "x"), offset=offset,
                             family_design=X_disp)
    joint = build_joint_distribution(placeholder.tensors(), fixed_effects=beta,
                                     random_scale_tril=[np.array([[s]]) for s in sds], family=family,
                                     family_params=params)
    draw = joint.sample(seed=(int(rng.integers(1 << 30)), 7))
    model = MixedModel(family, X, draw[RESPONSE].numpy(), terms, ("Intercept", "x"), offset=offset,
                       family_design=X_disp)
    effects = [draw[f"g{k}"].numpy() for k in range(len(levels))]
    return model, joint, effects, beta, sds, params


BASES = [NegativeBinomial(), NegativeBinomial1(), Gamma(), Beta()]


@pytest.mark.parametrize("base", BASES, ids=lambda f: f.name)
def test_fit_objective_is_the_joint_distributions_log_prob(base):
    """The fit's objective equals the JointDistribution's log_prob to 1e-10 relative (with
    an offset), and each row's density is the base family's at that row's dispersion
    ``exp(power * X_disp @ disp)`` (Gamma: glmmTMB's log shape, ``1 / dispersion``)."""
    rng = np.random.default_rng(4)
    model, joint, effects, beta, sds, params = _random_model(base, rng)
    objective, record = objective_and_record(model, joint, effects, beta, sds, params)
    assert objective == pytest.approx(record, rel=1e-10)
    eta = model.fixed_design @ beta + model.offset + sum(b[t.group_index, 0] for b, t in zip(effects, model.random_terms))
    linear = model.family_design @ params["disp"]
    dispersion = np.exp(-linear) if base.name == "gamma" else np.exp(linear)
    expected = [float(base.log_prob(tf.constant([e]), {"dispersion": np.float64(d)}, tf.constant([y]))[0])
                for e, d, y in zip(eta, dispersion, model.response)]
    got = model.family.log_prob(tf.constant(eta), params, tf.constant(model.response),
                                trials=tf.constant(model.family_design)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_glmmtmb(fits, case):
    """Fixed effects and the dispersion model's coefficients within 0.1 glmmTMB SE, their
    SEs within 5 %, sd(g) within 5 %; our Laplace logLik at glmmTMB's estimates is its
    logLik (to 1e-3), and at ours close below it."""
    model, fixture = fits(case), REFERENCE[case]
    assert model.fit_summary_.converged
    table = model.fixed_effects_table()
    for name, value in fixture["fixed_effects"].items():
        ours = name.replace("(Intercept)", "Intercept")
        assert abs(table.loc[ours, "Estimate"] - value) < 0.1 * fixture["fixed_effects_se"][name], name
        assert table.loc[ours, "Std. Error"] == pytest.approx(fixture["fixed_effects_se"][name], rel=0.05), name
    disp = model.disp_fixed_effects_
    for name, value in fixture["disp_effects"].items():
        ours, se = name.replace("(Intercept)", "Intercept"), fixture["disp_effects_se"]["d~" + name]
        assert abs(disp.loc[ours, "Estimate"] - value) < 0.1 * se, (name, disp.loc[ours])
        assert disp.loc[ours, "Std. Error"] == pytest.approx(se, rel=0.05), name
    sd = model.variance_components_.set_index("group").loc["g", "sdcor"]
    assert sd == pytest.approx(fixture["sds"]["g"], rel=0.05)
    data = load(case)
    bound = MixedModel(model.family_, model.fixed_design_.transform(data), data["y"].to_numpy(np.float64),
                       model.random_design_.materialize(data), model.fixed_design_.column_names,
                       family_design=model.disp_design_.transform(data))
    params = ModelParameters(np.array(list(fixture["fixed_effects"].values())), np.array([fixture["sds"]["g"]]),
                             {"disp": np.array(list(fixture["disp_effects"].values()))})
    assert marginal_log_likelihood(bound, params, n_draws=0).laplace == pytest.approx(fixture["logLik"], abs=1e-3)
    assert fixture["logLik"] - 0.25 < model.log_likelihood_laplace_ < fixture["logLik"] + 0.02
    out = io.StringIO()
    model.summary(file=out)
    assert "Dispersion model:" in out.getvalue()


def test_refusals():
    """A family without a dispersion parameter and a random term are refused by name
    (ziformula with dispformula: tests/test_dispformula2.py)."""
    data = load("nbinom2").head(80)
    with pytest.raises(ParameterError, match="dispformula is for families"):
        mixedfx.glmer("y ~ x + (1 | g)", data, family="poisson", dispformula="~ z", verbose=0)
    with pytest.raises(FormulaError, match="random terms in dispformula") as info:
        mixedfx.glmer("y ~ x + (1 | g)", data, family="nbinom2", dispformula="~ z + (1 | g)", verbose=0)
    assert "^" in str(info.value)
