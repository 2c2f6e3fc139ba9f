"""Zero-truncated counts: glmmTMB's ``truncated_poisson``, ``truncated_nbinom2`` and
``truncated_nbinom1`` families, one class parametrised by its count family.

A zero-truncated response is positive: ``p(y) = f(y) / (1 - f(0))`` for ``y > 0``, ``f``
the count family's.  Its linear predictor is that of ``mu`` (the untruncated mean,
glmmTMB's ``predict(type = "link")``); the response's mean is ``mu / (1 - f(0))``
(``type = "conditional"``).  With a ``ziformula`` it is glmmTMB's hurdle model
(:class:`~mixedfx.model.zero_inflation.Hurdle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from mixedfx._tf import tf, tfp
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model.families import ALIASES, FAMILIES, Family, NegativeBinomial, Poisson
from mixedfx.model.glmmtmb_families import NegativeBinomial1
from mixedfx.model.zero_inflation import PositivePart

__all__ = ["ZeroTruncated", "TruncatedPoisson", "TruncatedNegativeBinomial", "TruncatedNegativeBinomial1"]

#: Rounds of rejection sampling (each redraws the rows still at zero) before a row is set to 1.
_SAMPLE_ROUNDS = 200


class ZeroTruncatedCounts(PositivePart):
    """A TFP count distribution conditioned on being positive (the response distribution of
    :class:`ZeroTruncated`; sampled by redrawing the zeros).  The shapes and the wrapping
    come from :class:`~mixedfx.model.zero_inflation.PositivePart`; the density is
    renormalised by ``1 - f(0)``.

    Parameters
    ----------
    distribution : tfd.Distribution
        A scalar-event count distribution (Poisson, negative binomial).
    """

    def __init__(self, distribution, name="ZeroTruncatedCounts"):
        super().__init__(distribution, name=name)

    @property
    def counts(self):
        """The count distribution before truncation."""
        return self.distribution

    def _log_prob(self, value):
        value = tf.convert_to_tensor(value, self.dtype)
        positive = value > 0
        safe = tf.where(positive, value, tf.ones_like(value))
        log_positive = self._distribution.log_prob(safe) - _log1m_exp(self._distribution.log_prob(tf.zeros_like(value)))
        return tf.where(positive, log_positive, tf.constant(-np.inf, self.dtype))

    def _mean(self):
        log_f0 = self._distribution.log_prob(tf.zeros([], self.dtype))
        return self._distribution.mean() / -tf.math.expm1(log_f0)

    def _sample_n(self, n, seed=None):
        seed = tf.random.experimental.stateless_split(tfp.random.sanitize_seed(seed), 2)
        draws = self._distribution.sample(n, seed=seed[0])

        def redraw(k, draws, key):
            key, use = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            return k + 1, tf.where(draws > 0, draws, self._distribution.sample(n, seed=use)), key

        def zeros_left(k, draws, key):
            return (k < _SAMPLE_ROUNDS) & tf.reduce_any(draws <= 0)

        _, draws, _ = tf.while_loop(zeros_left, redraw, (tf.constant(0), draws, seed[1]))
        return tf.where(draws > 0, draws, tf.ones_like(draws))  # f(0) ~ 1: the truncated law is ~ all at 1


def _log1m_exp(log_p):
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, stable at both ends."""
    return tf.where(log_p > -0.693, tf.math.log(-tf.math.expm1(log_p)), tf.math.log1p(-tf.exp(log_p)))


