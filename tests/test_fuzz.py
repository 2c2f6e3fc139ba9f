"""Fuzzing: random data frames and random formulas give what each case must give: a fit
with finite estimates for valid input, or the mixedfx exception its defect calls for
(``_expected``), never a FitError or anything else.

Hypothesis draws the data (column types: float, int, nullable, numbers stored as
objects, strings, categoricals with unused levels, booleans; missing values anywhere;
grouping factors of 1 to 500 levels) and a formula from the supported grammar
(transformed predictors, correlated slopes, crossed factors), two times in three broken
on purpose (fifteen ways: a missing ``~``, an unbalanced parenthesis, an empty bar, an
unknown column or function, a numeric grouping, no random term, ...).  ``N_EXAMPLES`` examples run, derandomized so that CI runs the same
ones every time.  Sizes stay small and the formula structures few, so that the fits
that get through share six compiled programs (rows and levels are padded to shape
buckets); the broken cases fail before anything is compiled.  A fit runs a fixed
schedule of 10 EM iterations: the test checks finiteness and error hygiene, not accuracy
(the other test modules check accuracy).
"""

from __future__ import annotations

import collections
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mixedfx import MixedEffectsClassifier, MixedEffectsRegressor, MixedFXError
from mixedfx.inference import FixedIterations

#: 200 generated fits and failures: minutes on 2 CPU cores (CI runs it; -m "not slow" leaves it out)
pytestmark = pytest.mark.slow

#: Examples run in CI (derandomized: the same ones every run).
N_EXAMPLES = 200

FAMILIES = ("gaussian", "poisson", "bernoulli")
RESPONSES = {"gaussian": "y", "poisson": "count", "bernoulli": "label"}
#: Fixed parts: each encodes to an intercept and one other column, so that fits of the
#: same family and random terms share one compiled program (the fixed columns that
#: equal a random coefficient's, as x would for (x | g), change the program too); the
#: text column s and the integer column k enter through the responses and the breaks.
FIXED_PARTS = ("z", "np.log(z)", "I(x ** 2)", "center(x)", "x:z", "scale(z)")
RANDOM_PARTS = {"gaussian": ("(1 | g)", "(x | g)", "(1 | g) + (1 | h)"),
                "poisson": ("(1 | g)",),
                "bernoulli": ("(1 | g)",)}
#: Ways to break a formula, each a function of the valid formula text.
BREAKS = {
    "no tilde": lambda f: f.replace("~", "+"),
    "unbalanced": lambda f: f[:-1],
    "empty bar": lambda f: f.replace("(1 |", "( |").replace("(x |", "( |"),
    "unknown column": lambda f: f.replace("z", "zq", 1) if "z" in f.split("~")[1] else f + " + xq",
    "unknown function": lambda f: f.replace("~ ", "~ lgo(z) + ", 1),
    "numeric grouping": lambda f: f + " + (1 | 2)",
    "no random term": lambda f: f.split(" + (")[0],
    "two bars": lambda f: f + " + (1 | g | h)",
    "dangling plus": lambda f: f + " +",
    "same side": lambda f: f + " + (g | g)",
    "bad character": lambda f: f + " # note",
    "repeated term": lambda f: f + " + (1 | g)",
    "subtracted term": lambda f: f.replace(" + (", " - (", 1),
    "no grouping": lambda f: f + " + (0 + s | )",
    "nested twice": lambda f: f + " + (1 | h/h)",
}
#: The error each break raises.
BREAK_ERRORS = {name: "FormulaError" for name in BREAKS} | {"unknown column": "DataError"}


def _numeric_column(draw, values: np.ndarray, name: str) -> pd.Series:
    """``values`` in a randomly chosen numeric representation."""
    kind = draw(st.sampled_from(["float", "float", "nullable", "object", "int"]), label=f"{name} type")
    if kind == "nullable":
        return pd.Series(values, dtype="Float64")
    if kind == "object":
        return pd.Series(list(values), dtype=object)
    if kind == "int":
        return pd.Series(np.round(values * 3).astype(np.int64))
    return pd.Series(values, dtype=np.float64)


