"""The Matérn correlation of the ``mat`` structure (:class:`mixedfx.model.covariance.Matern`):
TMB's ``matern``, twice differentiable in its range and its smoothness, and scipy's, which
fits its start."""

from __future__ import annotations

import numpy as np
from scipy import special

from mixedfx._tf import tf

__all__ = ["log_bessel_k", "matern_correlation", "scipy_matern"]

# The Matérn correlation needs K_kappa(x) differentiable twice in kappa as well as in x
# (the M-step's Newton steps), which tfp.math.bessel_kve is not (no gradient in its order).
# K_kappa(x) = int_0^inf exp(-x cosh t) cosh(kappa t) dt, by the trapezoidal rule on a fixed
# grid, differentiates to any order in both.  The integrand is entire and decays doubly
# exponentially, so the rule's relative error is about exp(x - pi^2 / step): with step 0.1, below
# 1e-12 against scipy.special.kve for 1e-6 <= x <= 30 and 0.05 <= kappa <= 8, 3e-9 at x = 100
# (tests/test_matern.py), where the correlation is below 1e-40 anyway.  The end 20 keeps
# exp(-x cosh 20) negligible beside cosh(kappa 20) for x >= 1e-6 and kappa <= 10.
_BESSEL_STEP = 0.1
_BESSEL_NODES = np.arange(0.0, 20.0 + _BESSEL_STEP / 2, _BESSEL_STEP)
_BESSEL_LOG_WEIGHTS = np.log(np.where(_BESSEL_NODES == 0.0, _BESSEL_STEP / 2, _BESSEL_STEP))


def log_bessel_k(order, x):
    """``log K_order(x)``, the modified Bessel function of the second kind, for ``x > 0``
    and any real ``order``; twice differentiable in both (TF tensors, broadcast).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model.matern_kernel import log_bessel_k
    >>> round(float(np.exp(log_bessel_k(np.float64(0.5), np.float64(2.0)))), 9)  # sqrt(pi / 4) e^-2
    0.119937772
    """
    order = tf.abs(tf.convert_to_tensor(order, tf.float64))[..., None]  # K_-v = K_v
    x = tf.convert_to_tensor(x, tf.float64)[..., None]
    log_cosh = order * _BESSEL_NODES + tf.math.log1p(tf.exp(-2.0 * order * _BESSEL_NODES)) - np.log(2.0)
    return tf.reduce_logsumexp(-x * np.cosh(_BESSEL_NODES) + log_cosh + _BESSEL_LOG_WEIGHTS, axis=-1)


def matern_correlation(distances, log_range, log_kappa):
    """TMB's ``matern(d, range, kappa)``: ``x^kappa K_kappa(x) / (2^(kappa - 1) Gamma(kappa))``
    at ``x = d / range``, 1 at ``d = 0`` (with finite derivatives there), as a TF tensor.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model.matern_kernel import matern_correlation
    >>> d = np.array([0.0, 1.0, 2.0])
    >>> matern_correlation(d, np.log(2.0), np.log(0.5)).numpy().round(6).tolist()  # kappa 1/2: exp(-d / range)
    [1.0, 0.606531, 0.367879]
    """
    distances = tf.convert_to_tensor(distances, tf.float64)
    kappa = tf.exp(tf.convert_to_tensor(log_kappa, tf.float64))
    log_range = tf.convert_to_tensor(log_range, tf.float64)
    apart = distances > 0.0
    x = tf.where(apart, distances, tf.ones_like(distances)) * tf.exp(-log_range)  # no log(0) at d = 0
    log_corr = (kappa * tf.math.log(x) + log_bessel_k(kappa, x) - (kappa - 1.0) * np.log(2.0)
                - tf.math.lgamma(kappa))
    return tf.where(apart, tf.exp(tf.minimum(log_corr, 0.0)), tf.ones_like(distances))


def scipy_matern(d, range_, kappa):
    """The Matérn correlation by scipy.special.kve (numpy; ``d > 0``)."""
    x = d / range_
    return np.exp(kappa * np.log(x) + np.log(special.kve(kappa, x)) - x - (kappa - 1.0) * np.log(2.0)
                  - special.gammaln(kappa))
