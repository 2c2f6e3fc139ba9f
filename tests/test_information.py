"""The observed information of a GLMM's joint density (mixedfx/inference/information.py),
assembled from per-row second derivatives, against the Hessian of the whole log density
by automatic differentiation in every parameter and random effect at once (what
``wald_covariance`` computed before, kept here as the reference)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import FIXTURES
from mixedfx._tf import tf
from mixedfx.design import bind_data
from mixedfx.formula import parse_formula
from mixedfx.inference import information
from mixedfx.model import ModelParameters, get_family, term_z
from mixedfx.model.binding import bind_model


def autodiff_information(model, params, effects) -> np.ndarray:
    """Minus the Hessian of ``sum_i log p(y_i | eta_i, theta) + log p(b)`` in
    ``v = (beta, theta, b)``, by nested gradient tapes over all of ``v``."""
    family, terms = model.family, model.random_terms
    p = model.fixed_design.shape[1]
    free = family.free_from_parameters(params.family_params)
    tags = model.predictors or ("cond",) * len(terms)
    v = tf.constant(np.concatenate([params.fixed_effects, free, *(b.ravel() for b in effects)]))
    X = tf.constant(model.fixed_design)

    def log_density(v):
        eta = tf.linalg.matvec(X, v[:p]) + (0.0 if model.offset is None else model.offset)
        own, prior, at = {}, 0.0, p + len(free)
        for term, b, L, tag in zip(terms, effects, params.random_scale_tril, tags):
            values = tf.reshape(v[at:at + b.size], b.shape)
            at += b.size
            part = tf.reduce_sum(tf.gather(values, term.group_index) * term_z(term, model.n_obs), axis=-1)
            if tag == "cond":
                eta += part
            else:
                own[tag] = own.get(tag, 0.0) + part
            prior -= 0.5 * tf.reduce_sum(values * tf.linalg.matmul(values, np.linalg.inv(L @ L.T)))
        natural = family.constrain(v[p:p + len(free)])
        natural = family.with_predictor_offsets(natural, own) if own else natural
        return tf.reduce_sum(family.weighted_log_prob(eta, natural, model.response, trials=model.family_rows,
                                                      weights=model.weights)) + prior

    with tf.GradientTape() as outer:
        outer.watch(v)
        with tf.GradientTape() as inner:
            inner.watch(v)
            total = log_density(v)
        gradient = inner.gradient(total, v)
    return -outer.jacobian(gradient, v).numpy()


def _salamanders_model(family, formula, **formulas):
    data = pd.read_csv(FIXTURES / "salamanders_spp.csv")
    rng = np.random.default_rng(4)
    data = data.assign(cover=rng.normal(size=len(data)), w=rng.uniform(0.5, 2.0, size=len(data)))
    bound = bind_model(get_family(family), bind_data(parse_formula(formula), data, **formulas))
    effects = [0.4 * rng.normal(size=(t.num_levels, t.dim)) for t in bound.random_terms]
    trils = [np.linalg.cholesky(0.3 * np.eye(t.dim) + 0.1) for t in bound.random_terms]
    start = bound.family.initial_free(bound.response, np.zeros(bound.n_obs), trials=bound.family_rows)
    free = start + 0.3 * rng.normal(size=len(start))
    natural = {k: np.asarray(v) for k, v in bound.family.constrain(tf.constant(free)).items()}
    params = ModelParameters(0.2 * rng.normal(size=len(bound.fixed_names)), trils, natural)
    np.testing.assert_allclose(bound.family.free_from_parameters(natural), free, rtol=1e-10)
    return bound, params, effects


@pytest.mark.parametrize("family, formula, formulas", [
    ("poisson", "count ~ spp + mined + (1 + cover | site)", {"ziformula": "~ mined + (1 | site)"}),
    ("nbinom2", "count ~ mined + cover + (1 | site) + (1 | spp)", {"dispformula": "~ cover"}),
    ("nbinom1", "count ~ mined + (1 | site)", {}),
], ids=["zip_slope_and_zi_term", "nbinom2_crossed_disp", "nbinom1"])
def test_row_assembly_is_the_autodiff_hessian(family, formula, formulas, monkeypatch):
    """Every block (fixed effects, the family's parameters, the random effects of a
    correlated slope term, crossed terms and a zero-inflation term) equals the autodiff
    Hessian to 1e-9 of its largest entry, summed over slices of 100 rows."""
    bound, params, effects = _salamanders_model(family, formula, **formulas)
    monkeypatch.setattr(information, "INFORMATION_SLICE_ROWS", 100)
    ours = information.observed_information(bound, params, effects, dense=True)
    reference = autodiff_information(bound, params, effects)
    assert ours.shape == reference.shape == (len(reference),) * 2
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9 * np.abs(reference).max())
    held = information.observed_information(bound, params, effects, dense=False)
    size = held.shape[0]
    np.testing.assert_allclose(held, reference[:size, :size], rtol=0, atol=1e-9 * np.abs(reference).max())
