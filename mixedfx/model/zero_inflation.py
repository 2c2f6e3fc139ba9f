"""Zero inflation and hurdles: glmmTMB's ``ziformula``, a family that wraps a count family.

The response is zero with probability ``pi = logistic(X_zi @ zi)``, and otherwise
drawn from the base family: with zero inflation (:class:`ZeroInflated`) one that may
give a zero too; with a family that gives no zeros, glmmTMB's hurdle model
(:class:`Hurdle`): a zero-truncated count family (:class:`~mixedfx.model.ZeroTruncated`,
density ``g(y) = f(y) / (1 - f(0))``) or a positive continuous one (the Gamma,
glmmTMB's ``ziGamma``, ``g = f``):

    zero inflation:  p(0) = pi + (1 - pi) f(0),    p(y) = (1 - pi) f(y)    for y > 0,
    hurdle:          p(0) = pi,                    p(y) = (1 - pi) g(y)    for y > 0.

Both share :class:`ZeroPart`, which owns the zero part; each owns its whole density.  The
zero-part coefficients ``zi`` are its own parameters (unconstrained, after the count family's), so that the
M-step estimates them with the family's other parameters.  Its per-row data, the
zero-inflation design ``X_zi``, travel where a family's per-row data go (the
``trials=`` argument of the family's methods; see
:attr:`~mixedfx.model.MixedModel.family_rows`): the layers that carry them never look
inside.  The design itself is built (and replayed at predict) by the design layer
(:func:`~mixedfx.design.build_fixed_design` on the ``ziformula``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from mixedfx._tf import tf, tfd
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model.families import Family, _numeric

__all__ = ["ZeroPart", "ZeroInflated", "Hurdle"]

#: glmmTMB's prefix of the zero-inflation coefficients (``zi~(Intercept)``).
ZI_PREFIX = "zi~"

#: The parameter key under which the zero part's linear predictor gets its random part
#: (see :meth:`ZeroPart.with_predictor_offsets`).
ZI_OFFSET = "zi_offset"


@dataclass(frozen=True)
class ZeroPart(Family):
    """A count family and a logistic model of a zero part (the base of :class:`ZeroInflated`
    and :class:`Hurdle`): the zi coefficients, the per-row design, the distribution (a
    mixture of a point mass at zero and the count family) and the response's moments and
    quantiles given ``pi``.

    Parameters
    ----------
    base : Family
        The count family (for :class:`Hurdle`, one that gives no zeros: a zero-truncated
        count family, or the Gamma).
    zi_names : tuple of str
        Names of the zero-part design's columns (``"Intercept"``, ...).
    """

    base: Family
    zi_names: tuple[str, ...]

    # -- what the family is -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.base.name

    @property
    def glmmtmb_name(self) -> str:
        return self.base.glmmtmb_name

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return (*self.base.parameter_names, "zi")

    @property
    def has_dispersion(self) -> bool:
        return self.base.has_dispersion

    @property
    def link(self) -> str:
        return self.base.link

    @property
    def glmmtmb_dispersion_power(self) -> float:
        return self.base.glmmtmb_dispersion_power

    @property
    def takes_trial_weights(self) -> bool:
        return self.base.takes_trial_weights

    @property
    def runaway_bound(self):
        return self.base.runaway_bound

    def trials_from_proportion(self, response, trials):
        return self.base.trials_from_proportion(response, trials)

    def variation_values(self, response, *, trials=None):
        return self.base.variation_values(response, trials=trials)

    def separation_cuts(self, response, *, trials=None):
        return self.base.separation_cuts(response, trials=trials)

    def _n_base(self) -> int:
        return len(self.base.parameter_labels())

    def coefficient_block(self):
        return "zi", self.zi_names

    def linear_predictors(self) -> tuple[str, ...]:
        """The count family's and the zero part's (glmmTMB's ``cond`` and ``zi``)."""
        return (*self.base.linear_predictors(), "zi")

    def with_predictor_offsets(self, parameters, offsets):
        """The random part of the zero part's linear predictor travels as the parameter
        ``zi_offset`` (per row), which :meth:`log_prob` and the other methods add to
        ``X_zi @ zi``; the count family's own keys go to it."""
        offsets = dict(offsets)
        zi = offsets.pop("zi", None)
        parameters = self.base.with_predictor_offsets(parameters, offsets)
        return parameters if zi is None else {**parameters, ZI_OFFSET: zi}

    def row_data(self, *, trials, design):
        """The per-row data of :meth:`log_prob`: the zero-inflation design, and a binomial's
        trials as its last column."""
        design = self.own_design(design, "zi")
        return np.column_stack([design, trials]) if self.base.takes_trial_weights else design

    def _split(self, rows, dtype):
        """``(zero-inflation design, the base family's trials or None)`` of the per-row data."""
        rows = tf.cast(tf.convert_to_tensor(rows), dtype)
        return rows[..., :len(self.zi_names)], (rows[..., -1] if self.base.takes_trial_weights else None)

    def _split_numpy(self, rows):
        """:meth:`_split` in numpy."""
        rows = np.asarray(rows, dtype=np.float64)
        return rows[..., :len(self.zi_names)], (rows[..., -1] if self.base.takes_trial_weights else None)

    def zero_probability(self, design, parameters) -> np.ndarray:
        """``pi`` of each row (numpy), from its zero-inflation design row (and the random
        part ``zi_offset`` of its linear predictor, when the parameters carry one)."""
        logits = np.asarray(design, dtype=np.float64) @ np.asarray(parameters["zi"], dtype=np.float64)
        return special.expit(logits + np.asarray(parameters.get(ZI_OFFSET, 0.0), dtype=np.float64))

    def _zi_logits(self, design, parameters, dtype):
        """``X_zi @ zi`` (plus ``zi_offset``, the random part, when given; it may carry
        leading sample dimensions)."""
        logits = tf.linalg.matvec(design, tf.cast(tf.convert_to_tensor(parameters["zi"]), dtype))
        if ZI_OFFSET in parameters:
            logits = logits + tf.cast(tf.convert_to_tensor(parameters[ZI_OFFSET]), dtype)
        return logits

    # -- the likelihood ---------------------------------------------------------------------------
    def distribution(self, linear_predictor, parameters, *, trials=None):
        """A two-component :class:`tfd.Mixture`: a point mass at zero and the count family."""
        eta = tf.convert_to_tensor(linear_predictor)
        design, base_trials = self._split(trials, eta.dtype)
        logits = self._zi_logits(design, parameters, eta.dtype) + tf.zeros_like(eta)
        counts = self._non_zero_part(self.base.distribution(eta, parameters, trials=base_trials))
        return tfd.Mixture(cat=tfd.Categorical(logits=tf.stack([logits, tf.zeros_like(logits)], axis=-1)),
                           components=[tfd.Deterministic(tf.zeros_like(eta)), counts])

    def _non_zero_part(self, distribution):
        """The mixture's second component, given the base family's distribution."""
        return distribution

    def _base_response(self, response, zero):
        """The response at which the base family's log_prob is evaluated (``zero``: the zero rows)."""
        return response

    def log_prob(self, linear_predictor, parameters, response, *, trials=None):
        """``log p(y)``: ``log(1 - pi) + log f(y)`` for ``y > 0``, and the subclass's
        :meth:`_log_prob_of_zero` at zero (the same value as :meth:`distribution`'s,
        stable for large logits)."""
        eta = tf.convert_to_tensor(linear_predictor)
        design, base_trials = self._split(trials, eta.dtype)
        logits = self._zi_logits(design, parameters, eta.dtype)
        response = tf.cast(tf.convert_to_tensor(response), eta.dtype)
        zero = tf.equal(response, 0.0)
        counts = self.base.log_prob(eta, parameters, self._base_response(response, zero), trials=base_trials)
        log_pi, log_keep = tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)
        return tf.where(zero, self._log_prob_of_zero(log_pi + tf.zeros_like(counts), log_keep + counts),
                        log_keep + counts)

    def _log_prob_of_zero(self, log_pi, log_keep_zero):
        """``log p(0)`` from ``log pi`` and ``log((1 - pi) f(0))``."""
        raise NotImplementedError

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """The count family's weight times ``1 - pi`` (starts and preconditions the fit;
        the likelihood is exact)."""
        eta = tf.convert_to_tensor(linear_predictor)
        design, base_trials = self._split(trials, eta.dtype)
        keep = tf.sigmoid(-self._zi_logits(design, parameters, eta.dtype))
        return keep * self.base.fisher_weight(eta, parameters, trials=base_trials)

    def mean(self, linear_predictor, parameters=None):
        """``mu``, the count family's inverse link (see :meth:`response_mean`)."""
        return self.base.mean(linear_predictor, parameters)

    def variance(self, mean, parameters, *, trials=None):
        """Refused (see :meth:`r2_refusal`); the response's own is :meth:`response_variance`."""
        raise ParameterError(self.r2_refusal())

    def r2_refusal(self) -> str:
        """The response's variance depends on each row's zero probability: no one
        distribution-specific variance for r2 or the ICC (performance approximates one;
        mixedfx does not)."""
        return (f"the {self} family has no single distribution-specific variance (it depends on each row's zero "
                "probability): r2 and the ICC are not defined for it")

    # -- the response given pi: zero with probability pi, else the count family's ------------------
    def response_mean(self, linear_predictor, parameters, *, rows=None):
        """``(1 - pi) m``, ``m`` the count family's mean (glmmTMB's ``type = "response"``)."""
        design, base_rows = self._split_numpy(rows)
        keep = 1.0 - self.zero_probability(design, parameters)
        return keep * self.base.response_mean(linear_predictor, parameters, rows=base_rows)

    def conditional_mean(self, linear_predictor, parameters, *, rows=None):
        """The count family's mean ``m`` (glmmTMB's ``type = "conditional"``)."""
        return self.base.response_mean(linear_predictor, parameters, rows=self._split_numpy(rows)[1])

    def response_variance(self, linear_predictor, parameters, *, rows=None):
        """``(1 - pi) (v + pi m^2)``, ``m`` and ``v`` the count family's mean and variance
        (in counts for the binomial)."""
        design, base_rows = self._split_numpy(rows)
        pi = self.zero_probability(design, parameters)
        count = self.base.response_mean(linear_predictor, parameters, rows=base_rows)
        count = count if base_rows is None else count * base_rows
        variance = self.base.response_variance(linear_predictor, parameters, rows=base_rows)
        return (1.0 - pi) * (variance + pi * count**2)

    def response_quantile_at(self, linear_predictor, q, parameters, *, rows=None):
        """0 where ``q <= pi``; else the count family's quantile ``(q - pi) / (1 - pi)``."""
        design, base_rows = self._split_numpy(rows)
        pi = self.zero_probability(design, parameters)
        inner = np.clip((q - pi) / np.maximum(1.0 - pi, 1e-300), 0.0, 1.0)
        counts = self.base.response_quantile_at(linear_predictor, inner, parameters, rows=base_rows)
        return np.where(q <= pi, 0.0, counts)

    def response_quantile(self, mean, q, parameters):
        raise NotImplementedError(f"response quantiles of the {self} family depend on each row's zero probability")

    # -- the family's own parameters: the count family's, then zi ------------------------------------
    def constrain(self, free):
        n = self._n_base()
        return {**self.base.constrain(free[:n]), "zi": free[n:]}

    def initial_free(self, response, linear_predictor, *, trials=None):
        zi = np.zeros(len(self.zi_names))
        return np.concatenate([self.base.initial_free(response, linear_predictor), zi])

    def free_from_parameters(self, parameters):
        zi = np.atleast_1d(np.asarray(parameters["zi"], dtype=np.float64))
        return np.concatenate([self.base.free_from_parameters(parameters), zi])

    def parameter_values(self, parameters):
        zi = np.atleast_1d(np.asarray(parameters["zi"], dtype=np.float64))
        return np.concatenate([self.base.parameter_values(parameters), zi])

    def parameters_from_values(self, values):
        values = np.atleast_1d(np.asarray(values, dtype=float))
        n = self._n_base()
        return {**self.base.parameters_from_values(values[:n]), "zi": values[n:]}

    def parameter_labels(self):
        return (*self.base.parameter_labels(), *(ZI_PREFIX + _r_name(name) for name in self.zi_names))

    def positive_parameters(self):
        return (*self.base.positive_parameters(), *(False,) * len(self.zi_names))

    def parameter_scale(self, values, response, n_obs):
        n = self._n_base()
        # a logistic coefficient's SE, pi near 1/2, from the zeros (the rows that inform it)
        n_zero = max(int(np.sum(np.asarray(response) == 0)), 1)
        zi = np.full(len(values) - n, 4.0 / np.sqrt(n_zero))
        return np.concatenate([self.base.parameter_scale(values[:n], response, n_obs), zi])

    def validate_response(self, response, *, trials=None, name):
        return self.base.validate_response(response, trials=trials, name=name)

    def parameter_lines(self, parameters):
        """The count family's lines (the summary prints the zero-inflation table itself)."""
        return self.base.parameter_lines(parameters)


