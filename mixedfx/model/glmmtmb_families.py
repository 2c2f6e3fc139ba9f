"""glmmTMB's simple families: Gamma, nbinom1, beta, Student-t and beta-binomial; and
lme4's inverse Gaussian (which glmmTMB lacks).

Each is one class with the same answers as :mod:`mixedfx.model.families`' (its TFP
distribution, mean, variance, Fisher weight, its own parameters on an unconstrained
scale, response checks and quantiles), named and parametrised as glmmTMB's
``family=`` argument is, so that estimates compare one to one:

========================  ==================  ========  ==============================================
glmmTMB                   mixedfx             link      own parameters (glmmTMB's summary)
========================  ==================  ========  ==============================================
``Gamma(link = "log")``   ``"gamma"``         log       ``dispersion`` = 1 / shape (``sigma^2``)
``ziGamma(link = "log")`` ``"ziGamma"``       log       as Gamma; with a ``ziformula``, the hurdle Gamma
``nbinom1()``             ``"nbinom1"``       log       ``dispersion`` = phi, variance ``mu (1 + phi)``
``beta_family()``         ``"beta"``          logit     ``dispersion`` = precision phi
``t_family()``            ``"t"``             identity  ``sigma`` (scale) and ``df`` (or fixed)
``betabinomial()``        ``"betabinomial"``  logit     ``dispersion`` = phi
========================  ==================  ========  ==============================================

and lme4's ``glmer(..., family = inverse.gaussian(link = "log"))`` as
``"inverse_gaussian"`` (or ``"inverse.gaussian"``): log link, ``dispersion`` =
``sigma(fit)^2`` = ``1 / lambda``, variance ``dispersion * mu^3``.

Importing :mod:`mixedfx.model` registers them in
:data:`~mixedfx.model.families.FAMILIES` (and glmmTMB's spellings in
:data:`~mixedfx.model.families.ALIASES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import special, stats

from mixedfx._tf import tf, tfd
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model.families import (ALIASES, FAMILIES, Binomial, Family, LogDispersion, LogLink, _counts,
                                    _numeric)

__all__ = ["Gamma", "InverseGaussian", "NegativeBinomial1", "Beta", "StudentT", "BetaBinomial"]


def _log_positive(value: float, low: float, high: float) -> np.ndarray:
    """The free (log) vector of one positive starting value, clipped to ``[low, high]``."""
    value = float(value) if np.isfinite(value) else high
    return np.array([np.log(np.clip(value, low, high))])


def _scalar(parameters, name: str, dtype):
    """A family parameter as a tensor of ``dtype`` (it may arrive as a float)."""
    return tf.cast(tf.convert_to_tensor(parameters[name]), dtype)


@dataclass(frozen=True)
class Gamma(LogDispersion, LogLink, Family):
    """Positive continuous responses, log link: glmmTMB's ``Gamma(link = "log")``.

    The response is gamma with mean ``mu = exp(eta)`` and shape ``1 / dispersion``, so
    that its variance is ``dispersion * mu^2``; ``dispersion`` is the ``sigma^2`` of
    glmmTMB's summary ("Dispersion estimate for Gamma family").  With a ``ziformula`` it is
    glmmTMB's hurdle Gamma, ``family = ziGamma(link = "log")`` (``"ziGamma"`` is this
    family's other name): ``P(y = 0) = pi``, else this Gamma
    (:class:`~mixedfx.model.Hurdle`); without one a zero is a DataError.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Gamma
    >>> family = Gamma()
    >>> family.link, family.parameter_names
    ('log', ('dispersion',))
    >>> eta = np.log([2.0, 10.0])
    >>> family.distribution(eta, {"dispersion": np.float64(0.25)}).variance().numpy().round(6).tolist()
    [1.0, 25.0]
    >>> family.validate_response(np.array([1.0, 0.0]), name="y")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: the Gamma response 'y' must be positive; found 0.0 (for zeros give a ziformula: glmmTMB's ziGamma hurdle)
    >>> hurdle = family.zero_inflated(("Intercept",))  # family="ziGamma", ziformula="~ 1"
    >>> str(hurdle), hurdle.parameter_labels()
    ('hurdle gamma (log link)', ('dispersion', 'zi~(Intercept)'))
    >>> params = {"dispersion": np.float64(0.5), "zi": np.array([0.0])}  # P(y = 0) = 1/2
    >>> lp = hurdle.log_prob(eta, params, np.array([0.0, 10.0]), trials=np.ones((2, 1))).numpy()
    >>> np.exp(lp).round(6).tolist()  # 1/2; 1/2 * Gamma(shape 2, mean 10) at 10 = 1/2 * 0.04 * 10 e^-2
    [0.5, 0.027067]
    """

    zero_inflatable: ClassVar[bool] = True  # a hurdle (glmmTMB's ziGamma)
    glmmtmb_dispersion_power: ClassVar[float] = -1.0  # glmmTMB's dispformula models log shape
    name: ClassVar[str] = "gamma"
    glmmtmb_name: ClassVar[str] = "Gamma"

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        dispersion = _scalar(parameters, "dispersion", eta.dtype)
        return tfd.Gamma(concentration=1.0 / dispersion, log_rate=-eta - tf.math.log(dispersion))

    def zero_inflated(self, zi_names) -> Family:
        """glmmTMB's hurdle Gamma (``ziGamma``): this family for the positive responses, a
        logistic model of ``P(y = 0)`` on a design whose columns are ``zi_names``."""
        from mixedfx.model.zero_inflation import Hurdle

        return Hurdle(self, tuple(zi_names))

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        dispersion = _scalar(parameters, "dispersion", linear_predictor.dtype)
        return tf.ones_like(linear_predictor) / dispersion  # (dmu/deta)^2 / var = mu^2 / (phi mu^2)

    def variance(self, mean, parameters, *, trials=None):
        return float(parameters["dispersion"]) * np.asarray(mean, dtype=np.float64) ** 2

    def initial_free(self, response, linear_predictor, *, trials=None):
        scaled = response / np.exp(linear_predictor)
        return _log_positive(np.var(scaled) / np.mean(scaled) ** 2, 1e-3, 1e3)

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), np.sqrt(2.0 / n_obs))

    def validate_response(self, response, *, trials=None, name):
        values = _numeric(response, name, "Gamma")
        if np.any(values <= 0):
            first = float(values[values <= 0][0])
            hint = " (for zeros give a ziformula: glmmTMB's ziGamma hurdle)" if first == 0 else ""
            raise DataError(f"the Gamma response {name!r} must be positive; found {first!r}{hint}")
        return values, None

    def response_quantile(self, mean, q, parameters):
        dispersion = float(parameters["dispersion"])
        return stats.gamma.ppf(q, 1.0 / dispersion, scale=dispersion * np.asarray(mean, dtype=np.float64))

    def parameter_lines(self, parameters):
        return [f"Dispersion estimate for Gamma family (sigma^2): {float(parameters['dispersion']):.4g}"]


@dataclass(frozen=True)
class InverseGaussian(LogDispersion, LogLink, Family):
    """Positive continuous responses, log link: lme4's ``glmer(..., family =
    inverse.gaussian(link = "log"))`` (glmmTMB has no inverse Gaussian).

    The response is inverse Gaussian with mean ``mu = exp(eta)`` and shape
    ``lambda = 1 / dispersion`` (TFP's ``concentration``), so that its variance is
    ``dispersion * mu^3``; ``dispersion`` is R's ``sigma(fit)^2`` (the ``phi`` of
    ``statmod::dinvgauss(..., dispersion = phi)``).  Only the log link is supported:
    lme4's default ``"1/mu^2"`` needs a positive linear predictor, which random effects
    drawn in the Monte Carlo E-step cannot be kept to, and is refused.

    Parameters
    ----------
    link_name : str, default "log"
        The link; ``"log"`` is the only one taken.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import InverseGaussian
    >>> family = InverseGaussian()
    >>> family.link, family.parameter_names
    ('log', ('dispersion',))
    >>> eta = np.log([2.0, 10.0])
    >>> family.variance(family.mean(eta), {"dispersion": 0.5}).round(6).tolist()  # 0.5 mu^3
    [4.0, 500.0]
    >>> family.distribution(eta, {"dispersion": np.float64(0.5)}).variance().numpy().round(6).tolist()
    [4.0, 500.0]
    >>> family.validate_response(np.array([1.0, -0.5]), name="time_s")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: the inverse Gaussian response 'time_s' must be positive; found -0.5 (1 row(s) at or below 0)
    >>> InverseGaussian(link_name="1/mu^2")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.ParameterError: the inverse Gaussian family takes the log link only (inverse.gaussian(link = "log")), got '1/mu^2': lme4's default "1/mu^2" needs a positive linear predictor, which the random effects' draws cannot be kept to
    """

    name: ClassVar[str] = "inverse_gaussian"
    glmmtmb_name: ClassVar[str] = "inverse.gaussian"
    link_name: str = "log"

    def __post_init__(self):
        if self.link_name != "log":
            raise ParameterError(
                'the inverse Gaussian family takes the log link only (inverse.gaussian(link = "log")), got '
                f'{self.link_name!r}: lme4\'s default "1/mu^2" needs a positive linear predictor, which the random '
                "effects' draws cannot be kept to")

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        dispersion = _scalar(parameters, "dispersion", eta.dtype)
        return tfd.InverseGaussian(loc=tf.exp(eta), concentration=tf.ones_like(eta) / dispersion)

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """``(dmu/deta)^2 / var = mu^2 / (phi mu^3) = 1 / (phi mu)``."""
        dispersion = _scalar(parameters, "dispersion", linear_predictor.dtype)
        return tf.exp(-linear_predictor) / dispersion

    def variance(self, mean, parameters, *, trials=None):
        return float(parameters["dispersion"]) * np.asarray(mean, dtype=np.float64) ** 3

    def initial_free(self, response, linear_predictor, *, trials=None):
        mu = np.exp(linear_predictor)
        return _log_positive(np.mean((response - mu) ** 2 / mu**3), 1e-4, 1e4)

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), np.sqrt(2.0 / n_obs))  # the ML dispersion is mean deviance: chi^2_n / n

    def validate_response(self, response, *, trials=None, name):
        values = _numeric(response, name, "inverse Gaussian")
        bad = values <= 0
        if np.any(bad):
            raise DataError(f"the inverse Gaussian response {name!r} must be positive; found "
                            f"{float(values[bad][0])!r} ({int(bad.sum())} row(s) at or below 0)")
        return values, None

    def response_quantile(self, mean, q, parameters):
        """scipy's ``invgauss(mu * phi, scale = 1 / phi)``: mean ``mu``, variance ``phi mu^3``."""
        dispersion = float(parameters["dispersion"])
        return stats.invgauss.ppf(q, np.asarray(mean, dtype=np.float64) * dispersion, scale=1.0 / dispersion)

    def parameter_lines(self, parameters):
        return [f"Dispersion parameter for inverse.gaussian family (sigma^2): {float(parameters['dispersion']):.4g}"]


