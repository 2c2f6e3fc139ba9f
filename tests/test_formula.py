"""The lme4 formula parser: valid formulas and their specs, invalid ones and their errors."""

import pickle

import pytest

from mixedfx import FormulaError, parse_formula
from mixedfx.formula.tokens import TokenKind, tokenize


@pytest.mark.parametrize(
    "formula, response, fixed, groupings",
    [
        ("y ~ service + (1|s) + (1|d) + (1|dept)", "y", "service", [("s",), ("d",), ("dept",)]),
        ("y ~ service + (1 | s) + (1 | d) + (1 | dept)", "y", "service", [("s",), ("d",), ("dept",)]),
        ("y~x+(1|g)", "y", "x", [("g",)]),
        ("y ~ (1 | g)", "y", "1", [("g",)]),
        ("~ x + (1 | g)", None, "x", [("g",)]),
        ("y ~ 1 + (1 | g)", "y", "1", [("g",)]),
        ("y ~ 0 + x + (1 | g)", "y", "0 + x", [("g",)]),
        ("y ~ -1 + x + (1 | g)", "y", "-1 + x", [("g",)]),
        ("y ~ x - 1 + (1 | g)", "y", "x - 1", [("g",)]),
        ("y ~ x + (1 | g) - 1", "y", "x - 1", [("g",)]),
        ("y ~ x", "y", "x", []),
        ("y ~ +x", "y", "x", []),
        ("log(y) ~ x + (1 | g)", "log(y)", "x", [("g",)]),
        ("np.log(y) ~ np.log(x) + (1 | g)", "np.log(y)", "np.log(x)", [("g",)]),
        ("y ~ x * z + (1 | g)", "y", "x * z", [("g",)]),
        ("y ~ x:z + I(x ** 2) + (1 | g)", "y", "x:z + I(x ** 2)", [("g",)]),
        ("y ~ C(f, contr.treatment('b')) + (1 | g)", "y", "C(f, contr.treatment('b'))", [("g",)]),
        ("y ~ center(x) + scale(z) + (1 | g)", "y", "center(x) + scale(z)", [("g",)]),
        ("y ~ {x + 1} + (1 | g)", "y", "{x + 1}", [("g",)]),
        ("y ~ (x + z):w + (1 | g)", "y", "(x + z):w", [("g",)]),
        ("y ~ x + (1 | a:b)", "y", "x", [("a", "b")]),
        ("y ~ x + (1 | a/b)", "y", "x", [("a",), ("a", "b")]),
        ("y ~ x + (1 | a/b/c)", "y", "x", [("a",), ("a", "b"), ("a", "b", "c")]),
        ("y ~ x + (1 | a:b/c)", "y", "x", [("a", "b"), ("a", "b", "c")]),
        ("y ~ x + (1 | `my group`)", "y", "x", [("my group",)]),
        ("y ~ x + (1 | g.name_2)", "y", "x", [("g.name_2",)]),
        ("y ~ (1 | g) + x + (1 | h)", "y", "x", [("g",), ("h",)]),
    ],
)
def test_valid_formulas(formula, response, fixed, groupings):
    spec = parse_formula(formula)
    assert spec.response == response
    assert spec.fixed == fixed
    assert [term.grouping for term in spec.random] == groupings


def test_double_bar_and_term_details():
    spec = parse_formula("y ~ x + (1 || g) + (1 | h)")
    first, second = spec.random
    assert (first.correlated, second.correlated) == (False, True)
    assert first.intercept_only and second.intercept_only
    assert first.text == "(1 || g)" and first.position == 8
    assert first.group_name == "g" and str(second) == "(1 | h)"


@pytest.mark.parametrize(
    "formula, expr, correlated",
    [
        ("Reaction ~ Days + (Days | Subject)", "Days", True),
        ("y ~ x + (1 + x | g)", "1 + x", True),
        ("y ~ x + (0 + x | g)", "0 + x", True),
        ("y ~ x + (-1 + x | g)", "-1 + x", True),
        ("y ~ x + (x || g)", "x", False),
        ("y ~ (0 + C(f) | g)", "0 + C(f)", True),
        ("y ~ (1 + np.log(x) | g)", "1 + np.log(x)", True),
        ("y ~ (x + I(x ** 2) | g)", "x + I(x ** 2)", True),
    ],
)
def test_slope_terms_parse_with_their_expression(formula, expr, correlated):
    (term,) = parse_formula(formula).random
    assert term.expr == expr and term.correlated is correlated and not term.intercept_only


