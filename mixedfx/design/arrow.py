"""Data from Apache Arrow: Parquet files and Arrow tables, read column by column.

A model reads only the columns its formula names.  Grouping columns become pandas
categoricals straight from Arrow's dictionary encoding: ``pyarrow.compute``
dictionary-encodes the column (one pass in C++), the dictionary is sorted, and the
row codes are remapped by one vectorized ``take``, so no Python code runs per row or
per level.  The levels come out in the order :class:`~mixedfx.design.GroupingFactor`
gives a plain column (sorted), so a model fitted from Parquet and from the same data
as a DataFrame has the same levels in the same order; a column that is already
dictionary-encoded (a pandas categorical written to Parquet) keeps its categories'
order, as a categorical column does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from mixedfx.exceptions import DataError

__all__ = ["is_arrow_source", "read_arrow"]


def is_arrow_source(source) -> bool:
    """Whether ``source`` is a Parquet path (or a list of them) or an Arrow table or batch.

    Examples
    --------
    >>> import pandas as pd, pyarrow as pa
    >>> from mixedfx.design import is_arrow_source
    >>> is_arrow_source(pa.table({"y": [1.0]})), is_arrow_source("data.parquet"), is_arrow_source(pd.DataFrame())
    (True, True, False)
    """
    import pyarrow as pa

    if isinstance(source, (pa.Table, pa.RecordBatch)):
        return True
    if isinstance(source, (str, os.PathLike)):
        return True
    return isinstance(source, (list, tuple)) and bool(source) and all(isinstance(s, (str, os.PathLike)) for s in source)


def read_arrow(source, *, formula: str, grouping: Iterable[str] = ()) -> pd.DataFrame:
    """The columns a formula names, from Parquet or Arrow, as a DataFrame.

    Parameters
    ----------
    source : str, os.PathLike, list of them, pyarrow.Table or pyarrow.RecordBatch
        A Parquet file or directory of files (a list of files is read as one table), or
        data already in Arrow.
    formula : str
        The formula text: every column whose name it contains as a whole word (or in
        backticks) is read; the others are not.
    grouping : iterable of str
        Grouping columns, returned as categoricals built from Arrow's dictionary
        encoding (see the module docstring).

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    DataError
        If the file cannot be read as Parquet.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from mixedfx.design import read_arrow
    >>> table = pa.table({"y": [1.0, 2.0, 3.0], "g": ["b", "a", "b"], "unused": [0, 0, 0]})
    >>> frame = read_arrow(table, formula="y ~ 1 + (1 | g)", grouping=["g"])
    >>> list(frame.columns), list(frame["g"].cat.categories), frame["g"].cat.codes.tolist()
    (['y', 'g'], ['a', 'b'], [1, 0, 1])
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(source, pa.RecordBatch):
        source = pa.Table.from_batches([source])
    if isinstance(source, pa.Table):
        table = source.select(_named_in(formula, source.column_names))
    else:
        paths = [os.fspath(s) for s in source] if isinstance(source, (list, tuple)) else os.fspath(source)
        try:
            dataset = pq.ParquetDataset(paths)
            table = dataset.read(columns=_named_in(formula, dataset.schema.names))
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read {source!r} as Parquet: {exc}") from exc
    grouping = [name for name in dict.fromkeys(grouping) if name in table.column_names]
    frame = table.drop_columns(grouping).to_pandas()
    for name in grouping:
        frame[name] = _categorical(table.column(name))
    return frame[[name for name in table.column_names]]


def _named_in(formula: str, names: list[str]) -> list[str]:
    """The column names that occur in the formula text as whole words or in backticks."""
    return [name for name in names
            if f"`{name}`" in formula or re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", formula)]


def _categorical(column) -> pd.Categorical:
    """A pandas categorical from an Arrow column, through its dictionary encoding."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(column.type):  # already categorical: keep its order
        dictionary, indices = column.dictionary, column.indices
    else:
        encoded = pc.dictionary_encode(column)
        order = pc.array_sort_indices(encoded.dictionary).to_numpy()
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        dictionary = encoded.dictionary.take(pa.array(order))
        indices = pc.take(pa.array(rank), encoded.indices)  # nulls stay null
    codes = indices.to_numpy(zero_copy_only=False)
    codes = np.where(pd.isna(codes), -1, codes).astype(np.int32) if indices.null_count else codes.astype(np.int32)
    return pd.Categorical.from_codes(codes, categories=pd.Index(dictionary.to_pandas()))
