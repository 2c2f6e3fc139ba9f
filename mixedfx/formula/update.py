"""R's ``update.formula`` and lme4's ``re.form``: formulas derived from a fitted one.

:func:`update_formula` applies R's ``.`` ("what was there") to an lme4 formula;
:func:`select_random_terms` says which random terms a ``re_form`` keeps.  Random terms
are matched by their parsed spec (grouping factor and expression), never by their text,
so that ``(1|g)`` matches ``(1 | g)``.
"""

from __future__ import annotations

import math

from mixedfx.exceptions import FormulaError
from mixedfx.formula.parser import parse_formula
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec

__all__ = ["update_formula", "select_random_terms"]

_NO_RANDOM = {"~0", "~-1", "NA", "~NA", "NULL~0"}


def update_formula(old: str | FormulaSpec, new: str) -> str:
    """A new formula from an old one and R's update syntax, as R's ``update.formula``.

    In ``new``, a ``.`` on either side stands for that side of ``old``: ``"~ . - x"``
    drops the fixed term ``x`` (formulaic removes it from ``x * z`` too),
    ``". ~ . + (1 | g)"`` adds a random term, ``"~ . - (1 | g)"`` drops one.  A
    left-hand side left out keeps the old response.  Without a ``.`` on the right,
    the new right-hand side replaces the old one.

    Parameters
    ----------
    old : str or FormulaSpec
        The formula to update.
    new : str
        The update, e.g. ``"~ . - x"``.

    Returns
    -------
    str
        The updated formula (lme4's expansions, such as ``a/b``, written out).

    Raises
    ------
    FormulaError
        If ``new`` is not a formula, or drops a random term that ``old`` lacks.

    Examples
    --------
    >>> import mixedfx
    >>> from mixedfx.formula.update import update_formula
    >>> update_formula("y ~ x + z + (1 | g)", "~ . - z")
    'y ~ x + (1 | g)'
    >>> update_formula("y ~ x * z + (1 | g)", "~ . - x:z")  # formulaic removes x:z from x * z
    'y ~ x * z - x:z + (1 | g)'
    >>> update_formula("y ~ x + (1 | g)", "log(y) ~ . + (0 + x|g) - (1|g)")
    'log(y) ~ x + (0 + x | g)'
    """
    old_spec = old if isinstance(old, FormulaSpec) else parse_formula(old)
    if not isinstance(new, str) or "~" not in new:
        raise FormulaError(f"an update formula needs a '~', e.g. '~ . - x'; got {new!r}")
    lhs, rhs = (part.strip() for part in new.split("~", 1))
    response = old_spec.response if lhs in ("", ".") else lhs
    pieces = _signed_pieces(rhs, new)
    if "." not in [text for _, text in pieces]:
        return f"{response} ~ {rhs}" if response else f"~ {rhs}"
    fixed = _signed_pieces(old_spec.fixed, old_spec.text) + [("+", f"offset({o})") for o in old_spec.offsets]
    random = list(old_spec.random)
    for sign, text in pieces:
        if text == ".":
            continue
        if text.startswith("(") and "|" in text:
            random = _update_random(random, sign, text, new)
        elif sign == "-" and ("+", text) in fixed:
            fixed.remove(("+", text))  # a term written out: drop it; otherwise formulaic drops it
        else:
            fixed.append((sign, text))
    body = " ".join(f"{sign} {text}" for sign, text in fixed).removeprefix("+ ") or "1"
    body = " + ".join([body] + [str(term) for term in random])
    return f"{response} ~ {body}" if response else f"~ {body}"


def _signed_pieces(rhs: str, formula: str) -> list[tuple[str, str]]:
    """The top-level ``+``/``-`` separated pieces of a right-hand side, with their signs."""
    pieces, depth, sign, start = [], 0, "+", 0
    for i, char in enumerate(rhs + "+"):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise FormulaError(f"unbalanced parentheses in {formula!r}")
        if i == len(rhs) or (depth == 0 and char in "+-"):
            text = rhs[start:i].strip()
            if text:
                pieces.append((sign, text))
            sign, start = (char if i < len(rhs) else "+"), i + 1
    return pieces


def _update_random(random: list, sign: str, text: str, formula: str) -> list:
    """Add or remove the random terms written in ``text``."""
    terms = parse_formula(f"~ {text}").random
    for term in terms:
        match = [old for old in random if _same_term(old, term)]
        if sign == "+" and not match:
            random.append(term)
        elif sign == "-":
            if not match:
                raise FormulaError(f"cannot drop random term {term.text!r}: the formula has no such term "
                                   f"(it has {', '.join(map(str, random)) or 'none'})", formula=formula)
            random = [old for old in random if old not in match]
    return random


def _normal_expr(expr: str) -> str:
    """A term's left side without spaces, with lme4's implied intercept written out."""
    text = "".join(expr.split())
    if text in ("1", "0", "-1") or text.startswith(("0+", "1+", "-1+")) or text.endswith(("-1", "+0")):
        return text
    return f"1+{text}"


def _same_term(a: RandomTermSpec, b: RandomTermSpec) -> bool:
    return a.grouping == b.grouping and _normal_expr(a.expr) == _normal_expr(b.expr)


def select_random_terms(spec: FormulaSpec, re_form) -> tuple[bool, ...]:
    """Which of a model's random terms a ``re_form`` keeps, as lme4's ``re.form``.

    Parameters
    ----------
    spec : FormulaSpec
        The model's formula.
    re_form : None, str or float
        ``None``: every random term; ``"~0"``, ``"NA"`` or ``numpy.nan``: none (the
        population level); a formula such as ``"~ (1 | g1)"``: the terms it names.

    Returns
    -------
    tuple of bool
        One per term of ``spec.random``.

    Raises
    ------
    FormulaError
        If ``re_form`` names a random term the model lacks, or is not a formula.

    Examples
    --------
    >>> import mixedfx
    >>> from mixedfx.formula.update import select_random_terms
    >>> spec = mixedfx.parse_formula("y ~ x + (1 | g1) + (x | g2)")
    >>> select_random_terms(spec, None), select_random_terms(spec, "~0")
    ((True, True), (False, False))
    >>> select_random_terms(spec, "~(1+x|g2)")
    (False, True)
    """
    if re_form is None:
        return (True,) * len(spec.random)
    if isinstance(re_form, float) and math.isnan(re_form):
        return (False,) * len(spec.random)
    if not isinstance(re_form, str):
        raise FormulaError(f"re_form must be None, '~0', 'NA' or a formula of random terms, got {re_form!r}")
    if "".join(re_form.split()) in _NO_RANDOM:
        return (False,) * len(spec.random)
    if "~" not in re_form:
        raise FormulaError(f"re_form must be a one-sided formula such as '~ (1 | g)', got {re_form!r}")
    wanted = parse_formula(re_form).random
    for term in wanted:
        if not any(_same_term(term, have) for have in spec.random):
            raise FormulaError(f"re_form names the random term {term.text!r}, which the model does not have "
                               f"(its random terms: {', '.join(map(str, spec.random)) or 'none'})",
                               formula=re_form, position=term.position)
    return tuple(any(_same_term(term, have) for term in wanted) for have in spec.random)
