"""The lme4 formula grammar: tokenizer, parser and frozen specs.

This layer knows nothing about data or TensorFlow.
"""

from mixedfx.formula.parser import parse_formula
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec

__all__ = ["parse_formula", "FormulaSpec", "RandomTermSpec"]
