"""What the inference loop reads off the model's structure before it starts.

* :func:`location_expansions`: which fixed-effect columns can absorb the mean of each
  term's coefficients (the parameter expansion of the M-step);
* :func:`nested_centering`: which random intercepts are nested in others (the
  centred coordinates of the E-step).
"""

from __future__ import annotations

import numpy as np

from mixedfx.inference.estep import Centering
from mixedfx.inference.mstep import Expansion
from mixedfx.model.joint import MixedModel

__all__ = ["location_expansions", "nested_centering"]


def location_expansions(model: MixedModel) -> tuple[Expansion, ...]:
    """Per term, the fixed-effect columns that absorb the mean of its coefficients.

    * A random intercept: every fixed-effect column constant within its levels (the
      intercept, group-level covariates), with their values per level as ``W``.
    * A term whose every ``z`` column is also a fixed-effect column (``(1 + x | g)``
      with ``x`` among the fixed effects): ``W`` is a column of ones.
    * Otherwise no expansion.

    Examples
    --------
    A random intercept per department, with the intercept and a department-level
    covariate among the fixed effects (constant within each department) and a
    row-level ``x`` (not):

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> from mixedfx.inference import location_expansions
    >>> dept = np.repeat(np.arange(3), 4).astype(np.int32)
    >>> X = np.column_stack([np.ones(12), dept == 1, np.linspace(0.0, 1.0, 12)])
    >>> model = MixedModel(Gaussian(), X, np.zeros(12), (RandomTermData("dept", dept, None, 3),),
    ...                    ("Intercept", "dept1", "x"))
    >>> expansion, = location_expansions(model)
    >>> expansion.targets, expansion.level_values.tolist()
    (((0, 1),), [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    """
    designs = {"cond": (model.fixed_design, 0)}
    return tuple(_expansion(term, *_design_of(model, _predictor(term), designs)) for term in model.random_terms)


def _design_of(model: MixedModel, key: str, designs: dict):
    """``(design, first)``: the fixed design of linear predictor ``key`` and the index of
    its first coefficient in the vector of the fixed effects followed by the family's
    unconstrained parameters (a family's own linear model's coefficients are among the
    last of these, :meth:`~mixedfx.model.Family.coefficient_blocks`)."""
    if key not in designs:
        family, p = model.family, model.fixed_design.shape[1]
        at = p + len(family.parameter_labels()) - sum(len(names) for _, names in family.coefficient_blocks())
        for block, names in family.coefficient_blocks():
            designs[block] = (np.asarray(family.own_design(model.family_design, block), dtype=np.float64), at)
            at += len(names)
    return designs[key]


def _expansion(term, X, first: int) -> Expansion:
    """The location expansion of ``term`` into the columns of ``X`` (its linear predictor's
    fixed design), whose coefficients start at index ``first``."""
    q = term.num_levels
    if X.shape[1] == 0:
        return Expansion((), None)
    if term.z is None:
        # a column is constant within levels when every row equals a row of its level
        some_row = _a_row_of_each_level(term.group_index, q)
        constant = np.all(X == X[some_row[term.group_index]], axis=0)
        columns = tuple(int(j) for j in np.flatnonzero(constant))
        values = X[some_row][:, list(columns)]
        if columns and np.linalg.matrix_rank(values) == len(columns):
            return Expansion((tuple(first + j for j in columns),), values)
        return Expansion((), None)
    targets = []
    for c in range(term.z.shape[1]):
        match = [j for j in range(X.shape[1]) if np.array_equal(X[:, j], term.z[:, c])]
        if not match:
            return Expansion((), None)
        targets.append((first + match[0],))
    return Expansion(tuple(targets), np.ones((q, 1)))


def nested_centering(model: MixedModel) -> Centering:
    """Find random intercepts nested in others and centre each on its closest parent.

    Term ``l`` is nested in term ``k`` when each level of ``l`` occurs with a single
    level of ``k``.  Each term gets at most one parent (the nesting term with the most
    levels) and at most one child (the nested term with the most levels).

    Examples
    --------
    Six lecturers, two per department, as in InstEval's ``(1 | d) + (1 | dept)``:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> from mixedfx.inference import nested_centering
    >>> d = np.repeat(np.arange(6), 2).astype(np.int32)
    >>> dept = np.repeat(np.arange(3), 4).astype(np.int32)
    >>> terms = (RandomTermData("d", d, None, 6), RandomTermData("dept", dept, None, 3))
    >>> centering = nested_centering(MixedModel(Gaussian(), np.ones((12, 1)), np.zeros(12), terms, ("Intercept",)))
    >>> centering.parent, centering.parent_level[0].tolist()  # d is centred on dept
    ((1, None), [0, 0, 1, 1, 2, 2])
    """
    terms = model.random_terms
    intercepts = [k for k, t in enumerate(terms) if t.z is None]
    parent_of: dict[int, tuple[int, np.ndarray]] = {}
    for child in intercepts:
        best = None
        for parent in intercepts:
            if terms[parent].num_levels >= terms[child].num_levels or _predictor(terms[parent]) != _predictor(
                    terms[child]):
                continue
            # nested: every row's parent level is the one of another row of its level
            some_row = _a_row_of_each_level(terms[child].group_index, terms[child].num_levels)
            parent_index = terms[parent].group_index
            if not np.array_equal(parent_index[some_row[terms[child].group_index]], parent_index):
                continue
            if best is None or terms[parent].num_levels > terms[best].num_levels:
                best = parent
        if best is not None:
            level_map = np.zeros(terms[child].num_levels, dtype=np.int32)
            level_map[terms[child].group_index] = terms[best].group_index
            parent_of[child] = (best, level_map)
    parent: list[int | None] = [None] * len(terms)
    parent_level: list[np.ndarray | None] = [None] * len(terms)
    taken: set[int] = set()
    for child in sorted(parent_of, key=lambda c: -terms[c].num_levels):
        p, level_map = parent_of[child]
        if p in taken:
            continue
        taken.add(p)
        parent[child], parent_level[child] = p, level_map
    return Centering(parent=tuple(parent), parent_level=tuple(parent_level))


def _predictor(term) -> str:
    """The linear predictor ``term`` enters (``"cond"``, or one of the family's own)."""
    return getattr(term, "predictor", "cond")


def _a_row_of_each_level(group_index: np.ndarray, num_levels: int) -> np.ndarray:
    """One row of each level (any one: every level has rows at fit time)."""
    row = np.zeros(num_levels, dtype=np.int64)
    row[group_index] = np.arange(len(group_index))
    return row
