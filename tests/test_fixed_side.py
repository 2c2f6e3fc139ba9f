"""The fixed side: what formulaic offers works, replays at predict time, and is checked."""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, assert_draws_centre_on_conditional_means, assert_ranef_match_lme4, load_house

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


@pytest.mark.slow
def test_categorical_left_side_of_the_bar_fits():
    """(0 + C(f) | g): one coefficient per level of f, with a 3 x 3 covariance; against lme4's
    (0 + f | g) on the same rows (tests/fixtures/make_house_data.py, sds 0.8/0.6/0.5 simulated)."""
    data = pd.read_csv(FIXTURES / "categorical_bar.csv")
    reference = load_house("categorical_bar")
    model = mixedfx.MixedEffectsRegressor("y ~ x + (0 + C(f) | g)", random_state=0, verbose=0).fit(data)
    cov = model.random_cov_[0]
    assert list(cov.columns) == ["C(f)[hi]", "C(f)[lo]", "C(f)[mid]"]
    assert np.all(np.linalg.eigvalsh(cov.to_numpy()) > 0)
    assert len(model.variance_components_) == 3 + 3 + 1  # sds, correlations, residual
    lme4_sds = [row["sdcor"] for row in reference["varcorr"] if row["var2"] is None]
    np.testing.assert_allclose(model.variance_components_["sdcor"][model.variance_components_["var2"].isna()],
                               lme4_sds, rtol=0.03)
    # conditional modes and sds against lme4's ranef(condVar = TRUE); the draws centre on them
    assert_ranef_match_lme4(model, reference, terms={f"f{level}": f"C(f)[{level}]" for level in ("hi", "lo", "mid")})
    assert_draws_centre_on_conditional_means(model)
    rows = data.head(3)
    expected = (model.fixed_effects_["Intercept"] + model.fixed_effects_["x"] * rows["x"].to_numpy()
                + np.array([model.random_effects_["g"].loc[g, f"C(f)[{f}]"] for g, f in zip(rows["g"], rows["f"])]))
    np.testing.assert_allclose(model.predict(rows), expected)
