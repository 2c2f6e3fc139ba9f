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

What is matched: the default treatment coding (formulaic's, R's ``contr.treatment``) of
plain columns; a factor coded otherwise (``C(f, contr.sum)`` ...) raises
``NotImplementedError`` naming it.  Not handled: stateful transforms that re-learn their
state on new rows (``center``, ``scale``) inside a term, whose over-parametrized columns
would be centred on the grid rather than on the training rows.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from formulaic import model_matrix

from mixedfx.design.fixed import EVALUATION_CONTEXT

__all__ = ["type3_hypotheses"]


def _factor_kinds(spec) -> dict[str, bool]:
    """Each encoded factor expression -> whether it is categorical (from the spec's encoder state)."""
    return {expr: str(getattr(kind, "value", kind)) == "categorical" for expr, (kind, _) in spec.encoder_state.items()}


def _reference_grid(spec, seed: int = 0) -> pd.DataFrame:
    """Rows with every combination of the categorical variables' levels, numeric variables at random values."""
    categorical = {}
    for expr, (kind, state) in spec.encoder_state.items():
        if str(getattr(kind, "value", kind)) != "categorical":
            continue
        contrasts = state.get("contrasts")
        coding = type(getattr(contrasts, "contrasts", None)).__name__
        if coding not in ("TreatmentContrasts", "NoneType") or expr not in spec.variables_by_source.get("data", ()):
            raise NotImplementedError(f"type III hypotheses are computed for the default treatment coding of a "
                                      f"plain column; {expr!r} is coded otherwise")
        categorical[expr] = list(state["categories"])
    numeric = sorted(set(spec.variables_by_source.get("data", ())) - set(categorical))
    combos = list(itertools.product(*categorical.values())) or [()]
    reps = len(spec.column_names) + 2
    rng = np.random.default_rng(seed)
    rows = [dict(zip(categorical, combo)) for combo in combos for _ in range(reps)]
    grid = pd.DataFrame(rows, index=range(len(rows)))
    for name in numeric:
        grid[name] = rng.uniform(1.0, 2.0, len(rows))
    for name, levels in categorical.items():
        grid[name] = pd.Categorical(grid[name], categories=levels)
    return grid


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
    NotImplementedError
        For a factor coded other than by treatment contrasts.

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
    grid = _reference_grid(spec)
    kept = list(fixed_design.kept_columns)
    X = np.asarray(spec.get_model_matrix(grid, context=EVALUATION_CONTEXT), dtype=np.float64)[:, kept]
    full = model_matrix(spec.formula, grid, ensure_full_rank=False, context=EVALUATION_CONTEXT)
    full_names = list(full.columns)
    B, *_ = np.linalg.lstsq(X, np.asarray(full, dtype=np.float64), rcond=None)
    L = B.T  # rows: over-parametrized columns; columns: the model's columns
    names = list(fixed_design.column_names)
    structure = [s for s in spec.structure if s.columns != ["Intercept"] and str(s.term) != "1"]
    columns_of = {str(s.term): [names.index(c) for c in s.columns if c in names] for s in structure}
    variables = {str(s.term): _term_variables(s.term, kinds) for s in structure}
    order = sorted(variables, key=lambda t: len(variables[t][0]), reverse=True)
    for term in order:
        own, numerics = variables[term]
        containing = [c for t in variables if own < variables[t][0] and variables[t][1] == numerics
                      for c in columns_of[t]]
        if containing and columns_of[term]:
            coef, *_ = np.linalg.lstsq(L[:, containing], L[:, columns_of[term]], rcond=None)
            L[:, columns_of[term]] -= L[:, containing] @ coef
    # the rows of the model's own columns: formulaic's 'f[T.b]' is the over-parametrized 'f[b]'
    rows = [full_names.index(name.replace("[T.", "[")) for name in names]
    L = L[rows]
    L[np.abs(L) < 1e-7] = 0.0
    out = {}
    for term in variables:
        hypothesis = L[:, columns_of[term]].T
        out[term] = hypothesis[np.abs(hypothesis).sum(axis=1) > 1e-8]
    return out
