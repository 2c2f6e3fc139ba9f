"""Levels matched by value, not dtype (issue #20).

One small Gaussian fit with an integer grouping column (100, 101, ...) and an
integer-coded categorical predictor ``C(k)``; every other spelling of the same values at
predict time (strings, floats, ``np.int32``, categoricals, nullable ``Int64``,
``string[pyarrow]``, polars and pyarrow tables) must predict exactly what the original
dtypes predict.  The design-level tests cover the reverse direction, booleans,
interactions and the ambiguous cases without a fit.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from conftest import small_settings

import mixedfx
from mixedfx import DataError, NewLevelError, NewLevelWarning
from mixedfx.design import (
    GroupingFactor,
    LevelMatcher,
    RandomDesign,
    build_fixed_design,
    canonical_level,
    conform_levels,
    evaluate_formula,
)
from mixedfx.formula import parse_formula

FORMULA = "y ~ x + C(k) + (1 | g)"


def _frame(seed: int = 7) -> pd.DataFrame:
    """120 rows, 12 groups labelled 100..111, k in {1, 2, 3}: y = 1 + 0.5 x + a_k + b_g + e."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(100, 112), 10)
    k = rng.integers(1, 4, size=120)
    x = rng.normal(size=120)
    y = 1.0 + 0.5 * x + np.array([0.0, 0.4, -0.3])[k - 1] + rng.normal(0.0, 0.7, 12)[g - 100] + rng.normal(size=120)
    return pd.DataFrame({"y": y, "x": x, "k": k, "g": g})


@pytest.fixture(scope="module")
def fit():
    frame = _frame()
    model = mixedfx.MixedEffectsRegressor(FORMULA, **small_settings()).fit(frame)
    rows = frame.iloc[::5].reset_index(drop=True)  # 24 rows: every group, every k
    return model, rows, model.predict(rows), model.predict(rows, include_random=False)


def _both(rows: pd.DataFrame, convert) -> pd.DataFrame:
    return rows.assign(g=convert(rows["g"]), k=convert(rows["k"]))


def _with_unused_categories(values: pd.Series) -> pd.Categorical:
    text = values.astype(str)
    return pd.Categorical(text, categories=["999", *sorted(set(text)), "1000"])


SPELLINGS = {
    "str": lambda s: s.astype(str),
    "object str": lambda s: s.map(str).astype(object),
    "float": lambda s: s.astype(float),
    "float as str": lambda s: s.astype(float).astype(str),  # "100.0"
    "np.int32": lambda s: s.astype(np.int32),
    "categorical": lambda s: s.astype("category"),
    "categorical of str": lambda s: s.astype(str).astype("category"),
    "categorical with unused categories": _with_unused_categories,
    "nullable Int64": lambda s: s.astype("Int64"),
    "string[pyarrow]": lambda s: s.astype(str).astype("string[pyarrow]"),
    "object of mixed types": lambda s: pd.Series([str(v) if i % 3 == 0 else float(v) if i % 3 == 1 else int(v)
                                                  for i, v in enumerate(s)], index=s.index, dtype=object),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_every_spelling_of_the_levels_predicts_as_the_fitted_dtype(fit, spelling):
    model, rows, expected, population = fit
    assert np.abs(expected - population).min() > 1e-3  # the reference is not the population prediction
    given = _both(rows, SPELLINGS[spelling])
    before = given.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewLevelWarning)
        predicted = model.predict(given, new_levels="error")
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)
    pd.testing.assert_frame_equal(given, before)  # the user's frame is not changed


TABLES = {
    "polars, str": lambda rows: pl.from_pandas(_both(rows, lambda s: s.astype(str))),
    "polars, Int32": lambda rows: pl.from_pandas(rows).with_columns(pl.col("g", "k").cast(pl.Int32)),
    "polars, Categorical": lambda rows: pl.from_pandas(_both(rows, lambda s: s.astype(str))).with_columns(
        pl.col("g", "k").cast(pl.Categorical)),
    "pyarrow, str": lambda rows: pa.Table.from_pandas(_both(rows, lambda s: s.astype(str)), preserve_index=False),
    "pyarrow, int32": lambda rows: pa.Table.from_pandas(_both(rows, lambda s: s.astype(np.int32)),
                                                        preserve_index=False),
    "pyarrow, dictionary": lambda rows: pa.Table.from_pandas(_both(rows, lambda s: s.astype(str).astype("category")),
                                                             preserve_index=False),
}


