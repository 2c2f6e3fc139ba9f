"""Random-effects designs: grouping factors, their levels, and per-row group indices.

A random term is stored the way MixedModels.jl's ``ReMat`` stores it: an ``int32``
``group_index`` per row into the factor's level list, and a small per-row ``z`` with
one column per coefficient (``None`` for a random intercept, whose ``z`` is all
ones).  A dense ``Z`` matrix is never formed.

Each grouping factor's level order lives in exactly one place,
:attr:`GroupingFactor.levels`; every encoding at fit and predict time, and every
per-level output, reads it from there.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from mixedfx.design.fixed import evaluate_formula
from mixedfx.design.levels import LevelMatcher, warn_unseen
from mixedfx.exceptions import DataError, FormulaError, NewLevelError, did_you_mean
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec
from mixedfx.formula.tokens import TokenKind, tokenize

__all__ = [
    "NEW_LEVEL_POLICIES",
    "GroupingFactor",
    "RandomTermDesign",
    "RandomTermData",
    "RandomDesign",
]

#: Policies for grouping levels that were not seen at fit time (the estimators'
#: ``new_levels=``, lme4's ``allow.new.levels``).
#: ``"population"``: the level's random effect is zero (the population mean);
#: ``"error"``: raise :class:`~mixedfx.NewLevelError`.
#:
#: Examples
#: --------
#: >>> import pandas as pd
#: >>> from mixedfx.design import NEW_LEVEL_POLICIES, GroupingFactor
#: >>> NEW_LEVEL_POLICIES
#: ('population', 'error')
#: >>> factor = GroupingFactor.from_data(pd.DataFrame({"g": ["a", "b"]}), ("g",))
#: >>> factor.encode(pd.DataFrame({"g": ["b", "new"]}), new_levels="population").tolist()
#: [1, -1]
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

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import GroupingFactor
    >>> data = pd.DataFrame({"s": ["s2", "s1", "s2"], "d": [1, 1, 2]})
    >>> factor = GroupingFactor.from_data(data, ("s",))
    >>> factor.levels.tolist(), factor.num_levels
    (['s1', 's2'], 2)
    >>> factor.encode(pd.DataFrame({"s": ["s2", "s9"]})).tolist()  # unseen: -1
    [1, -1]
    >>> factor.encode(pd.DataFrame({"s": ["s9"]}), new_levels="error")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.NewLevelError: 1 row(s) have level(s) of grouping factor 's' not seen in fit (e.g. 's9'); use new_levels='population' to predict them with a zero random effect

    An interaction (lme4's ``(1 | s:d)``) has the combinations present as levels:

    >>> GroupingFactor.from_data(data, ("s", "d")).labels.tolist()
    ['s1:1', 's2:1', 's2:2']
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
            if values.dtype.kind == "f" and np.isinf(values.to_numpy(dtype=float)).any():
                raise DataError(
                    f"grouping column {column!r} has {int(np.isinf(values.to_numpy(dtype=float)).sum())} infinite "
                    "value(s); a level must be a label or a finite number"
                )
            if values.dtype == object:
                odd = [v for v in values if isinstance(v, (dict, list, set))]
                if odd:
                    raise DataError(
                        f"grouping column {column!r} holds a {type(odd[0]).__name__} ({odd[0]!r}); a level must be a "
                        "label (a string or a number)"
                    )
            if values.dtype.kind == "f":
                finite = values.to_numpy(dtype=float)
                if np.any(finite != np.round(finite)):
                    warnings.warn(
                        f"grouping column {column!r} holds continuous values (e.g. {float(finite[finite != np.round(finite)][0])!r}); "
                        "every distinct value becomes a level. Is it meant to be a grouping factor?",
                        UserWarning,
                        stacklevel=4,
                    )
            per_column.append(_observed_levels(values))
            LevelMatcher(per_column[-1], column=column).check_distinct()
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
                f"grouping factor {name!r} has a single level ({_python_scalar(levels[0])!r}); a random "
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
        for column in self.columns:
            if data[column].dtype.kind == "f" and np.isinf(data[column].to_numpy(dtype=float)).any():
                raise DataError(f"grouping column {column!r} has {int(np.isinf(data[column].to_numpy(dtype=float)).sum())} "
                                "infinite value(s); a level must be a label or a finite number")
        codes = self._codes(data)
        missing = np.zeros(len(data), dtype=bool)
        for c in self.columns:
            missing |= np.asarray(pd.isna(data[c]), dtype=bool)
        unseen = np.flatnonzero((codes < 0) & ~missing)
        if len(unseen):
            example = tuple(_python_scalar(data[c].iloc[unseen[0]]) for c in self.columns)
            warn_unseen(self.name, unseen=len(unseen), total=len(data), policy=new_levels,
                        example=example[0] if len(example) == 1 else example)
        codes = codes.astype(np.int32)
        if new_levels == "error" and (codes < 0).any():
            if not len(unseen):
                raise NewLevelError(
                    f"{int(missing.sum())} row(s) have a missing value (NaN/None) in grouping factor {self.name!r}: "
                    "NAs are not allowed in prediction data for grouping variables unless new levels are (use "
                    "new_levels='population' to predict them with a zero random effect, as lme4's "
                    "allow.new.levels = TRUE does)"
                )
            examples = []
            for row in unseen[:5]:
                value = tuple(_python_scalar(data[c].iloc[row]) for c in self.columns)
                examples.append(repr(value[0] if len(value) == 1 else value))
            also = f", and {int(missing.sum())} have a missing value (NaN/None)" if missing.any() else ""
            raise NewLevelError(
                f"{len(unseen)} row(s) have level(s) of grouping factor {self.name!r} not seen in "
                f"fit (e.g. {', '.join(examples)}){also}; use new_levels='population' to predict them "
                "with a zero random effect"
            )
        return codes

    @cached_property
    def _matchers(self) -> tuple[LevelMatcher, ...]:
        """One :class:`~mixedfx.design.levels.LevelMatcher` per column (built once)."""
        if isinstance(self.levels, pd.MultiIndex):
            return tuple(LevelMatcher(self.levels.levels[k], column=c) for k, c in enumerate(self.columns))
        return (LevelMatcher(self.levels, column=self.columns[0]),)

    def _codes(self, data: pd.DataFrame) -> np.ndarray:
        """Each row's level position (``-1``: unseen or missing), matched by value."""
        positions = [matcher.positions(data[c]) for matcher, c in zip(self._matchers, self.columns)]
        if len(positions) == 1:
            return positions[0].astype(np.int32)
        sizes = [len(level) for level in self.levels.levels]
        fitted = pd.Index(np.ravel_multi_index(tuple(np.asarray(c) for c in self.levels.codes), sizes))
        seen = np.all(np.stack(positions) >= 0, axis=0)
        given = np.ravel_multi_index(tuple(np.maximum(p, 0) for p in positions), sizes)
        return np.where(seen, fitted.get_indexer(given), -1).astype(np.int32)


