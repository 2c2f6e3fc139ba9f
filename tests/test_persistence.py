"""Saved and pickled models (issue #20): the format number, ``save``/``load`` in a fresh
process, and fits interrupted by Ctrl-C leaving the estimator as it was."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

import mixedfx
from conftest import FIXTURES, make_small_frame, small_settings, subprocess_env
from mixedfx.estimator import base

#: The saved models: name -> (estimator class, formula, family, data maker).  Each is fitted
#: on ``_frame(name, 0)`` and predicts ``_frame(name, 1)``, in this process and in a fresh one.
MODELS = {
    "slopes": ("MixedEffectsRegressor", "y ~ center(x) + f + (x | g)", "gaussian"),
    "crossed": ("MixedEffectsRegressor", "y ~ x + (1 | g1) + (1 | g2)", "gaussian"),
    "bernoulli": ("MixedEffectsClassifier", "high ~ scale(x) + (1 | g)", "bernoulli"),
    "poisson": ("MixedEffectsRegressor", "count ~ x + f + (1 | gi)", "poisson"),
}


def _frame(name: str, seed: int) -> pd.DataFrame:
    """The data of model ``name``: seed 0 fits, seed 1 is new data (new levels included)."""
    if name == "crossed":
        data = pd.read_csv(FIXTURES / "crossed_small.csv")
        return data if seed == 0 else data.sample(40, random_state=seed).assign(x=lambda d: d["x"] + 0.5)
    data = make_small_frame(seed)
    return data.assign(high=np.where(data["y"] > 1.2, "yes", "no"),
                       gi=lambda d: _codes(d) + 100 * seed * (_codes(d) % 2))  # integer levels, half unseen in seed 1


def _codes(data: pd.DataFrame) -> pd.Series:
    return data["g"].str[1:].astype(int)


def _fit(name: str):
    cls, formula, family = MODELS[name]
    return getattr(mixedfx, cls)(formula, family=family, **small_settings()).fit(_frame(name, 0))


def _outputs(model, data: pd.DataFrame) -> dict:
    """Everything the saved model must reproduce, as arrays and text."""
    text = io.StringIO()
    model.summary(file=text)
    out = {"predict": np.asarray(model.predict(data)).astype(str), "summary": text.getvalue(),
           "fixed": model.fixed_effects_.to_numpy(), "ranef": np.concatenate(
               [frame.to_numpy().ravel() for frame in model.random_effects_.values()])}
    if hasattr(model, "predict_proba"):
        out["proba"] = model.predict_proba(data)
    else:
        out["interval"] = model.predict_interval(data, kind="mean").to_numpy()
    return out


@pytest.fixture(scope="module")
def fits():
    return {name: _fit(name) for name in MODELS}


# -- pickles ---------------------------------------------------------------------------------
def test_pickle_and_joblib_carry_version_and_format(fits, tmp_path):
    model, new = fits["slopes"], _frame("slopes", 1)
    state = model.__getstate__()
    assert (state["_mixedfx_version"], state["_mixedfx_format"]) == (mixedfx.__version__, base.MODEL_FORMAT)
    joblib.dump(model, tmp_path / "model.joblib")
    for restored in (pickle.loads(pickle.dumps(model)), joblib.load(tmp_path / "model.joblib")):
        np.testing.assert_array_equal(restored.predict(new), model.predict(new))
        assert "_mixedfx_format" not in vars(restored) and "_mixedfx_version" not in vars(restored)


def test_pickle_of_another_format_is_refused_naming_the_version(fits, tmp_path, monkeypatch):
    model = fits["slopes"]
    monkeypatch.setattr(base, "MODEL_FORMAT", 99)
    monkeypatch.setattr(mixedfx, "__version__", "9.9.9")
    blob = pickle.dumps(model)
    joblib.dump(model, tmp_path / "model.joblib")
    monkeypatch.undo()
    message = rf"written by mixedfx 9\.9\.9 \(format 99\); this is mixedfx 0\.1\.0 \(format {base.MODEL_FORMAT}\)"
    with pytest.raises(mixedfx.ModelFormatError, match=message):
        pickle.loads(blob)
    with pytest.raises(mixedfx.ModelFormatError, match=message):
        joblib.load(tmp_path / "model.joblib")


# -- save / load -----------------------------------------------------------------------------
def test_saved_models_predict_identically_in_a_fresh_process(fits, tmp_path):
    for name, model in fits.items():
        model.save(tmp_path / f"{name}.mixedfx")
    script = textwrap.dedent(f"""
        import io, json, sys, warnings
        import numpy as np
        sys.path.insert(0, {str(FIXTURES.parent)!r})
        import mixedfx
        from test_persistence import MODELS, _frame, _outputs
        result = {{}}
        for name in MODELS:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # loading is silent
                model = mixedfx.load({str(tmp_path)!r} + f"/{{name}}.mixedfx")
            out = _outputs(model, _frame(name, 1))
            np.savez({str(tmp_path)!r} + f"/{{name}}.npz", **{{k: v for k, v in out.items() if k != "summary"}})
            result[name] = out["summary"]
        json.dump(result, open({str(tmp_path)!r} + "/summaries.json", "w"))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = json.loads((tmp_path / "summaries.json").read_text())
    for name, model in fits.items():
        expected = _outputs(model, _frame(name, 1))
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as loaded:
            assert sorted(loaded.files) == sorted(k for k in expected if k != "summary")
            for key in loaded.files:
                np.testing.assert_array_equal(loaded[key], expected[key], err_msg=f"{name}: {key}")
        assert summaries[name] == expected["summary"]


