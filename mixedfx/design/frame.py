"""The user's table, made ready for the designs: accepted types, dtypes, missing values.

Everything here works on a copy: the caller's DataFrame is never changed.

* :func:`as_frame` accepts a pandas DataFrame, converts a polars one, and (only where
  the estimator has no formula naming columns) names the columns of a 2-D array;
* :func:`formula_columns` lists the data columns a formula reads;
* :func:`clean_columns` turns pandas' nullable and pyarrow numeric dtypes into numpy
  ones, and, at fit time, drops unused categories as R's ``model.frame`` does
  (``drop.unused.levels = TRUE``);
* :func:`missing_rows` finds the rows with a missing value in those columns, for the
  estimators' ``missing="drop"`` (lme4's ``na.omit``) or ``missing="raise"`` policy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from mixedfx.exceptions import DataError
from mixedfx.formula.spec import FormulaSpec
from mixedfx.formula.tokens import TokenKind, tokenize

__all__ = ["MISSING_POLICIES", "as_frame", "formula_columns", "clean_columns", "missing_rows"]

#: Policies for rows with missing values (NaN, None, pandas.NA) at fit time (the
#: estimators' ``missing=``, R's ``na.action``): ``"drop"`` leaves them out with a
#: warning that counts them (lme4's ``na.omit``); ``"raise"`` raises
#: :class:`~mixedfx.DataError` (``na.fail``).
#:
#: Examples
#: --------
#: >>> import pandas as pd
#: >>> from mixedfx.design import MISSING_POLICIES, missing_rows
#: >>> MISSING_POLICIES
#: ('drop', 'raise')
#: >>> mask, counts = missing_rows(pd.DataFrame({"x": [1.0, None]}), ["x"])
#: >>> mask.tolist(), counts
#: ([False, True], {'x': 1})
MISSING_POLICIES = ("drop", "raise")


def as_frame(X, *, allow_array: bool = False, what: str = "X") -> pd.DataFrame:
    """``X`` as a pandas DataFrame.

    Parameters
    ----------
    X : pandas.DataFrame, polars.DataFrame or array-like
        A polars DataFrame is converted with its ``to_pandas()``.  A 2-D array is
        accepted only with ``allow_array``.
    allow_array : bool, default False
        Accept a 2-D array, naming its columns ``x0``, ``x1``, ... as scikit-learn
        does (for an estimator without a formula).
    what : str, default "X"
        How to call ``X`` in messages.

    Returns
    -------
    pandas.DataFrame
        ``X`` itself when it is already a pandas DataFrame (not copied: callers never
        write to it).

    Raises
    ------
    DataError
        For anything else, naming its type.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import as_frame
    >>> as_frame(np.array([[1.0, 2.0]]), allow_array=True).columns.tolist()
    ['x0', 'x1']
    >>> as_frame(np.array([[1.0, 2.0]]))
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: X must be a pandas DataFrame (or a polars DataFrame, a pyarrow Table or Parquet file(s)) with the columns the formula names, got ndarray
    """
    if isinstance(X, pd.DataFrame):
        return X
    if type(X).__module__.split(".")[0] == "polars":
        if type(X).__name__ == "LazyFrame":
            raise DataError(f"{what} is a polars LazyFrame; collect() it first")
        if type(X).__name__ == "DataFrame":
            return X.to_pandas()
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise DataError(f"{what} is a sparse matrix; sparse input is not supported: pass a DataFrame, or X.toarray()")
    if not allow_array or isinstance(X, (str, bytes, dict)):
        raise DataError(f"{what} must be a pandas DataFrame (or a polars DataFrame, a pyarrow Table or Parquet "
                        f"file(s)) with the columns the formula names, got {type(X).__name__}")
    try:
        array = np.asarray(X)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read is refused the same way
        raise DataError(f"{what} must be a DataFrame or a 2-D array, got {type(X).__name__}") from exc
    if array.ndim != 2:
        raise DataError(
            f"{what} must be 2-D (rows by columns), got an array of shape {array.shape}. Reshape your data: "
            "X.reshape(-1, 1) for a single column, X.reshape(1, -1) for a single row"
        )
    return pd.DataFrame(array, columns=[f"x{j}" for j in range(array.shape[1])])


def formula_columns(spec: FormulaSpec, data: pd.DataFrame) -> list[str]:
    """The columns of ``data`` that the formula reads, in the data's order.

    A name counts when it appears in the formula as a name (back-quoted or not);
    formulaic's ``.`` (all other columns) counts every column.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import formula_columns
    >>> frame = pd.DataFrame(columns=["y", "x", "unused", "g", "t"])
    >>> formula_columns(parse_formula("y ~ np.log(x) + offset(log(t)) + (1 | g)"), frame)
    ['y', 'x', 'g', 't']
    """
    tokens = tokenize(spec.text)
    if any(token.kind is TokenKind.OPERATOR and token.text == "." for token in tokens):
        return [c for c in data.columns]
    names = {token.text[1:-1] if token.text.startswith("`") else token.text
             for token in tokens if token.kind is TokenKind.NAME}
    return [c for c in data.columns if c in names]


def clean_columns(data: pd.DataFrame, columns: Iterable[str], *, drop_unused_categories: bool) -> pd.DataFrame:
    """A copy of ``data`` whose ``columns`` hold numpy dtypes formulaic handles.

    Nullable and pyarrow numeric columns become ``float64`` (``int64`` when they hold
    integers and no missing value), nullable booleans become ``bool`` (``object`` with
    ``None`` where missing), ``object`` columns that hold only numbers become
    ``float64`` (as scikit-learn reads them; strings stay categorical).  With ``drop_unused_categories``, categorical columns lose
    the categories no row uses, as R's ``model.frame`` does: a fixed effect never gets
    a column of zeros, nor a baseline that no row has.  Other columns are left alone.

    Raises
    ------
    DataError
        When a name in ``columns`` labels more than one column of ``data``, or a
        column holds complex numbers.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import clean_columns
    >>> frame = pd.DataFrame({"n": pd.array([1, None, 3], dtype="Int64"),
    ...                       "f": pd.Categorical(["a", "a", "c"], categories=["a", "b", "c"])})
    >>> out = clean_columns(frame, ["n", "f"], drop_unused_categories=True)
    >>> str(out["n"].dtype), list(out["f"].cat.categories), str(frame["n"].dtype)
    ('float64', ['a', 'c'], 'Int64')
    """
    columns = list(columns)
    duplicated = sorted({str(c) for c in data.columns[data.columns.duplicated()] if c in columns})
    if duplicated:
        raise DataError(
            f"X has more than one column named {duplicated[0]!r}; a formula needs each name to label one column"
        )
    changed = {}
    for column in columns:
        values = data[column]
        dtype = values.dtype
        if dtype.kind == "c":
            raise DataError(f"Complex data not supported: column {column!r} holds complex numbers")
        if dtype == object and pd.api.types.infer_dtype(values, skipna=True) in (
                "integer", "floating", "mixed-integer-float", "decimal"):
            changed[column] = pd.to_numeric(values).to_numpy(dtype=np.float64)  # numbers stored as objects
            continue
        if isinstance(dtype, pd.CategoricalDtype):
            if drop_unused_categories:
                used = values.cat.remove_unused_categories()
                if len(used.cat.categories) != len(dtype.categories):
                    changed[column] = used
            continue
        if not pd.api.types.is_extension_array_dtype(dtype) or getattr(dtype, "kind", "O") not in "biuf":
            continue
        has_missing = bool(values.isna().any())
        if dtype.kind == "b":
            changed[column] = (values.to_numpy(dtype=object, na_value=None) if has_missing
                               else values.to_numpy(dtype=bool))
        elif dtype.kind in "iu" and not has_missing:
            changed[column] = values.to_numpy(dtype=np.int64)
        else:
            changed[column] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    if not changed:
        return data
    out = data.copy(deep=False)
    for column, new in changed.items():
        out[column] = pd.Series(new, index=data.index, name=column) if not isinstance(new, pd.Series) else new
    return out


def missing_rows(data: pd.DataFrame, columns: Iterable[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Rows with a missing value (NaN, None, NaT, pandas.NA) in any of ``columns``.

    Returns
    -------
    mask : numpy.ndarray of bool, shape (n_rows,)
        ``True`` where a row has a missing value.
    counts : dict of str to int
        Per column with missing values, how many.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from mixedfx.design import missing_rows
    >>> frame = pd.DataFrame({"x": [1.0, np.nan, 3.0], "g": ["a", "b", None]})
    >>> mask, counts = missing_rows(frame, ["x", "g"])
    >>> mask.tolist(), counts
    ([False, True, True], {'x': 1, 'g': 1})
    """
    mask = np.zeros(len(data), dtype=bool)
    counts = {}
    for column in columns:
        isna = np.asarray(pd.isna(data[column]), dtype=bool)
        if isna.any():
            counts[str(column)] = int(isna.sum())
            mask |= isna
    return mask, counts


def describe_counts(counts: dict[str, int]) -> str:
    """``"'x': 2, 'g': 1"``: missing values per column, for messages."""
    return ", ".join(f"{name!r}: {n}" for name, n in counts.items())