@dataclass(frozen=True)
class NegativeBinomial1(LogDispersion, LogLink, Family):
    """Counts with a log link and a linear variance ``mu (1 + dispersion)``: glmmTMB's ``nbinom1``.

    A negative binomial with size ``mu / dispersion``; ``dispersion`` is glmmTMB's
    ``sigma(fit)`` ("Dispersion parameter for nbinom1 family").  The quadratic-variance
    negative binomial is ``"nbinom2"`` (:class:`~mixedfx.model.NegativeBinomial`).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import NegativeBinomial1
    >>> family = NegativeBinomial1()
    >>> eta = np.log([2.0, 10.0])
    >>> family.variance(family.mean(eta), {"dispersion": 1.5}).round(6).tolist()  # mu * 2.5
    [5.0, 25.0]
    >>> family.distribution(eta, {"dispersion": np.float64(1.5)}).variance().numpy().round(6).tolist()
    [5.0, 25.0]
    """

    zero_inflatable: ClassVar[bool] = True
    name: ClassVar[str] = "nbinom1"
    glmmtmb_name: ClassVar[str] = "nbinom1"

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        dispersion = _scalar(parameters, "dispersion", eta.dtype)
        logits = tf.math.log(dispersion) * tf.ones_like(eta)  # p / (1 - p) = phi: the mean is size * phi
        return tfd.NegativeBinomial(total_count=tf.exp(eta) / dispersion, logits=logits)


    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """The GLM working weight ``(dmu/deta)^2 / var = mu / (1 + phi)`` (the size moves
        with the mean, so the expected information has no closed form; this weight only
        starts and preconditions the fit, the likelihood is exact)."""
        dispersion = _scalar(parameters, "dispersion", linear_predictor.dtype)
        return tf.exp(linear_predictor) / (1.0 + dispersion)

    def variance(self, mean, parameters, *, trials=None):
        return np.asarray(mean, dtype=np.float64) * (1.0 + float(parameters["dispersion"]))

    def initial_free(self, response, linear_predictor, *, trials=None):
        mean = max(float(np.mean(response)), 1e-3)
        return _log_positive(np.var(response) / mean - 1.0, 0.05, 1e3)

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), 2.0 / np.sqrt(n_obs))

    def validate_response(self, response, *, trials=None, name):
        return _counts(response, name, self.name), None

    def response_quantile(self, mean, q, parameters):
        dispersion = float(parameters["dispersion"])
        return stats.nbinom.ppf(q, np.asarray(mean, dtype=np.float64) / dispersion, 1.0 / (1.0 + dispersion))

    def parameter_lines(self, parameters):
        return [f"Dispersion parameter for nbinom1 family (): {float(parameters['dispersion']):.4g}"]


