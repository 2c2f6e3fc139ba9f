"""The scikit-learn contract: clone, Pipeline with a pandas ColumnTransformer, GridSearchCV
in worker processes, cross-validation by group, persistence, reproducibility, and use
without a formula.

The fits share the small model's shapes (see ``conftest.small_fit``): 120 rows with
12 levels, or cross-validation folds of 60 rows with 6 levels.
"""

from __future__ import annotations

import pickle
import pickletools
import subprocess
import sys

import joblib
import numpy as np
import pytest
from conftest import SMALL_FORMULA, small_settings
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mixedfx import DataError, MixedEffectsClassifier, MixedEffectsRegressor
from mixedfx.inference import FixedIterations


def test_clone_gives_an_unfitted_copy_that_refits_identically(small_fit, small_frame):
    fresh = clone(small_fit)
    assert fresh.get_params() == small_fit.get_params()
    assert not hasattr(fresh, "fixed_effects_") and not hasattr(fresh, "n_features_in_")
    fresh.fit(small_frame)
    # Same random_state, same machine: the same fit, bit for bit.
    np.testing.assert_array_equal(fresh.fit_summary_.trace, small_fit.fit_summary_.trace)
    np.testing.assert_array_equal(fresh.predict(small_frame), small_fit.predict(small_frame))
    assert fresh.n_features_in_ == 5 and fresh.feature_names_in_.tolist() == ["y", "x", "f", "g", "count"]
    assert fresh.n_iter_ == 30


@pytest.mark.filterwarnings("ignore::mixedfx.SamplerWarning")  # 30 iterations: the kept draws' R-hat is not the point
def test_other_random_states_agree_within_monte_carlo_error(small_fit, small_frame):
    other = MixedEffectsRegressor(SMALL_FORMULA, **small_settings(random_state=7)).fit(small_frame)
    assert not np.array_equal(other.fit_summary_.trace, small_fit.fit_summary_.trace)
    mcse = np.hypot(other.fit_summary_.mcse, small_fit.fit_summary_.mcse)
    difference = np.abs(other.fit_summary_.estimate - small_fit.fit_summary_.estimate)
    assert np.all(difference < 5 * mcse + 1e-12), (difference, mcse)


def test_pipeline_with_a_pandas_column_transformer(small_fit, small_frame):
    """Standardizing x in front reparametrizes the fixed effects; the fitted model and
    its predictions are the same (up to Monte Carlo error)."""
    scaler = ColumnTransformer([("scale", StandardScaler(), ["x"])], remainder="passthrough",
                               verbose_feature_names_out=False).set_output(transform="pandas")
    pipeline = make_pipeline(scaler, MixedEffectsRegressor("~ x + f + (1 | g)", **small_settings()))
    X, y = small_frame.drop(columns="y"), small_frame["y"]
    pipeline.fit(X, y)
    model = pipeline[-1]
    assert model.feature_names_in_.tolist() == ["x", "f", "g", "count"]
    sd = small_frame["x"].std(ddof=0)
    summary = small_fit.fit_summary_
    x_se = np.sqrt(small_fit.fixed_effects_cov_.loc["x", "x"])
    assert model.fixed_effects_["x"] / sd == pytest.approx(small_fit.fixed_effects_["x"], abs=0.1 * x_se)
    np.testing.assert_allclose(model.variance_components_["sdcor"], small_fit.variance_components_["sdcor"],
                               atol=5 * float(np.max(summary.mcse)))
    np.testing.assert_allclose(pipeline.predict(X), small_fit.predict(small_frame), atol=0.05)
    assert pipeline.score(X, y) == pytest.approx(small_fit.score(small_frame), abs=1e-3)


def test_cross_validation_by_group(small_frame):
    """GroupKFold holds whole groups out: their rows get population-level predictions.
    cross_val_score gives exactly the scores of fitting each fold by hand."""
    X, y, groups = small_frame.drop(columns="y"), small_frame["y"], small_frame["g"]
    estimator = MixedEffectsRegressor("~ x + f + (1 | g)", **small_settings())
    folds = list(GroupKFold(n_splits=2).split(X, y, groups))
    scores = cross_val_score(estimator, X, y, groups=groups, cv=folds)
    by_hand = []
    for train, test in folds:
        assert not set(groups.iloc[train]) & set(groups.iloc[test])
        model = clone(estimator).fit(X.iloc[train], y.iloc[train])
        predicted = model.predict(X.iloc[test])
        np.testing.assert_array_equal(predicted, model.predict(X.iloc[test], include_random=False))
        by_hand.append(r2_score(y.iloc[test], predicted))
    np.testing.assert_array_equal(scores, by_hand)
    assert np.all(np.isfinite(scores)) and np.all(scores > 0.0)


@pytest.mark.slow
def test_grid_search_in_two_worker_processes(small_frame):
    """Two worker processes fit the folds; their scores are the main process's, bit for
    bit (one compiled program per process: the grid changes no shape)."""
    X, y, groups = small_frame.drop(columns="y"), small_frame["y"], small_frame["g"]
    estimator = MixedEffectsRegressor("~ x + f + (1 | g)", **small_settings())
    search = GridSearchCV(estimator, {"random_state": [0, 1]}, cv=GroupKFold(n_splits=2), n_jobs=2)
    search.fit(X, y, groups=groups)
    folds = list(GroupKFold(n_splits=2).split(X, y, groups))
    for k, seed in enumerate([0, 1]):
        expected = cross_val_score(clone(estimator).set_params(random_state=seed), X, y, cv=folds)
        assert search.cv_results_["split0_test_score"][k] == expected[0]
        assert search.cv_results_["split1_test_score"][k] == expected[1]
    best = search.best_estimator_  # refitted on all rows in this process
    assert best.random_state == search.best_params_["random_state"] and best.n_obs_ == 120
    np.testing.assert_array_equal(best.predict(X), clone(best).fit(X, y).predict(X))