@dataclass(frozen=True)
class ZeroTruncated(Family):
    """A count family truncated at zero: glmmTMB's ``truncated_poisson``, ``truncated_nbinom2``
    and ``truncated_nbinom1``.

    The density is ``f(y) / (1 - f(0))`` for ``y > 0``; a zero in the response is a
    DataError (give a ``ziformula`` for the hurdle model).  The parameters and the link
    are the count family's.

    Parameters
    ----------
    base : Family
        The count family: Poisson, nbinom2 or nbinom1.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Poisson, ZeroTruncated
    >>> family = ZeroTruncated(Poisson())
    >>> family.name, family.link
    ('truncated_poisson', 'log')
    >>> eta = np.log([2.0])
    >>> float(np.exp(family.log_prob(eta, {}, np.array([1.0])).numpy()[0])).__round__(6)  # 2 e^-2 / (1 - e^-2)
    0.313035
    >>> family.response_mean(eta, {}).round(6).tolist()  # 2 / (1 - e^-2)
    [2.313035]
    >>> family.validate_response(np.array([1.0, 0.0]), name="count")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: the truncated_poisson response 'count' must be positive (zero-truncated); found 1 zero(s) (give a ziformula for glmmTMB's hurdle model)
    """

    zero_inflatable: ClassVar[bool] = True  # a hurdle model
    base: Family = field(default_factory=Poisson)

    # -- what the family is: the count family's ------------------------------------------------
    @property
    def name(self) -> str:
        return "truncated_" + (self.base.glmmtmb_name or self.base.name)

    @property
    def glmmtmb_name(self) -> str:
        return self.name

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.base.parameter_names

    @property
    def has_dispersion(self) -> bool:
        return self.base.has_dispersion

    @property
    def link(self) -> str:
        return self.base.link

    @property
    def glmmtmb_dispersion_power(self) -> float:
        """The count family's (a ``dispformula`` drives its dispersion)."""
        return self.base.glmmtmb_dispersion_power

    def __str__(self) -> str:
        return f"{self.name} ({self.link} link)"

    def zero_inflated(self, zi_names) -> Family:
        """glmmTMB's hurdle model: this family for the positive counts, a logistic model of
        ``P(y = 0)`` on a design whose columns are ``zi_names``."""
        from mixedfx.model.zero_inflation import Hurdle

        return Hurdle(self, tuple(zi_names))

    # -- the likelihood -----------------------------------------------------------------------
    def distribution(self, linear_predictor, parameters, *, trials=None):
        return ZeroTruncatedCounts(self.base.distribution(linear_predictor, parameters, trials=trials))

    def log_prob(self, linear_predictor, parameters, response, *, trials=None):
        """``log f(y) - log(1 - f(0))`` for ``y > 0`` (the count family's own log_prob), and
        ``-inf`` at zero (with a zero gradient there)."""
        eta = tf.convert_to_tensor(linear_predictor)
        response = tf.cast(tf.convert_to_tensor(response), eta.dtype)
        positive = response > 0
        safe = tf.where(positive, response, tf.ones_like(response))
        log_zero = self.base.log_prob(eta, parameters, tf.zeros_like(safe), trials=trials)
        value = self.base.log_prob(eta, parameters, safe, trials=trials) - _log1m_exp(log_zero)
        return tf.where(positive, value, tf.constant(-np.inf, eta.dtype))

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """The count family's weight (starts and preconditions the fit; the likelihood is exact)."""
        return self.base.fisher_weight(linear_predictor, parameters, trials=trials)

    def mean(self, linear_predictor, parameters=None):
        """``mu``, the inverse link (the untruncated mean; see :meth:`response_mean`)."""
        return self.base.mean(linear_predictor, parameters)

    def variance(self, mean, parameters, *, trials=None):
        """Refused: the truncated response's variance is :meth:`response_variance`; r2 and the
        ICC have no distribution-specific variance for a truncated family (performance's
        differs by version)."""
        raise ParameterError(self.r2_refusal())

    def r2_refusal(self) -> str:
        """The zero-truncated response has no distribution-specific variance of performance's kind."""
        return (f"the {self.name} family has no distribution-specific variance for r2 or the ICC (the response is "
                "zero-truncated); they are not defined for it")

    def _log_zero_probability(self, linear_predictor, parameters):
        """``log f(0)`` of each row (numpy): the count family's probability of a zero."""
        eta = tf.constant(np.asarray(linear_predictor, dtype=np.float64))
        tensors = {k: tf.constant(np.asarray(v, dtype=np.float64)) for k, v in parameters.items()}
        return self.base.log_prob(eta, tensors, tf.zeros_like(eta)).numpy()

    def response_mean(self, linear_predictor, parameters, *, rows=None):
        """``mu / (1 - f(0))``: glmmTMB's ``predict(type = "response")`` and ``"conditional"``."""
        mu = self.mean(linear_predictor, parameters)
        return mu / -np.expm1(self._log_zero_probability(linear_predictor, parameters))

    def response_variance(self, linear_predictor, parameters, *, rows=None):
        """``(v + mu^2) / (1 - f(0)) - m^2``, ``v`` the count family's variance and ``m`` the
        truncated mean."""
        mu = self.mean(linear_predictor, parameters)
        keep = -np.expm1(self._log_zero_probability(linear_predictor, parameters))
        return np.maximum((self.base.variance(mu, parameters) + mu**2) / keep - (mu / keep) ** 2, 0.0)

    def response_quantile_at(self, linear_predictor, q, parameters, *, rows=None):
        """The count family's quantile ``f(0) + q (1 - f(0))``."""
        f0 = np.exp(self._log_zero_probability(linear_predictor, parameters))
        mu = self.mean(linear_predictor, parameters)
        return np.maximum(self.base.response_quantile(mu, f0 + q * (1.0 - f0), parameters), 1.0)

    def response_quantile(self, mean, q, parameters):
        return self.response_quantile_at(np.log(np.asarray(mean, dtype=np.float64)), q, parameters)

    # -- the family's own parameters: the count family's -----------------------------------------
    def constrain(self, free):
        return self.base.constrain(free)

    def initial_free(self, response, linear_predictor, *, trials=None):
        return self.base.initial_free(response, linear_predictor, trials=trials)

    def free_from_parameters(self, parameters):
        return self.base.free_from_parameters(parameters)

    def parameter_values(self, parameters):
        return self.base.parameter_values(parameters)

    def parameters_from_values(self, values):
        return self.base.parameters_from_values(values)

    def parameter_labels(self):
        return self.base.parameter_labels()

    def positive_parameters(self):
        return self.base.positive_parameters()

    def parameter_scale(self, values, response, n_obs):
        return self.base.parameter_scale(values, response, n_obs)

    def validate_response(self, response, *, trials=None, name):
        values, trials = self.base.validate_response(response, trials=trials, name=name)
        if np.any(values == 0):
            raise DataError(f"the {self.name} response {name!r} must be positive (zero-truncated); found "
                            f"{int(np.sum(values == 0))} zero(s) (give a ziformula for glmmTMB's hurdle model)")
        return values, trials

    def parameter_lines(self, parameters):
        if "dispersion" not in self.parameter_names:
            return []
        return [f"Dispersion parameter for {self.name} family (): {float(parameters['dispersion']):.4g}"]


