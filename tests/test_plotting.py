"""mixedfx.plotting: each plot draws what it should, into the Axes it is given."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D
from scipy import stats
from sklearn.exceptions import NotFittedError

import mixedfx
from mixedfx import ConvergenceWarning, ParameterError
from mixedfx.plotting import (
    plot_caterpillar,
    plot_objective,
    plot_qq,
    plot_random_effects,
    plot_residuals,
    plot_trace,
)

FORMULA = "y ~ x + (1 + x | g) + (1 | h)"


def simulate_slopes(n_rows: int, *, n_g: int, n_h: int, random_state: int):
    """Crossed factors g (random intercept and slope on x) and h (random intercept)."""
    data = mixedfx.datasets.make_mixed_data(
        n_rows, groups={"g": n_g, "h": n_h}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        random_sd={"g": 0.8, "h": 0.5}, random_state=random_state)
    slopes = np.random.default_rng(random_state + 1).normal(0.0, 0.4, n_g)
    data["y"] = data["y"] + slopes[data["g"].cat.codes.to_numpy()] * data["x"]
    return data


@pytest.fixture(scope="session")
def slope_data():
    """1,200 training rows and 300 held-out rows; h has 60 levels (more than a caterpillar labels)."""
    data = simulate_slopes(1500, n_g=30, n_h=60, random_state=0)
    return data.iloc[:1200], data.iloc[1200:]


@pytest.fixture(scope="session")
def slope_fit(slope_data):
    train, _ = slope_data
    with warnings.catch_warnings():  # the plots do not need a converged fit
        warnings.simplefilter("ignore", ConvergenceWarning)
        return mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0).fit(train)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def span_extent(patch) -> tuple[float, float]:
    """The data x-range of an axvspan (a Rectangle or, in older matplotlib, a Polygon)."""
    xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
    return float(xs.min()), float(xs.max())


def test_objective_plots_the_loss_of_every_iteration_and_shades_the_window(slope_fit):
    summary = slope_fit.fit_summary_
    ax = plot_objective(slope_fit)
    (line,) = ax.lines
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, summary.n_iter + 1))
    np.testing.assert_allclose(line.get_ydata(), -summary.objective)
    (span,) = ax.patches
    assert span_extent(span) == (summary.window_start + 0.5, summary.n_iter + 0.5)
    assert ax.get_xlabel() == "EM iteration" and "loss" in ax.get_ylabel()


def test_trace_draws_one_line_per_level_and_chain(slope_fit):
    draws = slope_fit.random_effect_draws_["g"]
    assert draws.shape[0] == 2  # default n_chains
    levels = ["g03", "g07", "g11"]
    ax = plot_trace(slope_fit, "g", levels=levels, coef="x")
    lines = [artist for artist in ax.get_children() if isinstance(artist, Line2D)]
    assert len(ax.lines) == len(lines) == 3 * 2
    # level-major, chain-minor: line 3 is level g07, chain 1; x is the second column
    row = slope_fit.random_effects_["g"].index.get_loc("g07")
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), draws[1, :, row, 1])
    assert len(ax.lines[0].get_xdata()) == draws.shape[1]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == levels
    assert "x" in ax.get_title() and "g" in ax.get_title()


def test_trace_defaults_to_the_first_five_levels_and_the_first_coefficient(slope_fit):
    draws = slope_fit.random_effect_draws_["h"]
    ax = plot_trace(slope_fit, "h")
    assert len(ax.lines) == 5 * draws.shape[0]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == list(slope_fit.random_effects_["h"].index[:5])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), draws[0, :, 0, 0])


def test_residual_histogram_counts_every_held_out_row(slope_fit, slope_data):
    _, test = slope_data
    ax = plot_residuals(slope_fit, test, bins=30)
    assert len(ax.patches) == 30
    assert sum(bar.get_height() for bar in ax.patches) == len(test)
    residuals = slope_fit.residuals(test)
    assert ax.patches[0].get_x() == pytest.approx(residuals.min())
    assert ax.patches[-1].get_x() + ax.patches[-1].get_width() == pytest.approx(residuals.max())


def test_random_effects_histograms_one_panel_per_group(slope_fit):
    axes = plot_random_effects(slope_fit, bins=15)
    assert isinstance(axes, np.ndarray) and axes.shape == (2,)
    for ax, group, n_levels in zip(axes, ("g", "h"), (30, 60)):
        assert len(ax.patches) == 15
        assert sum(bar.get_height() for bar in ax.patches) == n_levels
        assert ax.get_title().startswith(f"{group}: (Intercept)")
    every = plot_random_effects(slope_fit, all_coefs=True, bins=15)
    assert [ax.get_title().rsplit(" (", 1)[0] for ax in every] == ["g: (Intercept)", "g: x", "h: (Intercept)"]
    assert len(plot_random_effects(slope_fit, groups=["h"])) == 1


def test_caterpillar_sorts_the_levels_with_their_intervals(slope_fit):
    ranef = slope_fit.ranef(condvar=True)
    rows = ranef[(ranef["group"] == "g") & (ranef["term"] == "x")].sort_values("condval")
    ax = plot_caterpillar(slope_fit, "g", coef="x", level=0.9)
    (container,) = ax.containers
    assert isinstance(container, ErrorbarContainer)
    means = container.lines[0].get_xdata()
    assert len(means) == 30 and np.all(np.diff(means) >= 0)
    np.testing.assert_allclose(means, rows["condval"])
    widths = [segment[1][0] - segment[0][0] for segment in container.lines[2][0].get_segments()]
    np.testing.assert_allclose(widths, 2 * stats.norm.ppf(0.95) * rows["condsd"].to_numpy())
    assert [label.get_text() for label in ax.get_yticklabels()] == [str(level) for level in rows["level"]]


def test_caterpillar_of_many_levels_drops_the_tick_labels(slope_fit):
    ax = plot_caterpillar(slope_fit, "h")
    assert len(ax.containers[0].lines[0].get_xdata()) == 60
    assert len(ax.get_yticks()) == 0 and "60 levels" in ax.get_ylabel()


def test_qq_plots_one_point_per_row_against_normal_quantiles(slope_fit, slope_data):
    train, _ = slope_data
    ax = plot_qq(slope_fit, train)
    points = ax.collections[0].get_offsets()
    assert len(points) == len(train)
    np.testing.assert_allclose(points[:, 1], np.sort(slope_fit.residuals(train, scaled=True)))
    assert np.all(np.diff(points[:, 0]) > 0) and points[0, 0] < -3 < 3 < points[-1, 0]
    (reference,) = ax.lines
    x, y = reference.get_data()
    np.testing.assert_allclose(x, y)  # the line y = x
    by_default = plot_qq(slope_fit).collections[0].get_offsets()  # the training rows
    np.testing.assert_allclose(by_default, points)


def test_plots_draw_into_the_axes_they_are_given(slope_fit, slope_data):
    train, test = slope_data
    figure, grid = plt.subplots(2, 4)
    grid = grid.ravel()
    assert plot_objective(slope_fit, ax=grid[0]) is grid[0]
    assert plot_trace(slope_fit, "g", ax=grid[1]) is grid[1]
    assert plot_residuals(slope_fit, test, ax=grid[2]) is grid[2]
    assert plot_caterpillar(slope_fit, "g", ax=grid[3]) is grid[3]
    assert plot_qq(slope_fit, test, ax=grid[4]) is grid[4]
    returned = plot_random_effects(slope_fit, axes=grid[5:7])
    assert list(returned) == list(grid[5:7])
    assert plt.get_fignums() == [figure.number]  # no other figure was opened
    assert all(len(ax.get_children()) > 10 for ax in grid[:7]) and not grid[7].has_data()


def test_too_few_axes_for_the_panels(slope_fit):
    _, grid = plt.subplots(1, 2)
    with pytest.raises(ParameterError, match="draws 3 panels but got 2 axes"):
        plot_random_effects(slope_fit, all_coefs=True, axes=grid)


@pytest.mark.parametrize(
    "draw",
    [
        lambda model: plot_trace(model, "gg"),
        lambda model: plot_caterpillar(model, "gg"),
        lambda model: plot_random_effects(model, groups=["h", "gg"]),
    ],
    ids=["trace", "caterpillar", "random_effects"],
)
def test_unknown_group_names_the_valid_ones(slope_fit, draw):
    with pytest.raises(ParameterError, match=r"unknown grouping factor 'gg': the model's grouping factors are 'g', "
                                             r"'h'\. Did you mean 'g'\?"):
        draw(slope_fit)


def test_bad_coefficient_level_and_coverage(slope_fit):
    with pytest.raises(ParameterError, match=r"unknown coefficient 'z' for grouping factor 'g': its coefficients "
                                             r"are '\(Intercept\)', 'x'"):
        plot_trace(slope_fit, "g", coef="z")
    with pytest.raises(ParameterError, match=r"unknown coefficient 'x' for grouping factor 'h'"):
        plot_caterpillar(slope_fit, "h", coef="x")
    with pytest.raises(ParameterError, match=r"grouping factor 'g' has no level\(s\) 'g99'"):
        plot_trace(slope_fit, "g", levels=["g01", "g99"])
    with pytest.raises(ParameterError, match="level must be a coverage between 0 and 1"):
        plot_caterpillar(slope_fit, "g", level=95)
    with pytest.raises(ParameterError, match="bins must be a positive integer"):
        plot_random_effects(slope_fit, bins=0)


def test_unfitted_model_is_refused():
    with pytest.raises(NotFittedError):
        plot_objective(mixedfx.MixedEffectsRegressor(FORMULA))