def _global_modules(blob: bytes) -> set[str]:
    """Modules of the classes and functions a pickle refers to."""
    modules, strings = set(), []
    for opcode, argument, _ in pickletools.genops(blob):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        elif opcode.name == "GLOBAL":
            modules.add(argument.split(" ")[0])
    return modules


def test_pickle_and_joblib_round_trips_hold_no_tensorflow(small_fit, small_frame, tmp_path):
    expected = small_fit.predict(small_frame)
    blob = pickle.dumps(small_fit)
    modules = _global_modules(blob)
    assert not {m for m in modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tensorflow_probability")}
    assert "mixedfx.estimator.regressor" in modules
    np.testing.assert_array_equal(pickle.loads(blob).predict(small_frame), expected)
    path = tmp_path / "model.joblib"
    joblib.dump(small_fit, path)
    np.testing.assert_array_equal(joblib.load(path).predict(small_frame), expected)
    # A fresh process loads the model and predicts the same numbers.
    (tmp_path / "model.pkl").write_bytes(blob)
    small_frame.to_pickle(tmp_path / "frame.pkl")
    script = (
        "import pickle, sys, numpy as np, pandas as pd\n"
        "model = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "np.save(sys.argv[3], model.predict(pd.read_pickle(sys.argv[2])))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pkl"), str(tmp_path / "frame.pkl"),
                    str(tmp_path / "out.npy")], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_without_a_formula_every_column_is_a_fixed_effect(small_fit, small_frame):
    """formula=None: y on every column of X, with a random intercept per level of groups=."""
    X, y = small_frame[["x", "f", "g"]], small_frame["y"]
    model = MixedEffectsRegressor(groups="g", **small_settings()).fit(X, y)
    assert model.formula_spec_.text == "~ 1 + `x` + `f` + (1 | `g`)"
    np.testing.assert_array_equal(model.fit_summary_.trace, small_fit.fit_summary_.trace)
    np.testing.assert_array_equal(model.predict(X), small_fit.predict(small_frame))
    # A 2-D array: columns by position (x0, x1, x2), the groups column by position too.
    array = MixedEffectsRegressor(groups=2, **small_settings()).fit(X.to_numpy(), y.to_numpy())
    assert list(array.fixed_effects_.index) == ["Intercept", "x0", "x1[T.b]"]
    np.testing.assert_array_equal(array.fixed_effects_.to_numpy(), small_fit.fixed_effects_.to_numpy())
    np.testing.assert_array_equal(array.predict(X.to_numpy()), small_fit.predict(small_frame))
    with pytest.raises(DataError, match=r"X has 2 features, but MixedEffectsRegressor is expecting 3 features"):
        array.predict(X.to_numpy()[:, :2])
    with pytest.raises(DataError, match=r"groups column 'gg' is not in X. Did you mean 'g'\?"):
        MixedEffectsRegressor(groups="gg", verbose=0).fit(X, y)


# -- scikit-learn's own compatibility checks -----------------------------------------------------------------------

_EQUIVALENCE = ("the check predicts on every row of X, also those of weight zero, whose levels of the grouping column "
                "the fit never saw: new_levels='error' (what the other checks need) raises a NewLevelError; "
                "test_sample_weight_equivalence_with_new_levels_population runs the check with "
                "new_levels='population' and it passes")
EXPECTED_FAILED_CHECKS = {
    "MixedEffectsRegressor": {
        "check_sample_weight_equivalence_on_dense_data": _EQUIVALENCE,
    },
    # scikit-learn's legacy checks as well (legacy=True, the default); these are left out:
    "MixedEffectsClassifier": {
        "check_sample_weight_equivalence_on_dense_data": _EQUIVALENCE,
        "check_decision_proba_consistency": (
            "the check predicts on new rows of continuous values (make_blobs); column 0 is the grouping factor, so "
            "every row has a level not seen in fit and new_levels='error' (what the other checks need) raises a "
            "NewLevelError; predict_proba on seen and new levels is tested in test_families.py"),
    },
}


def _check_settings() -> dict:
    """Without a formula: every column of X a fixed effect, column 0 the grouping factor.
    Missing values and new levels raise (scikit-learn's checks expect NaN to raise), and
    a short fixed schedule keeps the many small fits quick."""
    return {"groups": 0, "missing": "raise", "new_levels": "error", "random_state": 0, "verbose": 0,
            "stopping_rule": FixedIterations(n_iter=10, n_average=5)}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@parametrize_with_checks([MixedEffectsRegressor(**_check_settings())],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS[type(estimator).__name__])
def test_regressor_passes_scikit_learns_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@parametrize_with_checks([MixedEffectsClassifier(**_check_settings())],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS[type(estimator).__name__])
def test_classifier_passes_scikit_learns_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("estimator", [MixedEffectsRegressor, MixedEffectsClassifier], ids=lambda e: e.__name__)
def test_sample_weight_equivalence_with_new_levels_population(estimator):
    """scikit-learn's check that integer weights are repeated rows (zero: dropped), with the
    zero-weight rows' unseen levels predicted at the population level. The regressor's
    data (30 columns for 15 rows) is an exact fit (see test_bad_input.py), whose
    coefficients do not depend on the weights."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    check_sample_weight_equivalence_on_dense_data(
        estimator.__name__, estimator(**{**_check_settings(), "new_levels": "population"}))
