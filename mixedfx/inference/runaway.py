"""A fixed effect whose estimate runs away across the Monte Carlo EM iterations.

Where the likelihood has no maximum in some fixed effect (a separation the linear
program did not see, or one that only the random effects complete), Monte Carlo EM
does not stop: the estimate grows a little every iteration.  lme4's ``glmer`` ends such
fits with huge estimates and standard errors.  :func:`runaway_fixed_effects` reads the
parameter trace: over the second half of the iterations, a fixed effect whose magnitude
has a clear upward trend (slope above three of its standard errors, by
:func:`scipy.stats.linregress`), rises in most steps and ends beyond the family's
:attr:`~mixedfx.model.Family.runaway_bound` on the link scale is named.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["runaway_fixed_effects", "runaway_message"]


def runaway_fixed_effects(trace, names, *, bound: float | None, min_t: float = 3.0,
                          min_rising: float = 0.7) -> tuple[str, ...]:
    """The fixed effects whose estimates run away over the last half of ``trace``.

    Parameters
    ----------
    trace : array_like of shape (n_iter, n_fixed)
        The fixed effects of every EM iteration.
    names : sequence of str
        Their names.
    bound : float or None
        Magnitude past which a growing estimate is judged runaway; ``None`` judges none.
    min_t : float, default 3.0
        Least t statistic of the slope of ``|beta|`` over the iterations.
    min_rising : float, default 0.7
        Least share of the steps in which ``|beta|`` grows.

    Returns
    -------
    tuple of str
        The names, in ``names`` order.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference.runaway import runaway_fixed_effects
    >>> steps = np.arange(20.0)
    >>> trace = np.column_stack([0.2 + 0.01 * np.sin(steps), 2.0 + 1.5 * steps])  # x grows without end
    >>> runaway_fixed_effects(trace, ["(Intercept)", "x"], bound=10.0)
    ('x',)
    >>> runaway_fixed_effects(trace, ["(Intercept)", "x"], bound=None)
    ()
    """
    trace = np.asarray(trace, dtype=float)
    if bound is None or trace.ndim != 2 or trace.shape[0] < 6:
        return ()
    tail = np.abs(trace[trace.shape[0] // 2:])
    steps = np.arange(tail.shape[0], dtype=float)
    found = []
    for j, name in enumerate(names):
        values = tail[:, j]
        if not (np.all(np.isfinite(values)) and values[-1] > bound):
            continue
        if np.mean(np.diff(values) > 0) < min_rising:
            continue
        fit = stats.linregress(steps, values)
        if fit.slope > 0 and (fit.stderr == 0 or fit.slope / fit.stderr > min_t):
            found.append(name)
    return tuple(found)


def runaway_message(names) -> str:
    """The warning's text for the fixed effects ``names``.

    Examples
    --------
    >>> from mixedfx.inference.runaway import runaway_message
    >>> runaway_message(["x"]).split(";")[0]
    "the estimate of fixed effect(s) 'x' kept growing over the EM iterations"
    """
    shown = ", ".join(repr(name) for name in names)
    return (f"the estimate of fixed effect(s) {shown} kept growing over the EM iterations; its maximum "
            "likelihood estimate is probably infinite (a separation of the response, perhaps within the "
            "groups) and the value reported is where the iterations stopped. Drop or merge the column(s), "
            "or combine the categories they separate")
