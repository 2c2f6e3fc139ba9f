"""Shared fixtures: lme4 reference fits and fitted models, built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedfx

FIXTURES = Path(__file__).parent / "fixtures"
collect_ignore = ["fixtures"]


def load_lme4(name: str) -> dict:
    """An lme4 reference fit written by tests/fixtures/make_lme4_fixtures.R."""
    with open(FIXTURES / f"lme4_{name}.json") as handle:
        return json.load(handle)


def lme4_fixed_effects(fixture: dict) -> pd.Series:
    """lme4's fixed effects under formulaic's names ("(Intercept)" -> "Intercept")."""
    return pd.Series({k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects"].items()})


def lme4_fixed_effects_se(fixture: dict) -> pd.Series:
    return pd.Series({k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects_se"].items()})


def lme4_sds(fixture: dict) -> pd.Series:
    """Standard deviations by group ("Residual" included)."""
    return pd.Series({row["grp"]: row["sdcor"] for row in fixture["varcorr"]})


def fitted_sds(model) -> pd.Series:
    return model.variance_components_.set_index("group")["sdcor"]


@pytest.fixture(scope="session")
def crossed_small() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "crossed_small.csv")


@pytest.fixture(scope="session")
def crossed_small_fit(crossed_small):
    return mixedfx.MixedEffectsRegressor("y ~ x + (1 | g1) + (1 | g2)", random_state=0, verbose=0).fit(crossed_small)


@pytest.fixture(scope="session")
def insteval() -> pd.DataFrame:
    return mixedfx.datasets.load_insteval()


@pytest.fixture(scope="session")
def insteval_fit(insteval):
    """InstEval, full data, ML, default settings (the acceptance fit)."""
    return mixedfx.MixedEffectsRegressor("y ~ service + (1 | s) + (1 | d) + (1 | dept)", random_state=0).fit(insteval)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: The small Gaussian model the reliability tests share: 120 rows, 12 levels of g, and
#: a fixed design of 3 columns.  Every fit of these shapes reuses one compiled program.
SMALL_FORMULA = "y ~ x + f + (1 | g)"


def small_settings(**overrides) -> dict:
    """Estimator settings of the shared small fits: a fixed schedule of 30 iterations."""
    settings = {"random_state": 0, "verbose": 0,
                "stopping_rule": mixedfx.inference.FixedIterations(n_iter=30, n_average=15)}
    settings.update(overrides)
    return settings


def make_small_frame(seed: int = 0) -> pd.DataFrame:
    """120 rows: y = 1 + 0.5 x + 0.3 [f = b] + b_g + e (sd(g) 0.7, sd(e) 1), and a count."""
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{k:02d}" for k in range(12)], 10)
    x = rng.normal(size=120)
    f = np.where(rng.random(120) < 0.5, "a", "b")
    effects = np.repeat(rng.normal(0.0, 0.7, size=12), 10)
    y = 1.0 + 0.5 * x + 0.3 * (f == "b") + effects + rng.normal(size=120)
    count = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * effects))
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g, "count": count})


@pytest.fixture(scope="session")
def small_frame() -> pd.DataFrame:
    return make_small_frame()


@pytest.fixture(scope="session")
def small_fit(small_frame):
    return mixedfx.MixedEffectsRegressor(SMALL_FORMULA, **small_settings()).fit(small_frame)


# -- emmeans / performance references (tests/fixtures/make_emmeans_fixtures.R) ----------------
@pytest.fixture(scope="session")
def emmeans_reference() -> dict:
    with open(FIXTURES / "emmeans_fixtures.json") as handle:
        return json.load(handle)


#: The fits the emmeans / R² tests compare with R: name -> (data file, formula, family).
EMMEANS_FITS = {
    "cake": ("emmeans_cake.csv", "angle ~ recipe + temperature + (1 | rr)", "gaussian"),
    "cake_interaction": ("emmeans_cake.csv", "angle ~ recipe * temp + (1 | rr)", "gaussian"),
    "sleepstudy": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)", "gaussian"),
    "crossed": ("emmeans_crossed.csv", "y ~ trt + x + (1 | g1) + (1 | g2)", "gaussian"),
    "cbpp01": ("emmeans_cbpp01.csv", "y ~ period + (1 | herd)", "bernoulli"),
    "poisson": ("poisson_crossed.csv", "y ~ x + (1 | g1) + (1 | g2)", "poisson"),
    "wine": ("emmeans_wine.csv", "rating ~ temp + contact + (1 | judge)", "ordinal"),
}


@pytest.fixture(scope="session")
def emmeans_fits():
    """Fitted estimators of EMMEANS_FITS, fitted on first use (ML, default settings)."""
    cache = {}

    def get(name):
        if name not in cache:
            path, formula, family = EMMEANS_FITS[name]
            cache[name] = mixedfx.glmer(formula, pd.read_csv(FIXTURES / path), family=family,
                                        random_state=0, verbose=0)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def sleepstudy() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "sleepstudy.csv")


@pytest.fixture(scope="session")
def sleepstudy_reml_fit(sleepstudy):
    """sleepstudy, ``Reaction ~ Days + (Days | Subject)``, REML, default settings."""
    return mixedfx.MixedEffectsRegressor("Reaction ~ Days + (Days | Subject)", method="reml", random_state=0,
                                         verbose=0).fit(sleepstudy)


@pytest.fixture(scope="session")
def cake() -> pd.DataFrame:
    """lme4's cake, unbalanced (written by tests/fixtures/make_lmertest_fixtures.R)."""
    return pd.read_csv(FIXTURES / "cake.csv")


@pytest.fixture(scope="session")
def cake_heat_reml_fit(cake):
    """cake, ``angle ~ recipe * heat + (1 | batch)``, REML, default settings."""
    return mixedfx.MixedEffectsRegressor("angle ~ recipe * heat + (1 | batch)", method="reml", random_state=0,
                                         verbose=0).fit(cake)
