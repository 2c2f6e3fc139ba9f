"""Warm starts: cheap initial values for Monte Carlo EM."""

from __future__ import annotations

import numpy as np

from mixedfx._tf import tf
from mixedfx.model.joint import MixedModel, ModelParameters, family_tensors, numpy_linear_predictor
from mixedfx.model.likelihood import laplace_mode

__all__ = ["initial_parameters", "conditional_modes"]


def initial_parameters(model: MixedModel) -> ModelParameters:
    """Cheap starting values: a fit without random effects, and moderate variances.

    Gaussian family: see :func:`gaussian_initial_parameters`.  Other families: the
    family's own starting values (a dispersion from the moments, cutpoints from the
    category proportions), fixed effects by Fisher scoring of the GLM without random
    effects, and random coefficients with sd 0.5 on the link scale (0.1 over the root
    mean square of their ``z`` for slopes), uncorrelated.

    Examples
    --------
    For a Poisson model with only an intercept, the GLM fit is the log of the mean
    count:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, Poisson
    >>> from mixedfx.inference import initial_parameters
    >>> g = np.repeat(np.arange(4), 3).astype(np.int32)
    >>> y = np.array([0.0, 1, 2, 1, 1, 3, 4, 2, 0, 1, 5, 4])
    >>> model = MixedModel(Poisson(), np.ones((12, 1)), y, (RandomTermData("g", g, None, 4),), ("Intercept",))
    >>> start = initial_parameters(model)
    >>> bool(np.isclose(start.fixed_effects[0], np.log(y.mean()))), start.random_scale_tril[0].tolist()
    (True, [[0.5]])
    """
    if model.family.conjugate_gaussian:
        return gaussian_initial_parameters(model)
    family, X, y = model.family, model.fixed_design, model.response
    offset = np.zeros(model.n_obs) if model.offset is None else model.offset
    trials = None if model.family_rows is None else tf.constant(model.family_rows)
    weights = None if model.weights is None else tf.constant(model.weights)
    free = family.initial_free(y, offset, trials=model.family_rows)
    natural = family_tensors(family.constrain(tf.constant(free, tf.float64)))
    response = tf.constant(y)

    def evaluate(beta):
        eta = tf.constant(numpy_linear_predictor(X, beta, (), (), offset=offset))
        with tf.GradientTape() as tape:
            tape.watch(eta)
            total = tf.reduce_sum(family.weighted_log_prob(eta, natural, response, trials=trials, weights=weights))
        information = family.weighted_fisher_weight(eta, natural, trials=trials, weights=weights)
        return float(total), tape.gradient(total, eta).numpy(), information.numpy()

    beta = np.zeros(X.shape[1])
    value, score, weight = evaluate(beta)
    for _ in range(50):
        information = X.T @ (weight[:, None] * X) + 1e-8 * np.eye(X.shape[1])
        step = np.linalg.solve(information, X.T @ score)
        scale = 1.0
        while scale > 1e-4:
            new_value, new_score, new_weight = evaluate(beta + scale * step)
            if np.isfinite(new_value) and new_value >= value - 1e-10:
                break
            scale /= 2.0
        else:
            break
        beta = beta + scale * step
        converged = new_value - value < 1e-8
        value, score, weight = new_value, new_score, new_weight
        if converged:
            break
    scale_tril = []
    for term in model.random_terms:
        z = np.ones((len(y), 1)) if term.z is None else term.z
        sds = [0.5 if np.all(z[:, c] == 1.0) else 0.1 / max(float(np.sqrt(np.mean(z[:, c] ** 2))), 1e-12)
               for c in range(term.dim)]
        scale_tril.append(np.diag(sds))
    return ModelParameters(beta, tuple(scale_tril), family.parameters_from_values(
        family.parameter_values({k: v.numpy() for k, v in natural.items()})))


