"""The fixed side: what formulaic offers works, replays at predict time, and is checked."""

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx

RICH = "y ~ C(f, contr.sum) * x + I(x ** 2) + np.log(w) + center(v) + scale(u) + bs(t, df=4) + (1 | g)"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({
        "f": rng.choice(["lo", "mid", "hi"], n),
        "x": rng.normal(size=n),
        "w": rng.uniform(0.5, 3.0, n),
        "v": rng.normal(5.0, 2.0, n),
        "u": rng.normal(-1.0, 0.5, n),
        "t": rng.uniform(0, 10, n),
        "g": rng.choice([f"g{i}" for i in range(25)], n),
    })
    effects = dict(zip([f"g{i}" for i in range(25)], rng.normal(scale=0.7, size=25)))
    frame["y"] = (1.0 + 0.5 * frame["x"] - 0.3 * frame["x"] ** 2 + np.log(frame["w"]) + 0.2 * frame["v"]
                  + np.sin(frame["t"]) + (frame["f"] == "hi") * 0.8 + frame["g"].map(effects) + rng.normal(size=n))
    return frame


@pytest.fixture(scope="module")
def rich_fit(data):
    return mixedfx.MixedEffectsRegressor(RICH, random_state=0, verbose=0).fit(data)


def test_rich_formula_columns(rich_fit):
    names = list(rich_fit.fixed_effects_.index)
    assert names[0] == "Intercept"
    for piece in ("C(f, contr.sum)[S.", ":x", "I(x ** 2)", "np.log(w)", "center(v)", "scale(u)", "bs(t, df=4)[1]"):
        assert any(piece in name for name in names), piece
    assert len(names) == 1 + 2 + 1 + 2 + 1 + 1 + 1 + 1 + 4


def test_stateful_transforms_replay_at_predict(rich_fit, data):
    rows = data.iloc[10:20]
    np.testing.assert_allclose(rich_fit.predict(rows), rich_fit.predict(data)[10:20], rtol=1e-12)
    replayed = rich_fit.fixed_design_.transform(rows)
    column = list(rich_fit.fixed_effects_.index).index("center(v)")
    np.testing.assert_allclose(replayed[:, column], rows["v"] - data["v"].mean())


def test_fixed_effects_are_the_gls_solution_at_the_fitted_variances(rich_fit, data):
    """At the ML estimate, beta solves the GLS equations for the fitted covariance."""
    X = rich_fit.fixed_design_.transform(data)
    groups = pd.factorize(data["g"])[0]
    Z = np.eye(groups.max() + 1)[groups]
    components = rich_fit.variance_components_.set_index("group")["vcov"]
    V = components["g"] * Z @ Z.T + components["Residual"] * np.eye(len(data))
    Vinv_X = np.linalg.solve(V, X)
    gls = np.linalg.solve(X.T @ Vinv_X, Vinv_X.T @ data["y"].to_numpy())
    se = np.sqrt(np.diag(rich_fit.fixed_effects_cov_))
    assert np.all(np.abs(rich_fit.fixed_effects_.to_numpy() - gls) < 0.1 * se)


@pytest.mark.parametrize("formula", ["y ~ 0 + C(f) + x + (1 | g)", "y ~ -1 + C(f) + x + (1 | g)"])
def test_no_intercept(data, formula):
    model = mixedfx.MixedEffectsRegressor(formula, random_state=0, verbose=0).fit(data)
    assert list(model.fixed_effects_.index) == ["C(f)[hi]", "C(f)[lo]", "C(f)[mid]", "x"]
    assert np.all(np.isfinite(model.predict(data)))


def test_rank_deficient_fit_drops_aliased_columns_and_says_so(data, capsys):
    aliased = data.assign(x2=2.0 * data["x"])
    with pytest.warns(UserWarning, match=r"dropping 1 aliased column\(s\): x2"):
        model = mixedfx.MixedEffectsRegressor("y ~ x + x2 + (1 | g)", random_state=0, verbose=0).fit(aliased)
    assert list(model.fixed_effects_.index) == ["Intercept", "x"]
    assert np.all(np.isfinite(model.fixed_effects_)) and np.all(np.isfinite(model.predict(aliased)))
    model.summary()
    assert "rank deficient; dropped: x2" in capsys.readouterr().out


def test_continuous_grouping_column_warns(data):
    with pytest.warns(UserWarning, match=r"grouping column 'v' holds continuous values"):
        mixedfx.design.GroupingFactor.from_data(data, ("v",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixedfx.design.GroupingFactor.from_data(data.assign(k=np.arange(len(data)) % 7 * 1.0), ("k",))


def test_categorical_left_side_of_the_bar_fits():
    """(0 + C(f) | g): one coefficient per level of f, with a 3 x 3 covariance."""
    from mixedfx.model import MixedModel, gaussian_marginal

    rng = np.random.default_rng(11)
    n, groups = 1200, 40
    sds = np.array([0.8, 0.6, 0.5])
    corr = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 1.0]])
    effects = rng.multivariate_normal(np.zeros(3), corr * np.outer(sds, sds), size=groups)
    g = rng.integers(0, groups, n)
    f = rng.integers(0, 3, n)
    x = rng.normal(size=n)
    data = pd.DataFrame({"y": 1.0 + 0.5 * x + effects[g, f] + rng.normal(scale=0.8, size=n), "x": x,
                         "f": np.array(["hi", "lo", "mid"])[f], "g": [f"g{i}" for i in g]})
    model = mixedfx.MixedEffectsRegressor("y ~ x + (0 + C(f) | g)", random_state=0, verbose=0).fit(data)
    cov = model.random_cov_[0]
    assert list(cov.columns) == ["C(f)[hi]", "C(f)[lo]", "C(f)[mid]"]
    assert np.all(np.linalg.eigvalsh(cov.to_numpy()) > 0)
    assert len(model.variance_components_) == 3 + 3 + 1  # sds, correlations, residual
    # 40 groups: each sd within 3.5 of its approximate standard errors (1 / sqrt(2 * 40) on the log scale)
    assert np.all(np.abs(np.log(np.sqrt(np.diag(cov.to_numpy())) / sds)) < 3.5 / np.sqrt(80))
    # the sampled conditional means agree with the closed-form ones at the estimate
    X = model.fixed_design_.transform(data)
    terms = model.random_design_.materialize(data)
    exact = gaussian_marginal(MixedModel(model.family_, X, data["y"].to_numpy(), terms, tuple(model.fixed_effects_.index)),
                              model._parameters())
    sampled = model.random_effects_["g"].to_numpy()
    draws = model.fit_summary_.n_draws_averaged
    assert np.all(np.abs(sampled - exact.conditional_means[0]) < 6 * exact.conditional_sds[0] / np.sqrt(draws / 10))
    rows = data.head(3)
    expected = (model.fixed_effects_["Intercept"] + model.fixed_effects_["x"] * rows["x"].to_numpy()
                + np.array([model.random_effects_["g"].loc[g, f"C(f)[{f}]"] for g, f in zip(rows["g"], rows["f"])]))
    np.testing.assert_allclose(model.predict(rows), expected)