@dataclass(frozen=True, eq=False)
class RandomTermDesign:
    """A random term bound to its grouping factor (by name) and its coefficients.

    Attributes
    ----------
    spec : RandomTermSpec
        The term as parsed.
    factor : str
        Name of its grouping factor in :attr:`RandomDesign.factors`.
    coef_names : tuple of str
        Names of the per-level coefficients, in lme4's spelling (``"(Intercept)"``,
        ``"Days"``).
    z_spec : formulaic.ModelSpec or None
        Formulaic's state for the left side of the bar, replayed at predict time;
        ``None`` for a plain random intercept.
    columns : tuple of int
        Which columns of ``z_spec``'s matrix this term uses (a double-bar term is split
        into one term per column, as lme4 does).
    factor_levels : tuple or None
        When the left side of the bar is one categorical column (``0 + timef``), its
        levels in order; a structure over times (``ar1``, ``toep``) needs them.
    coordinates : numpy.ndarray or None
        A continuous structure's points (``exp(x + y + 0 | g)``): the distinct rows of
        its coordinate columns (``spec.coordinates``), sorted, shape ``(dim, n_columns)``;
        one coefficient each, as glmmTMB's ``numFactor``.

    Examples
    --------
    The double bar splits ``(x || g)`` into two terms on one factor:

    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import RandomDesign
    >>> frame = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 2], "g": ["b", "a", "b", "c"]})
    >>> design = RandomDesign.from_spec(parse_formula("y ~ x + (x || g)"), frame)
    >>> [(term.factor, term.coef_names, term.columns) for term in design.terms]
    [('g', ('(Intercept)',), (0,)), ('g', ('x',), (1,))]
    """

    spec: RandomTermSpec
    factor: str
    coef_names: tuple[str, ...] = ("(Intercept)",)
    z_spec: object = None
    columns: tuple[int, ...] = (0,)
    factor_levels: tuple | None = None
    coordinates: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.factor

    @property
    def covariance(self) -> str:
        """The term's covariance structure, glmmTMB's name (``"us"`` for ``(x | g)``)."""
        return self.spec.covariance

    @property
    def dim(self) -> int:
        return len(self.coef_names)


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
    z : numpy.ndarray of shape (n_rows, dim) or None
        Per-row multipliers of the level's coefficients; ``None`` means a random
        intercept (one coefficient, ``z`` all ones).
    num_levels : int
        Number of levels of the grouping factor.
    coef_names : tuple of str
        Names of the coefficients (``dim`` of them).
    covariance : str
        The term's covariance structure, glmmTMB's name (``"us"``, ``"ar1"``, ...; see
        :mod:`mixedfx.model.covariance`).
    coordinates : numpy.ndarray or None
        A continuous structure's points, one per coefficient (see
        :attr:`RandomTermDesign.coordinates`); ``None`` for any other term.
    predictor : str
        The linear predictor the term enters: ``"cond"``, the model's (the formula's
        terms), or one of the family's own (``"zi"``: a term of glmmTMB's ``ziformula``;
        see :meth:`~mixedfx.model.Family.linear_predictors`).

    Examples
    --------
    :meth:`RandomDesign.materialize` makes one per term; a level unseen at fit time
    gets index ``-1``:

    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import RandomDesign
    >>> train = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": ["b", "a", "b", "c"]})
    >>> design = RandomDesign.from_spec(parse_formula("y ~ (1 | g)"), train)
    >>> term, = design.materialize(pd.DataFrame({"g": ["c", "new"]}))
    >>> term.name, term.group_index.tolist(), term.z, term.num_levels, term.dim
    ('g', [2, -1], None, 3, 1)
    """

    name: str
    group_index: np.ndarray
    z: np.ndarray | None
    num_levels: int
    coef_names: tuple[str, ...] = ("(Intercept)",)
    covariance: str = "us"
    coordinates: np.ndarray | None = None
    predictor: str = "cond"

    @property
    def dim(self) -> int:
        return len(self.coef_names)


@dataclass(frozen=True, eq=False)
class RandomDesign:
    """The random-effects structure learned at fit time.

    Attributes
    ----------
    factors : Mapping[str, GroupingFactor]
        Grouping factors by name; the single home of each factor's level order.
    terms : tuple of RandomTermDesign
        One entry per random-effect term, in formula order (double-bar terms split).

    Examples
    --------
    Two terms on one grouping factor share its levels:

    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import RandomDesign
    >>> frame = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 2], "g": ["b", "a", "b", "c"],
    ...                       "h": [1, 1, 2, 2]})
    >>> design = RandomDesign.from_spec(parse_formula("y ~ (1 | g) + (0 + x | g) + (1 | h)"), frame)
    >>> list(design.factors), [term.coef_names for term in design.terms]
    (['g', 'h'], [('(Intercept)',), ('x',), ('(Intercept)',)])
    >>> [term.group_index.tolist() for term in design.materialize(frame)]
    [[1, 0, 1, 2], [1, 0, 1, 2], [0, 0, 1, 1]]
    """

    factors: Mapping[str, GroupingFactor]
    terms: tuple[RandomTermDesign, ...]

    @classmethod
    def from_spec(cls, spec: FormulaSpec, data: pd.DataFrame) -> RandomDesign:
        """Learn grouping factors, levels and coefficient encodings for ``spec``.

        The left side of each bar is evaluated by formulaic, so it may hold anything
        formulaic does (``x``, ``0 + x``, ``0 + C(f)``, ``np.log(x)``); like lme4, an
        intercept is implied unless removed with ``0 +`` or ``-1``.

        Raises
        ------
        FormulaError
            For a term with no coefficients or one that repeats a coefficient of
            another term on the same grouping factor.
        DataError
            For a missing grouping column, missing values in it, or a factor with a
            single level.

        Examples
        --------
        >>> import pandas as pd
        >>> from mixedfx.formula import parse_formula
        >>> from mixedfx.design import RandomDesign
        >>> frame = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 2], "g": ["b", "a", "b", "c"]})
        >>> design = RandomDesign.from_spec(parse_formula("y ~ x + (x | g)"), frame)
        >>> list(design.factors["g"].levels), design.terms[0].coef_names
        (['a', 'b', 'c'], ('(Intercept)', 'x'))
        >>> term = design.materialize(frame)[0]
        >>> term.group_index.tolist(), term.z.tolist()
        ([1, 0, 1, 2], [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 2.0]])
        """
        factors: dict[str, GroupingFactor] = {}
        terms: list[RandomTermDesign] = []
        for term in spec.random:
            for column in term.grouping:
                if column not in data.columns:
                    raise DataError(
                        f"grouping column {column!r} in term {term.text!r} is not in the data."
                        + did_you_mean(column, data.columns)
                    )
            if term.group_name not in factors:
                factors[term.group_name] = GroupingFactor.from_data(data, term.grouping)
            points = None
            if term.coordinates:
                points = _coordinate_points(term, data, formula=spec.text)
                coef_names, z_spec = _point_names(points), None
            elif term.intercept_only:
                coef_names, z_spec = ("(Intercept)",), None
            else:
                z, z_spec = evaluate_formula(term.expr, data)
                coef_names = tuple(_lme4_name(name) for name in z_spec.column_names)
                if not coef_names:
                    raise FormulaError(
                        f"random term {term.text!r} has no coefficients", formula=spec.text, position=term.position
                    )
                if coef_names == ("(Intercept)",):
                    z_spec = None
            pieces = [tuple(range(len(coef_names)))] if term.correlated else [(j,) for j in range(len(coef_names))]
            for columns in pieces:
                names = tuple(coef_names[j] for j in columns)
                terms.append(RandomTermDesign(
                    spec=term, factor=term.group_name, coef_names=names,
                    z_spec=None if names == ("(Intercept)",) else z_spec, columns=columns,
                    factor_levels=_single_factor_levels(term, data), coordinates=points,
                ))
        seen: dict[tuple[str, str], RandomTermDesign] = {}
        for design in terms:
            for name in design.coef_names:
                other = seen.setdefault((design.factor, name), design)
                if other is not design:
                    raise FormulaError(
                        f"coefficient {name!r} of grouping factor {design.factor!r} appears in two random "
                        f"terms ({other.spec.text!r} and {design.spec.text!r})",
                        formula=spec.text, position=design.spec.position,
                    )
        return cls(factors=factors, terms=tuple(terms))

    def materialize(self, data: pd.DataFrame, *, new_levels: str = "population") -> tuple[RandomTermData, ...]:
        """Per-row arrays of every term for ``data``; see :meth:`GroupingFactor.encode`."""
        codes = {name: factor.encode(data, new_levels=new_levels) for name, factor in self.factors.items()}
        evaluated: dict[int, np.ndarray] = {}
        out = []
        for term in self.terms:
            z = None
            if term.coordinates is not None:
                z = _point_indicator(term, data)
            elif term.z_spec is not None:
                key = id(term.z_spec)
                if key not in evaluated:
                    evaluated[key] = evaluate_formula(term.z_spec, data)[0]
                z = evaluated[key][:, list(term.columns)]
            out.append(RandomTermData(
                name=term.name, group_index=codes[term.factor], z=z,
                num_levels=self.factors[term.factor].num_levels, coef_names=term.coef_names,
                covariance=term.spec.covariance, coordinates=term.coordinates,
            ))
        return tuple(out)


def _single_factor_levels(term: RandomTermSpec, data: pd.DataFrame) -> tuple | None:
    """The levels of the one categorical column left of a structured term's bar
    (``ar1(0 + timef | s)``), in order; ``None`` for any other term."""
    if term.covariance == "us":
        return None
    names = [t.text for t in tokenize(term.expr) if t.kind is TokenKind.NAME]
    if len(names) != 1 or names[0] not in data.columns:
        return None
    values = data[names[0]]
    if not isinstance(values.dtype, pd.CategoricalDtype) and values.dtype.kind in "biufc":
        return None
    return tuple(_observed_levels(values))


def _coordinate_points(term: RandomTermSpec, data: pd.DataFrame, *, formula: str) -> np.ndarray:
    """The distinct rows of a continuous structure's coordinate columns, sorted
    (glmmTMB's ``numFactor`` levels); a FormulaError at the term for a column that is
    not numeric, a DataError for a missing or non-finite value."""
    columns = []
    for column in term.coordinates:
        values = _column(data, column, role="coordinate")
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind not in "biuf":
            raise FormulaError(f"coordinate column {column!r} of {term.text!r} is not numeric ({values.dtype}); "
                               f"{term.covariance}() takes numeric coordinates", formula=formula,
                               position=term.position)
        values = values.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise DataError(f"coordinate column {column!r} of {term.text!r} has "
                            f"{int((~np.isfinite(values)).sum())} missing or infinite value(s)")
        columns.append(values)
    return np.unique(np.column_stack(columns), axis=0)


def _point_names(points: np.ndarray) -> tuple[str, ...]:
    """glmmTMB's numFactor level names: ``"(1.5,2)"``."""
    return tuple("(" + ",".join(f"{v:g}" for v in row) + ")" for row in points)


def _point_indicator(term: RandomTermDesign, data: pd.DataFrame) -> np.ndarray:
    """Each row's point as a one-hot ``z``; a point not seen at fit time raises (its
    effect would need kriging from the fitted points, which mixedfx does not do)."""
    rows = np.column_stack([_column(data, c, role="coordinate").to_numpy(dtype=np.float64)
                            for c in term.spec.coordinates])
    points = term.coordinates
    match = np.all(rows[:, None, :] == points[None, :, :], axis=2)
    unseen = ~match.any(axis=1)
    if unseen.any():
        example = tuple(float(v) for v in rows[np.flatnonzero(unseen)[0]])
        raise DataError(f"{int(unseen.sum())} row(s) have coordinates of {term.spec.text!r} not seen in fit "
                        f"(e.g. {example}); predicting at a new point (kriging) is not supported: "
                        "predict at the fitted points, or with re_form='~0'")
    return match.astype(np.float64)


def _lme4_name(name: str) -> str:
    return "(Intercept)" if name == "Intercept" else name


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