@dataclass(frozen=True)
class ZeroInflated(ZeroPart):
    """A count family with a logistic zero-inflation model: glmmTMB's ``ziformula``.

    Parameters
    ----------
    base : Family
        The count family (Poisson, nbinom2, nbinom1, or the binomial: zero successes).
    zi_names : tuple of str
        Names of the zero-inflation design's columns (``"Intercept"``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Poisson
    >>> family = Poisson().zero_inflated(("Intercept",))
    >>> family.parameter_labels(), family.link
    (('zi~(Intercept)',), 'log')
    >>> eta, design = np.log([2.0, 2.0]), np.ones((2, 1))
    >>> params = {"zi": np.array([0.0])}  # pi = 1/2
    >>> lp = family.log_prob(eta, params, np.array([0.0, 1.0]), trials=design).numpy()
    >>> np.exp(lp).round(6).tolist()  # 1/2 + 1/2 exp(-2); 1/2 * 2 exp(-2)
    [0.567668, 0.135335]
    >>> family.zero_probability(design, params).tolist()
    [0.5, 0.5]
    """


    def __str__(self) -> str:
        return f"zero-inflated {self.base}"

    def _log_prob_of_zero(self, log_pi, log_keep_zero):
        """``log(pi + (1 - pi) f(0))`` by log-sum-exp."""
        return tf.reduce_logsumexp(tf.stack([log_pi, log_keep_zero]), axis=0)


