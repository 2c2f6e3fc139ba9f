"""Levels matched by value, not by dtype.

The same data often arrive with other dtypes at predict time than at fit time: a grouping
column of integers written to CSV comes back as strings, a Parquet column comes back as
``string[pyarrow]`` or a categorical, pandas' nullable ``Int64`` stands in for ``int64``.
A level is therefore matched to the fitted levels through its *canonical form*
(:func:`canonical_level`), not through ``==`` on whatever dtype it has:

* numbers are one level whatever their type: ``7``, ``7.0``, ``np.int32(7)``, a
  nullable ``Int64`` 7 and the string ``"7"`` or ``"7.0"`` (a number's own spelling) are
  the same level; ``7.5`` and ``"7.5"`` likewise;
* booleans are one level with their spellings ``"True"``, ``"true"`` and ``"TRUE"``
  (and the ``False`` ones), as R's ``as.logical`` reads them; they are not the numbers
  0 and 1;
* other strings are themselves; a categorical's value is its category.

Where a given value equals a fitted one only after looser reading (``"07"``, ``" 7"``,
``"7.00"`` or ``"1e1"`` against a number, ``1`` against ``True``, any case of
``"true"``), the match is ambiguous and :class:`~mixedfx.NewLevelError` names both
values, whatever the ``new_levels`` policy: such a row would otherwise silently become a
new level.  Two levels of one column whose canonical forms coincide (``"7"`` and
``"7.0"`` in one fit) are refused at fit with :class:`~mixedfx.DataError`.  The levels
reported after the fit (``random_effects_``, ``ranef``) stay as they were given at fit.

:class:`LevelMatcher` applies this to grouping factors (:mod:`mixedfx.design.random`);
:func:`conform_levels` applies it to the fixed side before formulaic replays its
encoding.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from mixedfx.exceptions import DataError, NewLevelError, NewLevelWarning

__all__ = ["canonical_level", "LevelMatcher", "conform_levels", "check_distinct_categories"]

_TRUE_SPELLINGS = ("True", "true", "TRUE")
_FALSE_SPELLINGS = ("False", "false", "FALSE")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def canonical_level(value):
    """The canonical form of one level: equal forms are the same level.

    Parameters
    ----------
    value : object
        A level as found in a column: a number, a boolean, a string, or anything
        hashable (timestamps and other objects are their own form).

    Returns
    -------
    tuple or None
        ``("number", int or float)``, ``("bool", bool)``, ``("string", str)`` or
        ``("other", value)``; ``None`` for a missing value (``None``, NaN, ``pd.NA``,
        ``NaT``).  An integral number's form holds a Python ``int``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import canonical_level
    >>> {canonical_level(v) for v in (7, 7.0, "7", "7.0", np.int32(7), np.float32(7))}
    {('number', 7)}
    >>> canonical_level("07"), canonical_level(" 7"), canonical_level("7.5")
    (('string', '07'), ('string', ' 7'), ('number', 7.5))
    >>> canonical_level(True) == canonical_level("true"), canonical_level(True) == canonical_level(1)
    (True, False)
    >>> canonical_level(float("nan")) is None
    True
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, numbers.Integral):
        return ("number", int(value))
    if isinstance(value, numbers.Real):
        return _number(float(str(value)) if isinstance(value, (np.float16, np.float32)) else float(value))
    if isinstance(value, str):
        return _string(value)
    return ("other", value)


def _number(number: float):
    """The form of a float: ``None`` for NaN, an ``int`` when integral."""
    if math.isnan(number):
        return None
    return ("number", int(number) if number.is_integer() else number)


def _string(text: str):
    """The strict form of a string: a number or boolean only in its own spelling."""
    if text in _TRUE_SPELLINGS:
        return ("bool", True)
    if text in _FALSE_SPELLINGS:
        return ("bool", False)
    if _INTEGER_TEXT.fullmatch(text):
        number = int(text)
        if str(number) == text:
            return ("number", number)
    else:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and math.isfinite(number) and repr(number) == text:
            return _number(number)
    return ("string", text)


