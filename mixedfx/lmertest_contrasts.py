"""lmerTest's type III hypothesis matrices for a formulaic fixed design.

lmerTest (``extract_contrasts_type3``) writes each column of the over-parametrized
design (every level of every factor in each term, times the term's numeric
variables) in the basis of the model's treatment-coded columns, then, from the
highest-order term down, makes each term's columns orthogonal to those of the terms
that contain it (a term contains another when it has all of its variables and more,
with the same numeric ones), and reads each term's hypothesis off the rows of the
model's own columns.  Here the over-parametrized columns are expressed in the model's
basis by least squares on a reference grid (every combination of factor levels,
numeric variables at random positive values), which gives the same exact linear
relation as lmerTest's use of the data.

lmerTest works in the treatment basis whatever the model's coding; so does this
module.  A factor coded otherwise (``C(f, contr.sum)``, Helmert, polynomial) is handled
by a change of basis: the treatment basis is the over-parametrized columns that leave
out each factor's first level (a greedy rank-revealing pick, term by term), the model's
columns are that basis times a matrix ``A`` (exact on the grid), and a hypothesis ``L``
on the treatment coefficients is ``L A`` on the model's.  The F tests are the same as
with treatment coding, as lmerTest's are.  Not handled: stateful transforms that
re-learn their state on new rows (``center``, ``scale``) inside a term, whose
over-parametrized columns would be centred on the grid rather than on the training rows.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
from formulaic import model_matrix

from mixedfx.design.fixed import EVALUATION_CONTEXT
from mixedfx.exceptions import FormulaError

__all__ = ["type3_hypotheses"]


def _factor_kinds(spec) -> dict[str, bool]:
    """Each encoded factor expression -> whether it is categorical (from the spec's encoder state)."""
    return {expr: str(getattr(kind, "value", kind)) == "categorical" for expr, (kind, _) in spec.encoder_state.items()}


def _categorical_columns(spec) -> dict[str, tuple[str, list]]:
    """Each categorical expression -> (its data column, its levels).  A plain column is
    its own expression; ``C(f, contr.sum)`` and the like name one data column."""
    data_columns = list(spec.variables_by_source.get("data", ()))
    out = {}
    for expr, (kind, state) in spec.encoder_state.items():
        if str(getattr(kind, "value", kind)) != "categorical":
            continue
        used = [c for c in data_columns if c == expr or re.search(rf"(?<![\w.]){re.escape(c)}(?![\w.])", expr)]
        if len(used) != 1:
            raise FormulaError(f"type III hypotheses need each factor to be one data column; the factor {expr!r} "
                               f"uses {len(used)}")
        out[expr] = (used[0], list(state["categories"]))
    return out


def _reference_grid(spec, categorical, seed: int = 0) -> pd.DataFrame:
    """Rows with every combination of the categorical variables' levels, numeric variables at random values."""
    by_column = {column: levels for column, levels in categorical.values()}
    numeric = sorted(set(spec.variables_by_source.get("data", ())) - set(by_column))
    combos = list(itertools.product(*by_column.values())) or [()]
    reps = len(spec.column_names) + 2
    rng = np.random.default_rng(seed)
    rows = [dict(zip(by_column, combo)) for combo in combos for _ in range(reps)]
    grid = pd.DataFrame(rows, index=range(len(rows)))
    for name in numeric:
        grid[name] = rng.uniform(1.0, 2.0, len(rows))
    for name, levels in by_column.items():
        grid[name] = pd.Categorical(grid[name], categories=levels)
    return grid


def _treatment_basis(full: np.ndarray, term_of: list, at_reference: np.ndarray) -> list[int]:
    """The over-parametrized columns of the treatment basis: term by term, in order, the
    columns that raise the rank, those at a factor's first level tried last (so that,
    as in ``contr.treatment``, the first level is the one left out)."""
    chosen, rank = [], 0
    for term in dict.fromkeys(term_of):
        members = [j for j, t in enumerate(term_of) if t == term]
        for j in sorted(members, key=lambda j: (bool(at_reference[j]), j)):
            if np.linalg.matrix_rank(full[:, chosen + [j]]) > rank:
                chosen, rank = chosen + [j], rank + 1
    return sorted(chosen)


def _at_reference(full: np.ndarray, grid: pd.DataFrame, categorical) -> np.ndarray:
    """Per over-parametrized column: whether it is non-zero only on rows where some
    factor is at its first level (an indicator of that level, or a product with one)."""
    out = np.zeros(full.shape[1], dtype=bool)
    nonzero = np.abs(full) > 1e-12
    for column, levels in categorical.values():
        first = np.asarray(grid[column] == levels[0])
        out |= nonzero[first].any(axis=0) & ~nonzero[~first].any(axis=0)
    return out


def _term_variables(term, kinds) -> tuple[frozenset, frozenset]:
    """A term's factor expressions, and the numeric ones among them."""
    names = frozenset(str(f.expr) for f in term.factors)
    return names, frozenset(n for n in names if not kinds.get(n, False))


def type3_hypotheses(fixed_design) -> dict[str, np.ndarray]:
    """lmerTest's type III hypothesis matrix of each fixed-effect term.

    Parameters
    ----------
    fixed_design : FixedDesign
        An estimator's ``fixed_design_`` (formulaic ModelSpec and kept columns).

    Returns
    -------
    dict of str to numpy.ndarray
        Term name -> ``(rows, n_fixed)`` hypothesis matrix over
        ``fixed_design.column_names`` (the intercept is not a term).

    Raises
    ------
    FormulaError
        For a factor made of other than one data column.

    Examples
    --------
    A numeric main effect contained in its interaction with a factor is tested at
    the average over the factor's levels, as lmerTest does:

    >>> import pandas as pd
    >>> from mixedfx.design import build_fixed_design
    >>> data = pd.DataFrame({"f": list("abcabc"), "x": [1.0, 2.0, 3.0, 5.0, 4.0, 7.0]})
    >>> design, _ = build_fixed_design("f * x", data)
    >>> L = type3_hypotheses(design)
    >>> list(L), L["x"].round(4).tolist()
    (['f', 'x', 'f:x'], [[0.0, 0.0, 0.0, 1.0, 0.3333, 0.3333]])
    """
    spec = fixed_design.model_spec
    kinds = _factor_kinds(spec)
    categorical = _categorical_columns(spec)
    grid = _reference_grid(spec, categorical)
    X = np.asarray(spec.get_model_matrix(grid, context=EVALUATION_CONTEXT),
                   dtype=np.float64)[:, list(fixed_design.kept_columns)]
    full_frame = model_matrix(spec.formula, grid, ensure_full_rank=False, context=EVALUATION_CONTEXT)
    full = np.asarray(full_frame, dtype=np.float64)
    structure = [s for s in spec.structure if s.columns != ["Intercept"] and str(s.term) != "1"]
    term_names = {column: str(s.term) for s in full_frame.model_spec.structure for column in s.columns}
    term_of = [term_names[c] for c in full_frame.columns]
    basis = _treatment_basis(full, term_of, _at_reference(full, grid, categorical))
    X_treatment = full[:, basis]
    to_model, *_ = np.linalg.lstsq(X_treatment, X, rcond=None)  # X = X_treatment @ to_model
    B, *_ = np.linalg.lstsq(X_treatment, full, rcond=None)
    L = B.T  # rows: over-parametrized columns; columns: the treatment basis
    columns_of = {str(s.term): [i for i, j in enumerate(basis) if term_of[j] == str(s.term)] for s in structure}
    variables = {str(s.term): _term_variables(s.term, kinds) for s in structure}
    order = sorted(variables, key=lambda t: len(variables[t][0]), reverse=True)
    for term in order:
        own, numerics = variables[term]
        containing = [c for t in variables if own < variables[t][0] and variables[t][1] == numerics
                      for c in columns_of[t]]
        if containing and columns_of[term]:
            coef, *_ = np.linalg.lstsq(L[:, containing], L[:, columns_of[term]], rcond=None)
            L[:, columns_of[term]] -= L[:, containing] @ coef
    L = L[basis]  # the rows of the basis's own columns
    L[np.abs(L) < 1e-7] = 0.0
    out = {}
    for term in variables:
        hypothesis = L[:, columns_of[term]].T
        hypothesis = hypothesis[np.abs(hypothesis).sum(axis=1) > 1e-8] @ to_model
        hypothesis[np.abs(hypothesis) < 1e-10] = 0.0
        out[term] = hypothesis
    return out