@dataclass(frozen=True)
class TruncatedPoisson(ZeroTruncated):
    """``ZeroTruncated(Poisson())``: glmmTMB's ``truncated_poisson`` (the registered name).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import TruncatedPoisson
    >>> TruncatedPoisson().response_mean(np.log([2.0]), {}).round(4).tolist()  # 2 / (1 - exp(-2))
    [2.313]
    """

    base: Family = field(default_factory=Poisson)


@dataclass(frozen=True)
class TruncatedNegativeBinomial(ZeroTruncated):
    """``ZeroTruncated(NegativeBinomial())``: glmmTMB's ``truncated_nbinom2``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import TruncatedNegativeBinomial
    >>> family = TruncatedNegativeBinomial()
    >>> family.response_mean(np.log([2.0]), {"dispersion": 1.0}).round(4).tolist()  # 2 / (1 - (1 / 3)^1)
    [3.0]
    """

    base: Family = field(default_factory=NegativeBinomial)


@dataclass(frozen=True)
class TruncatedNegativeBinomial1(ZeroTruncated):
    """``ZeroTruncated(NegativeBinomial1())``: glmmTMB's ``truncated_nbinom1``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import TruncatedNegativeBinomial1
    >>> family = TruncatedNegativeBinomial1()  # variance mu (1 + phi): size mu / phi = 2, f(0) = (1 / 2)^2
    >>> family.response_mean(np.log([2.0]), {"dispersion": 1.0}).round(4).tolist()
    [2.6667]
    """

    base: Family = field(default_factory=NegativeBinomial1)


FAMILIES.update({"truncated_poisson": TruncatedPoisson, "truncated_nbinom2": TruncatedNegativeBinomial,
                 "truncated_nbinom1": TruncatedNegativeBinomial1})
ALIASES.update({"truncated_negative_binomial": "truncated_nbinom2"})