@dataclass(frozen=True)
class Beta(LogDispersion, Family):
    """Proportions strictly between 0 and 1, logit link: glmmTMB's ``beta_family()``.

    The response is beta with mean ``mu = logistic(eta)`` and precision ``dispersion``
    (shapes ``mu phi`` and ``(1 - mu) phi``), variance ``mu (1 - mu) / (1 + phi)``.
    A response of exactly 0 or 1 is refused (the beta density is 0 or infinite there).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Beta
    >>> family = Beta()
    >>> family.mean(np.array([0.0])).tolist()
    [0.5]
    >>> family.variance(np.array([0.5]), {"dispersion": 9.0}).tolist()  # 0.25 / 10
    [0.025]
    >>> family.validate_response(np.array([0.2, 1.0]), name="share")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: the beta response 'share' must lie strictly between 0 and 1; found 1.0 (1 row(s) at or outside the bounds)
    """

    name: ClassVar[str] = "beta"
    glmmtmb_name: ClassVar[str] = "beta"

    @property
    def link(self) -> str:
        return "logit"

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        phi = _scalar(parameters, "dispersion", eta.dtype)
        return tfd.Beta(concentration1=phi * tf.math.sigmoid(eta), concentration0=phi * tf.math.sigmoid(-eta))

    def mean(self, linear_predictor, parameters=None):
        return special.expit(np.asarray(linear_predictor, dtype=np.float64))

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """``phi^2 (psi'(mu phi) + psi'((1 - mu) phi)) (mu (1 - mu))^2``: the expected
        information about ``eta`` (Ferrari and Cribari-Neto's beta regression)."""
        phi = _scalar(parameters, "dispersion", linear_predictor.dtype)
        mu, rest = tf.math.sigmoid(linear_predictor), tf.math.sigmoid(-linear_predictor)
        one = tf.ones([], linear_predictor.dtype)
        trigamma = tf.math.polygamma(one, mu * phi) + tf.math.polygamma(one, rest * phi)
        return tf.square(phi * mu * rest) * trigamma

    def variance(self, mean, parameters, *, trials=None):
        mean = np.asarray(mean, dtype=np.float64)
        return mean * (1.0 - mean) / (1.0 + float(parameters["dispersion"]))

    def initial_free(self, response, linear_predictor, *, trials=None):
        mean, var = float(np.mean(response)), float(np.var(response))
        return _log_positive(mean * (1.0 - mean) / max(var, 1e-12) - 1.0, 0.5, 1e4)

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), 2.0 / np.sqrt(n_obs))

    def validate_response(self, response, *, trials=None, name):
        values = _numeric(response, name, self.name)
        outside = (values <= 0) | (values >= 1)
        if np.any(outside):
            raise DataError(
                f"the beta response {name!r} must lie strictly between 0 and 1; found {float(values[outside][0])!r} "
                f"({int(outside.sum())} row(s) at or outside the bounds)"
            )
        return values, None

    def response_quantile(self, mean, q, parameters):
        phi, mean = float(parameters["dispersion"]), np.asarray(mean, dtype=np.float64)
        return stats.beta.ppf(q, mean * phi, (1.0 - mean) * phi)

    def parameter_lines(self, parameters):
        return [f"Dispersion parameter for beta family (): {float(parameters['dispersion']):.4g}"]