@pytest.mark.parametrize("table", list(TABLES))
def test_polars_and_pyarrow_tables_predict_as_the_fitted_dtype(fit, table):
    model, rows, expected, _ = fit
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewLevelWarning)
        predicted = model.predict(TABLES[table](rows), new_levels="error")
    np.testing.assert_allclose(predicted, expected, rtol=1e-12)


def test_reported_levels_stay_as_given_at_fit(fit):
    model = fit[0]
    assert model.random_effects_["g"].index.tolist() == list(range(100, 112))
    model.predict(_both(fit[1], lambda s: s.astype(str)))
    assert model.random_effects_["g"].index.tolist() == list(range(100, 112))


@pytest.mark.parametrize("column, value, fitted", [("g", "0101", "101 (int)"), ("g", " 101", "101 (int)"),
                                                   ("k", "02", "2 (int)"), ("k", "2.00", "2 (int)")])
@pytest.mark.parametrize("policy", ["population", "error"])
def test_an_ambiguous_spelling_raises_naming_the_column_and_both_values(fit, column, value, fitted, policy):
    model, rows = fit[0], fit[1].head(3)
    given = rows.assign(**{column: [value] * len(rows)}) if column == "k" else rows.assign(g=[value, "100", "100"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        with pytest.raises(NewLevelError, match=rf"column '{column}': the given value {re.escape(repr(value))} "
                                                rf"\(str\) equals the fitted level {re.escape(fitted)}"):
            model.predict(given, new_levels=policy)


def _new_level_warnings(model, rows, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(rows, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, NewLevelWarning)]


def test_more_than_half_unseen_rows_warn_naming_the_factor_and_the_count(fit):
    model, rows = fit[0], fit[1].head(4)
    assert _new_level_warnings(model, rows.assign(g=[1, 2, 3, 100])) == [
        "3 of 4 rows have a level of grouping factor 'g' not seen in fit (e.g. 1); they get a zero random effect "
        "(the population prediction). Is the column the one used in fit? Its levels are matched by value (7, 7.0 "
        "and '7' are one level), so a change of dtype alone does not cause this"]
    assert _new_level_warnings(model, rows.assign(g=[1, 2, 100, 101])) == []  # exactly half
    assert _new_level_warnings(model, rows.assign(g=[1, 100, 101, 102])) == []
    assert _new_level_warnings(model, rows.assign(g=["100", 101.0, np.int32(102), "103"])) == []


def test_the_unseen_warning_fires_under_either_policy(fit):
    model, rows = fit[0], fit[1].head(4)
    with pytest.warns(NewLevelWarning, match=r"^3 of 4 rows .* grouping factor 'g' .* they raise NewLevelError"):
        with pytest.raises(NewLevelError, match=r"3 row\(s\) have level\(s\) of grouping factor 'g'"):
            model.predict(rows.assign(g=[1, 2, 3, 100]), new_levels="error")
    # A warning pointed at the caller's line, not at mixedfx's internals.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict(rows.assign(g=[1, 2, 3, 100]))
    assert [w.filename for w in caught if issubclass(w.category, NewLevelWarning)] == [__file__]


# Design-level tests: no fit needed.

def test_canonical_forms():
    assert {canonical_level(v) for v in (7, 7.0, "7", "7.0", np.int32(7), np.uint8(7), np.float32(7.0),
                                         pd.array([7], dtype="Int64")[0])} == {("number", 7)}
    assert canonical_level(np.float32(0.1)) == canonical_level(0.1) == canonical_level("0.1") == ("number", 0.1)
    assert {canonical_level(v) for v in (True, np.bool_(True), "True", "true", "TRUE")} == {("bool", True)}
    assert canonical_level(True) != canonical_level(1)
    assert [canonical_level(v) for v in ("07", "7.00", " 7", "+7", "1e1", "nan", "tRUE")] == [
        ("string", v) for v in ("07", "7.00", " 7", "+7", "1e1", "nan", "tRUE")]
    assert [canonical_level(v) for v in (None, np.nan, pd.NA, pd.NaT)] == [None] * 4


def test_grouping_levels_fitted_as_strings_match_integers_and_keep_their_labels():
    train = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": ["10", "2", "10", "3"]})
    design = RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), train)
    assert design.factors["g"].levels.tolist() == ["10", "2", "3"]
    for given in ([2, 10, 3, 4], [2.0, 10.0, 3.0, 4.0], pd.array([2, 10, 3, 4], dtype="Int64"),
                  pd.Categorical([2, 10, 3, 4]), np.array([2, 10, 3, 4], dtype=np.int32)):
        codes = design.materialize(pd.DataFrame({"g": given}))[0].group_index
        assert codes.tolist() == [1, 0, 2, -1]


