"""Complete and quasi-complete separation: found, named, warned of, recorded and summarized.

The data are built so that the separation (or its absence) is known by construction;
R's glm() warns on the same data ("fitted probabilities numerically 0 or 1 occurred").
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.inference import FixedIterations
from mixedfx.model import Bernoulli, Binomial, Ordinal
from mixedfx.model.separation import find_separation

NAMES = ["(Intercept)", "x", "z"]


def _cuts(family, y, trials=None):
    return family.separation_cuts(np.asarray(y, dtype=float), trials=trials)


def _design(n, seed):
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n), rng.normal(size=n)
    return rng, x, z, np.column_stack([np.ones(n), x, z])


def test_complete_separation_by_one_column():
    rng, x, z, X = _design(400, 0)
    y = (x > 0.2).astype(float)
    assert find_separation(X, *_cuts(Bernoulli(), y), names=NAMES) == mixedfx.model.separation.Separation(
        kind="complete", columns=("x",))


def test_quasi_complete_separation_by_a_factor_level():
    rng = np.random.default_rng(1)
    level = rng.integers(0, 4, 600)
    y = (rng.random(600) < 0.5).astype(float)
    y[level == 2] = 0.0  # every row of level 2 is a 0; the other levels have both classes
    X = np.column_stack([np.ones(600), level == 1, level == 2, level == 3, rng.normal(size=600)]).astype(float)
    found = find_separation(X, *_cuts(Bernoulli(), y), names=["(Intercept)", "f1", "f2", "f3", "x"])
    assert (found.kind, found.columns) == ("quasi-complete", ("f2",))


def test_overlapping_classes_are_not_separated():
    rng, x, z, X = _design(2000, 2)
    y = (rng.random(2000) < 1 / (1 + np.exp(-2 * x))).astype(float)  # a strong but noisy effect
    assert find_separation(X, *_cuts(Bernoulli(), y), names=NAMES) is None


def test_one_row_on_the_wrong_side_undoes_complete_separation():
    rng, x, z, X = _design(400, 3)
    y = (x > 0.0).astype(float)
    y[np.argmax(x)] = 0.0  # the largest x is a 0: no hyperplane orders the classes any more
    assert find_separation(X, *_cuts(Bernoulli(), y), names=NAMES) is None


def test_binomial_rows_with_both_outcomes_tie_the_direction():
    rng, x, z, X = _design(300, 4)
    trials = np.full(300, 5.0)
    successes = np.where(x > 0.5, 5.0, 0.0)
    assert find_separation(X, *_cuts(Binomial(), successes, trials), names=NAMES).columns == ("x",)
    successes[np.argmax(x)] = 3.0  # a row with successes and failures, at the top: no separation
    successes[np.argmin(x)] = 2.0
    assert find_separation(X, *_cuts(Binomial(), successes, trials), names=NAMES) is None


def test_ordinal_categories_ordered_by_one_column():
    rng, x, z, X = _design(600, 5)
    family = Ordinal(n_categories=3, labels=("a", "b", "c"))
    codes = np.digitize(x, [-0.5, 0.5]).astype(float)  # x orders the three categories without error
    assert find_separation(X, *_cuts(family, codes), names=NAMES) == mixedfx.model.separation.Separation(
        kind="complete", columns=("x",))


def test_ordinal_separation_needs_one_slope_for_every_cutpoint():
    # category 2 is exactly the rows with x > 1, but categories 0 and 1 overlap below it: with
    # one slope for all cutpoints (proportional odds) the likelihood has a finite maximum
    rng, x, z, X = _design(600, 5)
    family = Ordinal(n_categories=3, labels=("a", "b", "c"))
    codes = rng.integers(0, 2, 600).astype(float)
    codes[x > 1.0] = 2.0
    assert find_separation(X, *_cuts(family, codes), names=NAMES) is None


def test_families_without_categories_are_not_checked():
    assert mixedfx.model.Gaussian().separation_cuts(np.array([1.0, 2.0])) is None
    assert mixedfx.model.Poisson().separation_cuts(np.array([1.0, 2.0])) is None


@pytest.fixture(scope="module")
def separated_frame():
    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"x": rng.normal(size=300), "g": rng.integers(0, 15, 300).astype(str)})
    frame["y"] = (frame["x"] > 0.0).astype(int)
    return frame


def _fit(frame, formula="y ~ x + (1 | g)"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mixedfx.MixedEffectsClassifier(
            formula, random_state=0, verbose=0, stopping_rule=FixedIterations(n_iter=20, n_average=10)).fit(frame)
    return model, [w for w in caught if issubclass(w.category, mixedfx.DataWarning)]


def test_a_separated_fit_warns_records_and_summarizes(separated_frame, capsys):
    before = separated_frame.copy()
    model, caught = _fit(separated_frame)
    assert len(caught) == 1 and "complete separation" in str(caught[0].message)
    assert "'x'" in str(caught[0].message)
    assert model.fit_summary_.data_warnings == (str(caught[0].message),)
    assert np.isfinite(model.fixed_effects_).all()  # finite numbers out, with the warning saying what they are
    model.summary()
    assert "warning: complete separation" in capsys.readouterr().out
    pd.testing.assert_frame_equal(separated_frame, before)


def test_an_unseparated_fit_says_nothing(separated_frame):
    rng = np.random.default_rng(7)
    frame = separated_frame.assign(y=(rng.random(len(separated_frame)) < 0.5).astype(int))
    model, caught = _fit(frame)
    assert caught == [] and model.fit_summary_.data_warnings == ()
