"""The fixed-effects design: formulaic with an explicit materializer and a frozen spec.

At fit time formulaic learns the encoding state (categorical levels, contrasts,
centring and scaling constants, spline knots) into a :class:`formulaic.ModelSpec`.
:class:`FixedDesign` keeps that spec and replays it on new data, with two guards that
formulaic itself does not apply:

* an unseen categorical level raises :class:`~mixedfx.NewLevelError` (formulaic would
  encode it as the baseline with only a warning);
* missing values raise instead of silently dropping rows (which would misalign the
  prediction with the input rows).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import Formula, ModelSpec
from formulaic.errors import DataMismatchWarning, FormulaicError
from formulaic.materializers import PandasMaterializer
from formulaic.transforms import TRANSFORMS
from formulaic.utils.code import format_expr

from mixedfx.design.levels import check_distinct_categories, conform_levels
from mixedfx.design.r_functions import R_FUNCTIONS
from mixedfx.exceptions import DataError, DataWarning, FormulaError, NewLevelError, did_you_mean
from mixedfx.formula.r_syntax import RTranslation, translate_r
from mixedfx.formula.tokens import TokenKind, tokenize

__all__ = ["FixedDesign", "build_fixed_design", "build_zi_design", "build_dispersion_design", "evaluate_formula", "evaluate_numeric", "EVALUATION_CONTEXT"]

#: Names available inside formula expressions besides the data columns and formulaic's
#: own transforms (``C``, ``center``, ``scale``, ``bs``, ``cr``, ...): numpy, and R's
#: formula functions (:mod:`mixedfx.design.r_functions`: ``factor``, ``relevel``, R's
#: ``poly`` and ``ns``, ...).  The context is curated on purpose: formulaic's default
#: would capture the caller's stack frame.
#:
#: Examples
#: --------
#: >>> import pandas as pd
#: >>> from mixedfx.design import EVALUATION_CONTEXT, evaluate_formula
#: >>> sorted(EVALUATION_CONTEXT)  # doctest: +NORMALIZE_WHITESPACE
#: ['abs', 'as_factor', 'as_numeric', 'exp', 'factor', 'log', 'log10', 'log1p', 'log2', 'np',
#:  'ns', 'numpy', 'poly', 'relevel', 'sqrt']
#: >>> matrix, _ = evaluate_formula("0 + log(t) + np.sqrt(t)", pd.DataFrame({"t": [1.0, 4.0]}))
#: >>> matrix.round(4).tolist()
#: [[0.0, 1.0], [1.3863, 2.0]]
EVALUATION_CONTEXT = {
    "np": np,
    "numpy": np,
    "log": np.log,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
    **R_FUNCTIONS,
}


@dataclass(frozen=True, eq=False)
class FixedDesign:
    """State of the fixed-effects design captured at fit time.

    Attributes
    ----------
    formula : str
        The fixed right-hand side, in formulaic's grammar.
    model_spec : formulaic.ModelSpec
        Formulaic's frozen encoding state, replayed by :meth:`transform`.
    column_names : tuple of str
        Names of the columns kept in the design (formulaic's names, e.g.
        ``"Intercept"``, ``"service"``).
    kept_columns : tuple of int
        Positions of the kept columns in formulaic's output; aliased columns of a
        rank-deficient design are dropped at fit time, as lme4 does.
    dropped_columns : tuple of str
        Names of the columns dropped for rank deficiency.
    offsets : tuple of str
        Expressions of the formula's ``offset(...)`` terms.
    offset_specs : tuple of formulaic.ModelSpec
        Their encoding state, replayed by :meth:`offset`.

    Examples
    --------
    :func:`build_fixed_design` learns it from the training rows; ``transform`` replays
    it on new rows, and refuses a categorical level it never saw:

    >>> import pandas as pd
    >>> from mixedfx.design import build_fixed_design
    >>> train = pd.DataFrame({"x": [1.0, 2.0, 4.0], "f": ["a", "b", "a"]})
    >>> design, X = build_fixed_design("x + f", train)
    >>> design.column_names, design.has_intercept
    (('Intercept', 'x', 'f[T.b]'), True)
    >>> design.transform(pd.DataFrame({"x": [3.0], "f": ["b"]})).tolist()
    [[1.0, 3.0, 1.0]]
    >>> design.transform(pd.DataFrame({"x": [3.0], "f": ["c"]}))
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.NewLevelError: unseen categorical level(s) in 'x + f': column 'f' has level(s) 'c'. A coefficient has no estimate for a level it never saw; refit with that level present or recode it.
    """

    formula: str
    model_spec: ModelSpec
    column_names: tuple[str, ...]
    kept_columns: tuple[int, ...]
    dropped_columns: tuple[str, ...] = ()
    offsets: tuple[str, ...] = ()
    offset_specs: tuple = ()

    @property
    def has_intercept(self) -> bool:
        return "Intercept" in self.column_names

    def transform(self, data: pd.DataFrame) -> np.ndarray:
        """Replay the fitted encoding on ``data``.

        Parameters
        ----------
        data : pandas.DataFrame
            New rows with the columns the fixed part uses.

        Returns
        -------
        numpy.ndarray of shape (n_rows, n_columns)
            The design matrix, float64.

        Raises
        ------
        NewLevelError
            If a categorical column holds a level not seen at fit time.
        DataError
            If a column is missing or holds missing values.
        """
        data = conform_levels(data, self.model_spec)  # levels matched by value, not dtype
        matrix = _materialize(lambda: self.model_spec.get_model_matrix(data, context=EVALUATION_CONTEXT),
                              data=data, formula=self.formula, spec=self.model_spec)
        return np.asarray(matrix, dtype=np.float64)[:, list(self.kept_columns)]

    def offset(self, data: pd.DataFrame) -> np.ndarray | None:
        """The summed ``offset(...)`` terms on ``data`` (``None`` without offsets)."""
        if not self.offset_specs:
            return None
        return np.sum([evaluate_formula(spec, data)[0][:, 0] for spec in self.offset_specs], axis=0)


def build_fixed_design(
    fixed: str,
    data: pd.DataFrame,
    *,
    offsets: tuple[str, ...] = (),
) -> tuple[FixedDesign, np.ndarray]:
    """Learn the fixed design from ``data``.

    Parameters
    ----------
    fixed : str
        Fixed right-hand side in formulaic's grammar, e.g. ``"service"``.
    data : pandas.DataFrame
        Training rows.
    offsets : tuple of str, optional
        Expressions of ``offset(...)`` terms, e.g. ``("np.log(exposure)",)``.

    Returns
    -------
    design : FixedDesign
        The frozen design state.
    X : numpy.ndarray of shape (n_rows, n_columns)
        The fixed-effects design matrix.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import build_fixed_design
    >>> frame = pd.DataFrame({"y": [1.0, 2.0, 4.0], "f": ["a", "b", "a"], "t": [1.0, 2.0, 4.0]})
    >>> design, X = build_fixed_design("f", frame, offsets=("log(t)",))
    >>> design.column_names
    ('Intercept', 'f[T.b]')
    >>> X.tolist()
    [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]
    >>> design.offset(frame).round(4).tolist()
    [0.0, 0.6931, 1.3863]
    """
    translation = translate_r(fixed)
    try:
        formula = Formula(translation.text)
    except FormulaicError as exc:
        raise FormulaError(f"formulaic cannot parse the fixed part: {_first_line(exc)}", formula=fixed) from exc

    def materialize():
        return formula.get_model_matrix(
            data, context=EVALUATION_CONTEXT, materializer=PandasMaterializer, na_action="raise"
        )

    rhs = _materialize(materialize, data=data, formula=fixed, spec=None)
    check_distinct_categories(rhs.model_spec, data)
    names = r_column_names(rhs.columns, translation)
    X = np.asarray(rhs, dtype=np.float64)
    kept = _independent_columns(X)
    dropped = tuple(names[j] for j in range(len(names)) if j not in kept)
    if dropped:
        warnings.warn(
            f"the fixed-effects design is rank deficient; dropping {len(dropped)} aliased "
            f"column(s): {', '.join(dropped)}",
            UserWarning,
            stacklevel=3,
        )
    _warn_on_scales(X[:, kept], [names[j] for j in kept])
    offset_specs = tuple(evaluate_numeric(expression, data, role="offset")[1] for expression in offsets)
    design = FixedDesign(
        formula=fixed,
        model_spec=rhs.model_spec,
        column_names=tuple(names[j] for j in kept),
        kept_columns=tuple(kept),
        dropped_columns=dropped,
        offsets=tuple(offsets),
        offset_specs=offset_specs,
    )
    return design, X[:, kept]


def build_zi_design(ziformula, data: pd.DataFrame) -> tuple[FixedDesign | None, np.ndarray | None]:
    """The zero-inflation design of glmmTMB's ``ziformula`` (a one-sided formula of fixed
    terms), learnt from ``data`` like the fixed design; ``(None, None)`` for ``"~0"``.

    Parameters
    ----------
    ziformula : str or None
        ``"~ x"``, ``"~1"``; ``"~0"`` or ``None``: no zero inflation.
    data : pandas.DataFrame

    Returns
    -------
    design : FixedDesign or None
    X_zi : numpy.ndarray of shape (n_rows, n_columns) or None

    Raises
    ------
    FormulaError
        For a random term, with a caret under it: this is the fixed part only
        (:func:`~mixedfx.design.bind_data` splits a ``ziformula``'s random terms off into
        the random design, :meth:`~mixedfx.design.RandomDesign.with_terms_of`).

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import build_zi_design
    >>> frame = pd.DataFrame({"f": ["a", "b", "a"]})
    >>> design, X = build_zi_design("~ f", frame)
    >>> design.column_names, X.tolist()
    (('Intercept', 'f[T.b]'), [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    >>> build_zi_design("~0", frame)
    (None, None)
    >>> build_zi_design("~ f + (1 | g)", frame)
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.FormulaError: random terms in ziformula belong to the random design (bind_data), not its fixed design at position 6
        ~ f + (1 | g)
              ^
    """
    return _one_sided_design(ziformula, data, name="ziformula", none=("0", "-1"))


def build_dispersion_design(dispformula, data: pd.DataFrame) -> tuple[FixedDesign | None, np.ndarray | None]:
    """The dispersion design of glmmTMB's ``dispformula``, as :func:`build_zi_design`;
    ``(None, None)`` for ``"~1"`` (one dispersion, the family's own parameter).

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import build_dispersion_design
    >>> design, X = build_dispersion_design("~ z", pd.DataFrame({"z": [0.5, 2.0]}))
    >>> design.column_names, X.tolist()
    (('Intercept', 'z'), [[1.0, 0.5], [1.0, 2.0]])
    >>> build_dispersion_design("~1", pd.DataFrame({"z": [0.5, 2.0]}))
    (None, None)
    """
    return _one_sided_design(dispformula, data, name="dispformula", none=("1",))


def _one_sided_design(formula, data: pd.DataFrame, *, name: str, none: tuple[str, ...]):
    """A one-sided formula of fixed terms as a design (``none``: the right-hand sides that
    mean no design); a random term is refused with a caret under it."""
    if formula is None:
        return None, None
    if not isinstance(formula, str) or not formula.strip().startswith("~"):
        raise FormulaError(f"{name} must be a one-sided formula such as '~ x', got {formula!r}")
    text = formula.strip()
    bar = text.find("|")
    if bar >= 0:
        opening = text.rfind("(", 0, bar)
        message = (f"random terms in {name} belong to the random design (bind_data), not its fixed design"
                   if name == "ziformula" else f"random terms in {name} are not supported yet (fixed effects only)")
        raise FormulaError(message, formula=text, position=opening if opening >= 0 else bar)
    rhs = text[1:].strip()
    if rhs in none or rhs.replace(" ", "") in none:
        return None, None
    design, X = build_fixed_design(rhs, data)
    if not design.column_names:
        return None, None
    return design, X


def evaluate_numeric(expression: str, data: pd.DataFrame, *, role: str) -> tuple[np.ndarray, ModelSpec]:
    """Evaluate one numeric expression (a column or a Python expression of columns).

    Returns the values and the spec that replays them on new data.

    Raises
    ------
    DataError
        If the expression does not give one numeric value per row.
    """
    matrix, spec = evaluate_formula(f"0 + {{{translate_r(expression, code=True).text}}}", data)
    if matrix.shape[1] != 1:
        raise DataError(
            f"the {role} {expression!r} must be numeric, but it gave {matrix.shape[1]} columns "
            f"({', '.join(map(str, spec.column_names))}); is it categorical?"
        )
    return matrix[:, 0], spec


def evaluate_formula(formula: str | ModelSpec, data: pd.DataFrame) -> tuple[np.ndarray, ModelSpec]:
    """Evaluate a one-sided formulaic formula on ``data``, or replay a fitted spec.

    The same guards as :meth:`FixedDesign.transform` apply: unseen categorical levels
    and missing values raise mixedfx errors naming the column.

    Returns
    -------
    matrix : numpy.ndarray of shape (n_rows, n_columns)
    spec : formulaic.ModelSpec
        The spec to replay on new data (``spec.column_names`` names the columns).

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import evaluate_formula
    >>> matrix, spec = evaluate_formula("0 + log(x)", pd.DataFrame({"x": [1.0, 2.0]}))
    >>> matrix.round(4).tolist(), spec.column_names
    ([[0.0], [0.6931]], ('log(x)',))
    >>> evaluate_formula(spec, pd.DataFrame({"x": [3.0]}))[0].round(4).tolist()  # replayed
    [[1.0986]]
    """
    if isinstance(formula, ModelSpec):
        data = conform_levels(data, formula)  # levels matched by value, not dtype
        matrix = _materialize(lambda: formula.get_model_matrix(data, context=EVALUATION_CONTEXT),
                              data=data, formula=str(formula.formula), spec=formula)
        return np.asarray(matrix, dtype=np.float64), formula
    try:
        parsed = Formula(translate_r(formula).text)
    except FormulaicError as exc:
        raise FormulaError(f"formulaic cannot parse {formula!r}: {_first_line(exc)}") from exc
    matrix = _materialize(
        lambda: parsed.get_model_matrix(data, context=EVALUATION_CONTEXT, materializer=PandasMaterializer,
                                        na_action="raise"),
        data=data, formula=formula, spec=None,
    )
    check_distinct_categories(matrix.model_spec, data)
    return np.asarray(matrix, dtype=np.float64), matrix.model_spec


def r_column_names(columns, translation: RTranslation) -> tuple[str, ...]:
    """Formulaic's column names, with each call R-spelled in the formula named as written.

    Examples
    --------
    >>> from mixedfx.formula import translate_r
    >>> from mixedfx.design.fixed import r_column_names
    >>> r_column_names(["Intercept", "I(Days ** 2)", "as_factor(f)[T.b]"],
    ...                translate_r("I(Days^2) + as.factor(f)"))
    ('Intercept', 'I(Days^2)', 'as.factor(f)[T.b]')
    """
    names = [str(column) for column in columns]
    pairs = sorted(((format_expr(rewritten), original) for rewritten, original in translation.renamed),
                   key=lambda pair: -len(pair[0]))
    for formulaic_name, original in pairs:
        names = [name.replace(formulaic_name, original) for name in names]
    return tuple(names)


def _warn_on_scales(X: np.ndarray, names: list[str], *, tol: float = 1e3) -> None:
    """lme4's ``checkScaleX``: warn when a non-binary column's sd is beyond ``tol`` or
    below ``1/tol``, or two such columns' sds differ by more than a factor ``tol``."""
    if X.shape[0] < 2:
        return
    continuous = [j for j in range(X.shape[1]) if not np.isin(X[:, j], (0.0, 1.0)).all()]
    if not continuous:
        return
    sds = X[:, continuous].std(axis=0, ddof=1)
    with np.errstate(divide="ignore"):
        log_sds = np.log(sds)
    spread = np.abs(log_sds[:, None] - log_sds[None, :]) if len(sds) > 1 else np.zeros((1, 1))
    if np.any(np.abs(log_sds) > np.log(tol)) or np.any(spread > np.log(tol)):
        shown = ", ".join(f"{names[j]} {sd:.3g}" for j, sd in zip(continuous, sds))
        warnings.warn(
            "Some predictor variables are on very different scales: consider rescaling "
            f"(standard deviations: {shown}); as in lme4, a fit on such scales can lose accuracy",
            DataWarning,
            stacklevel=4,
        )


def _independent_columns(X: np.ndarray, *, rtol: float = 1e-7) -> list[int]:
    """Indices of the columns to keep: a column whose part orthogonal to the earlier
    columns is below ``rtol`` of its own norm is aliased and dropped (lme4 keeps the
    earlier columns of an aliased set too)."""
    if X.shape[1] == 0 or X.shape[0] == 0:
        return list(range(X.shape[1]))
    r = np.linalg.qr(X, mode="r")
    norms = np.linalg.norm(X, axis=0)
    diag = np.abs(np.diag(r))
    if diag.shape[0] < X.shape[1]:  # fewer rows than columns
        diag = np.concatenate([diag, np.zeros(X.shape[1] - diag.shape[0])])
    return [j for j in range(X.shape[1]) if norms[j] > 0 and diag[j] > rtol * norms[j]]


def _materialize(build, *, data, formula: str, spec):
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(data).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        # pandas 3 deprecation chatter from inside formulaic's categorical encoder.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Categorical with a dtype.*")
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # non-finite results are refused below
                matrix = build()
        except DataMismatchWarning as exc:
            raise NewLevelError(_unseen_level_message(data, spec, exc, formula)) from None
        except FormulaicError as exc:
            raise _translate(exc, data, formula) from None
        except ValueError as exc:
            message = str(exc)
            if "null values" in message or "contains null" in message:
                column = _quoted(message)
                count = int(pd.isna(data[column]).sum()) if column in data.columns else None
                raise DataError(
                    f"column {column!r} contains missing values (NaN/None)"
                    + (f" in {count} row(s)" if count else "") + "; drop or impute those rows first"
                ) from None
            raise DataError(f"cannot build the fixed design from {formula!r}: {message}") from None
        except TypeError as exc:
            odd = [f"column {c!r} has dtype {data[c].dtype}" for c in _columns_in(formula, data)
                   if data[c].dtype.kind in "mMV"]
            hint = f" ({'; '.join(odd)}: convert it to numbers or categories)" if odd else ""
            raise DataError(f"cannot build the design from {formula!r}: {_first_line(exc)}{hint}") from None
    _check_finite(matrix, data, formula)
    return matrix


def _check_finite(matrix, data: pd.DataFrame, formula: str) -> None:
    """Refuse infinite or NaN design values (``log(0)``, an ``inf`` in a column), as R's
    ``model.matrix`` does with "NA/NaN/Inf"; they would otherwise be fitted silently."""
    values = np.asarray(matrix, dtype=np.float64)
    if values.size == 0 or np.isfinite(values).all():
        return
    bad = ~np.isfinite(values)
    column = int(np.flatnonzero(bad.any(axis=0))[0])
    rows = np.flatnonzero(bad[:, column])
    names = list(getattr(matrix, "columns", range(values.shape[1])))
    example = data.index[rows[0]] if len(data.index) == values.shape[0] else rows[0]
    raise DataError(
        f"column {str(names[column])!r} of {formula!r} has {len(rows)} non-finite value(s) (inf or NaN; "
        f"e.g. {values[rows[0], column]} in row {_python(example)!r}); remove or recode those rows"
    )


def _translate(exc: Exception, data: pd.DataFrame, formula: str) -> Exception:
    message = _first_line(exc)
    name = _quoted(message.split("NameError:")[-1]) if "NameError" in message else None
    if name is not None:
        return DataError(
            f"column {name!r} used in the formula {formula!r} is not in the data."
            + did_you_mean(name, data.columns)
        )
    factor = _quoted(message) or formula
    unknown = re.search(r"NameError: name '([^']+)' is not defined", message) or re.search(
        r"AttributeError: module '(?:numpy)' has no attribute '([^']+)'", message)
    if unknown is not None:
        function = unknown.group(1) if "NameError" in unknown.group(0) else f"np.{unknown.group(1)}"
        # as_factor and as_numeric are reached by R's as.factor and as.numeric, not by name
        known = sorted((set(EVALUATION_CONTEXT) | set(TRANSFORMS)) - {"np", "numpy", "as_factor", "as_numeric"},
                       key=str.lower)
        suggestion = did_you_mean(function.removeprefix("np."), known).strip()
        return FormulaError(
            f"unknown function {function!r} in {factor!r}{'; ' + suggestion[0].lower() + suggestion[1:] if suggestion else ''}"
            f" (formulas can call {', '.join(known)}, and numpy's functions as np.<name>)",
            formula=factor,
        )
    return DataError(f"cannot build the fixed design from {formula!r}: {message}")


def _unseen_level_message(data: pd.DataFrame, spec: ModelSpec | None, exc: Exception, formula: str) -> str:
    details = []
    if spec is not None:
        for factor, state in spec.encoder_state.items():
            kind, params = state
            if getattr(kind, "value", kind) != "categorical":
                continue
            known = pd.Index(params.get("categories", []))
            for column in _columns_in(str(factor), data):
                values = pd.Index(pd.unique(data[column].dropna()))
                unseen = values.difference(known, sort=False)
                if len(unseen):
                    shown = ", ".join(map(repr, [_python(v) for v in unseen[:5]]))
                    more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
                    details.append(f"column {column!r} has level(s) {shown}{more}")
    if not details:
        details.append(_first_line(exc))
    return (
        f"unseen categorical level(s) in {formula!r}: "
        + "; ".join(details)
        + ". A coefficient has no estimate for a level it never saw; "
        "refit with that level present or recode it."
    )


def _columns_in(expression: str, data: pd.DataFrame) -> list[str]:
    """Data columns named in a formulaic factor expression such as ``C(f, Sum)``."""
    if expression in data.columns:
        return [expression]
    try:
        tokens = tokenize(expression)
    except FormulaError:
        return []
    names = [t.text.strip("`") for t in tokens if t.kind is TokenKind.NAME]
    return [name for name in dict.fromkeys(names) if name in data.columns]


def _python(value):
    return value.item() if isinstance(value, np.generic) else value


def _quoted(message: str) -> str | None:
    start = message.find("`")
    end = message.find("`", start + 1)
    if start < 0 or end < 0:
        return None
    return message[start + 1:end]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
