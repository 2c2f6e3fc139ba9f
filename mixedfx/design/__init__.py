"""Design layer: from frozen formula specs and a DataFrame to model arrays.

Nothing here imports TensorFlow.
"""

from mixedfx.design.arrow import is_arrow_source, read_arrow
from mixedfx.design.bind import BoundData, bind_data
from mixedfx.design.fixed import EVALUATION_CONTEXT, FixedDesign, build_dispersion_design, build_fixed_design, build_zi_design, evaluate_formula
from mixedfx.design.levels import LevelMatcher, canonical_level, check_distinct_categories, conform_levels
from mixedfx.design.frame import MISSING_POLICIES, as_frame, clean_columns, formula_columns, missing_rows
from mixedfx.design.response import ResponseDesign
from mixedfx.design.random import (
    NEW_LEVEL_POLICIES,
    GroupingFactor,
    RandomDesign,
    RandomTermData,
    RandomTermDesign,
)

__all__ = [
    "BoundData",
    "bind_data",
    "EVALUATION_CONTEXT",
    "FixedDesign",
    "build_fixed_design",
    "build_zi_design",
    "build_dispersion_design",
    "evaluate_formula",
    "ResponseDesign",
    "MISSING_POLICIES",
    "as_frame",
    "formula_columns",
    "clean_columns",
    "missing_rows",
    "NEW_LEVEL_POLICIES",
    "GroupingFactor",
    "RandomDesign",
    "RandomTermData",
    "RandomTermDesign",
    "is_arrow_source",
    "read_arrow",
    "canonical_level",
    "LevelMatcher",
    "conform_levels",
    "check_distinct_categories",
]
