"""Binding a data set to a formula: the response, the trials and both designs, in one call.

:func:`bind_data` is the middle of every fit: it picks the formula's columns, applies
the missing-row policy, reads the response (or takes ``y``), and builds the fixed and
random designs.  It knows nothing of families: the model layer
(:func:`mixedfx.model.bind_model`) asks the family to check the response it returns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.utils.validation import column_or_1d

from mixedfx.design.fixed import FixedDesign, build_dispersion_design, build_fixed_design, build_zi_design
from mixedfx.design.frame import MISSING_POLICIES, clean_columns, describe_counts, formula_columns, missing_rows
from mixedfx.design.random import RandomDesign, RandomTermData
from mixedfx.design.response import ResponseDesign
from mixedfx.exceptions import DataError, DataWarning, FormulaError, ParameterError
from mixedfx.formula import FormulaSpec, parse_formula
from mixedfx.formula.tokens import TokenKind, tokenize

__all__ = ["BoundData", "bind_data"]


@dataclass(frozen=True, eq=False)
class BoundData:
    """A data set bound to a formula: the arrays a model is built from, and how they were read.

    Attributes
    ----------
    spec : FormulaSpec
    response_design : ResponseDesign or None
        How the response is read from data; ``None`` when ``y`` was given.
    response_name : str
        The response's name in messages (``"y"`` when given as ``y``).
    response : numpy.ndarray or pandas array of shape (n_rows,)
        The response as read, before any family looked at it (labels stay labels).
    trials : numpy.ndarray of shape (n_rows,) or None
        From ``cbind(successes, failures)``, or as given by ``trials=``.
    sample_weight : numpy.ndarray of shape (n_rows,) or None
        Positive prior weights (rows of weight zero are left out).
    fixed_design : FixedDesign
    fixed_matrix : numpy.ndarray of shape (n_rows, n_fixed)
    offset : numpy.ndarray of shape (n_rows,) or None
    random_design : RandomDesign
    random_terms : tuple of RandomTermData
        The training rows' group indices (every level seen).
    dropped_rows : pandas.Index
        Index labels of the rows left out for missing values or a zero weight.
    zi_design : FixedDesign or None
        The zero-inflation design of ``ziformula`` (glmmTMB's), or ``None``.
    zi_matrix : numpy.ndarray of shape (n_rows, n_zi) or None
    disp_design : FixedDesign or None
        The dispersion design of ``dispformula`` (glmmTMB's), or ``None``.
    disp_matrix : numpy.ndarray of shape (n_rows, n_disp) or None

    Examples
    --------
    :func:`bind_data` makes one; a cbind response carries its trials:

    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import bind_data
    >>> frame = pd.DataFrame({"k": [1, 3, 0, 2], "n": [4, 4, 2, 5], "g": list("abab")})
    >>> bound = bind_data(parse_formula("cbind(k, n - k) ~ 1 + (1 | g)"), frame)
    >>> bound.response.tolist(), bound.trials.tolist(), bound.response_name
    ([1.0, 3.0, 0.0, 2.0], [4.0, 4.0, 2.0, 5.0], 'cbind(k, n - k)')
    """

    spec: FormulaSpec
    response_design: ResponseDesign | None
    response_name: str
    response: object
    trials: np.ndarray | None
    sample_weight: np.ndarray | None
    fixed_design: FixedDesign
    fixed_matrix: np.ndarray
    offset: np.ndarray | None
    random_design: RandomDesign
    random_terms: tuple[RandomTermData, ...]
    dropped_rows: pd.Index
    zi_design: FixedDesign | None = None
    zi_matrix: np.ndarray | None = None
    disp_design: FixedDesign | None = None
    disp_matrix: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.fixed_matrix.shape[0])


def bind_data(spec: FormulaSpec, data: pd.DataFrame, *, y=None, sample_weight=None, trials=None,
              missing: str = "drop", ziformula=None, dispformula=None) -> BoundData:
    """Bind ``data`` to the formula ``spec``: the response, the trials and the designs.

    Parameters
    ----------
    spec : FormulaSpec
        With at least one random term.
    data : pandas.DataFrame
        Never changed.
    y : array-like of shape (n_rows,), optional
        The response; by default the formula's left-hand side evaluated on ``data``.
    sample_weight : array-like of shape (n_rows,), optional
        Prior weights (lme4's ``weights=``), non-negative and finite; rows of weight
        zero are left out (listed in ``dropped_rows``).
    trials : array-like of shape (n_rows,), optional
        The binomial trials of each row, with a response of successes or proportions
        (instead of ``cbind(successes, failures)``).
    missing : {"drop", "raise"}, default "drop"
        Rows with a missing value in a column the model uses, in ``y`` or in
        ``trials``: left out with a :class:`~mixedfx.DataWarning`, or refused.
    ziformula : str, optional
        glmmTMB's zero-inflation formula (``"~ x"``; ``"~0"`` or ``None``: none), built
        by :func:`~mixedfx.design.build_zi_design` on the kept rows.
    dispformula : str, optional
        glmmTMB's dispersion formula (``"~ z"``; ``"~1"`` or ``None``: none), built by
        :func:`~mixedfx.design.build_dispersion_design`.

    Returns
    -------
    BoundData

    Raises
    ------
    FormulaError, DataError
        Naming the term, the column or the rows at fault.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import bind_data
    >>> frame = pd.DataFrame({"y": [1.0, 2.0, 4.0, None], "x": [0.0, 1.0, 2.0, 3.0], "g": list("abab")})
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     bound = bind_data(parse_formula("y ~ x + (1 | g)"), frame)
    >>> bound.n_rows, bound.dropped_rows.tolist(), bound.fixed_design.column_names
    (3, [3], ('Intercept', 'x'))
    >>> bound.random_terms[0].group_index.tolist()
    [0, 1, 0]
    """
    if missing not in MISSING_POLICIES:
        raise ParameterError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    if not spec.random:
        raise FormulaError(
            "No random effects terms specified in formula: add at least one term such as "
            "'(1 | g)' (for a model without random effects use a fixed-effects regressor)",
            formula=spec.text,
        )
    if len(data) < 2:
        raise DataError(f"X has {len(data)} sample(s) (shape={data.shape}) while a minimum of 2 is required "
                        "(a mixed model needs more rows than parameters)")
    columns = formula_columns(spec, data)
    for extra in (ziformula, dispformula):
        columns += [c for c in _zi_columns(extra, data) if c not in columns]
    data = clean_columns(data, columns, drop_unused_categories=True)
    y, sample_weight = _response_array(y, len(data)), _weight_array(sample_weight, len(data))
    trials = _trials_array(trials, len(data))
    zero = None if sample_weight is None else sample_weight == 0
    data, y, sample_weight, trials, dropped = _drop_missing(data, columns, y, sample_weight, trials, zero,
                                                            missing=missing)
    response_design = None if y is not None else ResponseDesign.from_text(spec.response)
    given_trials = trials
    if y is not None:
        raw, trials, response_name = y, None, "y"
    else:
        try:
            raw, trials = response_design.evaluate(data)
        except FormulaError as exc:
            raise _in_formula(exc, spec.text) from None
        response_name = spec.response
    if given_trials is not None:
        if trials is not None:
            raise DataError("give the trials either by cbind(successes, failures) or by trials=, not both")
        trials = given_trials
    try:
        fixed_design, fixed_matrix = build_fixed_design(spec.fixed, data, offsets=spec.offsets)
        random_design = RandomDesign.from_spec(spec, data)
    except FormulaError as exc:
        raise _in_formula(exc, spec.text) from None
    zi_design, zi_matrix, zi_random = _zi_designs(ziformula, data)
    if zi_random is not None:
        random_design = random_design.with_terms_of(zi_random, predictor="zi")
    disp_design, disp_matrix = build_dispersion_design(dispformula, data)
    return BoundData(
        spec=spec, response_design=response_design, response_name=response_name, response=raw, trials=trials,
        sample_weight=sample_weight, fixed_design=fixed_design, fixed_matrix=fixed_matrix,
        offset=fixed_design.offset(data), random_design=random_design,
        random_terms=random_design.materialize(data, new_levels="error"), dropped_rows=dropped,
        zi_design=zi_design, zi_matrix=zi_matrix, disp_design=disp_design, disp_matrix=disp_matrix,
    )


def _zi_designs(ziformula, data: pd.DataFrame):
    """``(design, matrix, random design or None)`` of glmmTMB's ``ziformula``: its fixed
    part (:func:`~mixedfx.design.build_zi_design`) and its random terms (``~ x + (1 | g)``),
    which enter the zero-inflation linear predictor."""
    if not isinstance(ziformula, str) or "|" not in ziformula:
        return (*build_zi_design(ziformula, data), None)
    text = ziformula.strip()
    if not text.startswith("~"):
        raise FormulaError(f"ziformula must be a one-sided formula such as '~ x', got {ziformula!r}")
    spec = parse_formula(text)
    if spec.offsets:
        raise FormulaError("offset() terms in a ziformula are not supported", formula=text,
                           position=text.find("offset"))
    if spec.fixed.replace(" ", "") in ("0", "-1"):
        raise FormulaError("random terms in ziformula need its fixed part to have a column (an intercept): the "
                           "zero-inflation model is its fixed part plus them", formula=text, position=text.find("0"))
    zi_design, zi_matrix = build_zi_design(f"~ {spec.fixed}", data)
    try:
        zi_random = RandomDesign.from_spec(spec, data)
    except FormulaError as exc:
        raise _in_formula(exc, text) from None
    return zi_design, zi_matrix, zi_random


def _zi_columns(ziformula, data: pd.DataFrame) -> list[str]:
    """The columns of ``data`` that ``ziformula`` names (so that the missing-row policy
    sees them too)."""
    if not isinstance(ziformula, str):
        return []
    names = {token.text[1:-1] if token.text.startswith("`") else token.text
             for token in tokenize(ziformula) if token.kind is TokenKind.NAME}
    return [c for c in data.columns if c in names]


def _drop_missing(data, columns, y, sample_weight, trials, zero, *, missing):
    """Apply the ``missing`` policy to rows with a missing value in ``columns``, ``y``
    or ``trials``, and leave out the rows of weight zero (``zero``); returns the kept
    data, y, weights, trials and the dropped index."""
    mask, counts = missing_rows(data, columns)
    for name, values in (("y", y), ("trials", trials)):
        if values is not None:
            isna = np.asarray(pd.isna(values), dtype=bool)
            if isna.any():
                counts[name] = int(isna.sum())
                mask = mask | isna
    n_missing = int(mask.sum())
    if zero is not None and zero.any():
        mask = mask | zero
    dropped = data.index[mask]
    if not mask.any():
        return data, y, sample_weight, trials, dropped
    where = describe_counts(counts)
    if missing == "raise" and n_missing:
        raise DataError(
            f"{n_missing} of {len(mask)} rows have missing values (NaN/None) in the columns the model uses "
            f"({where}); drop or impute them, or use missing='drop'"
        )
    if n_missing == len(mask):
        raise DataError(f"every row has a missing value in the columns the model uses ({where}); nothing is left to fit")
    if mask.all():
        raise DataError("every row has a missing value or a sample_weight of zero: no row with a non-zero weight "
                        "is left to fit")
    if n_missing:
        warnings.warn(
            f"dropped {n_missing} of {len(mask)} rows with missing values ({where}), as lme4's na.omit does; "
            f"the fit uses the other {len(mask) - int(mask.sum())} (dropped_rows_ lists them; missing='raise' refuses "
            "them)" + (f"; {int(mask.sum()) - n_missing} more rows of weight zero are left out" if mask.sum() > n_missing
                       else ""),
            DataWarning,
            stacklevel=4,
        )
    keep = ~mask
    data = clean_columns(data.loc[keep], columns, drop_unused_categories=True)
    return (data, *(None if values is None else values[keep] for values in (y, sample_weight, trials)), dropped)


def _in_formula(error: FormulaError, text: str) -> FormulaError:
    """A design-layer FormulaError about a piece of the formula, pointed at in the whole."""
    if error.position is not None or not error.formula or error.formula == text:
        return error
    position = text.find(error.formula)
    if position < 0:
        return error
    return FormulaError(error.message, formula=text, position=position)


def _response_array(y, n_rows: int):
    """``y`` as a 1-D array (a pandas Categorical keeps its category order), or None."""
    if y is None:
        return None
    if isinstance(y, pd.Series) and isinstance(y.dtype, pd.CategoricalDtype):
        raw = y.array
    elif isinstance(y, pd.Series) and pd.api.types.is_extension_array_dtype(y.dtype) and y.dtype.kind in "biuf":
        raw = y.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raw = np.asarray(y)
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = column_or_1d(raw, warn=True)  # with scikit-learn's DataConversionWarning
        if raw.dtype.kind == "c":
            raise DataError("Complex data not supported: y holds complex numbers")
        if raw.dtype == object and raw.ndim == 1 and pd.api.types.infer_dtype(raw, skipna=True) in (
                "integer", "floating", "mixed-integer-float", "decimal"):
            raw = pd.to_numeric(pd.Series(raw)).to_numpy(dtype=np.float64)  # numbers stored as objects
    if raw.ndim != 1 or raw.shape[0] != n_rows:
        raise DataError(f"y must be one-dimensional with {n_rows} values, got shape {raw.shape}")
    return raw


def _row_values(values, n_rows: int, name: str) -> np.ndarray:
    """``values`` (``sample_weight`` or ``trials``, named ``name`` in errors) as a float64
    array of ``n_rows`` values."""
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from None
    if out.shape != (n_rows,):
        raise DataError(f"{name} must hold {n_rows} values, got shape {out.shape}")
    return out


def _weight_array(sample_weight, n_rows: int):
    """``sample_weight`` as a float64 array of ``n_rows`` values, or None."""
    if sample_weight is None:
        return None
    weights = _row_values(sample_weight, n_rows, "sample_weight")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise DataError(f"sample_weight must be finite and non-negative; position {int(bad[0])} holds "
                        f"{float(weights[bad[0]])!r} ({bad.size} such value(s))")
    if not np.any(weights > 0):
        raise DataError("sample_weight is zero for every row: at least one weight must be non-zero")
    return weights


def _trials_array(trials, n_rows: int):
    """``trials`` as a float64 array of ``n_rows`` positive whole numbers (NaN: missing), or None."""
    if trials is None:
        return None
    values = _row_values(trials, n_rows, "trials")
    bad = np.flatnonzero(~np.isnan(values) & ((values <= 0) | (values != np.round(values)) | np.isinf(values)))
    if bad.size:
        raise DataError(f"trials must be positive whole numbers; position {int(bad[0])} holds {float(values[bad[0]])!r}")
    return values
