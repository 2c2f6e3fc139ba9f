"""R formulas paste unchanged: an lme4 formula copied from R means what it means in R.

Reference values come from R (``tests/fixtures/make_r_formula_fixtures.R`` writes
``tests/fixtures/r_formulas.json``): ``lmer(..., REML = FALSE)`` of sleepstudy's
``Reaction ~ Days + I(Days^2) + (1 | Subject)``, ``model.matrix`` of ``poly``, ``scale``,
``ns`` and friends (fitted and replayed on new rows through R's ``predvars``), and formulas
copied verbatim from lme4's and glmmTMB's documentation with their data and R's design.

Column names follow mixedfx's convention for the level or column suffix (``period[T.2]``,
``poly(x, 2)[1]`` where R writes ``period2``, ``poly(x, 2)1``, and ``Intercept`` for
``(Intercept)``); the term text is R's, as written.  ``_r_style`` undoes exactly that
convention, so the names are compared with R's character for character.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedfx
from mixedfx.design import (
    RandomDesign,
    ResponseDesign,
    build_fixed_design,
    clean_columns,
    formula_columns,
)
from mixedfx.exceptions import DataError, FormulaError
from mixedfx.formula import parse_formula, translate_r

# R's raw polynomials and interactions of Reaction are on different scales; lme4 warns too.
pytestmark = pytest.mark.filterwarnings("ignore:Some predictor variables are on very different scales")

FIXTURES = Path(__file__).parent / "fixtures"
R = json.loads((FIXTURES / "r_formulas.json").read_text())
SLEEPSTUDY = pd.read_csv(FIXTURES / "sleepstudy.csv")


def _r_style(name: str) -> str:
    """mixedfx's column name written as R's model.matrix writes it."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"\[(?:T\.)?([^\[\]]*)\]", r"\1", name)


def _frame(exported: dict) -> pd.DataFrame:
    """The rows R exported: factors become categoricals with R's level order."""
    columns = {}
    for name, column in exported.items():
        if "levels" in column:
            columns[name] = pd.Categorical(column["values"], categories=np.atleast_1d(column["levels"]))
        else:
            columns[name] = np.asarray(column["values"], dtype=np.float64)
    return pd.DataFrame(columns)


def _design(formula: str, frame: pd.DataFrame):
    """The design step of a fit: fixed design, random design, response and offset."""
    spec = parse_formula(formula)
    frame = clean_columns(frame, formula_columns(spec, frame), drop_unused_categories=True)
    fixed, X = build_fixed_design(spec.fixed, frame, offsets=spec.offsets)
    random = RandomDesign.from_spec(spec, frame)
    terms = random.materialize(frame, new_levels="error")
    response = ResponseDesign.from_text(spec.response).evaluate(frame)
    return fixed, X, terms, response, fixed.offset(frame)


# -- the token-level rewrite ---------------------------------------------------------------

@pytest.mark.parametrize(
    "r_text, formulaic_text",
    [
        ("Days + I(Days^2)", "Days + I(Days**2)"),
        ("log(x^2)", "log(x**2)"),
        ("(a + b)^2", "(a + b)^2"),  # between terms, ^ keeps R's meaning: interactions
        ("poly(x, 2, raw = TRUE)", "poly(x, 2, raw = True)"),
        ("scale(x, center = FALSE)", "scale(x, center = False)"),
        ("as.factor(x) + as.numeric(z)", "as_factor(x) + as_numeric(z)"),
        ('relevel(f, ref = "b")', 'relevel(f, ref = "b")'),
        ("age.mat + Sepal.Length:f", "`age.mat` + `Sepal.Length`:f"),
        ("splines::ns(Days, 3)", "ns(Days, 3)"),
        ("ns(x, df = 3, Boundary.knots = b)", "ns(x, df = 3, Boundary_knots = b)"),
        # Python's spellings pass unchanged, and {...} is never touched
        ("I(x**2) + C(f) + np.log(x) + center(x) + {x ^ 2}", "I(x**2) + C(f) + np.log(x) + center(x) + {x ^ 2}"),
        ("0 + x - 1", "0 + x - 1"),
        ("C(f, contr.sum)", "C(f, contr.sum)"),
    ],
)
def test_r_spellings_are_rewritten_for_formulaic(r_text, formulaic_text):
    assert translate_r(r_text).text == formulaic_text


