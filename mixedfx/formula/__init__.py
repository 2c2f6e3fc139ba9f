"""The lme4 formula grammar: tokenizer, parser, frozen specs and R's spellings.

This layer knows nothing about data or TensorFlow.
"""

from mixedfx.formula.parser import parse_formula
from mixedfx.formula.r_syntax import RTranslation, translate_r
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec

__all__ = ["parse_formula", "FormulaSpec", "RandomTermSpec", "RTranslation", "translate_r"]
