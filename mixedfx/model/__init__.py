"""Model layer: families and the TensorFlow Probability joint distribution.

It knows nothing of estimators or of how the model is fitted.
"""

from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.families import (
    FAMILIES,
    Bernoulli,
    Binomial,
    Family,
    Gaussian,
    NegativeBinomial,
    Ordinal,
    Poisson,
    get_family,
)
from mixedfx.model.glmmtmb_families import Beta, BetaBinomial, Gamma, InverseGaussian, NegativeBinomial1, StudentT
from mixedfx.model.truncated import (TruncatedNegativeBinomial, TruncatedNegativeBinomial1, TruncatedPoisson,
                                     ZeroTruncated)
from mixedfx.model.zero_inflation import Hurdle, ZeroInflated
from mixedfx.model.dispersion_model import DispersionModel
from mixedfx.model.gaussian import GaussianMarginal, gaussian_marginal, term_z
from mixedfx.model.likelihood import LaplaceMode, MarginalLikelihood, laplace_mode, marginal_log_likelihood
from mixedfx.model.joint import (
    RESPONSE,
    MixedModel,
    ModelParameters,
    ModelTensors,
    build_joint_distribution,
    family_tensors,
    gaussian_log_likelihood_float32,
    joint_log_prob,
    linear_predictor,
    numpy_linear_predictor,
    random_effect_keys,
)
from mixedfx.model.binding import bind_model

__all__ = [
    "ZeroInflated",
    "Hurdle",
    "ZeroTruncated",
    "TruncatedPoisson",
    "TruncatedNegativeBinomial",
    "TruncatedNegativeBinomial1",
    "DispersionModel",
    "bind_model",
    "FAMILIES",
    "Family",
    "Gaussian",
    "Bernoulli",
    "Binomial",
    "Poisson",
    "NegativeBinomial",
    "Ordinal",
    "Gamma",
    "InverseGaussian",
    "NegativeBinomial1",
    "Beta",
    "StudentT",
    "BetaBinomial",
    "get_family",
    "BlockSystem",
    "DenseBlockTooLarge",
    "GaussianMarginal",
    "gaussian_marginal",
    "term_z",
    "LaplaceMode",
    "laplace_mode",
    "MarginalLikelihood",
    "marginal_log_likelihood",
    "RESPONSE",
    "MixedModel",
    "ModelParameters",
    "ModelTensors",
    "build_joint_distribution",
    "family_tensors",
    "joint_log_prob",
    "gaussian_log_likelihood_float32",
    "linear_predictor",
    "numpy_linear_predictor",
    "random_effect_keys",
]
