"""Random terms of the zero-inflation model for the other families: the estimators'
``ziformula = "~ x + (1 | g)"`` fits of a zero-inflated nbinom2, a zero-inflated binomial
(``cbind`` trials) and a truncated-Poisson hurdle, each with a conditional random intercept
too, against glmmTMB 1.1.5 (tests/fixtures/make_zi_random2_fixtures.R: simulated, 400
rows, 25 groups of 16) and against the maximum of the exact marginal likelihood (the
density of record integrated over each group's two effects on a grid).

test_zi_random.py holds the density's checks (JointDistribution, scipy, the hurdle's zero
part) for these families; this file holds the Laplace logLik at glmmTMB's estimates (no
fit) and the fits (marked slow: three MCEM fits, 156 CPU s in all).
"""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, GridMarginal
from scipy import special

import mixedfx
from mixedfx.design import RandomTermData
from mixedfx.model import Binomial, MixedModel, ModelParameters, NegativeBinomial, TruncatedPoisson, marginal_log_likelihood

with open(FIXTURES / "glmmtmb_zi_random2.json") as _handle:
    REFERENCE = json.load(_handle)

CASES = ("nbinom2", "binomial", "hurdle")
BASES = {"nbinom2": NegativeBinomial, "binomial": Binomial, "hurdle": TruncatedPoisson}
RESPONSE = {"nbinom2": "y_nb", "binomial": "succ", "hurdle": "y_hu"}


def _data() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / REFERENCE["data"])


# -- the model layer's model -----------------------------------------------------------------

def _model(case: str) -> MixedModel:
    """The fixture's model of ``case`` in the model layer: cond and zi designs (Intercept, x),
    a group intercept in each linear predictor (conftest's GridMarginal integrates it exactly)."""
    data = _data()
    group = pd.factorize(data["g"], sort=True)[0].astype(np.int32)
    q = int(group.max()) + 1
    X = np.column_stack([np.ones(len(data)), data["x"].to_numpy(float)])
    terms = (RandomTermData("g", group, None, q), RandomTermData("g", group, None, q, predictor="zi"))
    trials = data["trials"].to_numpy(float) if case == "binomial" else None
    return MixedModel(BASES[case]().zero_inflated(("Intercept", "x")), X, data[RESPONSE[case]].to_numpy(float),
                      terms, ("Intercept", "x"), trials=trials, family_design={"zi": X})


def _glmmtmb_theta(case):
    ref = REFERENCE["models"][case]
    size = [np.log(ref["size"])] if ref["size"] is not None else []
    return np.array([*ref["fixed_effects"].values(), *ref["zi_fixed_effects"].values(),
                     np.log(ref["sd"]), np.log(ref["zi_sd"]), *size])


def _se(case):
    ref = REFERENCE["models"][case]
    return np.array([*ref["fixed_effects_se"].values(), *ref["zi_fixed_effects_se"].values()])


@pytest.mark.parametrize("case", CASES)
def test_laplace_at_glmmtmb_estimates_is_glmmtmbs(case):
    """The density of record against glmmTMB without a fit: the Laplace approximation with a
    2 x 2 curvature per row (mixedfx/model/predictor_laplace.py) at glmmTMB's estimates is
    glmmTMB's logLik to 1e-4, and the importance-sampling estimate is the grid's exact value
    within 4 Monte Carlo SEs."""
    theta, model = _glmmtmb_theta(case), _model(case)
    own = {"zi": theta[2:4], **({"dispersion": np.exp(theta[6])} if len(theta) > 6 else {})}
    result = marginal_log_likelihood(model, ModelParameters(theta[:2], np.exp(theta[4:6]), own), n_draws=500, seed=1)
    assert abs(result.laplace - REFERENCE["models"][case]["logLik"]) < 1e-4
    exact = -GridMarginal(model)(theta)[0]
    assert 0 < result.standard_error < 0.2
    assert abs(result.log_likelihood - exact) < 4 * result.standard_error


# -- the fits ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fits():
    """Each case fitted once by the estimator, lazily."""
    cache = {}

    def get(case):
        if case not in cache:
            ref = REFERENCE["models"][case]
            cache[case] = mixedfx.MixedEffectsRegressor(ref["formula"], family=ref["family"],
                                                        ziformula=ref["ziformula"], random_state=0,
                                                        verbose=0).fit(_data())
        return cache[case]

    return get


def _fitted_theta(model):
    sds = model.variance_components_.set_index("group")["sdcor"]
    size = [np.log(model.dispersion_)] if hasattr(model, "dispersion_") else []
    return np.array([*model.fixed_effects_, *model.zi_fixed_effects_["Estimate"],
                     np.log(sds["g"]), np.log(sds["zi~g"]), *size])


# -- against glmmTMB -----------------------------------------------------------------------------