@dataclass(frozen=True)
class Hurdle(ZeroPart):
    """glmmTMB's hurdle model: a family that gives no zeros and a logistic model of
    ``P(y = 0)``: ``family = truncated_poisson``, ``truncated_nbinom2``,
    ``truncated_nbinom1`` or ``ziGamma`` with a ``ziformula``.

    ``p(0) = pi``, ``p(y) = (1 - pi) g(y)`` for ``y > 0``, ``g`` the base family's density:
    a zero-truncated count family's ``f(y) / (1 - f(0))``, or a positive continuous
    family's (the Gamma: ``P(y = 0)`` is 0 there, so nothing to truncate).

    Parameters
    ----------
    base : Family
        The family of the positive responses: a :class:`~mixedfx.model.ZeroTruncated`
        count family, or :class:`~mixedfx.model.Gamma`.
    zi_names : tuple of str
        Names of the zero part's design columns.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import TruncatedPoisson
    >>> family = TruncatedPoisson().zero_inflated(("Intercept",))
    >>> str(family), family.parameter_labels()
    ('hurdle truncated_poisson (log link)', ('zi~(Intercept)',))
    >>> eta, design, params = np.log([2.0, 2.0]), np.ones((2, 1)), {"zi": np.array([0.0])}
    >>> lp = family.log_prob(eta, params, np.array([0.0, 1.0]), trials=design).numpy()
    >>> np.exp(lp).round(6).tolist()  # 1/2; 1/2 * 2 e^-2 / (1 - e^-2)
    [0.5, 0.156518]
    >>> family.response_mean(eta, params, rows=design).round(6).tolist()  # 1/2 * 2 / (1 - e^-2)
    [1.156518, 1.156518]
    """

    def __str__(self) -> str:
        return f"hurdle {self.base}"

    def _log_prob_of_zero(self, log_pi, log_keep_zero):
        """``log pi``: the base family gives no zero."""
        return log_pi

    def _base_response(self, response, zero):
        """Ones at the zero rows: the base family's value there is never used (``p(0) = pi``),
        and a continuous family's density at 0 may be infinite (its gradient a NaN)."""
        return tf.where(zero, tf.ones_like(response), response)

    def _non_zero_part(self, distribution):
        """The base family's distribution with no density at zero (:class:`PositivePart`)."""
        return PositivePart(distribution)

    def validate_response(self, response, *, trials=None, name):
        """Zeros (the zero part's), and the base family's checks on the positive rows; a
        negative value is a DataError naming the column."""
        values = _numeric(response, name, str(self))
        if np.any(values < 0):
            raise DataError(f"the {self} response {name!r} must be zero or positive; found "
                            f"{float(values[values < 0][0])!r} ({int(np.sum(values < 0))} negative row(s))")
        positive = values > 0
        rows = None if trials is None else np.asarray(trials)[positive]
        _, base_trials = self.base.validate_response(values[positive], trials=rows, name=name)
        return values, (None if base_trials is None else trials)


