"""The ordinal family: ordered categories with a cumulative logit link, as ``ordinal::clmm``.

One class, :class:`Ordinal`, beside the families of :mod:`mixedfx.model.families`; it
registers itself in :data:`~mixedfx.model.families.FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import special

from mixedfx._tf import tf, tfb, tfd
from mixedfx.exceptions import DataError, FormulaError
from mixedfx.model.families import FAMILIES, Family

__all__ = ["Ordinal"]


@dataclass(frozen=True)
class Ordinal(Family):
    """Ordered categories with a cumulative logit link, like ``ordinal::clmm``.

    ``P(y <= k) = logistic(cutpoint_k - eta)`` for categories ``0, ..., K-1``.  The
    ``K - 1`` cutpoints are kept ordered by :class:`tfp.bijectors.Ascending`.  The
    fixed part has no free intercept: internally the first cutpoint is pinned at zero
    and an intercept column stands in for it (so that parameter expansion can move
    it), and the reported cutpoints are shifted back.

    Attributes
    ----------
    n_categories : int
        ``K``; set from the data when the model is fitted.

    Examples
    --------
    Three ratings and two cutpoints; the larger the linear predictor, the higher the
    rating:

    >>> import numpy as np
    >>> from mixedfx.model import Ordinal
    >>> family = Ordinal(n_categories=3, labels=(1, 2, 3))
    >>> family.parameter_labels()
    ('1|2', '2|3')
    >>> family.probabilities(np.array([0.0, 2.0]), np.array([-1.0, 1.0])).round(3)
    array([[0.269, 0.462, 0.269],
           [0.047, 0.222, 0.731]])
    """

    name: ClassVar[str] = "ordinal"
    runaway_bound: ClassVar[float | None] = 10.0
    parameter_names: ClassVar[tuple[str, ...]] = ("cutpoints",)
    is_classification: ClassVar[bool] = True
    is_multiclass: ClassVar[bool] = True
    has_residuals: ClassVar[bool] = False
    n_categories: int = 0
    labels: tuple = field(default=(), compare=False)

    @property
    def link(self) -> str:
        return "logit"

    def _cutpoints(self, parameters):
        return parameters["cutpoints"]

    def distribution(self, linear_predictor, parameters, *, trials=None):
        return tfd.OrderedLogistic(cutpoints=self._cutpoints(parameters), loc=linear_predictor)

    def log_prob(self, linear_predictor, parameters, response, *, trials=None):
        """``log P(y = k) = log(logistic(c_k - eta) - logistic(c_{k-1} - eta))`` from the
        row's two cutpoints only.

        :class:`tfd.OrderedLogistic` evaluates every category of every row; this
        gathers the two cutpoints that bound the observed category and uses
        ``logistic(a) - logistic(b) = logistic(a) logistic(-b) (1 - exp(b - a))``,
        stable in the tails.  Equal to ``distribution(...).log_prob(response)``.
        """
        eta = tf.convert_to_tensor(linear_predictor)
        cuts = tf.cast(self._cutpoints(parameters), eta.dtype)
        n_cuts = tf.shape(cuts)[-1]
        category = tf.cast(response, tf.int32)
        has_upper, has_lower = category < n_cuts, category > 0
        upper = tf.gather(cuts, tf.minimum(category, n_cuts - 1), axis=-1)
        lower = tf.gather(cuts, tf.maximum(category - 1, 0), axis=-1)
        zero = tf.zeros([], eta.dtype)
        log_upper = tf.where(has_upper, -tf.math.softplus(eta - upper), zero)  # log logistic(c_k - eta)
        log_lower = tf.where(has_lower, -tf.math.softplus(lower - eta), zero)  # log logistic(eta - c_{k-1})
        inner = has_upper & has_lower
        gap = tf.where(inner, upper - lower, tf.ones([], eta.dtype))
        log_gap = tf.where(inner, tf.math.log(-tf.math.expm1(-gap)), zero)
        return log_upper + log_lower + log_gap

    def probabilities(self, linear_predictor: np.ndarray, cutpoints: np.ndarray) -> np.ndarray:
        """Category probabilities, shape ``(n_rows, K)`` (numpy)."""
        eta = np.asarray(linear_predictor, dtype=np.float64)[:, None]
        cumulative = special.expit(np.asarray(cutpoints)[None, :] - eta)
        upper = np.concatenate([cumulative, np.ones((eta.shape[0], 1))], axis=1)
        lower = np.concatenate([np.zeros((eta.shape[0], 1)), cumulative], axis=1)
        return np.clip(upper - lower, 0.0, 1.0)

    def mean(self, linear_predictor, parameters=None):
        probs = self.probabilities(linear_predictor, np.asarray(parameters["cutpoints"]))
        return probs @ np.arange(probs.shape[1], dtype=np.float64)

    def variance(self, mean, parameters, *, trials=None):
        raise NotImplementedError("Pearson residuals are not defined for ordinal responses")

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        cuts = self._cutpoints(parameters)
        cumulative = tf.math.sigmoid(cuts[None, :] - linear_predictor[..., None])  # [..., rows, K-1]
        density = cumulative * (1.0 - cumulative)
        zeros = tf.zeros_like(cumulative[..., :1])
        upper = tf.concat([cumulative, tf.ones_like(zeros)], -1)
        lower = tf.concat([zeros, cumulative], -1)
        d_upper = tf.concat([density, zeros], -1)
        d_lower = tf.concat([zeros, density], -1)
        probs = tf.maximum(upper - lower, 1e-12)
        return tf.reduce_sum(tf.square(d_upper - d_lower) / probs, axis=-1)

    def constrain(self, free):
        # the first cutpoint is pinned at 0 (an intercept stands in); the rest ascend
        return {"cutpoints": tfb.Ascending().forward(tf.concat([tf.zeros([1], free.dtype), free], 0))}

    def initial_free(self, response, linear_predictor, *, trials=None):
        counts = np.bincount(response.astype(int), minlength=self.n_categories)
        cumulative = np.clip(np.cumsum(counts)[:-1] / counts.sum(), 1e-3, 1 - 1e-3)
        cuts = special.logit(cumulative)
        cuts = cuts - cuts[0]
        return np.log(np.maximum(np.diff(cuts), 1e-3))

    def free_from_parameters(self, parameters):
        cuts = np.asarray(parameters["cutpoints"], dtype=float)
        return np.log(np.maximum(np.diff(cuts), 1e-12))

    def parameters_from_values(self, values):
        return {"cutpoints": np.asarray(values, dtype=float)}

    def parameter_labels(self):
        labels = self.labels or tuple(range(self.n_categories))
        return tuple(f"{labels[k]}|{labels[k + 1]}" for k in range(self.n_categories - 1))

    def positive_parameters(self):
        return (False,) * (self.n_categories - 1)

    def parameter_scale(self, values, response, n_obs):
        counts = np.bincount(response.astype(int), minlength=self.n_categories)
        cumulative = np.clip(np.cumsum(counts)[:-1] / counts.sum(), 1e-3, 1 - 1e-3)
        return 1.0 / np.sqrt(n_obs * cumulative * (1 - cumulative))

    def validate_response(self, response, *, trials=None, name):
        values = np.asarray(response, dtype=np.float64)
        if np.any(values < 0) or np.any(values >= self.n_categories) or np.any(values != np.round(values)):
            raise DataError(f"the ordinal response {name!r} must be coded 0..{self.n_categories - 1}")
        return values, None

    def separation_cuts(self, response, *, trials=None):
        codes = np.asarray(response).astype(int)
        last = self.n_categories - 1
        return np.where(codes < last, codes, -1), np.where(codes > 0, codes - 1, -1), last

    # -- the cutpoints take the intercept's place -------------------------------------------
    def for_classes(self, classes):
        if len(classes) < 3:
            raise DataError(
                f"an ordinal response needs at least 3 classes, found {len(classes)} "
                f"({', '.join(map(str, classes))}); use family='bernoulli' for two"
            )
        return Ordinal(n_categories=len(classes), labels=tuple(str(c) for c in classes))

    def check_fixed_design(self, *, has_intercept, formula):
        if not has_intercept:
            raise FormulaError(
                "an ordinal model's cutpoints take the place of the intercept; keep the intercept in the formula "
                "(it is reported as the cutpoints, not as a fixed effect)",
                formula=formula,
            )

    def decision_values(self, linear_predictor, fixed_effects, fixed_names):
        """The latent location that the reported cutpoints cut: without the internal intercept."""
        return linear_predictor - np.asarray(fixed_effects)[list(fixed_names).index("Intercept")]

    def class_probabilities(self, linear_predictor, parameters):
        return self.probabilities(linear_predictor, np.asarray(parameters["cutpoints"]))

    def report_fixed_effects(self, names, estimates, cov, parameters):
        """Drop the internal intercept; the thresholds are the cutpoints shifted by it (clmm's)."""
        names, beta = list(names), np.asarray(estimates, dtype=float)
        intercept = names.index("Intercept")
        thresholds = np.asarray(parameters["cutpoints"], dtype=float) - beta[intercept]
        keep = [j for j in range(len(names)) if j != intercept]
        return [names[j] for j in keep], beta[keep], cov[np.ix_(keep, keep)], thresholds


FAMILIES["ordinal"] = Ordinal
