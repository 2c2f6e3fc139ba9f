"""Warm starts: cheap initial values for Monte Carlo EM."""

from __future__ import annotations

import numpy as np

from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["initial_parameters"]


def initial_parameters(model: MixedModel) -> ModelParameters:
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
    X, y = model.fixed_design, model.response
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
