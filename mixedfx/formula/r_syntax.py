"""R's spellings inside a formula, rewritten token by token into formulaic's grammar.

An lme4 formula pasted from R must mean what it means in R.  The fixed part is handed to
formulaic, whose function calls are Python code, where ``^`` is a bitwise XOR: R's
``I(Days^2)`` would silently become ``Days XOR 2``.  :func:`translate_r` rewrites, at the
token level,

* ``^`` inside any function call's arguments to ``**`` (R's power), while a ``^`` between
  terms keeps R's meaning, interactions up to that order (formulaic's meaning too);
* ``TRUE``/``FALSE``/``NULL`` inside calls to ``True``/``False``/``None``;
* R's dotted function names (``as.factor``, ``as.numeric``) to the names the design
  layer's evaluation context provides, and R's dotted argument names
  (``Boundary.knots``) to Python ones;
* dotted column names (``Sepal.Length``, legal bare names in R) to back-quoted names;
* R's namespace prefixes (``splines::ns(x, 3)``) are dropped;

and refuses R constructs mixedfx has no equivalent for with a :class:`FormulaError` naming
the construct and the mixedfx spelling.  Python's spellings (``I(x**2)``, ``C(f)``,
``np.log(x)``, ``{x ** 2}``) pass unchanged; code inside ``{...}`` is never touched.

This module knows nothing about data: the functions the rewritten names refer to live
in the design layer's evaluation context.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixedfx.exceptions import FormulaError
from mixedfx.formula.tokens import Token, TokenKind, tokenize

__all__ = ["RTranslation", "translate_r", "r_deparse", "R_FUNCTION_NAMES", "R_CONSTRUCTS_WITHOUT_EQUIVALENT"]

#: R's dotted function (and argument) names, and the Python names the evaluation context
#: gives them.
R_FUNCTION_NAMES = {
    "as.factor": "as_factor",
    "as.numeric": "as_numeric",
    "as.integer": "as_numeric",
    "as.double": "as_numeric",
    "Boundary.knots": "Boundary_knots",
}

#: R constructs without a mixedfx equivalent, and what to write instead.
R_CONSTRUCTS_WITHOUT_EQUIVALENT = {
    "s": "mgcv's smooth s(x) has no mixedfx equivalent; use a regression spline such as "
         "formulaic's cr(x, df=5) or R's ns(x, df=5)",
    "interaction": "write the interaction of the columns with ':' instead, e.g. a:b",
    "ordered": "R's ordered() factor (polynomial contrasts) is spelled C(x, contr.poly) in mixedfx",
    "strata": "survival's strata() has no meaning in a mixed model; use factor(x) or a random "
              "term (1 | x)",
}

#: R's function names whose calls keep their text as written in column names (R's
#: ``ns(x, df = 3)``, not formulaic's normalized ``ns(x, df=3)``).
_R_NAMED_CALLS = frozenset({"factor", "relevel", "poly", "ns", "scale"}) | frozenset(R_FUNCTION_NAMES)
_NUMPY_PREFIXES = ("np.", "numpy.", "contr.")  # attributes of namespaces in the context
_R_CONSTANTS = {"TRUE": "True", "FALSE": "False", "NULL": "None"}


@dataclass(frozen=True)
class RTranslation:
    """A formula (or one expression) rewritten from R's spellings into formulaic's.

    Attributes
    ----------
    text : str
        The rewritten text, for formulaic.
    renamed : tuple of (str, str)
        Pairs ``(rewritten, original)`` of each top-level call whose text changed,
        e.g. ``("I(Days**2)", "I(Days^2)")``, or that calls an R-named function
        (``factor``, ``relevel``, ``poly``, ``ns``, ``scale``), so that design columns
        can be named as the formula was written.

    Examples
    --------
    >>> from mixedfx.formula import translate_r
    >>> translate_r("Days + I(Days^2) + poly(x, 2, raw = TRUE)").text
    'Days + I(Days**2) + poly(x, 2, raw = True)'
    >>> translate_r("Days + I(Days^2)").renamed
    (('I(Days**2)', 'I(Days^2)'),)
    """

    text: str
    renamed: tuple[tuple[str, str], ...] = ()


def translate_r(expression: str, *, code: bool = False) -> RTranslation:
    """Rewrite R's spellings in ``expression`` into formulaic's grammar.

    Parameters
    ----------
    expression : str
        A formula's right-hand side (or a part of it), e.g. ``"Days + I(Days^2)"``.
    code : bool, optional
        Treat the whole expression as code, as inside a function call (``^`` is a
        power everywhere).  For a response or an offset expression.  Default ``False``.

    Returns
    -------
    RTranslation
        The rewritten text and the calls renamed on the way.

    Raises
    ------
    FormulaError
        On an R construct mixedfx has no equivalent for (``s(x)``, ``interaction(a, b)``,
        ...), naming it and the mixedfx spelling.

    Examples
    --------
    >>> from mixedfx.formula import translate_r
    >>> translate_r("(a + b)^2 + log(x^2) + as.factor(f) + Petal.Width").text
    '(a + b)^2 + log(x**2) + as_factor(f) + `Petal.Width`'
    >>> translate_r("I(x**2) + C(f) + np.log(x) + {x ^ 2}").text  # Python's spellings pass unchanged
    'I(x**2) + C(f) + np.log(x) + {x ^ 2}'
    >>> translate_r("splines::ns(Days, 3)").text
    'ns(Days, 3)'
    >>> translate_r("y^2", code=True).text
    'y**2'
    """
    tokens = tokenize(expression)
    namespaces = _namespace_prefixes(tokens)
    pieces: list[str] = []
    renamed: list[tuple[str, str]] = []
    cursor = 0
    calls: list[int] = []  # paren depth at which each open call was opened
    depth = braces = 0
    call_start = None  # (text position, len(pieces), R-named?) of an open top-level call
    for i, token in enumerate(tokens):
        pieces.append(expression[cursor:token.start])
        cursor = token.end
        if i in namespaces:  # R's splines::ns(...) is ns(...)
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        in_code = code or bool(calls)
        text = token.text
        if token.kind is TokenKind.LBRACE:
            braces += 1
        elif token.kind is TokenKind.RBRACE:
            braces -= 1
        elif braces:
            pass  # Python code inside {...}: never rewritten
        elif token.kind is TokenKind.NAME and nxt is not None and nxt.kind is TokenKind.LPAREN:
            _refuse_construct(token, expression)
            if not calls and not code:
                start = tokens[i - 3].start if i - 1 in namespaces else token.start
                call_start = (start, len(pieces), token.text in _R_NAMED_CALLS)
            calls.append(depth)
            text = R_FUNCTION_NAMES.get(text, text)
        elif token.kind is TokenKind.LPAREN:
            depth += 1
        elif token.kind is TokenKind.RPAREN:
            depth -= 1
            if calls and calls[-1] == depth:
                calls.pop()
                if not calls and call_start is not None:
                    original = expression[call_start[0]:token.end]
                    rewritten = "".join(pieces[call_start[1]:]) + text
                    if rewritten != original or call_start[2]:
                        renamed.append((rewritten, r_deparse(original)))
                    call_start = None
        elif token.is_op("^") and in_code:
            text = "**"
        elif token.kind is TokenKind.NAME:
            text = _rewrite_name(token, nxt, in_code=in_code)
        pieces.append(text)
    pieces.append(expression[cursor:])
    return RTranslation(text="".join(pieces), renamed=tuple(renamed))


_UNSPACED = {"^", ":", "/", "::", "$", "@"}


def r_deparse(expression: str) -> str:
    """``expression`` spaced as R's ``deparse`` writes it, which names R's columns.

    Binary operators get a space on each side except ``^``, ``:`` and ``/``; commas are
    followed by one space; strings take double quotes.

    Examples
    --------
    >>> from mixedfx.formula.r_syntax import r_deparse
    >>> r_deparse("poly(Days,2,raw=TRUE)"), r_deparse("I(1+Days^3)"), r_deparse("relevel(f,ref='b')")
    ('poly(Days, 2, raw = TRUE)', 'I(1 + Days^3)', 'relevel(f, ref = "b")')
    >>> r_deparse("I(-x * 2) + splines::ns(x, 3)")
    'I(-x * 2) + splines::ns(x, 3)'
    """
    out: list[str] = []
    previous: Token | None = None
    for token in tokenize(expression):
        text = token.text
        unary = previous is None or previous.kind in (TokenKind.OPERATOR, TokenKind.LPAREN, TokenKind.COMMA)
        if token.kind is TokenKind.STRING and text.startswith("'"):
            text = '"' + text[1:-1].replace('"', '\\"') + '"'
        if token.kind is TokenKind.OPERATOR and not (text in _UNSPACED or (text in "+-" and unary)):
            out.append(f" {text} ")
        elif token.kind is TokenKind.COMMA:
            out.append(", ")
        else:
            out.append(text)
        previous = token
    return "".join(out)


def _namespace_prefixes(tokens: list[Token]) -> set[int]:
    """Positions of the tokens of R's ``pkg::`` prefixes (``splines::ns``, ``stats::poly``)."""
    dropped: set[int] = set()
    for i in range(len(tokens) - 4):
        name, first, second, called, paren = tokens[i:i + 5]
        if (name.kind is TokenKind.NAME and first.is_op(":") and second.is_op(":")
                and first.end == second.start and called.kind is TokenKind.NAME
                and paren.kind is TokenKind.LPAREN):
            dropped.update((i, i + 1, i + 2))
    return dropped


def _rewrite_name(token: Token, following: Token | None, *, in_code: bool) -> str:
    """A name that is not called: R's constants, dotted argument and column names."""
    text = token.text
    if in_code and text in _R_CONSTANTS:
        return _R_CONSTANTS[text]
    if following is not None and following.is_op("=") and text in R_FUNCTION_NAMES:
        return R_FUNCTION_NAMES[text]  # a dotted keyword argument: ns(x, Boundary.knots = ...)
    if "." in text.strip(".") and not text.startswith(_NUMPY_PREFIXES) and not text.startswith("`"):
        return f"`{text}`"  # R's dotted column name
    return text


def _refuse_construct(token: Token, expression: str) -> None:
    advice = R_CONSTRUCTS_WITHOUT_EQUIVALENT.get(token.text)
    if advice is not None:
        raise FormulaError(f"R's {token.text}(...) is not supported: {advice}",
                           formula=expression, position=token.start)