def test_boolean_levels_match_their_spellings_but_not_zero_and_one():
    factor = GroupingFactor.from_data(pd.DataFrame({"b": [True, False, True]}), ("b",))
    given = pd.DataFrame({"b": ["True", "false", "TRUE", np.True_]})
    assert factor.encode(given).tolist() == [1, 0, 1, 1]
    with pytest.raises(NewLevelError, match=r"column 'b': the given value 1 \(int\) equals the fitted level True"):
        factor.encode(pd.DataFrame({"b": [1, 0]}))
    # a boolean fixed predictor (formulaic reads it as numbers) given as strings
    design, X = build_fixed_design("b", pd.DataFrame({"b": [True, False, True]}))
    np.testing.assert_array_equal(design.transform(pd.DataFrame({"b": ["True", "False", "true"]})), X)


def test_interaction_levels_match_by_value():
    train = pd.DataFrame({"a": ["u", "v", "v", "w"], "h": [10, 10, 20, 20]})
    factor = GroupingFactor.from_data(train, ("a", "h"))
    given = pd.DataFrame({"a": pd.Categorical(["w", "v", "u", "u"]), "h": ["20", "10.0", "20", "10"]})
    assert factor.encode(given).tolist() == [3, 1, -1, 0]


@pytest.mark.parametrize("fitted, given", [(["a", "b", "a"], ["b", "a"]), ([1, 2, 3, 1], ["2", "3.0"]),
                                           ([1, 2, 3, 1], [2.0, 3.0]), (["1", "2", "3"], [2, 3]),
                                           (pd.Categorical(["x", "y", "z"]), pd.array(["y", "z"], dtype="string"))])
def test_fixed_categories_encode_identically_whatever_the_dtype(fitted, given):
    train = pd.DataFrame({"f": fitted})
    expected = {"f": [fitted[1], fitted[2]]}
    for formula in ("f", "C(f)", "C(f, Sum)"):
        design, X = build_fixed_design(formula, train)
        reference = design.transform(pd.DataFrame(expected))
        np.testing.assert_array_equal(design.transform(pd.DataFrame({"f": given})), reference)


def test_random_slopes_on_a_categorical_replay_by_value():
    train = pd.DataFrame({"y": np.arange(6.0), "k": [1, 2, 3, 1, 2, 3], "g": ["a", "a", "b", "b", "c", "c"]})
    design = RandomDesign.from_spec(parse_formula("y ~ (0 + C(k) | g)"), train)
    expected = np.eye(3)[[0, 1, 2, 0, 1, 2]]  # one indicator per level of k
    np.testing.assert_array_equal(design.materialize(train)[0].z, expected)
    given = train.assign(k=train["k"].astype(str).astype("string[pyarrow]"))
    np.testing.assert_array_equal(design.materialize(given)[0].z, expected)


