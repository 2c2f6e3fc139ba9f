"""Fixed and random designs: encodings learned at fit time, replayed with guards."""

import warnings

import numpy as np
import pandas as pd
import pytest

from mixedfx import DataError, FormulaError, NewLevelError, parse_formula
from mixedfx.design import GroupingFactor, RandomDesign, build_fixed_design


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "x": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5],
            "f": ["a", "b", "c", "a", "b", "c"],
            "g": ["u", "v", "u", "w", "v", "w"],
            "h": [10, 20, 10, 20, 10, 20],
        }
    )


def test_grouping_levels_follow_r_factor_rules():
    values = pd.DataFrame(
        {
            "cat": pd.Categorical(["z", "x", "z"], categories=["z", "y", "x"]),
            "num": [3, 1, 2],
            "text": ["b", "c", "a"],
        }
    )
    # category order kept, unused category "y" dropped
    assert list(GroupingFactor.from_data(values, ("cat",)).levels) == ["z", "x"]
    assert list(GroupingFactor.from_data(values, ("num",)).levels) == [1, 2, 3]
    assert list(GroupingFactor.from_data(values, ("text",)).levels) == ["a", "b", "c"]


def test_interaction_levels_are_the_pairs_present(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g:h)"), frame)
    factor = design.factors["g:h"]
    assert list(factor.levels) == [("u", 10), ("v", 10), ("v", 20), ("w", 20)]
    assert list(factor.labels) == ["u:10", "v:10", "v:20", "w:20"]
    codes = design.materialize(frame)[0].group_index
    assert codes.tolist() == [0, 2, 0, 3, 1, 3]


def test_nested_grouping_expands_like_lme4(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g/h)"), frame)
    assert [t.name for t in design.terms] == ["g", "g:h"]


def test_group_index_is_int32_and_levels_live_in_one_place(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g) + (1 | h)"), frame)
    terms = design.materialize(frame)
    assert all(t.group_index.dtype == np.int32 for t in terms)
    assert [t.num_levels for t in terms] == [3, 2]
    assert terms[0].z is None  # an intercept: no per-row z stored


def test_unseen_levels_follow_the_policy(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), frame)
    new = pd.DataFrame({"g": ["v", "new", None]})
    assert design.materialize(new, new_levels="population")[0].group_index.tolist() == [1, -1, -1]
    with pytest.raises(NewLevelError, match=r"grouping factor 'g'.*'new'"):
        design.materialize(new, new_levels="error")


def test_missing_grouping_column_at_predict(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), frame)
    with pytest.warns(UserWarning, match="grouping column 'g' is missing"):
        codes = design.materialize(pd.DataFrame({"x": [1.0]}), new_levels="population")[0].group_index
    assert codes.tolist() == [-1]
    with pytest.raises(NewLevelError, match="grouping column 'g' is missing"):
        design.materialize(pd.DataFrame({"x": [1.0]}), new_levels="error")


def test_grouping_errors_name_the_column(frame):
    with pytest.raises(DataError, match=r"grouping column 'gg' in term '\(1 \| gg\)' is not in the data. Did you mean 'g'\?"):
        RandomDesign.from_spec(parse_formula("y ~ (1 | gg)"), frame)
    with pytest.raises(DataError, match="grouping column 'g' has 1 missing value"):
        RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), frame.assign(g=["u", None, "u", "w", "v", "w"]))
    with pytest.raises(DataError, match="grouping factor 'g' has a single level"):
        RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), frame.assign(g="u"))


