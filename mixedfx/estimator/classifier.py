"""The mixed-effects classifier: bernoulli and ordinal responses."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from mixedfx.estimator.base import MixedEffectsModel
from mixedfx.estimator.docstrings import fill_docstring
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model import get_family

__all__ = ["MixedEffectsClassifier"]


@fill_docstring
class MixedEffectsClassifier(ClassifierMixin, MixedEffectsModel):
    """Mixed-effects classification from an lme4 formula: bernoulli or ordinal.

    ``family="bernoulli"`` models a two-class response with a logit link (a
    :class:`~mixedfx.model.Bernoulli` instance with ``link_name="probit"`` chooses
    probit), as ``glmer(..., family = binomial)``; ``family="ordinal"`` models ordered
    categories with a cumulative logit link and ``K - 1`` cutpoints, as
    ``ordinal::clmm``.  The classes are the sorted distinct values of the response
    (a categorical response keeps its category order); for the bernoulli family the
    second class is the "positive" one.

    Parameters
    ----------
    formula : str or None
        An lme4 formula, or ``None`` with ``groups``; see :class:`MixedEffectsRegressor`.
    family : {"bernoulli", "ordinal"} or Family, default "bernoulli"
    %(parameters)s
    Attributes
    ----------
    classes_ : numpy.ndarray
        The class labels, in order.
    cutpoints_ : pandas.Series
        Ordinal family only: the ``K - 1`` cutpoints, named like clmm's (``"1|2"``).
    %(attributes)s

    See Also
    --------
    glmer : fit in one call.

    Examples
    --------
    >>> import numpy as np
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> data["high"] = np.where(data["y"] > 1.0, "yes", "no")
    >>> model = mixedfx.MixedEffectsClassifier("high ~ x + (1 | g)", random_state=0, verbose=0).fit(data)
    >>> model.classes_.tolist()
    ['no', 'yes']
    >>> model.predict_proba(data.head(3)).sum(axis=1).round(12).tolist()
    [1.0, 1.0, 1.0]
    """

    _families = ("bernoulli", "ordinal")
    _classifier = True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.classifier_tags.multi_class = get_family(self.family).is_multiclass
        except (ParameterError, TypeError):
            pass  # an invalid family is reported by fit
        return tags

    def __init__(
        self,
        formula=None,
        *,
        family="bernoulli",
        groups=None,
        missing="drop",
        new_levels="population",
        max_iter=500,
        tol=0.1,
        n_chains=2,
        n_draws=5,
        n_leapfrog_steps=8,
        stopping_rule=None,
        random_state=None,
        verbose=1,
        options=None,
        distribute=None,
    ):
        self.formula = formula
        self.family = family
        self.groups = groups
        self.missing = missing
        self.new_levels = new_levels
        self.max_iter = max_iter
        self.tol = tol
        self.n_chains = n_chains
        self.n_draws = n_draws
        self.n_leapfrog_steps = n_leapfrog_steps
        self.stopping_rule = stopping_rule
        self.random_state = random_state
        self.verbose = verbose
        self.options = options
        self.distribute = distribute

    def _encode_response(self, family, raw, into):
        """The response as class codes, and the family for its classes (an ordinal
        family learns their number and labels); records ``classes_`` in ``into``."""
        values = pd.Series(raw)
        if values.isna().any():
            raise DataError(f"the response has {int(values.isna().sum())} missing value(s); drop those rows first")
        if isinstance(values.dtype, pd.CategoricalDtype):
            classes = np.asarray([c for c in values.cat.categories if (values == c).any()], dtype=object)
        else:
            try:
                classes = np.sort(pd.unique(values))
            except TypeError:
                classes = np.asarray(pd.unique(values), dtype=object)
        if not family.is_multiclass and len(classes) > 2 and type_of_target(np.asarray(values)) == "continuous":
            raise DataError(
                f"Unknown label type: continuous. A {family.name} response needs exactly 2 classes, found "
                f"{len(classes)} distinct numbers; use MixedEffectsRegressor for a continuous response"
            )
        family = family.for_classes(classes)
        into["classes_"] = classes
        codes = pd.Index(classes).get_indexer(values)
        return family, codes.astype(np.float64)

    def decision_function(self, X, *, new_levels=None, include_random=True, re_form=None):
        """The linear predictor: log-odds of the second class (bernoulli, logit link),
        or the latent location that the cutpoints cut (ordinal).

        ``re_form`` picks the random terms included, as lme4's ``re.form`` (see
        :meth:`MixedEffectsRegressor.predict`)."""
        eta = self._linear_predictor_for(X, new_levels, include_random, re_form)
        return self.family_.decision_values(eta, self.model_parameters_.fixed_effects, self.fixed_design_.column_names)

    def predict_proba(self, X, *, new_levels=None, include_random=True, re_form=None):
        """Class probabilities given the conditional means of the random effects.

        ``re_form`` picks the random terms included, as lme4's ``re.form``: ``None``
        all, ``"~0"`` none, or a formula of the terms to keep (see
        :meth:`MixedEffectsRegressor.predict`).

        Returns
        -------
        numpy.ndarray of shape (n_rows, n_classes)
            Rows sum to one; columns follow :attr:`classes_`.
        """
        eta = self._linear_predictor_for(X, new_levels, include_random, re_form)
        return self.family_.class_probabilities(eta, self.model_parameters_.family_params)

    def predict(self, X, *, new_levels=None, include_random=True, re_form=None):
        """The most probable class of each row (``re_form`` as in :meth:`predict_proba`)."""
        probabilities = self.predict_proba(X, new_levels=new_levels, include_random=include_random, re_form=re_form)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def score(self, X, y=None, sample_weight=None):
        """Accuracy of :meth:`predict` on ``X`` (the response from the formula when ``y``
        is omitted)."""
        check_is_fitted(self, "fixed_effects_")
        data = self._input_frame(X)
        return accuracy_score(self._response_for(data, y), self.predict(data), sample_weight=sample_weight)