def test_power_inside_a_call_is_a_power_not_xor():
    """The silent wrong answer of the issue: Python's ^ is XOR (3 ^ 2 == 1)."""
    _, X = build_fixed_design("0 + I(Days^2) + log(Days^2 + 1)", SLEEPSTUDY)
    days = SLEEPSTUDY["Days"].to_numpy(dtype=float)
    np.testing.assert_array_equal(X[:, 0], days**2)
    np.testing.assert_allclose(X[:, 1], np.log(days**2 + 1), rtol=1e-15)


# -- numbers from R ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quadratic_fit():
    return mixedfx.lmer("Reaction ~ Days + I(Days^2) + (1 | Subject)", SLEEPSTUDY,
                        random_state=0, verbose=0, tol=0.02, max_iter=5000)


def test_quadratic_coefficient_equals_lme4(quadratic_fit):
    reference = R["quadratic"]
    fixed = quadratic_fit.fixed_effects_
    assert list(fixed.index) == ["Intercept", "Days", "I(Days^2)"]
    for ours, (name, value) in zip(fixed, reference["fixef"].items()):
        # 2% of lme4's standard error; I(Days XOR 2) gives 1.54 against lme4's 0.337 (SE 0.316)
        assert ours == pytest.approx(value, abs=0.02 * reference["se"][name]), name
    assert quadratic_fit.log_likelihood_ == pytest.approx(reference["loglik"], abs=0.01)


def test_quadratic_prediction_replays_the_power(quadratic_fit):
    new = pd.DataFrame({"Days": [3.0, 12.0], "Subject": [308, 308]})
    fixed = quadratic_fit.fixed_effects_.to_numpy()
    expected = fixed[0] + fixed[1] * new["Days"] + fixed[2] * new["Days"] ** 2
    np.testing.assert_allclose(quadratic_fit.predict(new, include_random=False), expected, rtol=1e-10)


@pytest.mark.parametrize("rhs", list(R["designs"]))
def test_stateful_transforms_match_model_matrix_and_replay(rhs):
    """poly, poly(raw = TRUE), scale and ns: R's columns on the training rows, and R's
    predvars replay on new rows (one beyond the range, where ns continues linearly)."""
    reference = R["designs"][rhs]
    train = pd.DataFrame({"x": SLEEPSTUDY["Reaction"].to_numpy(dtype=float)})
    design, X = build_fixed_design(rhs, train)
    assert [_r_style(name) for name in design.column_names] == reference["columns"]
    np.testing.assert_allclose(X, np.array(reference["train"]), rtol=0, atol=1e-8)
    replayed = design.transform(pd.DataFrame({"x": R["new_x"]}))
    np.testing.assert_allclose(replayed, np.array(reference["new"]), rtol=0, atol=1e-8)


@pytest.mark.parametrize("rhs", list(R["sleepstudy_designs"]))
def test_r_formulas_of_sleepstudy_match_model_matrix(rhs):
    reference = R["sleepstudy_designs"][rhs]
    frame = SLEEPSTUDY.assign(Subject=pd.Categorical(SLEEPSTUDY["Subject"].astype(str)))
    design, X = build_fixed_design(rhs, frame)
    assert [_r_style(name) for name in design.column_names] == list(np.atleast_1d(reference["columns"]))
    np.testing.assert_allclose(X, np.array(reference["values"]).reshape(X.shape), rtol=0, atol=1e-8)


# -- formulas copied verbatim from lme4's and glmmTMB's documentation ---------------------------

REFUSED_AS_LME4_DOES = {
    "matur.L ~ age.mat + ( 0 + spp | dummy)": "grouping factor 'dummy' has a single level ('1')",
}