def test_spec_is_frozen_and_picklable():
    spec = parse_formula("y ~ x + (1 | g)")
    with pytest.raises(AttributeError):
        spec.fixed = "z"
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.grouping_columns == ("g",)
    assert str(spec) == "y ~ x + (1 | g)"


def test_tokenizer_spans_and_kinds():
    tokens = tokenize("y ~ x + (1 || g) + 'a b'")
    assert [t.text for t in tokens] == ["y", "~", "x", "+", "(", "1", "||", "g", ")", "+", "'a b'"]
    assert tokens[6].kind is TokenKind.OPERATOR and (tokens[6].start, tokens[6].end) == (11, 13)
    assert tokens[-1].kind is TokenKind.STRING


@pytest.mark.parametrize(
    "formula, position, message",
    [
        ("y ~ x + (1 | g", 8, "unbalanced '('"),
        ("y ~ x + 1 | g)", 13, "unbalanced ')'"),
        ("y ~ x)", 5, "unbalanced ')'"),
        ("y ~ (x]", 6, "does not match"),
        ("y ~ x + (1 | g))", 15, "unbalanced ')'"),
        ("y ~ x + 1 | g", 10, "must be in parentheses"),
        ("y ~ x * (1 | g)", 11, "cannot be combined"),
        ("y ~ (1 | g):x", 7, "cannot be combined"),
        ("y ~ I((1 | g))", 9, "cannot be combined"),
        ("y ~ ( | g)", 6, "empty left side of the bar"),
        ("y ~ (1 | )", 8, "missing grouping factor"),
        ("y ~ (1 | g | h)", 11, "more than one bar"),
        ("y ~ (1 | 2)", 9, "must be a column name"),
        ("y ~ (1 | f(g))", 10, "must be a column name"),
        ("y ~ (1 | a+b)", 10, "must be a column name"),
        ("y ~ (1 | a//b)", 11, "missing grouping factor name"),
        ("y ~ (1 | a:)", 11, "missing grouping factor name after ':'"),
        ("y ~ (1 | a:a)", 9, "same column appears twice"),
        ("y ~ (1 | a/a)", 11, "'a' is nested in itself"),
        ("y ~ (1 | a:b/b)", 13, "'b' is nested in itself"),
        ("y ~ (x | x)", 7, "both sides of the bar"),
        ("y ~ x - (1 | g)", 8, "cannot be subtracted"),
        ("y ~ (1 | g) + (1 | g)", 14, "appears more than once"),
        ("y ~ x +", 7, "missing term after '+'"),
        ("y ~ x + + z", 8, "missing term after '+'"),
        ("y ~ ", 3, "right-hand side is empty"),
        ("y ~ x ~ z", 6, "more than one '~'"),
        ("(y ~ x)", 3, "'~' inside brackets"),
        ("y | z ~ x", 2, "cannot appear in the response"),
        ("y ~ x # comment", 6, "unexpected character '#'"),
        ("y ~ x + 'abc", 8, "unterminated string"),
        ("y ~ `abc", 4, "unterminated back-quoted name"),
        ("", 0, "empty formula"),
    ],
)
def test_invalid_formulas_point_at_the_fault(formula, position, message):
    with pytest.raises(FormulaError) as caught:
        parse_formula(formula)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.position == position
    assert message in str(error)
    lines = str(error).splitlines()
    assert lines[-2] == f"    {formula}"
    assert lines[-1] == " " * (4 + position) + "^"


def test_missing_tilde_names_the_problem():
    with pytest.raises(FormulaError, match="missing '~'"):
        parse_formula("y + x")


def test_formula_must_be_a_string():
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(42)


def test_formula_error_pickles():
    try:
        parse_formula("y ~ (1 | g")
    except FormulaError as error:
        clone = pickle.loads(pickle.dumps(error))
        assert str(clone) == str(error) and clone.position == error.position