def gaussian_initial_parameters(model: MixedModel) -> ModelParameters:
    """Fixed effects by least squares; variance components by method of moments.

    A random intercept's variance starts at the between-level variance of the
    least-squares residuals' level means, less their sampling variance; other
    coefficients start at a tenth of the residual variance over the mean square of
    their ``z``, uncorrelated.  The residual variance gets what is left.  Values are
    clipped away from zero so that EM can move them.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> from mixedfx.inference import initial_parameters
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(50), 20).astype(np.int32)
    >>> y = 1.0 + rng.normal(size=50)[g] + rng.normal(size=1000)
    >>> model = MixedModel(Gaussian(), np.ones((1000, 1)), y,
    ...                    (RandomTermData("g", g, None, 50),), ("Intercept",))
    >>> start = initial_parameters(model)
    >>> sd = start.random_scale_tril[0][0, 0]
    >>> bool(0.6 < sd < 1.4), bool(0.8 < start.family_params["sigma"] < 1.2)
    (True, True)
    """
    X = model.fixed_design
    y = model.response - (0.0 if model.offset is None else model.offset)
    if X.shape[1]:
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    else:
        beta = np.zeros(0)
    residual = y - X @ beta
    total = float(np.var(residual)) if residual.size > 1 else 1.0
    total = total if total > 0 else 1.0
    intercept_variance = []
    scale_tril = []
    for term in model.random_terms:
        counts = np.bincount(term.group_index, minlength=term.num_levels).astype(np.float64)
        sums = np.bincount(term.group_index, weights=residual, minlength=term.num_levels)
        seen = counts > 0
        means = sums[seen] / counts[seen]
        between = float(np.average((means - means.mean()) ** 2, weights=counts[seen])) if seen.sum() > 1 else 0.0
        noise = float(np.mean(total / counts[seen]))
        between = float(np.clip(between - noise, 0.05 * total, total))
        z = np.ones((len(y), 1)) if term.z is None else term.z
        variances = []
        for c in range(term.dim):
            if np.all(z[:, c] == 1.0):
                variances.append(between)
                intercept_variance.append(between)
            else:
                variances.append(0.1 * total / max(float(np.mean(z[:, c] ** 2)), 1e-12))
        scale_tril.append(np.diag(np.sqrt(variances)))
    sigma2 = float(np.clip(total - sum(intercept_variance), 0.1 * total, total))
    return ModelParameters(
        fixed_effects=np.asarray(beta, dtype=np.float64),
        random_scale_tril=tuple(scale_tril),
        family_params={"sigma": float(np.sqrt(sigma2))},
    )


def conditional_modes(model: MixedModel, params: ModelParameters, *, max_sweeps: int = 100) -> tuple[np.ndarray, ...]:
    """The random effects' conditional modes given ``params``, by damped Newton's method.

    :func:`mixedfx.model.laplace_mode` with the family's expected information as the
    curvature, from zero.  The E-step restarts its chains here when, started
    elsewhere, they produced non-finite values or only divergent transitions: with very informative data (counts in the
    millions, say) the conditional distribution of the random effects is so narrow
    that HMC cannot travel to it from zero.

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
    max_sweeps : int, default 100
        Newton iterations at most.

    Returns
    -------
    tuple of numpy.ndarray
        Per term, ``(num_levels, dim)``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import MixedModel, ModelParameters, Poisson
    >>> from mixedfx.inference import conditional_modes
    >>> g = np.repeat(np.arange(3), 4).astype(np.int32)
    >>> y = np.repeat([1e6, 2e6, 4e6], 4)
    >>> model = MixedModel(Poisson(), np.ones((12, 1)), y, (RandomTermData("g", g, None, 3),), ("Intercept",))
    >>> modes = conditional_modes(model, ModelParameters(np.array([np.log(2e6)]), (np.array([[1.0]]),), {}))
    >>> (np.round(modes[0][:, 0], 3) + 0.0).tolist()
    [-0.693, 0.0, 0.693]
    """
    return laplace_mode(model, params, curvature="expected", max_iterations=max_sweeps).modes
