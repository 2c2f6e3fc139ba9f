"""Diagnostic plots of a fitted mixed model, with matplotlib.

The plots of TensorFlow Probability's "Linear Mixed Effects Models" tutorial (the
loss curve, trace plots of the E-step draws, held-out residuals, histograms of the
random effects) and lme4's (the caterpillar plot of ``dotplot(ranef(m, condVar =
TRUE))`` and a normal QQ plot of the scaled residuals).

Every function draws into the ``ax`` (or ``axes``) it is given, or into a new
figure when none is, and returns what it drew into: one
:class:`matplotlib.axes.Axes`, or a numpy array of them for multi-panel plots.
matplotlib (a dependency of mixedfx) is imported only when a plot is drawn, so that
``import mixedfx`` stays quick.
"""

from __future__ import annotations

import numpy as np

from mixedfx.exceptions import ParameterError, did_you_mean

__all__ = [
    "plot_objective",
    "plot_trace",
    "plot_residuals",
    "plot_random_effects",
    "plot_caterpillar",
    "plot_qq",
]

#: Above this many levels, a caterpillar plot drops its per-level tick labels.
MAX_LABELLED_LEVELS = 50


def plot_objective(model, *, ax=None):
    """Plot the loss of every EM iteration, with the averaging window shaded.

    The loss is the negated mean complete-data log joint density
    ``-log p(y, b | theta)`` over each E-step's draws (``-fit_summary_.objective``),
    the curve TFP's mixed-effects tutorial plots.  It levels off once EM has
    converged; the estimates average the iterations in the shaded window.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import mixedfx
    >>> from mixedfx.plotting import plot_objective
    >>> ax = plot_objective(model)
    >>> len(ax.lines[0].get_xdata()) == model.fit_summary_.n_iter
    True
    >>> plt.close(ax.figure)
    """
    _check_fitted(model)
    ax = _new_axes(ax)
    summary = model.fit_summary_
    loss = -np.asarray(summary.objective, dtype=float)
    iterations = np.arange(1, len(loss) + 1)
    ax.plot(iterations, loss, color="C0", marker="." if len(loss) <= 100 else None, label="loss")
    if summary.window_start is not None and summary.window_start < len(loss):
        ax.axvspan(summary.window_start + 0.5, len(loss) + 0.5, color="C1", alpha=0.2,
                   label=f"averaged ({len(loss) - summary.window_start} iterations)")
    _integer_ticks(ax.xaxis)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("loss: -mean log p(y, b | θ)")
    ax.set_title("Monte Carlo EM loss")
    ax.legend(loc="upper right")
    return ax


