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
