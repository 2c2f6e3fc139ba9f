"""A response with too little variation within the groups of a random term.

When the response is (nearly) constant within every level of a grouping factor, all its
variation lies between the levels: a Gaussian fit's residual variance collapses to zero
(its likelihood grows without bound as sigma shrinks), and a binary response whose every
group is all 0 or all 1 sends the random-effect variance off to infinity.  lme4 fails on
such data with a singular or non-converged fit; mixedfx warns, naming the response and the
grouping factor.  The family decides what varies (:meth:`~mixedfx.model.Family.variation_values`:
the response, or a binomial's proportion of successes).
"""

from __future__ import annotations

import numpy as np

__all__ = ["within_group_share", "little_variation_of_model"]

#: Below this share of the response's variation within groups, a term is flagged.
MIN_WITHIN_SHARE = 1e-8


def within_group_share(values, group_index) -> float | None:
    """The share of the variation of ``values`` that lies within groups.

    Only groups of two or more rows count (a singleton level has no within-group
    variation to judge); ``None`` when no group has two rows, or ``values`` are constant.

    Parameters
    ----------
    values : array_like of shape (n_rows,)
    group_index : array_like of int, shape (n_rows,)

    Returns
    -------
    float or None
        Within-group sum of squares over the total sum of squares, in ``[0, 1]``.

    Examples
    --------
    >>> from mixedfx.model.variation import within_group_share
    >>> within_group_share([1.0, 1.0, 5.0, 5.0], [0, 0, 1, 1])
    0.0
    >>> round(within_group_share([1.0, 2.0, 5.0, 6.0], [0, 0, 1, 1]), 3)
    0.059
    >>> within_group_share([1.0, 2.0, 3.0], [0, 1, 2]) is None  # no group has two rows
    True
    """
    values = np.asarray(values, dtype=float)
    group_index = np.asarray(group_index)
    counts = np.bincount(group_index)
    shared = counts[group_index] >= 2
    if not shared.any():
        return None
    values, groups = values[shared], group_index[shared]
    total = np.sum((values - values.mean()) ** 2)
    if not total > 0.0:
        return None
    means = np.bincount(groups, weights=values) / np.maximum(np.bincount(groups), 1)
    return float(np.sum((values - means[groups]) ** 2) / total)


def little_variation_of_model(model) -> tuple[str, ...]:
    """The grouping factors of ``model`` within whose levels the response (as its family
    sees it) hardly varies, each a warning's text naming the factor.

    Parameters
    ----------
    model : MixedModel

    Returns
    -------
    tuple of str
        One message per grouping factor flagged; empty when none is.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> from mixedfx.model.variation import little_variation_of_model
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1, 2, 2], dtype=np.int32), None, 3)
    >>> model = MixedModel(Gaussian(), np.ones((6, 1)), np.array([1.0, 1, 4, 4, 2, 2]), (term,), ("Intercept",))
    >>> print(little_variation_of_model(model)[0].split(";")[0])
    the response does not vary within the levels of grouping factor 'g' (0 of its variation lies within them)
    """
    if model.response is None:
        return ()
    values = model.family.variation_values(model.response, trials=model.trials)
    texts = []
    for name in dict.fromkeys(term.name for term in model.random_terms):
        term = next(t for t in model.random_terms if t.name == name)
        share = within_group_share(values, term.group_index)
        if share is not None and share < MIN_WITHIN_SHARE:
            texts.append(
                f"the response does not vary within the levels of grouping factor {name!r} ({share:.2g} of its "
                "variation lies within them); the residual variation, or the random effects' variance, is then "
                "not estimable and the estimates are unreliable. Check that the response is the one meant, "
                f"or model the {name!r} level means without a random effect")
    return tuple(texts)