def plot_trace(model, group, *, levels=None, coef=None, ax=None):
    """Trace plot of the kept E-step draws of some levels' random effects.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    group : str
        A grouping factor (a key of ``model.random_effects_``).
    levels : sequence, optional
        Level labels to plot; default the first five levels.
    coef : str, optional
        The coefficient (a column of ``model.random_effects_[group]``); default the
        first.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        One line per level and chain (``ax.lines``), coloured by level, with a
        legend of the levels.

    Raises
    ------
    mixedfx.ParameterError
        For an unknown group, level or coefficient.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import mixedfx
    >>> from mixedfx.plotting import plot_trace
    >>> ax = plot_trace(model, "g", levels=["g00", "g01", "g02"])
    >>> len(ax.lines) == 3 * model.random_effect_draws_["g"].shape[0]
    True
    >>> plt.close(ax.figure)
    """
    _check_fitted(model)
    effects = _group_effects(model, group)
    coef = _check_coef(effects.columns, coef, group=group)
    labels = list(effects.index[:5]) if levels is None else _check_levels(effects.index, levels, group=group)
    draws = np.asarray(model.random_effect_draws_[group])
    level_positions = effects.index.get_indexer(labels)
    coef_position = list(effects.columns).index(coef)
    ax = _new_axes(ax)
    styles = ("-", "--", ":", "-.")
    steps = np.arange(1, draws.shape[1] + 1)
    for k, (label, position) in enumerate(zip(labels, level_positions)):
        for chain in range(draws.shape[0]):
            ax.plot(steps, draws[chain, :, position, coef_position], color=f"C{k % 10}",
                    linestyle=styles[chain % len(styles)], linewidth=1.0, alpha=0.85,
                    label=str(label) if chain == 0 else None)
    _integer_ticks(ax.xaxis)
    ax.set_xlabel(f"kept draw (E-steps of the averaging window; {draws.shape[0]} chains: solid, dashed, ...)")
    ax.set_ylabel(f"{coef} random effect")
    ax.set_title(f"Trace of the E-step draws: {group}, {coef}")
    ax.legend(title=group, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return ax


def plot_residuals(model, X=None, y=None, *, bins=50, ax=None):
    """Histogram of the response residuals on (held-out) rows.

    Parameters
    ----------
    model : MixedEffectsRegressor
        A fitted estimator.
    X : pandas.DataFrame, optional
        Rows to score, typically ones not used in ``fit``; default the training rows.
    y : array-like of shape (n_rows,), optional
        Their responses; default the formula's left-hand side evaluated on ``X``.
    bins : int, default 50
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        One bar per bin (``ax.patches``); the bar heights count rows.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import mixedfx
    >>> from mixedfx.plotting import plot_residuals
    >>> ax = plot_residuals(model, data.tail(100), bins=20)
    >>> int(sum(bar.get_height() for bar in ax.patches))
    100
    >>> plt.close(ax.figure)
    """
    _check_fitted(model)
    bins = _check_bins(bins)
    residuals = np.asarray(model.residuals(X, y), dtype=float)
    residuals = residuals[np.isfinite(residuals)]
    ax = _new_axes(ax)
    ax.hist(residuals, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
    ax.axvline(0.0, color="black", linewidth=0.8)
    _integer_ticks(ax.yaxis)
    ax.set_xlabel("residual: response - prediction (with random effects)")
    ax.set_ylabel("rows")
    ax.set_title(f"Residuals: {len(residuals)} rows, sd {np.std(residuals):.3g}")
    return ax


def plot_random_effects(model, *, groups=None, all_coefs=False, bins=40, axes=None):
    """Histograms of the conditional means of the random effects, one panel per factor.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    groups : sequence of str, optional
        Grouping factors to plot; default all of them, in the model's order.
    all_coefs : bool, default False
        One panel per (factor, coefficient) instead of one per factor (its first
        coefficient).
    bins : int, default 40
    axes : sequence of matplotlib.axes.Axes, optional
        One per panel; a new figure (up to three panels a row) when omitted.

    Returns
    -------
    numpy.ndarray of matplotlib.axes.Axes
        One per panel, in order.

    Raises
    ------
    mixedfx.ParameterError
        For an unknown group, or too few ``axes``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import mixedfx
    >>> from mixedfx.plotting import plot_random_effects
    >>> axes = plot_random_effects(model, bins=10)
    >>> axes.shape, len(axes[0].patches)
    ((1,), 10)
    >>> plt.close(axes[0].figure)
    """
    _check_fitted(model)
    bins = _check_bins(bins)
    names = list(model.random_effects_) if groups is None else [groups] if isinstance(groups, str) else list(groups)
    panels = []
    for group in names:
        effects = _group_effects(model, group)
        for coef in (effects.columns if all_coefs else effects.columns[:1]):
            panels.append((group, coef, effects[coef].to_numpy(dtype=float)))
    if axes is None:
        plt = _pyplot()
        n_rows, n_cols = _grid_shape(len(panels))
        figure, grid = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.4 * n_rows), squeeze=False,
                                    layout="constrained")
        grid = grid.ravel()
        for extra in grid[len(panels):]:
            extra.set_visible(False)
        axes = grid[:len(panels)]
    else:
        axes = np.asarray(axes, dtype=object).ravel()
        if len(axes) < len(panels):
            raise ParameterError(f"plot_random_effects draws {len(panels)} panels but got {len(axes)} axes")
        axes = axes[:len(panels)]
    for ax, (group, coef, values) in zip(axes, panels):
        ax.hist(values, bins=bins, color="C0", edgecolor="white", linewidth=0.5)
        ax.axvline(0.0, color="black", linewidth=0.8)
        _integer_ticks(ax.yaxis)
        ax.set_title(f"{group}: {coef} ({len(values)} levels, sd {np.std(values):.3g})", fontsize="medium")
        ax.set_xlabel("conditional mean")
        ax.set_ylabel("levels")
    return axes