@dataclass(frozen=True)
class StudentT(Family):
    """Heavy-tailed continuous responses, identity link: glmmTMB's ``t_family()``.

    The response is ``eta + sigma * T`` with ``T`` Student-t on ``df`` degrees of
    freedom.  ``sigma`` (a scale, not the sd) and ``df`` are estimated; give ``df`` to
    hold it fixed (glmmTMB's ``map = list(psi = factor(NA))``).

    Parameters
    ----------
    df : float, optional
        Degrees of freedom held fixed; ``None`` (default) estimates them.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import StudentT
    >>> StudentT().parameter_names, StudentT(df=3.0).parameter_names
    (('sigma', 'df'), ('sigma',))
    >>> StudentT().variance(np.zeros(1), {"sigma": 1.0, "df": 4.0}).tolist()  # sigma^2 df / (df - 2)
    [2.0]
    """

    name: ClassVar[str] = "t"
    glmmtmb_name: ClassVar[str] = "t"
    has_dispersion: ClassVar[bool] = True
    boundary_candidate_sd: ClassVar[float] = 0.05
    dispersion_parameter: ClassVar[str] = "sigma"  # dispformula: log sigma; df stays the family's
    df: float | None = None

    def __post_init__(self):
        if self.df is not None and not (isinstance(self.df, (int, float)) and np.isfinite(self.df) and self.df > 0):
            raise ParameterError(f"df must be a positive number or None (estimated), got {self.df!r}")

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return ("sigma",) if self.df is not None else ("sigma", "df")

    def _df(self, parameters, dtype):
        if self.df is not None:
            return tf.constant(float(self.df), dtype)
        return _scalar(parameters, "df", dtype)

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        return tfd.StudentT(df=self._df(parameters, eta.dtype), loc=eta, scale=_scalar(parameters, "sigma", eta.dtype))

    def mean(self, linear_predictor, parameters=None):
        return np.asarray(linear_predictor, dtype=np.float64)

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """The expected information about the location: ``(df + 1) / ((df + 3) sigma^2)``."""
        df = self._df(parameters, linear_predictor.dtype)
        sigma = _scalar(parameters, "sigma", linear_predictor.dtype)
        return tf.ones_like(linear_predictor) * (df + 1.0) / ((df + 3.0) * tf.square(sigma))

    def variance(self, mean, parameters, *, trials=None):
        df = float(self.df if self.df is not None else parameters["df"])
        value = float(parameters["sigma"]) ** 2 * df / (df - 2.0) if df > 2.0 else np.inf
        return np.full(np.shape(mean), value)

    def constrain(self, free):
        out = {"sigma": tf.exp(free[0])}
        if self.df is None:
            out["df"] = tf.exp(free[1])
        return out

    def initial_free(self, response, linear_predictor, *, trials=None):
        centred = response - linear_predictor
        mad = 1.4826 * float(np.median(np.abs(centred - np.median(centred))))
        sigma = _log_positive(mad if mad > 0 else np.std(centred), 1e-8, 1e50)
        return sigma if self.df is not None else np.concatenate([sigma, [np.log(5.0)]])

    def parameters_from_values(self, values):
        values = np.atleast_1d(np.asarray(values, dtype=float))
        return {name: float(value) for name, value in zip(self.parameter_names, values)}

    def free_from_parameters(self, parameters):
        free = [np.log(float(parameters["sigma"]))]
        return np.array(free if self.df is not None else free + [np.log(float(parameters["df"]))])

    def parameter_scale(self, values, response, n_obs):
        return np.array([1.0 / np.sqrt(2.0 * n_obs), 3.0 / np.sqrt(n_obs)][: len(values)])

    def validate_response(self, response, *, trials=None, name):
        return _numeric(response, name, self.name), None

    def residual_sd(self, parameters):
        return float(parameters["sigma"])

    def response_quantile(self, mean, q, parameters):
        df = float(self.df if self.df is not None else parameters["df"])
        return np.asarray(mean, dtype=np.float64) + float(parameters["sigma"]) * stats.t.ppf(q, df)

    def parameter_lines(self, parameters):
        df = float(self.df if self.df is not None else parameters["df"])
        return [f"Dispersion estimate for t family (sigma^2): {float(parameters['sigma']) ** 2:.4g}",
                f"Student-t df: {df:.4g}" + (" (fixed)" if self.df is not None else "")]