def _labels(draw, n_levels: int, n_rows: int, rng, name: str) -> pd.Series:
    """A grouping column of ``n_levels`` levels (each used at least once), as strings,
    integers, or a categorical with an unused level."""
    codes = np.concatenate([np.arange(n_levels), rng.integers(0, n_levels, n_rows - n_levels)])
    rng.shuffle(codes)
    kind = draw(st.sampled_from(["string", "int", "categorical"]), label=f"{name} type")
    if kind == "int":
        return pd.Series(codes * 10)
    labels = np.array([f"{name}{k:03d}" for k in range(n_levels)])[codes]
    if kind == "categorical":
        return pd.Series(pd.Categorical(labels, categories=[f"{name}_unused", *sorted(set(labels))]))
    return pd.Series(labels)


@st.composite
def cases(draw):
    """A data frame and an estimator with its formula.

    Rows (24 to 96) and levels (1 to 8) stay within one shape bucket; one Gaussian case
    in 10 is wide, 510 rows and 500 levels, with a random intercept.  Every compiled
    program costs seconds, so the random terms are bounded: three structures for the
    Gaussian family, a random intercept for the others (whose programs take longest to
    compile; their crossed and slope terms are fitted against glmer in test_families).
    """
    family = draw(st.sampled_from(FAMILIES), label="family")
    wide = draw(st.integers(0, 9), label="wide") == 0 and family == "gaussian"
    n_rows = 510 if wide else draw(st.sampled_from([24, 48, 96]), label="rows")
    n_levels = 500 if wide else draw(st.sampled_from([1, 2, 3, 5, 8]), label="levels of g")
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    x = rng.normal(size=n_rows)
    frame = pd.DataFrame({
        "x": _numeric_column(draw, x, "x"),
        "z": np.exp(rng.normal(size=n_rows)),
        "s": pd.Series(np.array(["lo", "mid", "hi"])[rng.integers(0, 3, n_rows)]),
        "k": rng.integers(0, 3, n_rows),
        "g": _labels(draw, n_levels, n_rows, rng, "g"),
        "h": _labels(draw, draw(st.sampled_from([2, 5]), label="levels of h"), n_rows, rng, "h"),
    })
    effect = rng.normal(0.0, 0.5, size=n_rows)
    frame["y"] = _numeric_column(draw, 1.0 + 0.5 * x + effect + rng.normal(size=n_rows), "y")
    frame["count"] = rng.poisson(np.exp(0.3 + 0.3 * x + effect))
    label_kind = draw(st.sampled_from(["str", "bool", "int", "category"]), label="label type")
    positive = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-(0.5 * x + effect)))
    frame["label"] = {"str": pd.Series(np.where(positive, "yes", "no")), "bool": pd.Series(positive),
                      "int": pd.Series(positive.astype(int)),
                      "category": pd.Series(pd.Categorical(np.where(positive, "yes", "no"), ["yes", "no", "maybe"]))
                      }[label_kind]
    # Missing values: none, or a few in random columns and rows.
    for column in draw(st.lists(st.sampled_from(list(frame.columns)), max_size=3, unique=True), label="NaN columns"):
        rows = rng.choice(n_rows, size=draw(st.integers(1, 3), label="NaN rows"), replace=False)
        values = frame[column].astype(object) if frame[column].dtype.kind in "biu" else frame[column].copy()
        values.iloc[rows] = None if values.dtype == object else np.nan
        frame[column] = values
    fixed = draw(st.sampled_from(FIXED_PARTS), label="fixed")
    random = "(1 | g)" if wide else draw(st.sampled_from(RANDOM_PARTS[family]), label="random")
    response = draw(st.sampled_from([RESPONSES[family]] * 8 + ["y", "count", "label", "s", "k"]), label="response")
    formula = f"{response} ~ {fixed} + {random}"
    broken = draw(st.sampled_from([None] * (len(BREAKS) // 2) + list(BREAKS)), label="break")
    if broken is not None:
        formula = BREAKS[broken](formula)
    estimator = MixedEffectsClassifier if family == "bernoulli" else MixedEffectsRegressor
    model = estimator(formula, family=family, random_state=0, verbose=0,
                      stopping_rule=FixedIterations(n_iter=10, n_average=5))
    return frame, model, _expected(broken, family, response, frame, formula)


def _expected(broken: str | None, family: str, response: str, frame: pd.DataFrame, formula: str) -> str:
    """What a case must give: ``"fitted"``, or the name of the mixedfx error its defect raises.

    - a broken formula: :class:`FormulaError` (:class:`DataError` for an unknown column, but a
      :class:`FormulaError` "unknown function" for an unknown column inside a call); function names
      are checked when the formula is parsed, the response after that, and the fixed part's calls
      and the random terms after the response, so an unknown column inside a call or a repeated
      term with an invalid response is that response's :class:`DataError`;
    - a response its family cannot take: :class:`DataError` (Gaussian: not numbers; Poisson: not
      a numeric column of non-negative integers; Bernoulli: not two classes);
    - a grouping factor with a single level among the rows kept: :class:`DataError`;
    - anything else fits.  A :class:`FitError` is never right here.
    """
    response_error = _response_error(family, frame[response].dropna())
    if broken == "unknown column" and re.search(r"\w\(zq\)", formula):
        broken = "unknown name in a call"  # reported as an unknown function when the call is evaluated
    if broken is not None:
        # an unknown function name is caught when the formula is parsed, before the response is
        # checked; an unknown column inside a call only when the fixed part is evaluated and a repeated
        # term when the random terms are compared, both after the response, so an invalid response
        # comes first for these two
        late = broken in ("unknown name in a call", "repeated term")
        return "DataError" if late and response_error else BREAK_ERRORS.get(broken, "FormulaError")
    if response_error:
        return "DataError"
    used = [column for column in frame.columns if re.search(rf"\b{column}\b", formula)]
    kept = frame.dropna(subset=used)
    groupings = [column for column in ("g", "h") if re.search(rf"\|\s*{column}\b", formula)]
    return "DataError" if min(kept[column].nunique() for column in groupings) < 2 else "fitted"


def _response_error(family: str, values: pd.Series) -> bool:
    """Whether ``family`` refuses the response ``values`` (missing values dropped)."""
    if family == "gaussian":
        numeric = pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
        return not (numeric or _all_numbers(values))
    if family == "poisson":
        if values.dtype == object:  # numbers stored as objects are converted; booleans and text are not
            if not values.map(lambda v: isinstance(v, (int, float, np.integer, np.floating))
                              and not isinstance(v, (bool, np.bool_))).all():
                return True
        elif not pd.api.types.is_numeric_dtype(values):
            return True
        numbers = values.to_numpy(dtype=float)
        return not bool(np.all((numbers >= 0) & (numbers == np.round(numbers))))
    return values.nunique() != 2  # bernoulli: two classes (a categorical's unused level does not count)


def _all_numbers(values: pd.Series) -> bool:
    return bool(values.map(lambda v: isinstance(v, (int, float, np.integer, np.floating, bool))).all())


_LAST_MESSAGE = [""]


def _outcome(frame: pd.DataFrame, model) -> str:
    """Fit; ``"fitted"`` with finite estimates and predictions, or the mixedfx error's class name."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DataWarning, ConvergenceWarning, SamplerWarning: allowed
            model.fit(frame)
    except MixedFXError as error:
        assert str(error).strip(), "an empty message"
        _LAST_MESSAGE[0] = str(error)
        return type(error).__name__
    assert np.all(np.isfinite(model.fixed_effects_.to_numpy())), model.fixed_effects_
    components = model.variance_components_
    assert np.all(np.isfinite(components.loc[components["var2"].isna(), "vcov"].to_numpy())), components
    for effects in model.random_effects_.values():
        assert np.all(np.isfinite(effects.to_numpy()))
    kept = frame.drop(index=model.dropped_rows_)
    assert len(kept) == model.n_obs_
    predicted = model.predict_proba(kept) if hasattr(model, "predict_proba") else model.predict(kept)
    assert len(predicted) == len(kept) and np.all(np.isfinite(predicted))
    return "fitted"


def test_random_frames_and_formulas_fit_or_raise_a_mixedfx_error():
    outcomes, wrong = collections.Counter(), []

    @settings(max_examples=N_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases())
    def fit_or_raise(case):
        frame, model, expected = case
        before = frame.copy(deep=True)
        outcome = _outcome(frame, model)
        outcomes[outcome] += 1
        if outcome != expected:
            wrong.append((model.formula, model.family, expected, outcome, _LAST_MESSAGE[0][:200]))
        pd.testing.assert_frame_equal(frame, before)  # the user's frame is never changed

    fit_or_raise()
    assert not wrong, "\n".join(map(repr, wrong))
    assert sum(outcomes.values()) == N_EXAMPLES, outcomes
    # Both paths are exercised: fits that get through, and errors.
    assert outcomes["fitted"] >= 40 and outcomes["FormulaError"] + outcomes["DataError"] >= 80, outcomes
