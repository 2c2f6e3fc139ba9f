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

from dataclasses import dataclass, replace

import numpy as np

from mixedfx._tf import tf
from mixedfx.exceptions import ParameterError
from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.gaussian import _conjugate_gradients, gaussian_marginal, term_z
from mixedfx.model.joint import MixedModel, ModelParameters, numpy_linear_predictor
from mixedfx.model.predictor_laplace import PredictorsNewtonProblem

__all__ = ["LaplaceMode", "MarginalLikelihood", "laplace_mode", "marginal_log_likelihood"]


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
        Importance-sampling draws (non-Gaussian families); 0 returns the Laplace
        approximation alone (``standard_error`` infinite: nothing was sampled).
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
    if model.family.conjugate_gaussian:
        exact = gaussian_marginal(model, params, max_dense_entries=max_dense_entries)
        return MarginalLikelihood(exact.log_likelihood, 0.0, "exact", exact.log_likelihood, exact.conditional_means)
    mode = laplace_mode(model, params, start=start, max_dense_entries=max_dense_entries)
    problem = _problem(model, params)
    system = _mode_system(problem, mode, max_dense_entries=max_dense_entries)
    laplace = mode.objective - 0.5 * system.logdet
    if n_draws == 0:
        return MarginalLikelihood(float(laplace), np.inf, "Laplace", float(laplace), mode.modes)
    v = list(mode.whitened)
    rng = np.random.default_rng(seed)
    log_weights = []
    batch, step = 50, _draws_per_pass(model)  # draws made at once, and evaluated in one pass over the rows
    for start_draw in range(0, n_draws, batch):
        m = min(batch, n_draws - start_draw)
        eps1 = rng.standard_normal((system.q1, system.d1, m))
        epsr = rng.standard_normal((system.width, m))
        x1, xr = system.inverse_square_root(eps1, epsr)
        squared = np.sum(eps1**2, axis=(0, 1)) + np.sum(epsr**2, axis=0)
        draws_v = [[x + o for x, o in zip(v, system.to_terms(x1, xr, column=j))] for j in range(m)]
        values = np.concatenate([problem.log_likelihood(np.stack([problem.linear(d) for d in draws_v[k:k + step]]))
                                 for k in range(0, m, step)])
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
        conditional_modes=mode.modes,
    )


#: Entries (stacked draws or nodes, times rows, times linear predictors) that one pass
#: over the rows evaluates at once, in the importance sampling here and the quadrature
#: (:mod:`mixedfx.model.quadrature`).  A batch of 50 draws at a million rows made
#: ``[50, rows]`` temporaries of 0.4 GB each, several alive together: the zero-inflated
#: Poisson's peak rose from 2.4 to 7.3 GB after its EM loop (benchmarks/RESULTS.md).
ROW_PASS_ENTRIES = 2**22


