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