def test_random_slope_terms_materialize_z(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ x + (x | g)"), frame)
    (term,) = design.materialize(frame)
    assert term.coef_names == ("(Intercept)", "x") and term.dim == 2
    np.testing.assert_array_equal(term.z, np.column_stack([np.ones(6), frame["x"]]))
    slope_only = RandomDesign.from_spec(parse_formula("y ~ x + (0 + x | g)"), frame).materialize(frame)[0]
    assert slope_only.coef_names == ("x",) and slope_only.z.shape == (6, 1)
    minus_one = RandomDesign.from_spec(parse_formula("y ~ x + (-1 + x | g)"), frame).materialize(frame)[0]
    assert minus_one.coef_names == ("x",)


def test_double_bar_splits_into_uncorrelated_terms(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ x + (x || g)"), frame)
    assert [(t.factor, t.coef_names) for t in design.terms] == [("g", ("(Intercept)",)), ("g", ("x",))]
    intercept, slope = design.materialize(frame)
    assert intercept.z is None and slope.z[:, 0].tolist() == frame["x"].tolist()


def test_categorical_and_transformed_left_sides(frame):
    design = RandomDesign.from_spec(parse_formula("y ~ (0 + C(f) | g) + (1 + np.log(x) | h)"), frame)
    categorical, transformed = design.materialize(frame)
    assert categorical.coef_names == ("C(f)[a]", "C(f)[b]", "C(f)[c]")
    assert categorical.z.sum(axis=1).tolist() == [1.0] * 6  # full dummy coding, one per level
    assert transformed.coef_names == ("(Intercept)", "np.log(x)")
    np.testing.assert_allclose(transformed.z[:, 1], np.log(frame["x"]))
    # the left side's encoding replays at predict time, with the same guards
    with pytest.raises(NewLevelError, match=r"column 'f' has level\(s\) 'z'"):
        design.materialize(frame.assign(f=["a", "b", "c", "a", "b", "z"]))


def test_repeated_coefficient_on_one_factor_is_refused(frame):
    with pytest.raises(FormulaError, match=r"coefficient '\(Intercept\)' of grouping factor 'g' appears in two"):
        RandomDesign.from_spec(parse_formula("y ~ (x | g) + (1 | g)"), frame)
    # (1 | g) + (0 + x | g) is fine: the same as (x || g)
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g) + (0 + x | g)"), frame)
    assert [t.coef_names for t in design.terms] == [("(Intercept)",), ("x",)]


def test_fixed_design_replays_the_fitted_encoding(frame):
    design, X = build_fixed_design("x + f", frame)
    assert design.column_names == ("Intercept", "x", "f[T.b]", "f[T.c]")
    new = pd.DataFrame({"x": [9.0], "f": pd.Categorical(["c"])})
    assert design.transform(new).tolist() == [[1.0, 9.0, 0.0, 1.0]]


def test_stateful_transforms_use_the_training_state(frame):
    design, X = build_fixed_design("center(x)", frame)
    assert X[:, 1].mean() == pytest.approx(0.0)
    replayed = design.transform(pd.DataFrame({"x": [3.0, 13.0]}))
    # centred on the training mean (3.0), not on the new rows' mean
    assert replayed[:, 1].tolist() == [0.0, 10.0]


def test_unseen_fixed_level_raises_instead_of_baseline(frame):
    design, _ = build_fixed_design("f", frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning leaks out of formulaic either
        with pytest.raises(NewLevelError, match=r"column 'f' has level\(s\) 'zz'"):
            design.transform(pd.DataFrame({"f": ["a", "zz"]}))


def test_fixed_side_errors_name_the_column(frame):
    with pytest.raises(DataError, match=r"column 'xx' used in the formula 'xx' is not in the data. Did you mean 'x'\?"):
        build_fixed_design("xx", frame)
    with pytest.raises(DataError, match=r"column 'x' contains missing values"):
        build_fixed_design("x", frame.assign(x=[1.0, np.nan, 2, 3, 4, 5]))
    design, _ = build_fixed_design("x", frame)
    with pytest.raises(DataError, match=r"column 'x' contains missing values"):
        design.transform(pd.DataFrame({"x": [1.0, None]}))
    with pytest.raises(DataError, match="expected a pandas DataFrame"):
        design.transform(np.ones((2, 2)))


def test_responses_and_offsets(frame):
    from mixedfx.design import ResponseDesign

    values, trials = ResponseDesign.from_text("y").evaluate(frame)
    assert values.tolist() == frame["y"].tolist() and trials is None
    labels, _ = ResponseDesign.from_text("f").evaluate(frame)  # labels stay labels (classifiers)
    assert labels.tolist() == frame["f"].tolist()
    logged, _ = ResponseDesign.from_text("np.log(y)").evaluate(frame)
    np.testing.assert_allclose(logged, np.log(frame["y"]))
    successes, trials = ResponseDesign.from_text("cbind(h // 10, x + 1)").evaluate(frame)
    assert successes.tolist() == (frame["h"] // 10).tolist()
    np.testing.assert_allclose(trials, frame["h"] // 10 + frame["x"] + 1)
    with pytest.raises(DataError, match=r"the response 'f' must be numeric"):
        ResponseDesign.from_text("cbind(f, x)").evaluate(frame)
    with pytest.raises(FormulaError, match=r"cbind takes exactly two arguments"):
        ResponseDesign.from_text("cbind(y)")
    with pytest.raises(DataError, match=r"the response column 'yy' is not in the data. Did you mean 'y'\?"):
        ResponseDesign.from_text("yy").evaluate(frame)
    design, _ = build_fixed_design("x", frame, offsets=("np.log(h)", "x"))
    np.testing.assert_allclose(design.offset(frame), np.log(frame["h"]) + frame["x"])
    np.testing.assert_allclose(design.offset(frame.iloc[:2]), (np.log(frame["h"]) + frame["x"])[:2])


def test_rank_deficient_design_drops_aliased_columns(frame):
    data = frame.assign(x2=2 * frame["x"])
    with pytest.warns(UserWarning, match=r"rank deficient; dropping 1 aliased column\(s\): x2"):
        design, X = build_fixed_design("x + x2", data)
    assert design.column_names == ("Intercept", "x") and design.dropped_columns == ("x2",)
    assert X.shape == (6, 2)
    assert design.transform(data).shape == (6, 2)