def stacks_per_pass(stack_entries: int) -> int:
    """How many evaluations of ``stack_entries`` entries each (rows times linear
    predictors) one pass over the rows stacks: as many as keep the pass within
    :data:`ROW_PASS_ENTRIES` entries, at least one.

    Examples
    --------
    A batch of 50 importance-sampling draws is one pass up to 83,886 rows of one linear
    predictor; at a million rows a pass takes 4 draws:

    >>> from mixedfx.model.likelihood import stacks_per_pass
    >>> stacks_per_pass(83_886), stacks_per_pass(1_000_000), stacks_per_pass(10**8)
    (50, 4, 1)
    """
    return max(1, ROW_PASS_ENTRIES // max(int(stack_entries), 1))


def _draws_per_pass(model: MixedModel) -> int:
    """Importance-sampling draws per pass over ``model``'s rows (:func:`stacks_per_pass`):
    a draw stacks each row's linear predictors (``cond``, and ``zi`` where random terms
    enter it)."""
    predictors = 1 if model.predictors is None else len({"cond", *model.predictors})
    return stacks_per_pass(model.n_obs * predictors)


@dataclass(frozen=True)
class LaplaceMode:
    """The mode of the random effects given the data, found by :func:`laplace_mode`.

    Attributes
    ----------
    modes : tuple of numpy.ndarray
        Per term, the conditional mode ``b = L v`` of each level's coefficients,
        ``(num_levels, dim)``.
    whitened : tuple of numpy.ndarray
        The same on the whitened scale ``v``, ``(num_levels, dim)``.
    objective : float
        ``log p(y | v) - |v|^2 / 2`` at the mode.
    weight : numpy.ndarray of shape (n_rows,)
        Each row's curvature at the mode (the ``w`` of ``A = U' diag(w) U + I``).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, ModelParameters, Poisson
    >>> from mixedfx.model.likelihood import laplace_mode
    >>> g = np.array([0, 0, 1, 1], dtype=np.int32)
    >>> model = MixedModel(Poisson(), np.ones((4, 1)), np.array([1.0, 1.0, 4.0, 4.0]),
    ...                    (RandomTermData("g", g, None, 2),), ("Intercept",))
    >>> mode = laplace_mode(model, ModelParameters(np.array([np.log(2.0)]), np.array([1.0]), {}))
    >>> b = mode.modes[0].ravel()
    >>> b.round(4).tolist(), mode.weight.round(4).tolist()  # the weight is the mean count 2 exp(b)
    ([-0.4786, 0.6134], [1.2393, 1.2393, 3.6933, 3.6933])
    >>> bool(np.abs(2 * (np.array([1.0, 4.0]) - 2 * np.exp(b)) - b).max() < 1e-6)  # score = prior's pull
    True
    """

    modes: tuple[np.ndarray, ...]
    whitened: tuple[np.ndarray, ...]
    objective: float
    weight: np.ndarray
    #: Each row's observed curvature at the mode, not clipped at zero (``None`` with
    #: ``curvature="expected"``).
    curvature: np.ndarray | None = None


def laplace_mode(
    model: MixedModel,
    params: ModelParameters,
    *,
    start=None,
    curvature: str = "observed",
    max_iterations: int = 50,
    max_dense_entries: int | None = None,
) -> LaplaceMode:
    """The random effects' conditional mode given ``params``, by damped Newton's method.

    The one Newton solver for the random effects.  It maximizes
    ``log p(y | v) - |v|^2 / 2`` over the whitened random effects ``v`` (``b = L v``
    per level, so a singular fit's zero sds pin their coefficients at zero) with the
    Newton system ``A = U' diag(w) U + I`` solved by block elimination
    (:class:`~mixedfx.model.blocks.BlockSystem`), halving each step until the
    objective does not fall.  When the dense block of ``A`` would exceed
    ``max_dense_entries`` (two large crossed factors), the same direction is solved
    by preconditioned conjugate gradients, matrix-free.  It stops when the
    Newton decrement falls below ``1e-8``.

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
    start : sequence of numpy.ndarray, optional
        Starting random effects, per term ``(num_levels, dim)``; zero when omitted.
    curvature : {"observed", "expected"}, default "observed"
        The row weights ``w``: minus the second derivative of each row's
        log-likelihood in its linear predictor (the Laplace approximation's), or the
        family's Fisher weight (always positive: the E-step's restarts use it).
    max_iterations : int, default 50
    max_dense_entries : int, optional
        Memory bound of the dense block (see :class:`BlockSystem`).

    Returns
    -------
    LaplaceMode

    Examples
    --------
    Counts in the millions: the mode is where each level's mean matches its counts.

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, ModelParameters, Poisson, laplace_mode
    >>> g = np.repeat(np.arange(3), 4).astype(np.int32)
    >>> model = MixedModel(Poisson(), np.ones((12, 1)), np.repeat([1e6, 2e6, 4e6], 4),
    ...                    (RandomTermData("g", g, None, 3),), ("Intercept",))
    >>> params = ModelParameters(np.array([np.log(2e6)]), np.array([1.0]), {})
    >>> (np.round(laplace_mode(model, params, curvature="expected").modes[0][:, 0], 3) + 0.0).tolist()
    [-0.693, 0.0, 0.693]
    """
    if curvature not in ("observed", "expected"):
        raise ParameterError(f"curvature must be 'observed' or 'expected', got {curvature!r}")
    problem = _problem(model, params, expected=curvature == "expected")
    if start is None:
        v = [np.zeros((t.num_levels, t.dim)) for t in problem.terms]
    else:
        # pinv: a singular fit's factor has zero rows
        v = [(np.linalg.pinv(L) @ np.asarray(b, dtype=np.float64).T).T
             for b, L in zip(start, params.random_scale_tril)]

    def objective(v, loglik):
        return loglik - 0.5 * sum(float(np.sum(x**2)) for x in v)

    loglik, score, weight, raw = problem.derivatives(problem.linear(v))
    current = objective(v, loglik)
    for _ in range(max_iterations):
        # Changes below float64's resolution of the objective are noise (counts in the
        # millions give log-likelihoods near 1e9).
        tolerance = 1e-10 + 1e-13 * abs(current)
        step, decrement = _newton_direction(problem, v, score, weight, max_dense_entries=max_dense_entries)
        # Newton decrement g' A^-1 g: twice the objective's expected gain.  Below 1e-8
        # the mode is found, whatever rounding does to the objective itself (counts in
        # the millions make it a small difference of terms near 1e9).
        if decrement < 1e-8:
            break
        scale, improved = 1.0, False
        for _ in range(30):
            trial = [x + scale * s for x, s in zip(v, step)]
            trial_loglik, trial_score, trial_weight, trial_raw = problem.derivatives(problem.linear(trial))
            value = objective(trial, trial_loglik)
            if value >= current - tolerance:
                improved = True
                break
            scale /= 2.0
        if not improved:
            break
        change = value - current
        v, current, score, weight, raw = trial, value, trial_score, trial_weight, trial_raw
        if change < max(1e-8, tolerance) and scale == 1.0:
            break
    modes = tuple(x @ L.T for x, L in zip(v, params.random_scale_tril))
    return LaplaceMode(modes, tuple(v), float(current), weight, raw)


def _mode_system(problem, mode, *, max_dense_entries=None) -> BlockSystem:
    """The Hessian system at the mode with each row's exact curvature, as glmmTMB's
    Laplace approximation has it: a row of a family that is not log-concave in the
    linear predictor (Student-t outliers, nbinom1) may curve upwards, which the Newton
    search clips; the clipped weights stand in only where the exact system is not
    positive definite."""
    exact = mode.curvature
    if exact is not None and problem.any_clipped(exact):
        try:
            system = problem.system(exact, max_dense_entries=max_dense_entries)
            if np.isfinite(system.logdet):
                return system
        except np.linalg.LinAlgError:
            pass
    return problem.system(mode.weight, max_dense_entries=max_dense_entries)


def _problem(model: MixedModel, params: ModelParameters, *, expected: bool = False):
    """The Newton problem of ``model``: one linear predictor, or several when random terms
    enter the family's own (:class:`~mixedfx.model.predictor_laplace.PredictorsNewtonProblem`)."""
    if model.predictors is not None:
        return PredictorsNewtonProblem(model, params, expected=expected)
    return _NewtonProblem(model, params, expected=expected)


@tf.function(autograph=False, reduce_retracing=True)
def _row_derivatives(family, eta, family_params, response, trials, weights):
    """The summed log-likelihood, its gradient in ``eta`` and each row's second
    derivative, as one graph per family and input signature (the Newton search calls
    it thousands of times in a profile: eager, its ops cost more than the numbers)."""
    with tf.GradientTape() as outer:
        outer.watch(eta)
        with tf.GradientTape() as inner:
            inner.watch(eta)
            total = tf.reduce_sum(family.weighted_log_prob(eta, family_params, response, trials=trials,
                                                           weights=weights))
        score = inner.gradient(total, eta)
    return total, score, outer.gradient(score, eta)


class _NewtonProblem:
    """The pieces of the Newton search over whitened random effects ``v`` (``b = L v``).

    ``scaled`` holds per term the rows of ``U`` (``z_i' L_k``); :meth:`linear` is the
    linear predictor of ``v`` (by :func:`~mixedfx.model.numpy_linear_predictor`, with
    ``U``'s rows as the terms' ``z``); :meth:`derivatives` the log-likelihood, its
    gradient in the linear predictor and each row's curvature (observed or expected);
    :meth:`log_likelihood` the per-draw totals for a stack of linear predictors.
    """

    def __init__(self, model: MixedModel, params: ModelParameters, *, expected: bool = False):
        n = model.n_obs
        self.model, self.params, self.expected = model, params, expected
        self.terms = model.random_terms
        self.scaled = [term_z(term, n) @ L for term, L in zip(self.terms, params.random_scale_tril)]
        self.whitened_terms = [replace(term, z=u) for term, u in zip(self.terms, self.scaled)]
        self.family_params = params.family_tensors()
        self.response = tf.constant(model.response, tf.float64)
        self.trials = None if model.family_rows is None else tf.constant(model.family_rows, tf.float64)
        self.weights = None if model.weights is None else tf.constant(model.weights, tf.float64)

    def linear(self, v) -> np.ndarray:
        """The linear predictor at whitened random effects ``v`` (per term ``(num_levels, dim)``)."""
        return numpy_linear_predictor(self.model.fixed_design, self.params.fixed_effects, v, self.whitened_terms,
                                      offset=self.model.offset)

    def log_likelihood(self, eta) -> np.ndarray:
        """``log p(y | eta)`` summed over rows (over the last axis of ``eta``)."""
        eta_t = tf.constant(eta)
        return tf.reduce_sum(self.model.family.weighted_log_prob(eta_t, self.family_params, self.response,
                                                                 trials=self.trials, weights=self.weights),
                             axis=-1).numpy()

    def any_clipped(self, curvature) -> bool:
        """Whether some row's exact curvature is below the search's clip."""
        return bool(np.any(curvature < 1e-12))

    def system(self, weight, *, max_dense_entries=None) -> BlockSystem:
        """``A = U' diag(weight) U + I``."""
        return BlockSystem(self.terms, self.scaled, weight, max_dense_entries=max_dense_entries)

    def score_rows(self, score, weight) -> np.ndarray:
        """The rows' score as :meth:`BlockSystem.project` takes it: the score itself."""
        return score

    def derivatives(self, eta):
        """The log-likelihood, its gradient in eta, each row's curvature weight (each
        row's log-likelihood depends on its own eta only, so the Hessian is diagonal)
        and the observed curvature unclipped (``None`` for the expected one)."""
        family, eta_t = self.model.family, tf.constant(eta)
        if self.expected:
            total, score, _ = _row_derivatives(family, eta_t, self.family_params, self.response, self.trials,
                                               self.weights)
            weight = family.weighted_fisher_weight(eta_t, self.family_params, trials=self.trials,
                                                   weights=self.weights).numpy()
            return float(total), score.numpy(), weight, None
        total, score, second = _row_derivatives(family, eta_t, self.family_params, self.response, self.trials,
                                                self.weights)
        raw = -second.numpy()
        return float(total), score.numpy(), np.maximum(raw, 1e-12), raw  # log-concave families: positive


def _newton_direction(problem: _NewtonProblem, v, score, weight, *, max_dense_entries=None):
    """The Newton step ``A^-1 g`` for the whitened effects ``v`` and its decrement ``g' A^-1 g``.

    ``g = U' score - v`` is the objective's gradient and ``A = U' diag(weight) U + I``;
    it is solved by block elimination, or by conjugate gradients when the dense block
    would exceed ``max_dense_entries``.
    """
    try:
        system = problem.system(weight, max_dense_entries=max_dense_entries)
    except DenseBlockTooLarge:
        return _matrix_free_direction(problem, v, score, weight)
    g1, gr = system.project(problem.score_rows(score, weight)[:, None], weighted=False)
    flat = _flatten(system, v)
    g1 = g1 - flat[0]
    gr = gr - flat[1]
    d1, dr = system.solve(g1, gr)
    return system.to_terms(d1, dr), float(np.sum(g1 * d1) + np.sum(gr * dr))


def _matrix_free_direction(problem: _NewtonProblem, v, score, weight):
    """:func:`_newton_direction` without the dense block: ``A d = g`` by the conjugate
    gradients of :func:`mixedfx.model.gaussian_marginal`, preconditioned by ``A``'s
    per-level diagonal blocks, with ``A`` applied through gathers and sums over rows."""
    terms, scaled = problem.terms, problem.scaled

    def transpose(values):  # per term, U_k' values: (num_levels, dim, m)
        return [np.stack([np.stack([np.bincount(t.group_index, weights=u[:, a] * values[:, j], minlength=t.num_levels)
                                    for j in range(values.shape[1])], axis=-1) for a in range(t.dim)], axis=1)
                for t, u in zip(terms, scaled)]

    def apply_a(x):  # U' diag(w) U x + x
        ux = sum(np.einsum("nd,ndm->nm", u, xk[t.group_index]) for t, u, xk in zip(terms, scaled, x))
        return [o + xk for o, xk in zip(transpose(weight[:, None] * ux), x)]

    inverse_blocks = []
    for t, u in zip(terms, scaled):
        block = np.zeros((t.num_levels, t.dim, t.dim))
        np.add.at(block, t.group_index, weight[:, None, None] * u[:, :, None] * u[:, None, :])
        inverse_blocks.append(np.linalg.inv(block + np.eye(t.dim)))
    gradient = [g - x[:, :, None] for g, x in zip(transpose(score[:, None]), v)]
    step = _conjugate_gradients(gradient, apply_a, lambda r: [np.matmul(inv, x) for inv, x in zip(inverse_blocks, r)],
                                tol=1e-10, max_iter=1000)
    decrement = float(sum(np.sum(g * d) for g, d in zip(gradient, step)))
    return [d[:, :, 0] for d in step], decrement


def _flatten(system: BlockSystem, per_term):
    """Per-term ``(num_levels, dim)`` arrays into the block layout of :meth:`BlockSystem.project`."""
    first = per_term[system.first][:, :, None]
    rest = np.zeros((system.width, 1))
    for k in system.rest:
        q, d = system.terms[k].num_levels, system.dims[k]
        rest[system.offsets[k]:system.offsets[k] + q * d, 0] = per_term[k].reshape(-1)
    return first, rest
