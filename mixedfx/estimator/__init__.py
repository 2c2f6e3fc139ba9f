"""scikit-learn estimators for mixed-effects models, and the one-line ``lmer``/``glmer`` calls.

The estimators are the top layer: they parse the formula, bind the data to it
(:func:`mixedfx.design.bind_data`) and the family to that
(:func:`mixedfx.model.bind_model`), fit it with :func:`~mixedfx.inference.fit_mcem`,
finish the fit (:func:`mixedfx.inference.finish.finish_fit`), and expose the results as
pandas objects named the way lme4 names them.

* :mod:`~mixedfx.estimator.base`: what both estimators share (fit, the fitted
  attributes, lme4's toolkit);
* :mod:`~mixedfx.estimator.regressor`: :class:`MixedEffectsRegressor`;
* :mod:`~mixedfx.estimator.classifier`: :class:`MixedEffectsClassifier`;
* :mod:`~mixedfx.estimator.calls`: :func:`lmer` and :func:`glmer`.
"""

from mixedfx.estimator.base import MixedEffectsModel
from mixedfx.estimator.calls import glmer, lmer
from mixedfx.estimator.classifier import MixedEffectsClassifier
from mixedfx.estimator.regressor import MixedEffectsRegressor

__all__ = ["MixedEffectsRegressor", "MixedEffectsClassifier", "lmer", "glmer", "MixedEffectsModel"]