@dataclass(frozen=True)
class BetaBinomial(LogDispersion, Binomial):
    """Overdispersed binomial counts, logit link: glmmTMB's ``betabinomial()``.

    Successes out of ``trials`` (``cbind(successes, failures)`` or ``trials=``, as for
    :class:`~mixedfx.model.Binomial`) whose success probability is beta with mean
    ``logistic(eta)`` and precision ``dispersion``: the variance is
    ``n mu (1 - mu) (phi + n) / (phi + 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import BetaBinomial
    >>> family = BetaBinomial()
    >>> family.variance(np.array([0.5]), {"dispersion": 4.0}, trials=np.array([6.0])).tolist()  # 1.5 * 10 / 5
    [3.0]
    >>> family.distribution(np.zeros(1), {"dispersion": np.float64(4.0)},
    ...                     trials=np.array([6.0])).variance().numpy().round(6).tolist()
    [3.0]
    """

    name: ClassVar[str] = "betabinomial"
    glmmtmb_name: ClassVar[str] = "betabinomial"
    polya_gamma_augmentable: ClassVar[bool] = False  # the beta mixing is not logistic in eta

    def __post_init__(self):
        if self.link_name != "logit":
            raise ParameterError(f"the betabinomial family has the logit link only, got {self.link_name!r}")

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        phi = _scalar(parameters, "dispersion", eta.dtype)
        return tfd.BetaBinomial(total_count=trials, concentration1=phi * tf.math.sigmoid(eta),
                                concentration0=phi * tf.math.sigmoid(-eta))

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        """The binomial's weight shrunk by the overdispersion: ``n mu (1 - mu) (phi + 1) / (phi + n)``
        (a working weight that starts and preconditions the fit; the likelihood is exact)."""
        phi = _scalar(parameters, "dispersion", linear_predictor.dtype)
        trials = tf.ones_like(linear_predictor) if trials is None else trials
        p = tf.math.sigmoid(linear_predictor)
        return trials * p * (1.0 - p) * (phi + 1.0) / (phi + trials)

    def variance(self, mean, parameters, *, trials=None):
        phi = float(parameters["dispersion"])
        trials = np.ones(np.shape(mean)) if trials is None else np.asarray(trials, dtype=np.float64)
        return trials * mean * (1.0 - mean) * (phi + trials) / (phi + 1.0)

    def initial_free(self, response, linear_predictor, *, trials=None):
        return np.array([np.log(10.0)])

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), 2.0 / np.sqrt(n_obs))

    def parameter_lines(self, parameters):
        return [f"Dispersion parameter for betabinomial family (): {float(parameters['dispersion']):.4g}"]


FAMILIES.update({"gamma": Gamma, "inverse_gaussian": InverseGaussian, "nbinom1": NegativeBinomial1, "beta": Beta,
                 "t": StudentT, "betabinomial": BetaBinomial})
ALIASES.update({"zigamma": "gamma", "beta_family": "beta", "t_family": "t", "student_t": "t",
                "beta_binomial": "betabinomial", "inverse.gaussian": "inverse_gaussian",
                "inversegaussian": "inverse_gaussian"})