@pytest.mark.parametrize("categories", [[0, 1, 2], [2.5, 1.0, 7.0], ["a", "b", "c"]])
def test_a_categorical_of_numbers_encodes_as_indicators_on_both_sides(categories):
    """A pandas categorical whose categories are numbers is a factor: ``(0 + f | g)`` gets
    one indicator column per level, and ``f`` on the fixed side treatment contrasts, at
    fit and when replayed on the categories' plain values (formulaic replays a
    categorical factor given as plain numbers as the numbers themselves)."""
    codes = [0, 1, 2, 1, 0, 2]
    f = pd.Categorical.from_codes(codes, categories=categories)
    train = pd.DataFrame({"y": np.arange(6.0), "f": f, "g": ["a", "a", "b", "b", "c", "c"]})
    indicators = np.eye(3)[codes]
    given = pd.DataFrame({"f": [categories[2], categories[0]], "g": ["a", "c"]})  # train's rows 2 and 0
    for left, expected in (("0 + f", indicators), ("f", np.column_stack([np.ones(6), indicators[:, 1:]]))):
        design = RandomDesign.from_spec(parse_formula(f"y ~ ({left} | g)"), train)
        np.testing.assert_array_equal(design.materialize(train)[0].z, expected)
        np.testing.assert_array_equal(design.materialize(given)[0].z, expected[[2, 0]])
    design, X = build_fixed_design("f", train)
    np.testing.assert_array_equal(X, np.column_stack([np.ones(6), indicators[:, 1:]]))
    np.testing.assert_array_equal(design.transform(given), X[[2, 0]])


def test_numeric_columns_given_as_strings_are_read_as_numbers():
    design, X = build_fixed_design("x", pd.DataFrame({"x": [0.5, 1.0, 2.0]}))
    np.testing.assert_array_equal(design.transform(pd.DataFrame({"x": ["0.5", "1", "2.0"]})), X)
    with pytest.raises(DataError, match=r"column 'x' was numeric in fit but holds strings such as 'abc'"):
        design.transform(pd.DataFrame({"x": ["0.5", "abc", "2"]}))


def test_fixed_side_ambiguity_and_unseen_levels_name_the_column():
    design, _ = build_fixed_design("f", pd.DataFrame({"f": ["07", "08", "07"]}))
    with pytest.raises(NewLevelError, match=r"column 'f': the given value 7 \(int\) equals the fitted level '07'"):
        design.transform(pd.DataFrame({"f": [7]}))
    design, _ = build_fixed_design("C(k)", pd.DataFrame({"k": [1, 2, 1]}))
    with pytest.raises(NewLevelError, match=r"column 'k' has level\(s\) '5'"):  # unseen, and only it is named
        design.transform(pd.DataFrame({"k": ["2", "5"]}))


@pytest.mark.parametrize("values", [["7", "7.0", "8"], [7, "7", 8], ["True", "true", "x"]])
def test_levels_that_collide_by_value_are_refused_at_fit(values):
    frame = pd.DataFrame({"g": pd.Series(values, dtype=object), "y": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"grouping column 'g' has the levels .* which are one value"):
        GroupingFactor.from_data(frame, ("g",))
    if all(isinstance(v, str) for v in values):
        with pytest.raises(DataError, match=r"categorical column 'g' has the levels .* which are one value"):
            build_fixed_design("g", frame)


def test_an_estimator_refuses_colliding_levels_before_fitting():
    frame = _frame().assign(g=lambda d: d["g"].astype(str).where(d["g"] != 100, "101.0"))
    with pytest.raises(DataError, match=r"grouping column 'g' has the levels '101' \(str\) and '101.0' \(str\)"):
        mixedfx.MixedEffectsRegressor(FORMULA, **small_settings()).fit(frame)


def test_matching_does_not_change_the_given_frame():
    _, spec = evaluate_formula("C(k)", pd.DataFrame({"k": [1, 2, 3]}))
    given = pd.DataFrame({"k": ["1", "3"]})
    conformed = conform_levels(given, spec)
    assert given["k"].tolist() == ["1", "3"] and conformed["k"].tolist() == [1, 3]
    matcher = LevelMatcher(pd.Index([1, 2, 3]), column="k")
    assert matcher.positions(given["k"]).tolist() == [0, 2]
    assert given["k"].tolist() == ["1", "3"]