def test_loaded_model_has_every_fitted_attribute(fits, tmp_path):
    model = fits["bernoulli"]
    model.save(tmp_path / "model.mixedfx")
    loaded = mixedfx.load(tmp_path / "model.mixedfx")
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    # every attribute comes back but the ddf cache, which mixedfx.lmertest recomputes on demand
    assert sorted(vars(loaded)) == sorted(set(vars(model)) - {"_ddf_cache"})
    for frame in ("fixed_effects_cov_", "variance_components_"):
        pd.testing.assert_frame_equal(getattr(loaded, frame), getattr(model, frame))
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    np.testing.assert_array_equal(loaded.fit_summary_.trace, model.fit_summary_.trace)
    np.testing.assert_array_equal(loaded.residuals(), model.residuals())  # the training rows came back too


def test_file_holds_json_and_npz_only(fits, tmp_path):
    fits["slopes"].save(tmp_path / "model.mixedfx")
    with zipfile.ZipFile(tmp_path / "model.mixedfx") as archive:
        assert sorted(archive.namelist()) == ["arrays.npz", "model.json"]
        document = json.loads(archive.read("model.json"))
        with np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False) as arrays:
            assert all(arrays[key].dtype.kind in "biufc" for key in arrays.files)
    assert document["format_version"] == base.MODEL_FORMAT and document["mixedfx_version"] == mixedfx.__version__
    spec = document["fitted"]["fixed_design_"]["__record__"]
    assert spec == "FixedDesign"
    state = document["fitted"]["fixed_design_"]["fields"]["model_spec"]["__modelspec__"]["transform_state"]
    center = dict(state["center(x)"]["__dict__"])["center"]
    assert center == pytest.approx(_frame("slopes", 0)["x"].mean(), rel=1e-12)


def test_saved_file_of_another_format_is_refused(fits, tmp_path):
    path = tmp_path / "model.mixedfx"
    fits["slopes"].save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    document = json.loads(members["model.json"])
    document.update(format_version=7, mixedfx_version="3.0.0")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.json", json.dumps(document))
        archive.writestr("arrays.npz", members["arrays.npz"])
    with pytest.raises(mixedfx.ModelFormatError, match=r"written by mixedfx 3\.0\.0 \(format 7\)"):
        mixedfx.load(path)
    document.update(format_version=base.MODEL_FORMAT)
    document["fitted"]["fixed_design_"]["fields"]["extra"] = 1  # a record may only hold its own fields
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.json", json.dumps(document))
        archive.writestr("arrays.npz", members["arrays.npz"])
    with pytest.raises(mixedfx.ModelFormatError, match="the saved FixedDesign has fields"):
        mixedfx.load(path)
    del document["fitted"]["fixed_design_"]["fields"]["extra"]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.json", json.dumps(document))
        archive.writestr("arrays.npz", io.BytesIO().getvalue())
    with pytest.raises(mixedfx.ModelFormatError, match="not a model saved by mixedfx"):
        mixedfx.load(path)  # arrays.npz emptied
    (tmp_path / "other.txt").write_text("not a model")
    with pytest.raises(mixedfx.ModelFormatError, match="not a model saved by mixedfx"):
        mixedfx.load(tmp_path / "other.txt")


def test_save_refuses_what_it_cannot_store_plainly(fits, tmp_path):
    class MyRule:
        def assess(self, trace, *, window_start, scale, frozen):
            raise AssertionError("never called")

    model = pickle.loads(pickle.dumps(fits["slopes"]))
    model.set_params(stopping_rule=MyRule())
    with pytest.raises(mixedfx.ModelFormatError, match="cannot save stopping_rule: a .*MyRule"):
        model.save(tmp_path / "model.mixedfx")
    assert not (tmp_path / "model.mixedfx").exists()
    with pytest.raises(mixedfx.ModelFormatError, match="cannot save random_state"):
        model.set_params(stopping_rule=None, random_state=np.random.RandomState(0)).save(tmp_path / "m2.mixedfx")
    with pytest.raises(NotFittedError):
        mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)").save(tmp_path / "m3.mixedfx")