class PositivePart(tfd.Distribution):
    """A scalar distribution restricted to ``y > 0``: its log density there, ``-inf`` at
    and below zero (the non-zero component of :class:`Hurdle`'s mixture: a continuous
    family's density at 0 may be infinite, a zero-truncated one's is already ``-inf``).

    Parameters
    ----------
    distribution : tfd.Distribution
        A scalar-event distribution on the positive numbers (or the positive counts).
    """

    def __init__(self, distribution, name="PositivePart"):
        parameters = dict(locals())
        self._distribution = distribution
        super().__init__(dtype=distribution.dtype, reparameterization_type=tfd.NOT_REPARAMETERIZED,
                         validate_args=False, allow_nan_stats=True, parameters=parameters, name=name)

    @property
    def distribution(self):
        return self._distribution

    def _batch_shape(self):
        return self._distribution.batch_shape

    def _batch_shape_tensor(self):
        return self._distribution.batch_shape_tensor()

    def _event_shape(self):
        return tf.TensorShape([])

    def _event_shape_tensor(self):
        return tf.constant([], dtype=tf.int32)

    def _log_prob(self, value):
        value = tf.convert_to_tensor(value, self.dtype)
        positive = value > 0
        log_density = self._distribution.log_prob(tf.where(positive, value, tf.ones_like(value)))
        return tf.where(positive, log_density, tf.constant(-np.inf, self.dtype))

    def _mean(self):
        return self._distribution.mean()

    def _sample_n(self, n, seed=None):
        return self._distribution.sample(n, seed=seed)


def _r_name(name: str) -> str:
    """R's spelling of an intercept column."""
    return "(Intercept)" if name == "Intercept" else name
