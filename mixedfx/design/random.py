"""Random-effects designs: grouping factors, their levels, and per-row group indices.

A random term is stored the way MixedModels.jl's ``ReMat`` stores it: an ``int32``
``group_index`` per row into the factor's level list, and a small per-row ``z``
(``None`` for a random intercept, whose ``z`` is all ones).  A dense ``Z`` matrix is
never formed.

Each grouping factor's level order lives in exactly one place,
:attr:`GroupingFactor.levels`; every encoding at fit and predict time, and every
per-level output, reads it from there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixedfx.exceptions import DataError, FormulaError, NewLevelError, did_you_mean
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec

__all__ = [
    "NEW_LEVEL_POLICIES",
    "GroupingFactor",
    "RandomTermDesign",
    "RandomTermData",
    "RandomDesign",
]

#: Policies for grouping levels that were not seen at fit time.
#: ``"population"``: the level's random effect is zero (the population mean);
#: ``"error"``: raise :class:`~mixedfx.NewLevelError`.
NEW_LEVEL_POLICIES = ("population", "error")


@dataclass(frozen=True, eq=False)
class GroupingFactor:
    """A grouping factor and its levels.

    Attributes
    ----------
    name : str
        Display name: the column, or the columns joined by ``":"`` for an
        interaction (lme4's ``a:b``).
    columns : tuple of str
        The data columns that form the factor.
    levels : pandas.Index
        The levels seen at fit time, in model order.  A :class:`pandas.MultiIndex`
        for an interaction; its entries are the combinations present in the data.
    """

    name: str
    columns: tuple[str, ...]
    levels: pd.Index

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def labels(self) -> pd.Index:
        """Level labels for output tables; interaction levels read ``"a1:b2"``."""
        if isinstance(self.levels, pd.MultiIndex):
            return pd.Index([":".join(map(str, tup)) for tup in self.levels], name=self.name)
        return self.levels.rename(self.name)

    @classmethod
    def from_data(cls, data: pd.DataFrame, columns: tuple[str, ...]) -> GroupingFactor:
        """Learn the levels of the factor formed by ``columns`` in ``data``.

        Levels follow R's ``factor()``: a categorical column keeps its category order
        (restricted to categories that occur); other columns are sorted.
        """
        name = ":".join(columns)
        per_column = []
        for column in columns:
            values = _column(data, column, role="grouping factor")
            missing = int(pd.isna(values).sum())
            if missing:
                raise DataError(
                    f"grouping column {column!r} has {missing} missing value(s); "
                    "drop those rows or give them a level"
                )
            per_column.append(_observed_levels(values))
        if len(columns) == 1:
            levels = per_column[0]
        else:
            codes = [lv.get_indexer(_column(data, c, role="grouping factor")) for lv, c in zip(per_column, columns)]
            combined = np.unique(np.stack(codes, axis=1), axis=0)
            levels = pd.MultiIndex.from_arrays(
                [lv[combined[:, k]] for k, lv in enumerate(per_column)], names=list(columns)
            )
        if len(levels) < 2:
            raise DataError(
                f"grouping factor {name!r} has a single level ({levels[0]!r}); a random "
                "effect needs at least two levels to estimate a variance"
            )
        return cls(name=name, columns=tuple(columns), levels=levels)

    def encode(self, data: pd.DataFrame, *, new_levels: str = "population") -> np.ndarray:
        """Map each row to its level's position; unseen levels follow ``new_levels``.

        Parameters
        ----------
        data : pandas.DataFrame
            Rows to encode.
        new_levels : {"population", "error"}
            ``"population"`` maps unseen or missing levels to ``-1`` (zero random
            effect); ``"error"`` raises :class:`~mixedfx.NewLevelError`.

        Returns
        -------
        numpy.ndarray of int32, shape (n_rows,)
        """
        absent = [c for c in self.columns if c not in data.columns]
        if absent:
            if new_levels == "error":
                raise NewLevelError(
                    f"grouping column {absent[0]!r} is missing from the data (new_levels='error')."
                    + did_you_mean(absent[0], data.columns)
                )
            warnings.warn(
                f"grouping column {absent[0]!r} is missing from the data; the {self.name!r} "
                "random effects are taken as zero (new_levels='population')",
                UserWarning,
                stacklevel=4,
            )
            return np.full(len(data), -1, dtype=np.int32)
        if len(self.columns) == 1:
            values = data[self.columns[0]]
            codes = self.levels.get_indexer(pd.Index(_plain_values(values)))
        else:
            arrays = [_plain_values(data[c]) for c in self.columns]
            codes = self.levels.get_indexer(pd.MultiIndex.from_arrays(arrays))
        codes = codes.astype(np.int32)
        if new_levels == "error" and (codes < 0).any():
            bad_rows = np.flatnonzero(codes < 0)
            examples = []
            for row in bad_rows[:5]:
                value = tuple(_python_scalar(data[c].iloc[row]) for c in self.columns)
                examples.append(repr(value[0] if len(value) == 1 else value))
            raise NewLevelError(
                f"{len(bad_rows)} row(s) have level(s) of grouping factor {self.name!r} not seen in "
                f"fit (e.g. {', '.join(examples)}); use new_levels='population' to predict them "
                "with a zero random effect"
            )
        return codes


@dataclass(frozen=True, eq=False)
class RandomTermDesign:
    """A random term bound to its grouping factor (by name) and coefficient names."""

    spec: RandomTermSpec
    factor: str
    coef_names: tuple[str, ...] = ("(Intercept)",)

    @property
    def name(self) -> str:
        return self.factor


@dataclass(frozen=True, eq=False)
class RandomTermData:
    """Per-row arrays of one random term, ready for the model layer.

    Attributes
    ----------
    name : str
        The grouping factor's display name.
    group_index : numpy.ndarray of int32, shape (n_rows,)
        Position of each row's level in the factor's levels; ``-1`` for a level not
        seen at fit time (only at predict, under ``new_levels="population"``).
    z : numpy.ndarray of shape (n_rows,) or None
        Per-row multiplier of the random effect; ``None`` means all ones (an
        intercept).
    num_levels : int
        Number of levels of the grouping factor.
    """

    name: str
    group_index: np.ndarray
    z: np.ndarray | None
    num_levels: int


@dataclass(frozen=True, eq=False)
class RandomDesign:
    """The random-effects structure learned at fit time.

    Attributes
    ----------
    factors : Mapping[str, GroupingFactor]
        Grouping factors by name; the single home of each factor's level order.
    terms : tuple of RandomTermDesign
        One entry per random-effect term, in formula order.
    """

    factors: Mapping[str, GroupingFactor]
    terms: tuple[RandomTermDesign, ...]

    @classmethod
    def from_spec(cls, spec: FormulaSpec, data: pd.DataFrame) -> RandomDesign:
        """Learn grouping factors and levels for the random terms of ``spec``.

        Raises
        ------
        FormulaError
            For a random term this version cannot fit (random slopes).
        DataError
            For a missing grouping column, missing values in it, or a factor with a
            single level.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedfx.formula import parse_formula
        >>> from mixedfx.design import RandomDesign
        >>> frame = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": ["b", "a", "b", "c"]})
        >>> design = RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), frame)
        >>> list(design.factors["g"].levels)
        ['a', 'b', 'c']
        >>> design.materialize(frame)[0].group_index.tolist()
        [1, 0, 1, 2]
        """
        factors: dict[str, GroupingFactor] = {}
        terms = []
        for term in spec.random:
            if not term.intercept_only:
                raise FormulaError(
                    f"random term {term.text!r}: only random intercepts '(1 | g)' are supported "
                    "in this version; random slopes such as '(x | g)' are not implemented yet",
                    formula=spec.text,
                    position=term.position,
                )
            for column in term.grouping:
                if column not in data.columns:
                    raise DataError(
                        f"grouping column {column!r} in term {term.text!r} is not in the data."
                        + did_you_mean(column, data.columns)
                    )
            if term.group_name not in factors:
                factors[term.group_name] = GroupingFactor.from_data(data, term.grouping)
            terms.append(RandomTermDesign(spec=term, factor=term.group_name))
        return cls(factors=factors, terms=tuple(terms))

    def materialize(self, data: pd.DataFrame, *, new_levels: str = "population") -> tuple[RandomTermData, ...]:
        """Per-row arrays of every term for ``data``; see :meth:`GroupingFactor.encode`."""
        codes = {name: factor.encode(data, new_levels=new_levels) for name, factor in self.factors.items()}
        return tuple(
            RandomTermData(
                name=term.name,
                group_index=codes[term.factor],
                z=None,
                num_levels=self.factors[term.factor].num_levels,
            )
            for term in self.terms
        )


def _python_scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def _column(data: pd.DataFrame, column: str, *, role: str) -> pd.Series:
    if column not in data.columns:
        raise DataError(f"{role} column {column!r} is not in the data." + did_you_mean(column, data.columns))
    return data[column]


def _plain_values(values: pd.Series) -> np.ndarray:
    """Values of a column as a plain numpy array (categoricals decoded)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return np.asarray(values.astype(values.cat.categories.dtype if values.notna().all() else object))
    return np.asarray(values.to_numpy(dtype=object if values.dtype.kind not in "biufM" else None))


def _observed_levels(values: pd.Series) -> pd.Index:
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = np.unique(values.cat.codes.to_numpy())
        return pd.Index(values.cat.categories[present[present >= 0]])
    uniques = pd.unique(_plain_values(values))
    try:
        return pd.Index(np.sort(uniques))
    except TypeError:  # mixed, unorderable types: keep order of first appearance
        return pd.Index(uniques)
