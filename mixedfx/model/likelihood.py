"""The marginal log-likelihood of a mixed model at given parameters.

For the Gaussian family it is exact (:func:`mixedfx.model.gaussian_marginal`).  For
the other families the integral over the random effects has no closed form; it is
estimated honestly, by importance sampling with the Laplace approximation as the
proposal, and reported with its Monte Carlo standard error:

1. find the mode ``v_hat`` of ``log p(y | v) - |v|^2 / 2`` over the whitened random
   effects (``b = L v`` per level) by Newton's method, with the block elimination of
   :class:`mixedfx.model.blocks.BlockSystem` for ``A = U' W U + I`` (``W`` minus the
   second derivative of each row's log-likelihood in its linear predictor);
2. the Laplace approximation is ``log p(y | v_hat) - |v_hat|^2 / 2 - log|A| / 2``;
3. draw ``v = v_hat + A^(-1/2) eps`` and average the importance weights
   ``p(y | v) N(v; 0, I) / N(v; v_hat, A^-1)``; the log of their mean estimates the
   log-likelihood, and the delta method gives its standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixedfx._tf import tf
from mixedfx.model.blocks import BlockSystem
from mixedfx.model.families import Gaussian
from mixedfx.model.gaussian import gaussian_marginal, term_z
from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["MarginalLikelihood", "marginal_log_likelihood"]


@dataclass(frozen=True)
class MarginalLikelihood:
    """A marginal log-likelihood and how it was obtained.

    Attributes
    ----------
    log_likelihood : float
    standard_error : float
        Monte Carlo standard error (0 when exact).
    method : str
        ``"exact"`` or ``"importance sampling (Laplace proposal, n draws)"``.
    laplace : float
        The Laplace approximation (equal to ``log_likelihood`` when exact).
    conditional_modes : tuple of numpy.ndarray
        Per term, the mode of the random effects given the data, ``(num_levels, dim)``.

    Examples
    --------
    :func:`marginal_log_likelihood` returns one; for a Gaussian model it is exact:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 4.0, 5.0]), (term,), ("Intercept",))
    >>> params = ModelParameters(np.array([3.0]), np.array([1.0]), {"sigma": 1.0})
    >>> from mixedfx.model import marginal_log_likelihood
    >>> result = marginal_log_likelihood(model, params)
    >>> result.method, round(result.log_likelihood, 4), result.standard_error
    ('exact', -6.7744, 0.0)
    >>> result.conditional_modes[0].ravel().round(4).tolist()
    [-1.0, 1.0]
    """

    log_likelihood: float
    standard_error: float
    method: str
    laplace: float
    conditional_modes: tuple[np.ndarray, ...]


def marginal_log_likelihood(
    model: MixedModel,
    params: ModelParameters,
    *,
    n_draws: int = 300,
    seed: int = 0,
    start=None,
    max_dense_entries: int | None = None,
) -> MarginalLikelihood:
    """Marginal log-likelihood of ``model``'s response at ``params``.

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
    n_draws : int, default 300
        Importance-sampling draws (non-Gaussian families).
    seed : int, default 0
    start : sequence of numpy.ndarray, optional
        Starting random effects for the mode search, per term ``(num_levels, dim)``
        (for example the E-step's conditional means).
    max_dense_entries : int
        Memory bound of the dense block (see :class:`BlockSystem`).

    Returns
    -------
    MarginalLikelihood

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, ModelParameters, Poisson, marginal_log_likelihood
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(20), 10).astype(np.int32)
    >>> y = rng.poisson(np.exp(0.5 + rng.normal(scale=0.5, size=20)[g])).astype(float)
    >>> model = MixedModel(Poisson(), np.ones((200, 1)), y, (RandomTermData("g", g, None, 20),), ("Intercept",))
    >>> result = marginal_log_likelihood(model, ModelParameters(np.array([0.5]), np.array([0.5]), {}))
    >>> bool(abs(result.log_likelihood - result.laplace) < 1.0), bool(result.standard_error < 0.05)
    (True, True)
    """
    if isinstance(model.family, Gaussian):
        exact = gaussian_marginal(model, params, max_dense_entries=max_dense_entries)
        return MarginalLikelihood(exact.log_likelihood, 0.0, "exact", exact.log_likelihood, exact.conditional_means)

    n = model.n_obs
    terms = model.random_terms
    scaled = [term_z(term, n) @ L for term, L in zip(terms, params.random_scale_tril)]
    fixed = model.fixed_design @ np.asarray(params.fixed_effects, dtype=np.float64)
    if model.offset is not None:
        fixed = fixed + model.offset
    family_params = {k: tf.constant(np.asarray(v, dtype=np.float64)) for k, v in params.family_params.items()}
    response = tf.constant(model.response, tf.float64)
    trials = None if model.trials is None else tf.constant(model.trials, tf.float64)

    def linear(v):
        eta = fixed.copy()
        for term, u, effects in zip(terms, scaled, v):
            eta += np.sum(u * effects[term.group_index], axis=1)
        return eta

    def log_lik_and_derivatives(eta):
        """The log-likelihood, its gradient in eta and minus its second derivative (each
        row's log-likelihood depends on its own eta only, so the Hessian is diagonal)."""
        eta_t = tf.constant(eta)
        with tf.GradientTape() as outer:
            outer.watch(eta_t)
            with tf.GradientTape() as inner:
                inner.watch(eta_t)
                total = tf.reduce_sum(model.family.log_prob(eta_t, family_params, response, trials=trials))
            score = inner.gradient(total, eta_t)
        curvature = outer.gradient(score, eta_t)
        weight = np.maximum(-curvature.numpy(), 1e-12)  # log-concave families: positive
        return float(total), score.numpy(), weight

    if start is None:
        v = [np.zeros((t.num_levels, t.dim)) for t in terms]
    else:
        # pinv: a singular fit's factor has zero rows
        v = [(np.linalg.pinv(L) @ np.asarray(b, dtype=np.float64).T).T
             for b, L in zip(start, params.random_scale_tril)]

    def objective(v, loglik):
        return loglik - 0.5 * sum(float(np.sum(x**2)) for x in v)

    loglik, score, weight = log_lik_and_derivatives(linear(v))
    current = objective(v, loglik)
    system = None
    for _ in range(50):
        # Changes below float64's resolution of the objective are noise (counts in the
        # millions give log-likelihoods near 1e9).
        tolerance = 1e-10 + 1e-13 * abs(current)
        system = BlockSystem(terms, scaled, weight, max_dense_entries=max_dense_entries)
        g1, gr = system.project(score[:, None], weighted=False)
        flat = _flatten(system, v)
        g1 = g1 - flat[0]
        gr = gr - flat[1]
        d1, dr = system.solve(g1, gr)
        # Newton decrement g' A^-1 g: twice the objective's expected gain.  Below 1e-8
        # the mode is found, whatever rounding does to the objective itself (counts in
        # the millions make it a small difference of terms near 1e9).
        if float(np.sum(g1 * d1) + np.sum(gr * dr)) < 1e-8:
            break
        step = system.to_terms(d1, dr)
        scale, improved = 1.0, False
        for _ in range(30):
            trial = [x + scale * s for x, s in zip(v, step)]
            trial_loglik, trial_score, trial_weight = log_lik_and_derivatives(linear(trial))
            value = objective(trial, trial_loglik)
            if value >= current - tolerance:
                improved = True
                break
            scale /= 2.0
        if not improved:
            break
        change = value - current
        v, current, score, weight = trial, value, trial_score, trial_weight
        if change < max(1e-8, tolerance) and scale == 1.0:
            break
    system = BlockSystem(terms, scaled, weight, max_dense_entries=max_dense_entries)
    laplace = current - 0.5 * system.logdet
    modes = tuple(x @ L.T for x, L in zip(v, params.random_scale_tril))

    rng = np.random.default_rng(seed)
    log_weights = []
    batch = 50
    for start_draw in range(0, n_draws, batch):
        m = min(batch, n_draws - start_draw)
        eps1 = rng.standard_normal((system.q1, system.d1, m))
        epsr = rng.standard_normal((system.width, m))
        x1, xr = system.inverse_square_root(eps1, epsr)
        squared = np.sum(eps1**2, axis=(0, 1)) + np.sum(epsr**2, axis=0)
        etas = []
        draws_v = []
        for j in range(m):
            offsets = system.to_terms(x1, xr, column=j)
            draw = [x + o for x, o in zip(v, offsets)]
            draws_v.append(draw)
            etas.append(linear(draw))
        eta_t = tf.constant(np.stack(etas))
        values = tf.reduce_sum(
            model.family.log_prob(eta_t, family_params, response, trials=trials), axis=-1
        ).numpy()
        for j in range(m):
            prior = -0.5 * sum(float(np.sum(x**2)) for x in draws_v[j])
            log_weights.append(values[j] + prior + 0.5 * squared[j] - 0.5 * system.logdet)
    log_weights = np.asarray(log_weights)
    top = log_weights.max()
    weights = np.exp(log_weights - top)
    estimate = float(top + np.log(weights.mean()))
    standard_error = float(weights.std(ddof=1) / (weights.mean() * np.sqrt(len(weights)))) if len(weights) > 1 else np.inf
    return MarginalLikelihood(
        log_likelihood=estimate,
        standard_error=standard_error,
        method=f"importance sampling (Laplace proposal, {len(weights)} draws)",
        laplace=float(laplace),
        conditional_modes=modes,
    )


def _flatten(system: BlockSystem, per_term):
    """Per-term ``(num_levels, dim)`` arrays into the block layout of :meth:`BlockSystem.project`."""
    first = per_term[system.first][:, :, None]
    rest = np.zeros((system.width, 1))
    for k in system.rest:
        q, d = system.terms[k].num_levels, system.dims[k]
        rest[system.offsets[k]:system.offsets[k] + q * d, 0] = per_term[k].reshape(-1)
    return first, rest