@pytest.mark.parametrize("case", R["documented"], ids=[f"{c['source']}: {c['formula']}" for c in R["documented"]])
def test_documented_formulas_design_as_in_r(case):
    """Each pasted formula designs with R's column names and R's fixed design, response
    and offset, on the rows of the data set it was written for."""
    frame = _frame(case["data"])
    if case["formula"] in REFUSED_AS_LME4_DOES:
        # glmmTMB's one-level "dummy" grouping (a device for its fixed covariances): lme4
        # refuses it too ("grouping factors must have > 1 sampled level"); the fixed side designs
        with pytest.raises(DataError, match=re.escape(REFUSED_AS_LME4_DOES[case["formula"]])):
            _design(case["formula"], frame)
        fixed, X = build_fixed_design(parse_formula(case["formula"]).fixed, frame)
        assert [_r_style(name) for name in fixed.column_names] == case["columns"]
        np.testing.assert_allclose(X, np.array(case["X"]).reshape(X.shape), rtol=0, atol=1e-8)
        return
    fixed, X, terms, (response, trials), offset = _design(case["formula"], frame)
    assert [_r_style(name) for name in fixed.column_names] == case["columns"]
    np.testing.assert_allclose(X, np.array(case["X"]).reshape(X.shape), rtol=0, atol=1e-8)
    r_response = np.array(case["response"]).reshape(len(response), -1)
    if r_response.dtype.kind == "U":  # a factor response (VerbAgg's r2): its labels
        assert np.asarray(response).astype(str).tolist() == r_response[:, 0].tolist()
    elif trials is None:
        np.testing.assert_allclose(response, r_response[:, 0], rtol=1e-12)
    else:  # cbind(successes, failures)
        np.testing.assert_allclose(np.column_stack([response, trials - response]), r_response, rtol=1e-12)
    if not case["offset"]:  # R's NULL
        assert offset is None
    else:
        np.testing.assert_allclose(offset, case["offset"], rtol=1e-12)
    assert terms


@pytest.mark.parametrize(
    "source, formula, message",
    [
        ("lme4 ?Dyestuff", "Yield ~ 1|Batch", "must be in parentheses, as in '(1 | g)'"),
        # us, diag, cs, ar1 of the vignette are fitted: tests/test_covariance_structures.py; ou, exp,
        # gau: tests/test_spatial_structures.py; mat: tests/test_matern.py; rr: tests/test_reduced_rank.py
        ("glmmTMB vignette covstruct", "y ~ hetar1(times + 0 | group)", "hetar1(...) is not yet supported"),
        ("glmmTMB vignette covstruct", "yi ~ 1 + (1|study) + equalto(0 + id|g, VCV)",
         "equalto(...) is not yet supported"),
        ("glmmTMB ?glmmTMB", "val ~ s(time)", "mgcv's smooth s(x) has no mixedfx equivalent; use"),
    ],
)
def test_documented_formulas_without_equivalent_name_the_translation(source, formula, message):
    frame = pd.DataFrame({name: np.arange(8.0) % 4 for name in
                          ("Yield", "Batch", "y", "times", "group", "z", "pos", "abund", "Species", "id",
                           "yi", "study", "g", "VCV", "val", "time")})
    with pytest.raises(FormulaError, match=re.escape(message)):
        _design(formula, frame)


# -- Python's spellings, state and bad input ----------------------------------------------------

def test_python_spellings_keep_their_meaning_and_names():
    frame = SLEEPSTUDY.assign(f=np.where(SLEEPSTUDY["Days"] > 4, "late", "early"))
    design, X = build_fixed_design("I(Days**2) + C(f) + np.log(Reaction) + center(Days)", frame)
    assert design.column_names == ("Intercept", "I(Days ** 2)", "C(f)[T.late]", "np.log(Reaction)", "center(Days)")
    days = frame["Days"].to_numpy(dtype=float)
    np.testing.assert_allclose(X[:, 1:], np.column_stack([days**2, days > 4, np.log(frame["Reaction"]),
                                                          days - days.mean()]), rtol=1e-14)


def test_relevel_of_an_unknown_level_names_it():
    with pytest.raises(DataError, match=r"relevel\(ref='x'\): 'x' is not a level of the column"):
        build_fixed_design('relevel(f, ref = "x")', pd.DataFrame({"f": ["a", "b", "a"]}))


def test_interaction_names_the_colon_spelling():
    with pytest.raises(FormulaError, match="write the interaction of the columns with ':' instead, e.g. a:b"):
        build_fixed_design("interaction(a, b)", pd.DataFrame({"a": ["u", "v"], "b": ["s", "t"]}))


def test_user_frame_is_not_mutated():
    frame = SLEEPSTUDY.copy()
    build_fixed_design('poly(Days, 2) + scale(Reaction) + relevel(factor(Subject), ref = "309")', frame)
    pd.testing.assert_frame_equal(frame, SLEEPSTUDY)


def test_power_on_the_left_of_a_bar_is_a_power():
    """The random side is evaluated through the same rewrite: (0 + I(Days^2) | Subject)."""
    design = RandomDesign.from_spec(parse_formula("Reaction ~ (0 + I(Days^2) | Subject)"), SLEEPSTUDY)
    (term,) = design.materialize(SLEEPSTUDY, new_levels="error")
    np.testing.assert_array_equal(np.asarray(term.z).reshape(-1), SLEEPSTUDY["Days"].to_numpy(dtype=float) ** 2)