#: The zi sd's tolerance against glmmTMB: 5 % (the issue's), but 10 % for nbinom2, where
#: glmmTMB's Laplace approximation puts the maximum measurably lower than the exact likelihood
#: does (0.731 vs 0.788; test_nbinom2_zi_sd_is_the_exact_likelihoods holds ours to the exact one at 5 %).
ZI_SD_RTOL = {"nbinom2": 0.10, "binomial": 0.05, "hurdle": 0.05}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_fit_against_glmmtmb(fits, case):
    """The estimator's fit against glmmTMB's (Laplace): conditional and zi fixed effects
    within 0.1 of glmmTMB's SEs, sd(g) of the conditional model within 5 %, the nbinom2 size
    within 5 %; the zi sd within 5 % (nbinom2: 10 %, :data:`ZI_SD_RTOL`: glmmTMB's Laplace
    likelihood is flat there, its own profile (the fixture's ``zi_sd_profile``) is -697.868 at
    its 0.731 and -697.919 at 0.804, and the exact one peaks at 0.788); mixedfx's Laplace
    logLik at its estimates at most 0.1 below glmmTMB's (which maximizes it) and not above it."""
    model, ref = fits(case), REFERENCE["models"][case]
    ours, theirs = _fitted_theta(model), _glmmtmb_theta(case)
    assert np.all(np.abs(ours[:4] - theirs[:4]) < 0.1 * _se(case))
    assert abs(np.exp(ours[4] - theirs[4]) - 1) < 0.05
    assert abs(np.exp(ours[5] - theirs[5]) - 1) < ZI_SD_RTOL[case]
    if ref["size"] is not None:
        assert abs(model.dispersion_ / ref["size"] - 1) < 0.05
    assert 0.0 <= ref["logLik"] - model.log_likelihood_laplace_ < 0.1


@pytest.mark.slow
def test_nbinom2_zi_sd_is_the_exact_likelihoods(fits):
    """Why nbinom2's zi sd is 8 % above glmmTMB's: the exact marginal likelihood (the grid
    integral of the density of record), over a 1-D grid of the zi sd with the other
    parameters at mixedfx's estimates, peaks (a parabola in log sd through 5 points)
    within 5 % of mixedfx's zi sd and more than 5 % above glmmTMB's 0.731 (measured: the
    parabola's peak 0.781, mixedfx 0.788, +6.8 % on glmmTMB; the full 7-parameter exact
    maximum by BFGS is 0.788); the exact logLik at mixedfx's estimates is above its value
    at glmmTMB's (measured -697.483 vs -697.511; the exact maximum -697.480)."""
    model, ref = fits("nbinom2"), REFERENCE["models"]["nbinom2"]
    marginal = GridMarginal(_model("nbinom2"))
    ours = _fitted_theta(model)
    steps = np.log([0.8, 0.9, 1.0, 1.1, 1.2])
    values = [-marginal(np.r_[ours[:5], ours[5] + step, ours[6:]])[0] for step in steps]
    a, b, _ = np.polyfit(steps, values, 2)
    peak = np.exp(ours[5] - b / (2 * a))
    assert a < 0
    assert abs(peak / np.exp(ours[5]) - 1) < 0.05
    assert peak / ref["zi_sd"] - 1 > 0.05
    assert values[2] > -marginal(_glmmtmb_theta("nbinom2"))[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_predictions_against_glmmtmb(fits, case):
    """``predict`` with every random term (glmmTMB's ``re.form = NULL``; a new group gets no
    effect): ``zprob`` within 0.05 and ``response`` within 10 % of glmmTMB's (its estimates
    the Laplace likelihood's and its effects the conditional modes, ours the exact
    likelihood's and the conditional means); ``zprob`` is the logistic of the zi fixed part
    plus the group's zi effect (1e-12 by hand)."""
    model, P = fits(case), REFERENCE["models"][case]["predictions"]
    new = pd.DataFrame({"g": P["g"], "x": P["x"], "trials": P["trials"], "succ": 0, RESPONSE[case]: 0})
    zprob = model.predict(new, type="zprob")
    seen = new["g"].isin(model.random_effects_["zi~g"].index).to_numpy()
    effect = np.where(seen, model.random_effects_["zi~g"].reindex(new["g"])["(Intercept)"].fillna(0.0), 0.0)
    zi = model.zi_fixed_effects_["Estimate"].to_numpy()
    np.testing.assert_allclose(zprob, special.expit(zi[0] + zi[1] * new["x"] + effect), rtol=1e-12)
    assert not seen[-1] and np.all(seen[:-1])
    np.testing.assert_allclose(zprob, P["zprob"], atol=0.05)
    np.testing.assert_allclose(model.predict(new, type="response"), P["response"], rtol=0.10)
