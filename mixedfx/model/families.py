"""Response families.

A family owns its likelihood, link, inverse link, mean, the constraints of its own
parameters (the residual sd, a dispersion, ordinal cutpoints) and the checks on the
response.  The joint-distribution builder and the inference layer only ask it.
Families hold no TensorFlow state: they are small frozen values, safe to pickle and to
compare.

Every family's own parameters live in an unconstrained vector (the "free" parameters)
mapped to their natural values by :meth:`Family.constrain`, so that the generic
M-step can optimize them freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import special, stats

from mixedfx._tf import tf, tfd
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model.own_models import OwnLinearModels

__all__ = [
    "Family",
    "Gaussian",
    "Bernoulli",
    "Binomial",
    "Poisson",
    "NegativeBinomial",
    "get_family",
    "FAMILIES",
]

_LINKS = ("logit", "probit")

#: Gaussian responses are fitted on scales (standard deviations) between these bounds.
RESPONSE_SCALE_LIMITS = (1e-50, 1e50)


@dataclass(frozen=True)
class Family(OwnLinearModels):
    """Base class of response families.

    Subclasses set :attr:`name`, :attr:`link`, :attr:`parameter_names` and implement
    :meth:`distribution`, :meth:`mean`, :meth:`fisher_weight` and
    :meth:`validate_response`; families with parameters of their own also implement
    :meth:`constrain`, :meth:`initial_free` and :meth:`parameter_scale`.

    Examples
    --------
    Every family answers the same questions:

    >>> from mixedfx.model import FAMILIES
    >>> for name, cls in FAMILIES.items():
    ...     family = cls()
    ...     print(f"{name:18} {family.link:9} {family.parameter_names}")
    gaussian           identity  ('sigma',)
    bernoulli          logit     ()
    binomial           logit     ()
    poisson            log       ()
    negative_binomial  log       ('dispersion',)
    ordinal            logit     ('cutpoints',)
    gamma              log       ('dispersion',)
    inverse_gaussian   log       ('dispersion',)
    nbinom1            log       ('dispersion',)
    beta               logit     ('dispersion',)
    t                  identity  ('sigma', 'df')
    betabinomial       logit     ('dispersion',)
    truncated_poisson  log       ()
    truncated_nbinom2  log       ('dispersion',)
    truncated_nbinom1  log       ('dispersion',)
    """

    name: ClassVar[str] = "family"
    #: Names of the family's own parameters, estimated in the M-step.
    parameter_names: ClassVar[tuple[str, ...]] = ()
    #: Whether the family has a free dispersion, so that a grouping factor with one
    #: level per row is confounded with the residual (lme4 refuses such lmer fits).
    has_dispersion: ClassVar[bool] = False
    #: Whether the response is a class label (a classifier's family).
    is_classification: ClassVar[bool] = False
    #: Whether the response given the random effects is normal with an identity link,
    #: so that the marginal likelihood, REML, the M-step and the conditional moments of
    #: the random effects have closed forms.
    conjugate_gaussian: ClassVar[bool] = False
    #: Whether response residuals (and Pearson residuals) are defined.
    has_residuals: ClassVar[bool] = True
    #: A classifier's family: whether it takes more than two classes.
    is_multiclass: ClassVar[bool] = False
    #: Whether ``sample_weight`` may give the trials of a proportion response (deprecated:
    #: pass ``trials=``).
    takes_trial_weights: ClassVar[bool] = False
    #: Whether prior weights are precisions (row ``i``'s residual variance ``sigma^2 / w_i``,
    #: lmer's ``weights=``), so that scaling the rows of ``X``, ``Z`` and ``y`` by ``sqrt(w)``
    #: gives an unweighted model with the same estimates.  Otherwise a weight multiplies
    #: the row's log-likelihood (glmer's, glmmTMB's and clmm's ``weights=``).
    weights_scale_rows: ClassVar[bool] = False
    #: How large a fixed effect can be, on the link scale, before a steady growth
    #: across the EM iterations means it is running off to infinity
    #: (:mod:`mixedfx.inference.runaway`); ``None``: never judged (an unbounded
    #: likelihood cannot arise from the fixed effects alone).
    runaway_bound: ClassVar[float | None] = None
    #: Standard deviations below this are tested for the boundary
    #: (:mod:`mixedfx.inference.boundary`): on the linear predictor's scale here, where
    #: Monte Carlo EM leaves a true zero at 0.06-0.12 (measured on bernoulli and Poisson
    #: data simulated with none); a multiple of the residual sd for the Gaussian family.
    boundary_candidate_sd: ClassVar[float] = 0.25
    #: The family's name in glmmTMB (the summary's "Dispersion parameter (...)" line).
    glmmtmb_name: ClassVar[str] = ""

    @property
    def link(self) -> str:
        return "identity"

    def parameter_lines(self, parameters: Mapping[str, object]) -> list[str]:
        """The summary's lines for the family's own parameters other than a residual sd
        (glmmTMB's "Dispersion parameter for nbinom2 family" line)."""
        if "dispersion" not in self.parameter_names:
            return []
        return [f"Dispersion parameter ({self.glmmtmb_name or self.name}): {float(parameters['dispersion']):.4g}"]

    # -- the likelihood ---------------------------------------------------------------------
    def distribution(self, linear_predictor, parameters: Mapping[str, tf.Tensor], *, trials=None) -> tfd.Distribution:
        """Distribution of the response given the linear predictor (batch over rows)."""
        raise NotImplementedError

    def log_prob(self, linear_predictor, parameters: Mapping[str, tf.Tensor], response, *, trials=None):
        """Each row's log-likelihood: ``distribution(...).log_prob(response)``.

        The inference code calls this, so that a family can compute it more cheaply
        than its distribution does (see :meth:`mixedfx.model.Ordinal.log_prob`).
        """
        return self.distribution(linear_predictor, parameters, trials=trials).log_prob(response)

    def weighted_log_prob(self, linear_predictor, parameters: Mapping[str, tf.Tensor], response, *, trials=None,
                          weights=None):
        """Each row's log-likelihood under prior weights ``w`` (lme4's ``weights=``).

        ``w`` times :meth:`log_prob`, so that an integer weight counts a row that many
        times; :class:`Gaussian` overrides it (precision weights).  ``weights=None`` is
        :meth:`log_prob`.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import Poisson
        >>> eta, y = np.log([2.0, 3.0]), np.array([1.0, 4.0])
        >>> family = Poisson()
        >>> weighted = family.weighted_log_prob(eta, {}, y, weights=np.array([2.0, 0.5]))
        >>> bool(np.allclose(weighted, [2.0, 0.5] * family.log_prob(eta, {}, y).numpy()))
        True
        """
        value = self.log_prob(linear_predictor, parameters, response, trials=trials)
        return value if weights is None else value * weights

    def weighted_fisher_weight(self, linear_predictor, parameters: Mapping[str, tf.Tensor], *, trials=None,
                               weights=None):
        """:meth:`fisher_weight` under prior weights ``w``: ``w`` times it, for every family
        (for the Gaussian too: ``w / sigma^2``)."""
        value = self.fisher_weight(linear_predictor, parameters, trials=trials)
        return value if weights is None else value * weights

    def mean(self, linear_predictor: np.ndarray, parameters: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Mean of the response per unit (per trial for the binomial), numpy."""
        raise NotImplementedError

    # -- the E-step's kernel -----------------------------------------------------------------
    #: Whether the response given the linear predictor is normal with a known precision
    #: per row, so that the random effects given the rest are Gaussian and the E-step can
    #: draw them exactly, block by block (:meth:`gaussian_rows`).
    conditionally_gaussian: ClassVar[bool] = False

    @property
    def preferred_e_step(self) -> str:
        """The E-step kernel this family prefers (``MCEMOptions(e_step="auto")``): ``"gibbs"``
        (:mod:`mixedfx.inference.gibbs`) where the random effects' conditionals are Gaussian."""
        return "gibbs" if self.conditionally_gaussian else "hmc"

    def gaussian_rows(self, linear_predictor, parameters: Mapping[str, tf.Tensor], response, *, trials=None,
                      weights=None):
        """``(precision, working_response)`` per row when ``log p(y | eta) = -precision
        (working_response - eta)^2 / 2 + const`` in the linear predictor ``eta``; ``None``
        for a family whose likelihood is not (the E-step then uses HMC).

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import Gaussian, Poisson
        >>> eta, y = np.zeros(2), np.array([1.0, 3.0])
        >>> precision, working = Gaussian().gaussian_rows(eta, {"sigma": 2.0}, y, weights=np.array([1.0, 4.0]))
        >>> precision.numpy().tolist(), working.numpy().tolist()  # w / sigma^2, y
        ([0.25, 1.0], [1.0, 3.0])
        >>> Poisson().gaussian_rows(eta, {}, y) is None, Gaussian().preferred_e_step, Poisson().preferred_e_step
        (True, 'gibbs', 'hmc')
        >>> Gaussian().with_dispersion_model(("Intercept",)).preferred_e_step  # dispformula: sigma per row
        'gibbs'
        """
        return None

    #: Whether the likelihood is logistic in the linear predictor, ``p(y | eta) propto
    #: exp(y eta) / (1 + exp(eta))^b``, so that Polya-Gamma variables ``omega ~ PG(b,
    #: eta)`` make it Gaussian in ``eta`` and the E-step can draw the random effects
    #: exactly, block by block, given them (:meth:`polya_gamma_rows`).
    polya_gamma_augmentable: ClassVar[bool] = False

    def polya_gamma_rows(self, response, *, trials=None, weights=None):
        """``(b, kappa)`` per row when ``log p(y | eta) = kappa eta - b log cosh(eta / 2) +
        const`` (``= y eta - b log(1 + exp(eta))`` with ``kappa = y - b / 2``; Polson, Scott
        & Windle 2013): given ``omega ~ PG(b, eta)`` the row is
        Gaussian in ``eta`` with precision ``omega`` and linear term ``kappa``
        (:mod:`mixedfx.inference.polya_gamma`); ``None`` for a family whose likelihood is
        not of that form.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import Binomial, Poisson
        >>> b, kappa = Binomial().polya_gamma_rows(np.array([1.0, 4.0]), trials=np.array([3.0, 5.0]))
        >>> b.numpy().tolist(), kappa.numpy().tolist()  # trials, successes - trials / 2
        ([3.0, 5.0], [-0.5, 1.5])
        >>> Poisson().polya_gamma_rows(np.array([1.0])) is None, Binomial(link_name="probit").polya_gamma_augmentable
        (True, False)
        """
        return None

    def fisher_weight(self, linear_predictor, parameters: Mapping[str, tf.Tensor], *, trials=None):
        """Expected information per row about the linear predictor."""
        raise NotImplementedError

    def variance(self, mean: np.ndarray, parameters: Mapping[str, object], *, trials=None) -> np.ndarray:
        """Variance of the response given its mean (numpy), for Pearson residuals."""
        raise NotImplementedError

    # -- the family's own parameters -------------------------------------------------------
    def constrain(self, free) -> dict:
        """Natural parameters from the unconstrained vector (a 1-D tensor)."""
        return {}

    def initial_free(self, response: np.ndarray, linear_predictor: np.ndarray, *, trials=None) -> np.ndarray:
        """Starting value of the unconstrained vector."""
        return np.zeros(0)

    def parameter_values(self, parameters: Mapping[str, object]) -> np.ndarray:
        """The family's parameters flattened in :attr:`parameter_labels` order."""
        if not self.parameter_names:
            return np.zeros(0)
        return np.concatenate([np.atleast_1d(np.asarray(parameters[k], dtype=float)) for k in self.parameter_names])

    def parameters_from_values(self, values) -> dict:
        """Inverse of :meth:`parameter_values` (single-valued parameters become floats)."""
        values = np.atleast_1d(np.asarray(values, dtype=float))
        if len(self.parameter_names) == 1 and values.shape[0] == 1:
            return {self.parameter_names[0]: float(values[0])}
        return {self.parameter_names[0]: values} if self.parameter_names else {}

    def free_from_parameters(self, parameters: Mapping[str, object]) -> np.ndarray:
        """The unconstrained vector of :meth:`constrain` for given natural parameters."""
        return np.zeros(0)

    def parameter_labels(self) -> tuple[str, ...]:
        """Names of the flattened parameters (``"sigma"``, ``"1|2"``, ...)."""
        return self.parameter_names

    def parameter_scale(self, values: np.ndarray, response: np.ndarray, n_obs: int) -> np.ndarray:
        """Statistical scale of each flattened parameter on the stopping rule's working
        scale (log for positive parameters)."""
        return np.full(len(values), 1.0 / np.sqrt(2.0 * n_obs))

    def positive_parameters(self) -> tuple[bool, ...]:
        """Which flattened parameters are positive (logged on the working scale)."""
        return (True,) * len(self.parameter_labels())

    def validate_response(self, response, *, trials=None, name: str):
        """Check and convert the response; returns ``(values, trials)`` as float64."""
        raise NotImplementedError

    # -- questions the layers above ask ------------------------------------------------------
    def weights_are_trials(self, response, trials) -> bool:
        """Whether ``sample_weight`` gives the trials of a proportion response (glmer's
        ``weights=`` with ``prop ~ ...``): a family with :attr:`takes_trial_weights`, no
        trials otherwise, and a numeric response with a value strictly between 0 and 1.
        A deprecated spelling: pass ``trials=``."""
        if not self.takes_trial_weights or trials is not None:
            return False
        values = np.asarray(response)
        if values.dtype.kind not in "biuf":
            return False
        values = values.astype(np.float64)
        return bool(np.any((values > 0) & (values < 1)))

    def trials_from_proportion(self, response, trials):
        """``(successes, trials)`` from a proportion response and its trials."""
        return np.round(np.asarray(response, dtype=np.float64) * trials, 8), np.asarray(trials, dtype=np.float64)

    def for_classes(self, classes) -> "Family":
        """The family for a classifier's sorted classes (raises if it cannot take them)."""
        return self

    def check_response_values(self, values: np.ndarray, name: str) -> None:
        """Refuse a constant response (lme4's "Response is constant")."""
        values = np.asarray(values, dtype=np.float64)
        if values.size and np.all(values == values[0]):
            raise DataError(
                f"Response is constant: every value of {name!r} is {values[0]:g}, so there is no variation for "
                "the model to explain (lme4 refuses this too)"
            )

    def check_fixed_design(self, *, has_intercept: bool, formula: str) -> None:
        """Refuse a fixed part the family cannot fit (see :class:`~mixedfx.model.Ordinal`)."""

    def exact_fit(self, fixed_design: np.ndarray, response: np.ndarray, offset) -> np.ndarray | None:
        """The fixed effects when they reproduce the response exactly, a fit without
        error (lm's "essentially perfect fit"; see :class:`Gaussian`); ``None`` when they
        do not, and always for a family without a free residual scale."""
        return None

    def separation_cuts(self, response: np.ndarray, *, trials=None):
        """Where each row's response lies among the family's ordered categories, for
        :mod:`mixedfx.model.separation`: ``(below, above, n_cuts)``, per row the cutpoint
        it lies at or below and the one it lies above (``-1``: none); ``None`` for a
        family whose response has no categories."""
        return None

    def variation_values(self, response: np.ndarray, *, trials=None) -> np.ndarray:
        """The per-row values whose variation within groups the model explains, for
        :mod:`mixedfx.model.variation`: the response itself here (a binomial's is the
        proportion of successes)."""
        return np.asarray(response, dtype=float)

    def residual_sd(self, parameters: Mapping[str, object]) -> float | None:
        """The residual standard deviation, for families that have one; else ``None``."""
        return None

    def response_quantile(self, mean: np.ndarray, q: float, parameters: Mapping[str, object]) -> np.ndarray:
        """Quantile ``q`` of a response with mean ``mean`` (for prediction intervals).

        Raises ``NotImplementedError`` where it depends on more than the mean (trials).
        """
        raise NotImplementedError(f"response quantiles of the {self.name} family depend on each row's trials")

    def decision_values(self, linear_predictor: np.ndarray, fixed_effects, fixed_names) -> np.ndarray:
        """A classifier's decision function from the internal linear predictor."""
        return linear_predictor

    def class_probabilities(self, linear_predictor: np.ndarray, parameters: Mapping[str, object]) -> np.ndarray:
        """A classifier's class probabilities, shape ``(n_rows, n_classes)``: here two."""
        positive = self.mean(linear_predictor, parameters)
        return np.column_stack([1.0 - positive, positive])

    def report_fixed_effects(self, names, estimates, cov, parameters: Mapping[str, object]):
        """The fixed effects as reported, from the internal ones: ``(names, estimates,
        cov, thresholds)``; ``thresholds`` is ``None`` except for :class:`~mixedfx.model.Ordinal`."""
        return list(names), np.asarray(estimates, dtype=float), cov, None

    def __str__(self) -> str:
        return f"{self.name} ({self.link} link)"


def _numeric(response, name: str, family: str) -> np.ndarray:
    values = np.asarray(response)
    if values.dtype.kind not in "biuf":
        raise DataError(f"the response {name!r} must be numeric for the {family} family, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(f"the response {name!r} has {bad} non-finite value(s) (NaN or inf)")
    return values


def _counts(response, name: str, family: str) -> np.ndarray:
    values = _numeric(response, name, family)
    if np.any(values < 0) or np.any(values != np.round(values)):
        bad = values[(values < 0) | (values != np.round(values))][0]
        raise DataError(f"the {family} response {name!r} must be non-negative integer counts; found {float(bad)!r}")
    return values


@dataclass(frozen=True)
class Gaussian(Family):
    """Normal response with identity link and a learned residual sd ``sigma``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Gaussian
    >>> family = Gaussian()
    >>> family.parameter_names
    ('sigma',)
    >>> family.mean(np.array([0.5, 2.0])).tolist()
    [0.5, 2.0]
    """

    name: ClassVar[str] = "gaussian"
    parameter_names: ClassVar[tuple[str, ...]] = ("sigma",)
    has_dispersion: ClassVar[bool] = True
    conjugate_gaussian: ClassVar[bool] = True
    weights_scale_rows: ClassVar[bool] = True
    boundary_candidate_sd: ClassVar[float] = 0.05
    dispersion_parameter: ClassVar[str] = "sigma"  # dispformula: log sigma (glmmTMB >= 1.1.10's)

    def distribution(self, linear_predictor, parameters, *, trials=None):
        return tfd.Normal(loc=linear_predictor, scale=parameters["sigma"])

    def weighted_log_prob(self, linear_predictor, parameters, response, *, trials=None, weights=None):
        """Precision weights (lmer's ``weights=``): row ``i`` is normal with sd
        ``sigma / sqrt(w_i)``; doubling every weight doubles ``sigma^2`` and leaves the
        fixed effects, the random effects' variances and the likelihood unchanged."""
        if weights is None:
            return self.log_prob(linear_predictor, parameters, response, trials=trials)
        eta = tf.convert_to_tensor(linear_predictor)
        sigma = tf.convert_to_tensor(parameters["sigma"], dtype=eta.dtype)
        return tfd.Normal(loc=eta, scale=sigma * tf.math.rsqrt(tf.cast(weights, eta.dtype))).log_prob(response)

    def mean(self, linear_predictor, parameters=None):
        return np.asarray(linear_predictor, dtype=np.float64)

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        sigma = tf.convert_to_tensor(parameters["sigma"], dtype=linear_predictor.dtype)
        return tf.ones_like(linear_predictor) / tf.square(sigma)

    conditionally_gaussian: ClassVar[bool] = True

    def gaussian_rows(self, linear_predictor, parameters, response, *, trials=None, weights=None):
        """Each row's precision ``w / sigma^2`` (``w`` the precision weights, 1 without)
        and the response as the working response."""
        eta = tf.convert_to_tensor(linear_predictor)
        precision = self.fisher_weight(eta, parameters, trials=trials)
        if weights is not None:
            precision = precision * tf.cast(weights, eta.dtype)
        return precision, tf.broadcast_to(tf.cast(response, eta.dtype), tf.shape(precision))

    def variance(self, mean, parameters, *, trials=None):
        return np.full(np.shape(mean), float(parameters["sigma"]) ** 2)

    def constrain(self, free):
        return {"sigma": tf.exp(free[0])}

    def initial_free(self, response, linear_predictor, *, trials=None):
        return np.array([np.log(max(float(np.std(response - linear_predictor)), 1e-8))])

    def free_from_parameters(self, parameters):
        return np.array([np.log(float(parameters["sigma"]))])

    def validate_response(self, response, *, trials=None, name):
        return _numeric(response, name, self.name), None

    def residual_sd(self, parameters):
        return float(parameters["sigma"])

    def check_response_values(self, values, name):
        """Also refuse a response on a scale that float64 sums of squares cannot hold."""
        super().check_response_values(values, name)
        values = np.asarray(values, dtype=np.float64)
        peak = float(np.max(np.abs(values)))
        scale = peak * float(np.std(values / peak)) if peak > 0 else 0.0  # no overflow
        low, high = RESPONSE_SCALE_LIMITS
        if not low <= scale <= high:
            raise DataError(
                f"the response {name!r} has standard deviation {scale:.3g}, outside the {low:g} to {high:g} that "
                "a float64 fit handles; rescale it (multiply by a power of ten: the estimates scale with it)"
            )

    def exact_fit(self, fixed_design, response, offset):
        """The least-squares coefficients when the fixed effects reproduce the response
        exactly (zero residuals): the residual variance is zero and the likelihood has
        no maximum, so the fit is lm's exact one (see :func:`~mixedfx.inference.exact.exact_fit`).

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import Gaussian
        >>> X = np.column_stack([np.ones(4), np.arange(4.0)])
        >>> Gaussian().exact_fit(X, 1.0 + 2.0 * np.arange(4.0), None).round(6).tolist()
        [1.0, 2.0]
        >>> Gaussian().exact_fit(X, np.array([0.0, 1.0, 0.0, 1.0]), None) is None
        True
        """
        y = response - (0.0 if offset is None else offset)
        coefficients = np.linalg.lstsq(fixed_design, y, rcond=None)[0]
        residual = y - fixed_design @ coefficients
        total = np.sum((y - y.mean()) ** 2)
        if np.sum(residual**2) <= 1e-20 * max(total, np.finfo(float).tiny):
            return coefficients
        return None


@dataclass(frozen=True)
class Binomial(Family):
    """Binomial response: successes out of ``trials``, logit (default) or probit link.

    Written as lme4's ``cbind(successes, failures) ~ ...``, or as a proportion with the
    estimator's ``fit(..., trials=)``; a proportion with the trials as ``sample_weight``
    (glmer's ``weights=``) still works, with a deprecation warning.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Binomial
    >>> Binomial().mean(np.array([0.0])).tolist()
    [0.5]
    >>> str(Binomial(link_name="probit"))
    'binomial (probit link)'
    """

    zero_inflatable: ClassVar[bool] = True
    name: ClassVar[str] = "binomial"
    runaway_bound: ClassVar[float | None] = 10.0
    takes_trial_weights: ClassVar[bool] = True
    link_name: str = "logit"

    def __post_init__(self):
        if self.link_name not in _LINKS:
            raise ParameterError(f"link must be one of {_LINKS}, got {self.link_name!r}")

    @property
    def link(self) -> str:
        return self.link_name

    def _probability(self, linear_predictor):
        if self.link_name == "logit":
            return tf.math.sigmoid(linear_predictor)
        return tfd.Normal(tf.zeros([], linear_predictor.dtype), 1.0).cdf(linear_predictor)

    def distribution(self, linear_predictor, parameters, *, trials=None):
        if self.link_name == "logit":
            return tfd.Binomial(total_count=trials, logits=linear_predictor)
        probs = tf.clip_by_value(self._probability(linear_predictor), 1e-15, 1 - 1e-15)
        return tfd.Binomial(total_count=trials, probs=probs)

    def mean(self, linear_predictor, parameters=None):
        eta = np.asarray(linear_predictor, dtype=np.float64)
        return special.expit(eta) if self.link_name == "logit" else stats.norm.cdf(eta)

    @property
    def polya_gamma_augmentable(self) -> bool:
        """The logit link's likelihood is logistic in the linear predictor."""
        return self.link_name == "logit"

    def polya_gamma_rows(self, response, *, trials=None, weights=None):
        """``b = w n`` and ``kappa = w (y - n / 2)`` (``n`` the trials, ``w`` the prior
        weights, 1 without): a weight counts the row that many times."""
        if not self.polya_gamma_augmentable:
            return None
        y = tf.convert_to_tensor(response)
        b = tf.ones_like(y) if trials is None else tf.cast(trials, y.dtype)
        kappa = y - 0.5 * b
        if weights is not None:
            weights = tf.cast(weights, y.dtype)
            b, kappa = b * weights, kappa * weights
        return b, kappa

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        trials = tf.ones_like(linear_predictor) if trials is None else trials
        if self.link_name == "logit":
            p = tf.math.sigmoid(linear_predictor)
            return trials * p * (1.0 - p)
        normal = tfd.Normal(tf.zeros([], linear_predictor.dtype), 1.0)
        p = tf.clip_by_value(normal.cdf(linear_predictor), 1e-12, 1 - 1e-12)
        return trials * tf.square(normal.prob(linear_predictor)) / (p * (1.0 - p))

    def variance(self, mean, parameters, *, trials=None):
        trials = np.ones(np.shape(mean)) if trials is None else trials
        return trials * mean * (1.0 - mean)

    def variation_values(self, response, *, trials=None):
        return np.asarray(response, dtype=float) / (1.0 if trials is None else np.asarray(trials, dtype=float))

    def separation_cuts(self, response, *, trials=None):
        trials = np.ones_like(response) if trials is None else trials
        # a row with failures lies at or below the one cutpoint, a row with successes above it
        return np.where(response < trials, 0, -1), np.where(response > 0, 0, -1), 1

    def validate_response(self, response, *, trials=None, name):
        values = _numeric(response, name, self.name)
        if trials is None:
            trials = np.ones_like(values)
        trials = _numeric(trials, "trials", self.name)
        if np.any(trials <= 0) or np.any(trials != np.round(trials)):
            raise DataError(f"binomial trials for {name!r} must be positive integers")
        if np.any(values < 0) or np.any(values > trials) or np.any(values != np.round(values)):
            raise DataError(
                f"the binomial response {name!r} must be integer successes between 0 and the trials "
                "(write cbind(successes, failures), or give a proportion with trials=)"
            )
        return values, trials


@dataclass(frozen=True)
class Bernoulli(Binomial):
    """Binary response (0/1), logit (default) or probit link: a binomial with one trial.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Bernoulli
    >>> family = Bernoulli()
    >>> family.validate_response(np.array([0, 1, 1]), name="y")  # values and trials
    (array([0., 1., 1.]), array([1., 1., 1.]))
    >>> family.mean(np.array([0.0, np.log(3.0)])).round(4).tolist()  # inverse logit
    [0.5, 0.75]
    >>> family.validate_response(np.array([0, 2]), name="y")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: the bernoulli response 'y' must be coded 0/1
    """

    zero_inflatable: ClassVar[bool] = False  # a classifier's
    name: ClassVar[str] = "bernoulli"
    is_classification: ClassVar[bool] = True
    takes_trial_weights: ClassVar[bool] = False

    def for_classes(self, classes):
        if len(classes) != 2:
            shown = ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")
            raise DataError(
                f"a bernoulli response needs exactly 2 classes, found {len(classes)}"
                + (f" ({shown})" if len(classes) else "")
                + ("; use family='ordinal' for ordered categories. Only binary classification is supported by "
                   "the bernoulli family (the type of the target is multiclass)" if len(classes) > 2 else "")
            )
        return self

    def validate_response(self, response, *, trials=None, name):
        values = _numeric(response, name, self.name)
        if not np.isin(values, (0.0, 1.0)).all():
            raise DataError(f"the bernoulli response {name!r} must be coded 0/1")
        return values, np.ones_like(values)


class LogLink:
    """Mixin: the log link, ``mean = exp(eta)`` (Poisson, both negative binomials, Gamma,
    inverse Gaussian)."""

    @property
    def link(self) -> str:
        return "log"

    def mean(self, linear_predictor, parameters=None):
        return np.exp(np.asarray(linear_predictor, dtype=np.float64))


class LogDispersion:
    """Mixin: one own parameter, ``dispersion``, estimated on the log scale."""

    parameter_names: ClassVar[tuple[str, ...]] = ("dispersion",)

    def constrain(self, free):
        return {"dispersion": tf.exp(free[0])}

    def free_from_parameters(self, parameters):
        return np.array([np.log(float(parameters["dispersion"]))])


@dataclass(frozen=True)
class Poisson(LogLink, Family):
    """Counts with a log link; an ``offset(log(exposure))`` term models rates.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Poisson
    >>> Poisson().mean(np.array([0.0, np.log(3.0)])).round(6).tolist()
    [1.0, 3.0]
    """

    zero_inflatable: ClassVar[bool] = True
    name: ClassVar[str] = "poisson"

    def distribution(self, linear_predictor, parameters, *, trials=None):
        return tfd.Poisson(log_rate=linear_predictor)


    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        return tf.exp(linear_predictor)

    def variance(self, mean, parameters, *, trials=None):
        return np.asarray(mean, dtype=np.float64)

    def validate_response(self, response, *, trials=None, name):
        return _counts(response, name, self.name), None

    def response_quantile(self, mean, q, parameters):
        return stats.poisson.ppf(q, mean)


@dataclass(frozen=True)
class NegativeBinomial(LogDispersion, LogLink, Family):
    """Counts with a log link and variance ``mu + mu^2 / dispersion`` (glmmTMB's nbinom2).

    The dispersion (the "size" of R's ``rnbinom``) is estimated in the M-step.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import NegativeBinomial
    >>> family = NegativeBinomial()
    >>> family.parameter_names, family.link
    (('dispersion',), 'log')
    >>> mean = family.mean(np.log([2.0, 10.0]))
    >>> family.variance(mean, {"dispersion": 5.0}).round(6).tolist()  # mu + mu**2 / 5
    [2.8, 30.0]
    >>> family.distribution(np.log([2.0, 10.0]), {"dispersion": np.float64(5.0)}).variance().numpy().round(6).tolist()
    [2.8, 30.0]
    """

    zero_inflatable: ClassVar[bool] = True
    name: ClassVar[str] = "negative_binomial"
    glmmtmb_name: ClassVar[str] = "nbinom2"

    def distribution(self, linear_predictor, parameters, *, trials=None):
        size = parameters["dispersion"]
        return tfd.NegativeBinomial(total_count=size, logits=linear_predictor - tf.math.log(size))


    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        mu = tf.exp(linear_predictor)
        size = tf.convert_to_tensor(parameters["dispersion"], dtype=mu.dtype)
        return mu * size / (mu + size)

    def variance(self, mean, parameters, *, trials=None):
        return mean + mean**2 / float(parameters["dispersion"])

    def initial_free(self, response, linear_predictor, *, trials=None):
        mu = np.exp(linear_predictor)
        excess = np.mean((response - mu) ** 2 - mu)
        size = np.mean(mu**2) / excess if excess > 0 else 100.0
        return np.array([np.log(np.clip(size, 0.05, 1e4))])

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), 2.0 / np.sqrt(n_obs))

    def validate_response(self, response, *, trials=None, name):
        return _counts(response, name, self.name), None

    def response_quantile(self, mean, q, parameters):
        size = float(parameters["dispersion"])
        return stats.nbinom.ppf(q, size, size / (size + mean))


#: The families by name, as the estimators' ``family=`` accepts them;
#: :func:`get_family` looks them up (:mod:`mixedfx.model.ordinal` and
#: :mod:`mixedfx.model.glmmtmb_families` add theirs).
#:
#: Examples
#: --------
#: >>> from mixedfx.model import FAMILIES
#: >>> sorted(FAMILIES)  # doctest: +NORMALIZE_WHITESPACE
#: ['bernoulli', 'beta', 'betabinomial', 'binomial', 'gamma', 'gaussian', 'inverse_gaussian', 'nbinom1',
#:  'negative_binomial', 'ordinal', 'poisson', 't', 'truncated_nbinom1', 'truncated_nbinom2', 'truncated_poisson']
#: >>> FAMILIES["poisson"]().link
#: 'log'
FAMILIES: dict[str, type[Family]] = {
    "gaussian": Gaussian,
    "bernoulli": Bernoulli,
    "binomial": Binomial,
    "poisson": Poisson,
    "negative_binomial": NegativeBinomial,
}

#: Other spellings of family names (glmmTMB's among them), lower case, for
#: :func:`get_family`; :mod:`mixedfx.model.glmmtmb_families` adds its own.
ALIASES: dict[str, str] = {"nbinom2": "negative_binomial"}


def get_family(family: str | Family) -> Family:
    """Resolve a family name or instance.

    Examples
    --------
    >>> from mixedfx.model import get_family
    >>> get_family("gaussian")
    Gaussian()
    >>> get_family("poisson").link
    'log'
    >>> get_family("nbinom2").name  # glmmTMB's spelling
    'negative_binomial'
    """
    if isinstance(family, Family):
        return family
    key = family.lower() if isinstance(family, str) else None
    key = ALIASES.get(key, key)
    if key in FAMILIES:
        return FAMILIES[key]()
    raise ParameterError(f"unknown family {family!r}; supported: {', '.join(sorted(FAMILIES))}")