def plot_caterpillar(model, group, *, coef=None, level=0.95, ax=None):
    """Caterpillar plot of one factor's random effects (lme4's ``dotplot(ranef(m, condVar = TRUE))``).

    The levels, sorted by their conditional mean, each get a point at the mean and a
    horizontal bar of plus or minus ``z`` conditional standard deviations, ``z``
    the normal quantile of the two-sided ``level``.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    group : str
        A grouping factor (a key of ``model.random_effects_``).
    coef : str, optional
        The coefficient (a ``term`` of ``model.ranef(condvar=True)``); default the
        factor's first.
    level : float, default 0.95
        Coverage of the bars.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure, taller for more levels, when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        One errorbar container (``ax.containers[0]``) with a point per level; the
        levels are the y tick labels up to 50 levels.

    Raises
    ------
    mixedfx.ParameterError
        For an unknown group or coefficient, or a ``level`` outside (0, 1).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import mixedfx
    >>> from mixedfx.plotting import plot_caterpillar
    >>> ax = plot_caterpillar(model, "g")
    >>> means = ax.containers[0].lines[0].get_xdata()
    >>> len(means), bool((means[1:] >= means[:-1]).all())
    (30, True)
    >>> plt.close(ax.figure)
    """
    from scipy import stats

    _check_fitted(model)
    _group_effects(model, group)
    if not (isinstance(level, (int, float)) and 0.0 < level < 1.0):
        raise ParameterError(f"level must be a coverage between 0 and 1 (exclusive), got {level!r}")
    table = model.ranef(condvar=True)
    rows = table[table["group"] == group]
    coef = _check_coef(list(dict.fromkeys(rows["term"])), coef, group=group)
    rows = rows[rows["term"] == coef].sort_values("condval", kind="stable")
    means = rows["condval"].to_numpy(dtype=float)
    half_widths = stats.norm.ppf(0.5 + level / 2.0) * rows["condsd"].to_numpy(dtype=float)
    n_levels = len(rows)
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6.0, _caterpillar_height(n_levels)), layout="constrained")
    positions = np.arange(n_levels)
    small = n_levels > MAX_LABELLED_LEVELS
    # thinner marks as the levels crowd in, so that thousands of them stay readable
    crowding = float(np.clip(np.log10(max(n_levels, 1) / MAX_LABELLED_LEVELS), 0.0, 2.0)) / 2.0  # 0 .. 1
    from matplotlib.colors import to_rgba

    ax.errorbar(means, positions, xerr=half_widths, fmt="o", color="C0", ecolor=to_rgba("C0", 1.0 - 0.75 * crowding),
                markersize=4.0 - 3.0 * crowding, elinewidth=1.0 - 0.8 * crowding)
    ax.axvline(0.0, color="black", linewidth=0.8)
    if small:
        ax.set_yticks([])
        ax.set_ylabel(f"{n_levels} levels of {group}, sorted")
    else:
        ax.set_yticks(positions, [str(label) for label in rows["level"]], fontsize="small")
        ax.set_ylabel(group)
    ax.set_ylim(-1, n_levels)
    ax.set_xlabel(f"{coef}: conditional mean ± {level:.0%} interval")
    ax.set_title(f"Random effects of {group}: {coef}")
    return ax


