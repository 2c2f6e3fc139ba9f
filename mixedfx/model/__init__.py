"""Model layer: families and the TensorFlow Probability joint distribution.

It knows nothing of estimators or of how the model is fitted.
"""

from mixedfx.model.families import FAMILIES, Family, Gaussian, get_family
from mixedfx.model.gaussian import DenseBlockTooLarge, GaussianMarginal, gaussian_marginal
from mixedfx.model.joint import (
    RESPONSE,
    MixedModel,
    ModelParameters,
    ModelTensors,
    build_joint_distribution,
    linear_predictor,
    random_effect_keys,
)

__all__ = [
    "FAMILIES",
    "Family",
    "Gaussian",
    "get_family",
    "DenseBlockTooLarge",
    "GaussianMarginal",
    "gaussian_marginal",
    "RESPONSE",
    "MixedModel",
    "ModelParameters",
    "ModelTensors",
    "build_joint_distribution",
    "linear_predictor",
    "random_effect_keys",
]
