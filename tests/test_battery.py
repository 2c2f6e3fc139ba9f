"""Hard-but-legal data (issue #20): each seeded data set ends in finite estimates with the
warning that names the culprit, or in a named mixedfx error; never a NaN, an inf or a
TensorFlow traceback.

Every data set is generated here, with its own seed, small enough for a short Monte Carlo EM
run (``FixedIterations(n_iter=20, n_average=10)``).  ``CASES`` states each one's expected
outcome: ``("warns", WarningClass, fragment)``, ``("raises", ErrorClass, fragment)`` or
``("quiet", None, None)`` (no DataWarning at all).  The fragment names the culprit: the
column, the term or the argument.
"""

import re
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx import DataError, DataWarning
from mixedfx.inference import FixedIterations

SHORT = FixedIterations(n_iter=20, n_average=10)


def _regressor(formula, **kw):
    kw.setdefault("random_state", 0)
    return mixedfx.MixedEffectsRegressor(formula, verbose=0, stopping_rule=SHORT, **kw)


def _classifier(formula, **kw):
    return mixedfx.MixedEffectsClassifier(formula, random_state=0, verbose=0, stopping_rule=SHORT, **kw)


def _frame(seed, n=240, groups=12, sd=0.8):
    """x, z standard normal; g with ``groups`` levels (labels 'g0'..), its random intercept ``u``."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    u = rng.normal(scale=sd, size=groups)[g]
    frame = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n), "g": [f"g{k}" for k in g]})
    return rng, frame, u


def _gaussian(seed, **kw):
    rng, frame, u = _frame(seed, **kw)
    return rng, frame.assign(y=1.0 + 0.5 * frame["x"] + u + rng.normal(size=len(frame)))


def _bernoulli(seed, **kw):
    rng, frame, u = _frame(seed, **kw)
    eta = -0.3 + 0.8 * frame["x"] + u
    return rng, frame.assign(y=(rng.random(len(frame)) < 1 / (1 + np.exp(-eta))).astype(int))


def _poisson(seed, scale=1.0, **kw):
    rng, frame, u = _frame(seed, **kw)
    return rng, frame.assign(y=rng.poisson(scale * np.exp(0.5 + 0.3 * frame["x"] + 0.5 * u)))


# ---------------------------------------------------------------- the data sets
def separated_complete():
    rng, frame, _ = _frame(1)
    return frame.assign(y=(frame["x"] > 0.2).astype(int)), _classifier("y ~ x + (1 | g)")


def separated_quasi_by_level():
    rng, frame = _bernoulli(2)
    frame["f"] = np.array(["a", "b", "c"])[rng.integers(0, 3, len(frame))]
    frame.loc[frame["f"] == "c", "y"] = 0
    return frame, _classifier("y ~ x + f + (1 | g)")


def separated_binomial():
    rng, frame, _ = _frame(3)
    frame["trials"] = 5
    frame["s"] = np.where(frame["x"] > 0.3, 5, 0)
    return frame, _regressor("cbind(s, trials - s) ~ x + (1 | g)", family="binomial")


def separated_ordinal():
    rng, frame, _ = _frame(4, n=300)
    frame["y"] = pd.Categorical(np.array(["lo", "mid", "hi"])[np.digitize(frame["x"], [-0.5, 0.5])],
                                categories=["lo", "mid", "hi"], ordered=True)
    return frame, _classifier("y ~ x + (1 | g)", family="ordinal")


def constant_gaussian():
    rng, frame, _ = _frame(5)
    return frame.assign(y=3.0), _regressor("y ~ x + (1 | g)")


def near_constant_gaussian():
    rng, frame, _ = _frame(6)
    return frame.assign(y=3.0 + 1e-12 * rng.normal(size=len(frame))), _regressor("y ~ x + (1 | g)")


def constant_bernoulli():
    rng, frame, _ = _frame(7)
    return frame.assign(y=1), _classifier("y ~ x + (1 | g)")


def constant_within_groups_gaussian():
    rng, frame, u = _frame(8)
    return frame.assign(y=2.0 + 3 * u), _regressor("y ~ x + (1 | g)")


def constant_within_groups_bernoulli():
    rng, frame, u = _frame(9)
    return frame.assign(y=(u > 0).astype(int)), _classifier("y ~ x + (1 | g)")


def all_zero_groups_poisson():
    rng, frame = _poisson(10)
    frame.loc[frame["g"].isin(["g0", "g1", "g2"]), "y"] = 0
    return frame, _regressor("y ~ x + (1 | g)", family="poisson")


def all_zero_poisson():
    rng, frame, _ = _frame(11)
    return frame.assign(y=0), _regressor("y ~ x + (1 | g)", family="poisson")


def counts_near_1e6():
    rng, frame = _poisson(12, scale=1e6)
    return frame, _regressor("y ~ x + (1 | g)", family="poisson")


def y_near_1e10():
    rng, frame = _gaussian(13)
    return frame.assign(y=1e10 + frame["y"]), _regressor("y ~ x + (1 | g)")


def y_scaled_1e10():
    rng, frame = _gaussian(14)
    return frame.assign(y=1e10 * frame["y"]), _regressor("y ~ x + (1 | g)")


def x_near_1e_minus_9():
    rng, frame = _gaussian(15)
    return frame.assign(x=1e-9 * frame["x"]), _regressor("y ~ x + (1 | g)")


def x_scales_apart():
    rng, frame = _gaussian(16)
    return frame.assign(z=1e5 * frame["z"]), _regressor("y ~ x + z + (1 | g)")


def singleton_levels():
    rng, frame = _gaussian(17)
    frame.loc[:29, "g"] = [f"solo{k}" for k in range(30)]
    return frame, _regressor("y ~ x + (1 | g)")


def one_level_per_row():
    rng, frame = _gaussian(18)
    return frame.assign(g=[f"r{k}" for k in range(len(frame))]), _regressor("y ~ x + (1 | g)")


def one_level_per_row_bernoulli():
    rng, frame = _bernoulli(19)
    return frame.assign(g=[f"r{k}" for k in range(len(frame))]), _classifier("y ~ x + (1 | g)")


def one_group():
    rng, frame = _gaussian(20)
    return frame.assign(g="only"), _regressor("y ~ x + (1 | g)")


def zero_variance_gaussian():
    rng, frame, _ = _frame(21)
    return frame.assign(y=1.0 + frame["x"] + rng.normal(size=len(frame))), _regressor("y ~ x + (1 | g)")


def zero_variance_bernoulli():
    rng, frame, _ = _frame(22, n=400)
    return frame.assign(y=(rng.random(len(frame)) < 0.5).astype(int)), _classifier("y ~ x + (1 | g)")


def zero_variance_poisson():
    rng, frame, _ = _frame(23)
    return frame.assign(y=rng.poisson(2.0, len(frame))), _regressor("y ~ x + (1 | g)", family="poisson")


def nullable_int64():
    rng, frame = _poisson(24)
    return frame.assign(y=frame["y"].astype("Int64"), k=pd.array(rng.integers(0, 5, len(frame)), dtype="Int64")), \
        _regressor("y ~ k + (1 | g)", family="poisson")


def nullable_int64_with_na():
    rng, frame = _gaussian(25)
    k = pd.array(rng.integers(0, 5, len(frame)), dtype="Int64")
    k[:7] = pd.NA
    return frame.assign(k=k), _regressor("y ~ k + (1 | g)")


def string_pyarrow_groups():
    rng, frame = _gaussian(26)
    return frame.assign(g=frame["g"].astype("string[pyarrow]")), _regressor("y ~ x + (1 | g)")


def unused_categories_fixed():
    rng, frame = _gaussian(27)
    f = pd.Categorical(np.array(["a", "b", "c"])[rng.integers(0, 3, len(frame))], categories=["a", "b", "c", "d"])
    return frame.assign(f=f), _regressor("y ~ f + (1 | g)")


def unused_categories_groups():
    rng, frame = _gaussian(28)
    return frame.assign(g=pd.Categorical(frame["g"], categories=sorted(set(frame["g"])) + ["ghost"])), \
        _regressor("y ~ x + (1 | g)")


def polars_input():
    import polars as pl
    rng, frame = _gaussian(29)
    return pl.from_pandas(frame), _regressor("y ~ x + (1 | g)")


def pyarrow_input():
    import pyarrow as pa
    rng, frame = _bernoulli(30)
    return pa.Table.from_pandas(frame), _classifier("y ~ x + (1 | g)")


def aliased_column():
    rng, frame = _gaussian(31)
    return frame.assign(x2=2 * frame["x"]), _regressor("y ~ x + x2 + (1 | g)")


def rare_events():
    rng, frame, _ = _frame(32, n=400)
    y = np.zeros(len(frame), dtype=int)
    y[rng.choice(len(frame), 3, replace=False)] = 1
    return frame.assign(y=y), _classifier("y ~ x + (1 | g)")


def huge_outlier():
    rng, frame = _gaussian(33)
    frame.loc[0, "y"] = 1e8
    return frame, _regressor("y ~ x + (1 | g)")


def binomial_all_successes_in_groups():
    rng, frame, u = _frame(34)
    frame["n"] = 4
    frame["s"] = rng.binomial(4, 0.5, len(frame))
    frame.loc[frame["g"].isin(["g0", "g1"]), "s"] = 4
    return frame, _regressor("cbind(s, n - s) ~ x + (1 | g)", family="binomial")


def random_slope_collapsed():
    rng, frame, u = _frame(35, n=300)
    return frame.assign(y=1 + 0.5 * frame["x"] + u + rng.normal(size=len(frame))), _regressor("y ~ x + (x | g)")


def negative_binomial_poisson_data():
    rng, frame = _poisson(36)
    return frame, _regressor("y ~ x + (1 | g)", family="negative_binomial")


def ordinal_unused_category():
    rng, frame, u = _frame(37, n=300)
    eta = frame["x"] + u
    codes = np.digitize(eta + rng.logistic(size=len(frame)), [-1.0, 1.0])
    y = pd.Categorical(np.array(["lo", "mid", "hi"])[codes], categories=["lo", "mid", "hi", "top"], ordered=True)
    return frame.assign(y=y), _classifier("y ~ x + (1 | g)", family="ordinal")


SEPARATION = "separate the categories"
WITHIN = "does not vary within the levels of grouping factor 'g'"
SCALES = "very different scales"

#: name -> (data set, outcome, class, fragment naming the culprit)
EXPECTED = {
    separated_complete: ("warns", DataWarning, "column(s) 'x' " + SEPARATION),
    separated_quasi_by_level: ("warns", DataWarning, "quasi-complete separation: the fixed-effect column(s) 'f[T.c]'"),
    separated_binomial: ("warns", DataWarning, "column(s) 'x' " + SEPARATION),
    separated_ordinal: ("warns", DataWarning, "column(s) 'x' " + SEPARATION),
    constant_gaussian: ("raises", DataError, "Response is constant: every value of 'y' is 3"),
    # lme4 fits it (sigma ~ 1e-12), and so does mixedfx since the M-step works relative to
    # the least-squares fit (before, y'y cancelled and the sampler broke down: a FitError)
    near_constant_gaussian: ("quiet", None, None),
    constant_bernoulli: ("raises", DataError, "a bernoulli response needs exactly 2 classes, found 1"),
    constant_within_groups_gaussian: ("warns", DataWarning, WITHIN),
    constant_within_groups_bernoulli: ("warns", DataWarning, WITHIN),
    all_zero_groups_poisson: ("quiet", None, None),
    all_zero_poisson: ("raises", DataError, "every value of 'y' is 0"),
    counts_near_1e6: ("quiet", None, None),
    y_near_1e10: ("quiet", None, None),
    y_scaled_1e10: ("quiet", None, None),
    x_near_1e_minus_9: ("warns", DataWarning, SCALES + ": consider rescaling (standard deviations: x 9.92e-10)"),
    x_scales_apart: ("warns", DataWarning, "z 9.3e+04"),
    singleton_levels: ("quiet", None, None),
    one_level_per_row: ("raises", DataError, "must be < number of observations (problems: g)"),
    one_level_per_row_bernoulli: ("quiet", None, None),
    one_group: ("raises", DataError, "grouping factor 'g' has a single level ('only')"),
    zero_variance_gaussian: ("quiet", None, None),
    zero_variance_bernoulli: ("quiet", None, None),
    zero_variance_poisson: ("quiet", None, None),
    nullable_int64: ("quiet", None, None),
    nullable_int64_with_na: ("warns", DataWarning, "dropped 7 of 240 rows with missing values ('k': 7)"),
    string_pyarrow_groups: ("quiet", None, None),
    unused_categories_fixed: ("quiet", None, None),
    unused_categories_groups: ("quiet", None, None),
    polars_input: ("quiet", None, None),
    pyarrow_input: ("quiet", None, None),
    aliased_column: ("warns", UserWarning, "dropping 1 aliased column(s): x2"),
    rare_events: ("quiet", None, None),
    huge_outlier: ("quiet", None, None),
    binomial_all_successes_in_groups: ("quiet", None, None),
    random_slope_collapsed: ("quiet", None, None),
    negative_binomial_poisson_data: ("quiet", None, None),
    ordinal_unused_category: ("quiet", None, None),
}


def _fitted_numbers(model, data):
    """Every numeric fitted attribute and prediction, by name."""
    numbers = {name: value for name, value in vars(model).items() if name.endswith("_") and not name.startswith("_")}
    numbers = {name: value for name, value in numbers.items() if isinstance(value, (float, np.ndarray, pd.Series))
               or (isinstance(value, pd.DataFrame) and name != "dropped_rows_")}
    numbers["random_effects_"] = model.random_effects_
    rows = data.dropna() if isinstance(data, pd.DataFrame) else data
    if hasattr(model, "predict_proba"):
        numbers["predict_proba"] = model.predict_proba(rows)
    else:
        numbers["predict"] = model.predict(rows)
    return numbers


def _non_finite(numbers):
    bad = []
    for name, value in numbers.items():
        frames = value.values() if isinstance(value, dict) else [value]
        for frame in frames:
            array = np.asarray(frame)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad.append(name)
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("make", list(EXPECTED), ids=lambda make: make.__name__)
def test_hard_data(make):
    data, model = make()
    outcome, category, fragment = EXPECTED[make]
    before = data.copy() if isinstance(data, pd.DataFrame) else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", mixedfx.SamplerWarning)  # short runs: the chains' agreement is not judged
        if outcome == "raises":
            with pytest.raises(category, match=re.escape(fragment)):
                model.fit(data)
            return
        model.fit(data)
    data_warnings = [w for w in caught if issubclass(w.category, (DataWarning, UserWarning))
                     and w.category.__module__.startswith(("mixedfx", "builtins"))]
    texts = [str(w.message) for w in data_warnings]
    if outcome == "warns":
        assert any(issubclass(w.category, category) and fragment in str(w.message) for w in data_warnings), texts
    else:
        assert texts == []
    assert _non_finite(_fitted_numbers(model, data)) == []
    data_texts = tuple(str(w.message) for w in data_warnings if issubclass(w.category, DataWarning))
    assert set(model.fit_summary_.data_warnings) <= set(data_texts)
    if before is not None:
        pd.testing.assert_frame_equal(data, before)


@pytest.mark.slow
def test_within_group_warnings_are_recorded_and_summarized(capsys):
    data, model = constant_within_groups_bernoulli()
    with pytest.warns(DataWarning, match="does not vary within"):
        model.fit(data)
    assert len(model.fit_summary_.data_warnings) == 1 and WITHIN in model.fit_summary_.data_warnings[0]
    model.summary()
    assert "warning: the response does not vary within the levels of grouping factor 'g'" in capsys.readouterr().out


@pytest.mark.slow
def test_a_response_varying_within_groups_is_not_flagged():
    rng, frame = _gaussian(40)
    frame["y"] = frame.groupby("g")["y"].transform("mean") + 1e-3 * rng.normal(size=len(frame))  # small but real
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        model = _regressor("y ~ x + (1 | g)").fit(frame)
    assert model.fit_summary_.data_warnings == ()


@pytest.mark.slow
def test_a_response_near_1e10_fits_as_its_shift():
    """y = 1e10 + (a unit-scale model): the M-step's y'y cancelled to noise of ~1e6, giving
    a residual sd of 199 and sd(g) 0 where the shifted response gives 0.94 and 0.66."""
    data, model = y_near_1e10()
    model.fit(data)
    shifted = _regressor("y ~ x + (1 | g)").fit(data.assign(y=data["y"] - 1e10))
    np.testing.assert_allclose(model.variance_components_["sdcor"], shifted.variance_components_["sdcor"], rtol=1e-5)
    assert model.fixed_effects_["x"] == pytest.approx(shifted.fixed_effects_["x"], rel=1e-5)
    assert model.fixed_effects_["Intercept"] - 1e10 == pytest.approx(shifted.fixed_effects_["Intercept"], abs=1e-3)


@pytest.mark.slow
def test_constant_within_groups_gaussian_intercept_is_the_mean():
    """With no residual variation the intercept ran off to -1.05e19 (y'y cancelled in the
    M-step); with sigma -> 0 its ML estimate is the mean of the levels' means (2.21 here,
    standard error ~0.5 from sd(g) 1.8 over 12 levels)."""
    data, model = constant_within_groups_gaussian()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data)
    level_means = data.groupby("g")["y"].mean()
    assert model.fixed_effects_["Intercept"] == pytest.approx(level_means.mean(), abs=0.5)
    assert model.variance_components_["sdcor"].iloc[-1] < 1e-6  # the residual sd, at zero


def _threads_data():
    rng, gaussian = _gaussian(41)
    rng, poisson = _poisson(42)
    return [(gaussian, lambda seed: _regressor("y ~ x + (1 | g)", random_state=seed)),
            (poisson, lambda seed: _regressor("y ~ x + (1 | g)", family="poisson", random_state=seed))]


def _estimates(model):
    return np.concatenate([np.asarray(model.fixed_effects_, float), model.fit_summary_.estimate])


@pytest.mark.slow
def test_two_threads_fitting_at_once_match_sequential_fits():
    cases = _threads_data()
    sequential = [_estimates(make(seed).fit(data)) for seed in (3, 4) for data, make in cases]
    results, errors = {}, []

    def fit(key, data, make, seed):
        try:
            results[key] = _estimates(make(seed).fit(data))
        except Exception as error:  # reported below, with the thread's name
            errors.append((key, error))

    threads = [threading.Thread(target=fit, args=((seed, k), data, make, seed))
               for seed in (3, 4) for k, (data, make) in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    together = [results[(seed, k)] for seed in (3, 4) for k in range(len(cases))]
    for alone, concurrent in zip(sequential, together):
        np.testing.assert_array_equal(alone, concurrent)
    assert not np.array_equal(sequential[0], sequential[2])  # the seed matters: the comparison can fail


def test_the_battery_is_large_enough():
    assert len(EXPECTED) >= 30 and len({make.__name__ for make in EXPECTED}) == len(EXPECTED)


def test_a_steady_climb_past_the_bound_runs_away_and_a_settled_estimate_does_not():
    from mixedfx.inference.runaway import runaway_fixed_effects
    rng = np.random.default_rng(43)
    steps = np.arange(30.0)
    climbing = 1.0 + 0.6 * steps + rng.normal(scale=0.1, size=30)  # 18.4 at the end, rising
    settled = 12.0 + rng.normal(scale=0.3, size=30)  # large but noisy around its value
    small = 0.2 * steps / 30 + 0.5  # rising, but within the bound
    trace = np.column_stack([climbing, -climbing, settled, small])
    assert runaway_fixed_effects(trace, ["a", "b", "c", "d"], bound=10.0) == ("a", "b")
    assert runaway_fixed_effects(trace, ["a", "b", "c", "d"], bound=None) == ()
    assert runaway_fixed_effects(trace, ["a", "b", "c", "d"], bound=20.0) == ()


@pytest.mark.slow
def test_separation_within_groups_runs_away():
    """Within each group y = (x > the group's cut); the cuts differ, so the fixed effects
    alone do not separate (no separation warning) but x's estimate still grows without end."""
    rng, frame, _ = _frame(44, n=300)
    cut = {f"g{k}": c for k, c in enumerate(rng.normal(scale=1.0, size=12))}
    frame["y"] = (frame["x"] > frame["g"].map(cut)).astype(int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _classifier("y ~ x + (1 | g)").fit(frame)
    texts = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("fixed effect(s) 'x' kept growing" in text for text in texts), texts
    assert model.fit_summary_.data_warnings == tuple(texts)
    assert np.isfinite(model.fixed_effects_).all()