def plot_qq(model, X=None, y=None, *, ax=None):
    """Normal QQ plot of the scaled residuals, with the standard normal's line.

    Parameters
    ----------
    model : MixedEffectsRegressor
        A fitted estimator.
    X : pandas.DataFrame, optional
        Rows to score; default the training rows (lme4's ``qqnorm(resid(m, scaled = TRUE))``).
    y : array-like of shape (n_rows,), optional
        Their responses; default the formula's left-hand side evaluated on ``X``.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    matplotlib.axes.Axes
        One point per row (``ax.collections[0]``) at (normal quantile, sorted scaled
        residual), and the line ``y = x``.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> import mixedfx
    >>> from mixedfx.plotting import plot_qq
    >>> ax = plot_qq(model)  # the training rows
    >>> len(ax.collections[0].get_offsets())
    600
    >>> plt.close(ax.figure)
    """
    from scipy import stats

    _check_fitted(model)
    scaled = np.asarray(model.residuals(X, y, scaled=True), dtype=float)
    scaled = scaled[np.isfinite(scaled)]
    (theoretical, ordered), _ = stats.probplot(scaled, dist="norm")
    ax = _new_axes(ax)
    ax.scatter(theoretical, ordered, s=6 if len(ordered) <= 2000 else 2, color="C0", alpha=0.6,
               linewidths=0, label="rows")
    ends = np.array([min(theoretical.min(), ordered.min()), max(theoretical.max(), ordered.max())])
    ax.plot(ends, ends, color="C3", linewidth=1.0, label="standard normal (y = x)")
    ax.set_xlabel("standard normal quantile")
    ax.set_ylabel("scaled residual (sorted)")
    ax.set_title(f"Normal QQ plot of the scaled residuals ({len(ordered)} rows)")
    ax.legend(loc="upper left")
    return ax


# -- helpers -----------------------------------------------------------------------------
def _pyplot():
    """``matplotlib.pyplot``, imported when the first plot is drawn."""
    import matplotlib.pyplot as plt

    return plt


def _figure(**kwargs):
    """A new :class:`matplotlib.figure.Figure` with constrained layout, outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _new_axes(ax):
    """``ax`` itself, or the Axes of a new figure."""
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots(layout="constrained")
    return ax


def _grid_shape(n_panels: int) -> tuple[int, int]:
    """Rows and columns of a grid of panels, at most three a row."""
    n_cols = max(1, min(3, n_panels))
    return -(-n_panels // n_cols), n_cols


def _caterpillar_height(n_levels: int) -> float:
    """Figure height in inches for a caterpillar plot: a line per labelled level, at most 12."""
    return min(12.0, max(2.5, 0.22 * n_levels + 1.2)) if n_levels <= MAX_LABELLED_LEVELS else 8.0


def _integer_ticks(axis) -> None:
    """Ticks at whole numbers only (iterations, counts)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _check_fitted(model) -> None:
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "fixed_effects_")


def _group_effects(model, group):
    """``model.random_effects_[group]``, or a ParameterError naming the valid groups."""
    effects = model.random_effects_
    if not isinstance(group, str) or group not in effects:
        valid = list(effects)
        raise ParameterError(
            f"unknown grouping factor {group!r}: the model's grouping factors are "
            + ", ".join(repr(name) for name in valid) + "."
            + (did_you_mean(group, valid) if isinstance(group, str) else "")
        )
    return effects[group]


def _check_coef(valid, coef, *, group: str) -> str:
    valid = [str(name) for name in valid]
    if coef is None:
        return valid[0]
    if coef not in valid:
        raise ParameterError(
            f"unknown coefficient {coef!r} for grouping factor {group!r}: its coefficients are "
            + ", ".join(repr(name) for name in valid) + "." + did_you_mean(coef, valid)
        )
    return coef


def _check_levels(index, levels, *, group: str) -> list:
    if isinstance(levels, str):
        levels = [levels]
    levels = list(levels)
    missing = [level for level in levels if level not in index]
    if missing:
        raise ParameterError(
            f"grouping factor {group!r} has no level(s) " + ", ".join(repr(level) for level in missing)
            + f"; its levels are {', '.join(repr(label) for label in index[:5])}"
            + (f", ... ({len(index)} in all)" if len(index) > 5 else "")
        )
    if not levels:
        raise ParameterError("levels must name at least one level")
    return levels


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ParameterError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)