def test_training_columns_of_every_pandas_dtype_round_trip(fits, tmp_path):
    """The training rows kept for update() and re_form may hold categories, dates, zoned
    dates and durations beside the model's columns: save() stores each as codes or ticks."""
    model = pickle.loads(pickle.dumps(fits["slopes"]))
    rows = len(model.training_data_)
    extra = model.training_data_.assign(
        g=model.training_data_["g"].astype("category"),
        day=pd.date_range("2020-01-01", periods=rows, freq="D"),
        stamp=pd.date_range("2020-01-01", periods=rows, freq="h", tz="Europe/Paris"),
        wait=pd.to_timedelta(np.arange(rows), unit="s"),
        rank=pd.Categorical(np.arange(rows) % 3, categories=[2, 1, 0], ordered=True))
    extra.index = pd.date_range("2021-01-01", periods=rows, freq="min", name="when")
    model.training_data_ = extra
    model.save(tmp_path / "model.mixedfx")
    pd.testing.assert_frame_equal(mixedfx.load(tmp_path / "model.mixedfx").training_data_, extra, check_freq=False)


# -- interrupted fits ------------------------------------------------------------------------
INTERRUPT_SCRIPT = """
import json, os, signal, sys, threading, warnings
import numpy as np
sys.path.insert(0, {tests!r})
warnings.simplefilter("ignore")
import mixedfx
from mixedfx.estimator import base
from mixedfx.inference import FixedIterations
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from conftest import make_small_frame, small_settings

class SigintAt:
    # A stopping rule that sends this process SIGINT in its n-th call: inside the EM loop.
    def __init__(self, n, n_iter=400):
        self.n, self.calls, self.inner = n, 0, FixedIterations(n_iter=n_iter, n_average=20)
    def assess(self, trace, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return self.inner.assess(trace, **kwargs)

def raising(*args, **kwargs):
    raise KeyboardInterrupt

first, second = make_small_frame(0), make_small_frame(5).iloc[:100]
new = make_small_frame(7)
results = {{}}

def attempt(name, model, data, *, patch=None, rule=None, timer=None, max_iter=500):
    saved = base.__dict__[patch] if patch else None
    if patch:
        setattr(base, patch, raising)
    if rule is not None:
        model.set_params(stopping_rule=rule, max_iter=max_iter)
    clock = threading.Timer(timer, os.kill, (os.getpid(), signal.SIGINT)) if timer else None
    if clock:
        clock.start()
    try:
        model.fit(data)
        results[name] = "not interrupted"
    except KeyboardInterrupt:
        results[name] = "interrupted"
    finally:
        if patch:
            setattr(base, patch, saved)
        if clock:
            clock.cancel()

model = mixedfx.MixedEffectsRegressor("y ~ x + f + (x | g)", **small_settings()).fit(first)
before = dict(vars(model))
prediction = model.predict(new)
points = [("bind_data", dict(patch="bind_data")), ("bind_model", dict(patch="bind_model")),
          ("fit_mcem", dict(patch="fit_mcem")), ("finish_fit", dict(patch="finish_fit")),
          ("estimates", dict(patch="_estimates")), ("warn", dict(patch="_warn_about_fit")),
          ("em_loop", dict(rule=SigintAt(3))),
          ("timer", dict(rule=SigintAt(10**9, n_iter=10**6), timer={delay}, max_iter=10**6))]
for name, how in points:
    attempt(name, model, second, **how)
    model.set_params(stopping_rule=before["stopping_rule"], max_iter=before["max_iter"])
    same = sorted(vars(model)) == sorted(before) and all(
        vars(model)[k] is v for k, v in before.items() if k not in ("stopping_rule", "max_iter"))
    results[name] += "; state kept" if same and np.array_equal(model.predict(new), prediction) else "; state changed"

fresh = mixedfx.MixedEffectsRegressor("y ~ x + f + (x | g)", **small_settings())
attempt("first_fit", fresh, second, rule=SigintAt(3))
try:
    check_is_fitted(fresh)
    results["first_fit"] += "; fitted"
except NotFittedError:
    results["first_fit"] += "; unfitted"
results["first_fit"] += "; no fitted attributes" if not [k for k in vars(fresh) if k.endswith("_")] else "; has some"
print(json.dumps(results))
"""


def test_interrupted_fits_leave_the_estimator_as_it_was():
    script = INTERRUPT_SCRIPT.format(tests=str(FIXTURES.parent), delay=3.0)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {name: "interrupted; state kept" for name in
                ("bind_data", "bind_model", "fit_mcem", "finish_fit", "estimates", "warn", "em_loop", "timer")}
    expected["first_fit"] = "interrupted; unfitted; no fitted attributes"
    assert results == expected
