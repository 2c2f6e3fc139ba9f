"""mixedfx: lme4-style mixed-effects models on TensorFlow Probability.

Formulas are parsed into frozen specs, the specs build a TensorFlow Probability joint
distribution, and the estimators fit it by Monte Carlo EM (HMC E-step, closed-form
parameter-expanded M-step), compiled with XLA, on the GPU when TensorFlow sees one.

>>> import mixedfx
>>> spec = mixedfx.parse_formula("y ~ service + (1 | s) + (1 | d) + (1 | dept)")
>>> spec.fixed, [term.group_name for term in spec.random]
('service', ['s', 'd', 'dept'])
"""

from mixedfx import _tf  # noqa: F401  (configures TensorFlow before anything else uses it)
from mixedfx import datasets
from mixedfx.estimator import MixedEffectsClassifier, MixedEffectsRegressor, glmer, lmer
from mixedfx.exceptions import (
    ConvergenceWarning,
    DataError,
    DataWarning,
    FitError,
    FormulaError,
    MemoryEstimateError,
    MixedFXError,
    ModelFormatError,
    NewLevelError,
    NewLevelWarning,
    ParameterError,
    SamplerWarning,
)
from mixedfx.formula import FormulaSpec, RandomTermSpec, parse_formula
from mixedfx.inference import FitSummary
from mixedfx.drop_terms import drop1
from mixedfx.persistence import load
from mixedfx.explained_variance import icc, r2
from mixedfx.marginal_means import EMMeans, contrast, emmeans
from mixedfx.results import anova

#: The installed version of mixedfx.
#:
#: Examples
#: --------
#: >>> import mixedfx
#: >>> mixedfx.__version__
#: '0.1.0'
__version__ = "0.1.0"

__all__ = [
    "MixedEffectsRegressor",
    "MixedEffectsClassifier",
    "lmer",
    "glmer",
    "anova",
    "drop1",
    "load",
    "emmeans",
    "contrast",
    "EMMeans",
    "r2",
    "icc",
    "parse_formula",
    "FormulaSpec",
    "RandomTermSpec",
    "FitSummary",
    "MixedFXError",
    "FormulaError",
    "DataError",
    "NewLevelError",
    "ParameterError",
    "FitError",
    "ModelFormatError",
    "MemoryEstimateError",
    "ConvergenceWarning",
    "SamplerWarning",
    "DataWarning",
    "NewLevelWarning",
    "datasets",
    "__version__",
]