def _loose_level(value):
    """A looser form than :func:`canonical_level`, to detect ambiguous matches.

    Strings are stripped and read as numbers where they parse (``"07"``, ``"7.00"``,
    ``"1e1"``), ``"true"``/``"false"`` in any case as booleans, and booleans count as
    the numbers 1 and 0.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("true", "false"):
            return ("number", int(text.lower() == "true"))
        try:
            number = float(text)
        except ValueError:
            return ("string", text)
        return _number(number) if math.isfinite(number) else ("string", text)
    key = canonical_level(value)
    if key is not None and key[0] == "bool":
        return ("number", int(key[1]))
    return key


def _dtype_family(values: pd.Index) -> str | None:
    """``"number"``, ``"bool"`` or ``"string"`` when every value has that kind, for the
    fast path of exact matching; ``None`` otherwise."""
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype):
        return "string"
    kind = getattr(dtype, "kind", "O")
    if kind in "iuf" and dtype != np.float16 and dtype != np.float32:
        return "number"
    if kind == "b":
        return "bool"
    if dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string":
        return "string"
    return None


def _shown(value) -> str:
    """A value for a message, with its type when the type matters (``7 (int)``)."""
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value!r} ({type(value).__name__})"


@dataclass(frozen=True, eq=False)
class LevelMatcher:
    """Positions of values in a column's fitted levels, matched by canonical form.

    Attributes
    ----------
    levels : pandas.Index
        The levels seen at fit, as given then (never converted).
    column : str
        The column's name, for messages.
    role : str, default "grouping column"
        What the column is, for messages (``"categorical column"`` on the fixed side).

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import LevelMatcher
    >>> matcher = LevelMatcher(pd.Index([100, 101, 102]), column="g")
    >>> matcher.positions(pd.Series(["101", "102.0", "999"])).tolist()   # strings of the fitted integers
    [1, 2, -1]
    >>> matcher.positions(pd.Series(pd.array([102, None], dtype="Int64"))).tolist()  # missing: -1
    [2, -1]
    >>> LevelMatcher(pd.Index(["07", "08"]), column="g").positions(pd.Series([7]))
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.NewLevelError: grouping column 'g': the given value 7 (int) equals the fitted level '07' (str) only when read loosely; levels are matched by value (7, 7.0, '7' and a categorical '7' are one level, but '07', ' 7' and '7.00' are not 7): give the column the values it had in fit
    """

    levels: pd.Index
    column: str
    role: str = "grouping column"

    def check_distinct(self) -> None:
        """Raise :class:`~mixedfx.DataError` when two levels have one canonical form.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedfx.design import LevelMatcher
        >>> LevelMatcher(pd.Index(["7", "7.0", "8"]), column="g").check_distinct()
        Traceback (most recent call last):
        ...
        mixedfx.exceptions.DataError: grouping column 'g' has the levels '7' (str) and '7.0' (str), which are one value (7); levels are matched by value, so recode one of them
        """
        if getattr(self.levels.dtype, "kind", "O") in "iub" or self.levels.dtype == np.float64:
            return  # distinct numbers or booleans of one dtype have distinct forms
        seen: dict = {}
        for position, value in enumerate(self.levels):
            key = canonical_level(value)
            other = seen.setdefault(key, position)
            if other != position:
                raise DataError(
                    f"{self.role} {self.column!r} has the levels {_shown(self.levels[other])} and {_shown(value)}, "
                    f"which are one value ({key[1]!r}); levels are matched by value, so recode one of them"
                )

    @cached_property
    def _family(self) -> str | None:
        return _dtype_family(self.levels)

    @cached_property
    def _strict(self) -> dict:
        """Canonical form -> position (the first, should two levels share one)."""
        table: dict = {}
        for position, value in enumerate(self.levels):
            table.setdefault(canonical_level(value), position)
        return table

    @cached_property
    def _loose(self) -> dict:
        table: dict = {}
        for position, value in enumerate(self.levels):
            table.setdefault(_loose_level(value), position)
        return table

    def positions(self, values) -> np.ndarray:
        """Each value's position in :attr:`levels`; ``-1`` where unseen or missing.

        Parameters
        ----------
        values : pandas.Series or array-like
            The column at predict time, of any dtype (categoricals, nullable and
            pyarrow-backed ones included).

        Returns
        -------
        numpy.ndarray of intp, shape (n_rows,)

        Raises
        ------
        NewLevelError
            When a value matches a fitted level only when read loosely (``"07"``
            against ``7``), naming the column, the given value and the fitted one.
        """
        series = values if isinstance(values, pd.Series) else pd.Series(values)
        if isinstance(series.dtype, pd.CategoricalDtype):
            codes, uniques = series.cat.codes.to_numpy(), pd.Index(series.cat.categories)
        else:
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
            uniques = pd.Index(uniques)
        found = self._unique_positions(uniques)
        return np.append(found, -1)[codes]

    def _unique_positions(self, uniques: pd.Index) -> np.ndarray:
        """Positions of distinct values: exact matching where the dtypes agree, then
        canonical forms for the rest, then the check for loose matches."""
        if len(uniques) and self._family is not None and _dtype_family(uniques) == self._family:
            found = np.asarray(self.levels.get_indexer(uniques), dtype=np.intp)
        else:
            found = np.full(len(uniques), -1, dtype=np.intp)
        for j in np.flatnonzero(found < 0):
            key = canonical_level(uniques[j])
            found[j] = self._strict.get(key, -1) if key is not None else -1
        for j in np.flatnonzero(found < 0):
            value = uniques[j]
            if canonical_level(value) is None:
                continue
            near = self._loose.get(_loose_level(value))
            if near is not None:
                raise NewLevelError(
                    f"{self.role} {self.column!r}: the given value {_shown(value)} equals the fitted level "
                    f"{_shown(self.levels[near])} only when read loosely; levels are matched by value (7, 7.0, "
                    "'7' and a categorical '7' are one level, but '07', ' 7' and '7.00' are not 7): give the "
                    "column the values it had in fit"
                )
        return found


def warn_unseen(name: str, *, unseen: int, total: int, example, policy: str) -> None:
    """Warn (:class:`~mixedfx.NewLevelWarning`) when more than half of ``total`` rows
    have a level of grouping factor ``name`` not seen in fit.

    Examples
    --------
    >>> import warnings
    >>> from mixedfx.design.levels import warn_unseen
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_unseen("g", unseen=2, total=4, example="x", policy="population")   # half: no warning
    ...     warn_unseen("g", unseen=3, total=4, example="x", policy="population")
    >>> [str(w.message).split(";")[0] for w in caught]
    ["3 of 4 rows have a level of grouping factor 'g' not seen in fit (e.g. 'x')"]
    """
    if 2 * unseen <= total:
        return
    if isinstance(example, np.generic):
        example = example.item()
    outcome = "raise NewLevelError" if policy == "error" else "get a zero random effect (the population prediction)"
    warnings.warn(
        f"{unseen} of {total} rows have a level of grouping factor {name!r} not seen in fit (e.g. {example!r}); "
        f"they {outcome}. Is the column the one used in fit? Its levels are matched by value (7, 7.0 and '7' "
        "are one level), so a change of dtype alone does not cause this",
        NewLevelWarning,
        stacklevel=_caller_outside_package(),
    )


def _caller_outside_package() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside mixedfx."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    return level


_FACTOR_COLUMN = re.compile(r"C\(\s*(`[^`]+`|[A-Za-z_][\w.]*)\s*[,)]")


def _factor_column(factor: str, data: pd.DataFrame) -> str | None:
    """The column a formulaic factor encodes directly: ``f`` or ``C(f, ...)``."""
    if factor in data.columns:
        return factor
    match = _FACTOR_COLUMN.match(factor)
    if match is None:
        return None
    name = match.group(1).strip("`")
    return name if name in data.columns else None


def _categorical_columns(model_spec, data: pd.DataFrame) -> tuple[dict[str, list], set[str]]:
    """Columns that a spec encodes as categories (with the fitted categories) and the
    plain columns it reads as numbers."""
    categories: dict[str, list] = {}
    numerical: set[str] = set()
    for factor, (kind, state) in getattr(model_spec, "encoder_state", {}).items():
        column = _factor_column(str(factor), data)
        if column is None:
            continue
        if getattr(kind, "value", kind) == "categorical" and "categories" in state:
            categories.setdefault(column, list(state["categories"]))
        elif getattr(kind, "value", kind) == "numerical" and str(factor) == column:
            numerical.add(column)
    return categories, numerical


def check_distinct_categories(model_spec, data: pd.DataFrame) -> None:
    """At fit: refuse a categorical column of the fixed side with two levels of one value.

    Raises
    ------
    DataError
        Naming the column and both levels (``"7"`` and ``"7.0"``).

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import check_distinct_categories, evaluate_formula
    >>> frame = pd.DataFrame({"f": ["7", "7.0", "8"]})
    >>> check_distinct_categories(evaluate_formula("f", frame)[1], frame)
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: categorical column 'f' has the levels '7' (str) and '7.0' (str), which are one value (7); levels are matched by value, so recode one of them
    """
    categories, _ = _categorical_columns(model_spec, data)
    for column, levels in categories.items():
        LevelMatcher(pd.Index(levels), column=column, role="categorical column").check_distinct()


def conform_levels(data: pd.DataFrame, model_spec) -> pd.DataFrame:
    """``data`` with its categorical columns spelled as at fit, for formulaic's replay.

    Formulaic matches categories with ``==`` on the values' dtype: an integer-coded
    factor given as strings, or a ``string[pyarrow]`` column, would not encode as
    at fit.  Each column that ``model_spec`` encodes as categories (``f``,
    ``C(f)``, ``C(f, Treatment(2))``) is matched to the fitted categories by
    :class:`LevelMatcher` and replaced by them; values it does not match are kept, so
    that the unseen-level check names them.  A plain column the spec reads as numbers
    that arrives as strings is read as numbers (or booleans).

    Parameters
    ----------
    data : pandas.DataFrame
        The rows at predict time; never changed.
    model_spec : formulaic.ModelSpec
        The spec learned at fit.

    Returns
    -------
    pandas.DataFrame
        ``data`` itself when nothing changes, else a shallow copy.

    Raises
    ------
    NewLevelError
        For an ambiguous match (``"07"`` against ``7``).
    DataError
        For a numeric column whose strings are not numbers.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import conform_levels, evaluate_formula
    >>> train = pd.DataFrame({"k": [1, 2, 3, 1]})
    >>> _, spec = evaluate_formula("C(k)", train)
    >>> conform_levels(pd.DataFrame({"k": ["3", "1.0"]}), spec)["k"].tolist()
    [3, 1]
    >>> evaluate_formula(spec, pd.DataFrame({"k": ["3", "1.0"]}))[0].tolist()
    [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if not isinstance(data, pd.DataFrame):
        return data  # refused by the caller, naming its type
    categories, numerical = _categorical_columns(model_spec, data)
    changed = {}
    for column, levels in categories.items():
        changed[column] = _spelled_as_fitted(data[column], pd.Index(levels), column=column)
    for column in numerical - set(categories):
        if _dtype_family(pd.Index(data[column])) == "string":
            changed[column] = _strings_as_numbers(data[column], column=column)
    if not changed:
        return data
    out = data.copy(deep=False)
    for column, values in changed.items():
        out[column] = pd.Series(values, index=data.index, name=column)
    return out


def _spelled_as_fitted(values: pd.Series, levels: pd.Index, *, column: str) -> np.ndarray:
    """The fitted category of each value, as a categorical with the fitted categories
    (formulaic replays a spec's categorical factor on plain integers as numbers, so
    ``0 + f`` of integer categories would give the values, not indicators); values
    without one are kept as given, in an object array."""
    positions = LevelMatcher(levels, column=column, role="categorical column").positions(values)
    if (positions >= 0).all():
        return pd.Categorical.from_codes(positions, categories=levels)
    out = np.asarray(values.to_numpy(dtype=object), dtype=object)
    hit = positions >= 0
    out[hit] = np.asarray(levels.take(positions[hit]).to_numpy(dtype=object), dtype=object)
    return out


def _strings_as_numbers(values: pd.Series, *, column: str) -> np.ndarray:
    """A column of strings that the fit read as numbers (or booleans), as numbers."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    keys = [canonical_level(value) for value in uniques]
    kinds = {key[0] for key in keys if key is not None}
    if not kinds <= {"number"} and not kinds <= {"bool"}:
        odd = next(value for value, key in zip(uniques, keys) if key is not None and key[0] != "number")
        raise DataError(
            f"column {column!r} was numeric in fit but holds strings such as {odd!r} that are not numbers; "
            "convert it to numbers"
        )
    as_float = np.array([np.nan if key is None else float(key[1]) for key in keys] + [np.nan])
    numbers_ = as_float[codes]
    if kinds == {"bool"} and not np.isnan(numbers_).any():
        return numbers_.astype(bool)
    return numbers_
