"""Parser for lme4 mixed-model formulas.

The grammar handled here is the part formulaic does not know: the random-effect bars.

.. code-block:: text

    formula   := [response] "~" rhs
    rhs       := summand (("+" | "-") summand)*
    summand   := random | offset | fixed
    offset    := "offset" "(" expression ")"
    random    := "(" expr ("|" | "||") grouping ")"
               | structure "(" expr "|" grouping ("," [name "="] value)* ")"
    structure := us | diag | homdiag | cs | homcs | ar1 | toep | ou | exp | gau | mat | rr   (glmmTMB's;
                 hetar1, propto, equalto are read and refused as not yet supported)
    ou, exp, gau and mat take numeric coordinate columns and no intercept: exp(x + y + 0 | g)
    rr takes its rank, a positive integer: rr(x | g, d = 2) or rr(x | g, 2); 2 when not written
    grouping  := nest ("/" nest)*          a/b   ->  a, a:b
    nest      := name (":" name)*          a:b   ->  interaction of a and b

Every summand that is not a random term is fixed, and is handed to formulaic verbatim
(sliced from the original text), so the fixed side supports everything formulaic does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mixedfx.exceptions import FormulaError, did_you_mean
from mixedfx.formula.spec import FormulaSpec, RandomTermSpec
from mixedfx.formula.tokens import Token, TokenKind, tokenize

__all__ = ["parse_formula"]

_OPEN = {TokenKind.LPAREN: TokenKind.RPAREN, TokenKind.LBRACKET: TokenKind.RBRACKET,
         TokenKind.LBRACE: TokenKind.RBRACE}
_CLOSE = {v: k for k, v in _OPEN.items()}
# glmmTMB's covariance structures, written name(expr | g) (lme4 2.0 spells us, diag, cs, ar1 alike).
_GLMMTMB_STRUCTURES = ("us", "diag", "homdiag", "cs", "homcs", "ar1", "toep", "exp", "gau", "mat", "ou", "rr",
                       "hetar1", "propto", "equalto")
# The structures mixedfx fits (mixedfx.model.covariance); the others are read and refused.
_SUPPORTED_STRUCTURES = ("us", "diag", "homdiag", "cs", "homcs", "ar1", "toep", "ou", "exp", "gau", "mat", "rr")
# The arguments a structure takes after its term, each a positive integer: rr(x | g, d = 2).
_STRUCTURE_ARGUMENTS = {"rr": ("d",)}
# Continuous structures: one coefficient per distinct point of numeric coordinate columns
# (glmmTMB's numFactor), how many columns (None: any number).
_COORDINATE_STRUCTURES = {"ou": 1, "exp": None, "gau": None, "mat": None}


def parse_formula(formula: str) -> FormulaSpec:
    """Parse an lme4 formula into a frozen :class:`FormulaSpec`.

    Parameters
    ----------
    formula : str
        For example ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.

    Returns
    -------
    FormulaSpec
        The response text, the fixed part for formulaic and the random terms.

    Raises
    ------
    FormulaError
        On any syntax error; the message shows the formula with a caret under the
        offending position.

    Examples
    --------
    >>> from mixedfx.formula import parse_formula
    >>> spec = parse_formula("y ~ service + (1 | s) + (1 | d)")
    >>> spec.response, spec.fixed, [t.group_name for t in spec.random]
    ('y', 'service', ['s', 'd'])
    >>> [t.group_name for t in parse_formula("y ~ (1 | a/b)").random]
    ['a', 'a:b']
    """
    return _Parser(formula).parse()


class _Parser:
    def __init__(self, formula: str):
        self.text = formula
        self.tokens = tokenize(formula)
        self.depth = self._bracket_depths()

    # -- helpers -------------------------------------------------------------------------
    def error(self, message: str, position: int) -> FormulaError:
        return FormulaError(message, formula=self.text, position=position)

    def _bracket_depths(self) -> list[int]:
        """Depth of each token (brackets count at their outer depth); checks balance."""
        stack: list[Token] = []
        depths = []
        for tok in self.tokens:
            if tok.kind in _OPEN:
                depths.append(len(stack))
                stack.append(tok)
            elif tok.kind in _CLOSE:
                if not stack:
                    raise self.error(f"unbalanced {tok.text!r}: nothing to close", tok.start)
                opener = stack.pop()
                if _OPEN[opener.kind] is not tok.kind:
                    raise self.error(
                        f"{tok.text!r} does not match {opener.text!r} at position {opener.start}",
                        tok.start,
                    )
                depths.append(len(stack))
            else:
                depths.append(len(stack))
        if stack:
            opener = stack[-1]
            raise self.error(f"unbalanced {opener.text!r}: it is never closed", opener.start)
        return depths

    def split_top(self, lo: int, hi: int, is_sep: Callable[[Token], bool], base_depth: int):
        """Split tokens[lo:hi] at separators at ``base_depth``; returns (segments, seps)."""
        segments, seps, start = [], [], lo
        for i in range(lo, hi):
            if self.depth[i] == base_depth and is_sep(self.tokens[i]):
                segments.append((start, i))
                seps.append(i)
                start = i + 1
        segments.append((start, hi))
        return segments, seps

    def span_text(self, lo: int, hi: int) -> str:
        return self.text[self.tokens[lo].start:self.tokens[hi - 1].end]

    def position_after(self, i: int) -> int:
        return self.tokens[i].end if i < len(self.tokens) else len(self.text)

    # -- grammar -------------------------------------------------------------------------
    def parse(self) -> FormulaSpec:
        if not self.tokens:
            raise FormulaError("empty formula", formula=self.text, position=0)
        tildes = [i for i, t in enumerate(self.tokens) if t.is_op("~")]
        if not tildes:
            raise FormulaError(
                "missing '~': a formula reads 'response ~ terms', e.g. 'y ~ x + (1 | g)'",
                formula=self.text,
            )
        for i in tildes:
            if self.depth[i] != 0:
                raise self.error("'~' inside brackets", self.tokens[i].start)
        if len(tildes) > 1:
            raise self.error("more than one '~'", self.tokens[tildes[1]].start)
        tilde = tildes[0]
        response = self.parse_response(tilde)
        if tilde + 1 >= len(self.tokens):
            raise self.error("nothing after '~': the right-hand side is empty", self.tokens[tilde].end)
        fixed_parts, random_terms, offsets = self.parse_rhs(tilde + 1, len(self.tokens))
        fixed = self.join_fixed(fixed_parts)
        return FormulaSpec(text=self.text, response=response, fixed=fixed, random=tuple(random_terms),
                           offsets=tuple(offsets))

    def parse_response(self, tilde: int) -> str | None:
        if tilde == 0:
            return None
        for i in range(tilde):
            if self.tokens[i].is_op("|", "||"):
                raise self.error("a bar '|' cannot appear in the response", self.tokens[i].start)
        return self.span_text(0, tilde)

    def parse_rhs(self, lo: int, hi: int):
        segments, seps = self.split_top(lo, hi, lambda t: t.is_op("+", "-"), 0)
        fixed_parts: list[tuple[str, str]] = []
        random_terms: list[RandomTermSpec] = []
        offsets: list[str] = []
        seen: dict[tuple, RandomTermSpec] = {}
        for k, (a, b) in enumerate(segments):
            sign = "+" if k == 0 else self.tokens[seps[k - 1]].text
            if a == b:
                if k == 0:  # a leading sign, as in "y ~ -1 + x" or "y ~ +x"
                    continue
                position = self.tokens[b].start if b < hi else self.position_after(seps[k - 1])
                raise self.error(f"missing term after {sign!r}", position)
            term = self.parse_random(a, b, sign)
            if term is None:
                offset = self.parse_offset(a, b, sign)
                if offset is not None:
                    offsets.append(offset)
                else:
                    fixed_parts.append((sign, self.span_text(a, b)))
                continue
            for t in term:
                key = (t.expr.replace(" ", ""), t.grouping)
                if key in seen:
                    raise self.error(f"random term {t} appears more than once", t.position)
                seen[key] = t
                random_terms.append(t)
        return fixed_parts, random_terms, offsets

    def parse_offset(self, a: int, b: int, sign: str) -> str | None:
        """``offset(expr)`` as a whole summand: returns ``expr``; else ``None``."""
        first = self.tokens[a]
        if not (first.kind is TokenKind.NAME and first.text == "offset"):
            return None
        if b - a < 3 or self.tokens[a + 1].kind is not TokenKind.LPAREN or self.tokens[b - 1].kind is not TokenKind.RPAREN \
                or any(self.depth[i] == self.depth[a] for i in range(a + 2, b - 1)):
            raise self.error("offset must be written as a whole term: offset(expression)", first.start)
        if sign == "-":
            raise self.error("an offset cannot be subtracted; negate its expression instead", first.start)
        if b - a == 3:
            raise self.error("empty offset()", self.tokens[a + 1].end)
        return self.span_text(a + 2, b - 1)

    def parse_random(self, a: int, b: int, sign: str) -> list[RandomTermSpec] | None:
        """Parse tokens[a:b] as a random term; ``None`` when the summand is fixed."""
        bars = [i for i in range(a, b) if self.tokens[i].is_op("|", "||")]
        if not bars:
            return None
        outer = [i for i in bars if self.depth[i] == 0]
        if outer:
            raise self.error(
                "a random-effect term must be in parentheses, as in '(1 | g)'",
                self.tokens[outer[0]].start,
            )
        first, last = self.tokens[a], self.tokens[b - 1]
        wrapped = (
            first.kind is TokenKind.LPAREN
            and last.kind is TokenKind.RPAREN
            and self.depth[a] == 0
            and all(self.depth[i] >= 1 for i in range(a + 1, b - 1))
        )
        top_bars = [i for i in bars if self.depth[i] == 1]
        if not wrapped:
            structured = self.parse_structure(a, b, sign)
            if structured is not None:
                return structured
        if not wrapped or not top_bars:
            raise self.error(
                "a random-effect term '(... | g)' cannot be combined with other terms by "
                "'*', ':', '^' or a function call; add it as its own term",
                self.tokens[bars[0]].start,
            )
        if sign == "-":
            raise self.error("a random-effect term cannot be subtracted", first.start)
        return self.build_terms(a + 1, top_bars, b - 1, text=self.span_text(a, b), position=first.start)

    def build_terms(self, lo: int, top_bars: list[int], hi: int, *, text: str, position: int,
                    covariance: str = "us", covariance_args: tuple = (),
                    coordinates: tuple = ()) -> list[RandomTermSpec]:
        """The terms of ``expr | grouping`` in tokens[lo:hi], ``top_bars`` its bars."""
        if len(top_bars) > 1:
            raise self.error("more than one bar in one random-effect term", self.tokens[top_bars[1]].start)
        bar = top_bars[0]
        if bar == lo:
            raise self.error(
                "empty left side of the bar: write '(1 | g)' for a random intercept",
                self.tokens[bar].start,
            )
        if bar == hi - 1:
            raise self.error("missing grouping factor after the bar", self.tokens[bar].end)
        expr_tokens = self.tokens[lo:bar]
        expr = self.span_text(lo, bar)
        groupings = self.parse_grouping(bar + 1, hi)
        expr_names = {_column_name(t) for t in expr_tokens if t.kind is TokenKind.NAME}
        for grouping in groupings:
            for name in grouping:
                if name in expr_names:
                    raise self.error(
                        f"{name!r} appears on both sides of the bar", self.tokens[bar].start
                    )
        intercept_only = len(expr_tokens) == 1 and expr_tokens[0].text == "1"
        return [
            RandomTermSpec(
                expr=expr,
                grouping=grouping,
                correlated=self.tokens[bar].text == "|",
                intercept_only=intercept_only,
                text=text,
                position=position,
                covariance=covariance,
                covariance_args=covariance_args,
                coordinates=coordinates,
            )
            for grouping in groupings
        ]

    def parse_structure(self, a: int, b: int, sign: str) -> list[RandomTermSpec] | None:
        """glmmTMB's ``ar1(0 + times | g)``, ``rr(x | g, d = 2)`` and friends; ``None``
        when tokens[a:b] is not a call wrapping a bar."""
        first = self.tokens[a]
        called = (first.kind is TokenKind.NAME and a + 1 < b and self.tokens[a + 1].kind is TokenKind.LPAREN
                  and self.tokens[b - 1].kind is TokenKind.RPAREN
                  and all(self.depth[i] > self.depth[a] for i in range(a + 2, b - 1)))
        inner = self.depth[a] + 1
        if not called or not any(self.tokens[i].is_op("|", "||") and self.depth[i] == inner for i in range(a + 2, b - 1)):
            return None
        name = first.text
        if name not in _GLMMTMB_STRUCTURES:
            raise self.error(
                f"unknown covariance structure {name}(...); mixedfx reads glmmTMB's "
                f"{', '.join(_SUPPORTED_STRUCTURES)}." + did_you_mean(name, _GLMMTMB_STRUCTURES), first.start)
        if sign == "-":
            raise self.error("a random-effect term cannot be subtracted", first.start)
        commas = [i for i in range(a + 2, b - 1) if self.tokens[i].kind is TokenKind.COMMA and self.depth[i] == inner]
        end = commas[0] if commas else b - 1
        bars = [i for i in range(a + 2, end) if self.tokens[i].is_op("|", "||") and self.depth[i] == inner]
        if not bars:
            raise self.error(f"{name}(...) needs a term 'expr | g' as its first argument", self.tokens[a + 2].start)
        if self.tokens[bars[0]].text == "||":
            raise self.error(f"{name}(...) takes a single bar: write {name}(expr | g)", self.tokens[bars[0]].start)
        arguments, starts = [], []
        for lo, hi in zip(commas, commas[1:] + [b - 1]):
            if hi - lo >= 4 and self.tokens[lo + 2].is_op("="):
                arguments.append((self.tokens[lo + 1].text, self.span_text(lo + 3, hi)))
            elif hi > lo + 1:
                arguments.append(("", self.span_text(lo + 1, hi)))
            else:
                raise self.error(f"empty argument of {name}(...)", self.tokens[lo].end)
            starts.append(self.tokens[lo + 1].start)
        if name not in _SUPPORTED_STRUCTURES:
            raise self.error(
                f"glmmTMB's covariance structure {name}(...) is not yet supported by mixedfx; it fits "
                f"{', '.join(_SUPPORTED_STRUCTURES)}", first.start)
        arguments = self.check_structure_arguments(name, arguments, starts,
                                                   self.tokens[commas[0]].start if commas else 0)
        coordinates = self.parse_coordinates(name, a, bars[0]) if name in _COORDINATE_STRUCTURES else ()
        return self.build_terms(a + 2, bars, end, text=self.span_text(a, b), position=first.start,
                                covariance=name, covariance_args=tuple(arguments), coordinates=coordinates)

    def check_structure_arguments(self, name: str, arguments: list, starts: list, comma: int) -> list:
        """A structure's arguments after its term: those it takes (``rr``'s ``d``), by name
        or in order, each once and a positive integer; none for the others.  Returns them
        as ``(name, value)`` pairs, named (``rr(x | g, 1)`` gives ``[("d", "1")]``)."""
        allowed = _STRUCTURE_ARGUMENTS.get(name, ())
        if arguments and not allowed:
            raise self.error(f"{name}(...) takes no arguments after the term", comma)
        if len(arguments) > len(allowed):
            raise self.error(f"{name}(...) takes {len(allowed)} argument(s) after the term: "
                             f"{', '.join(allowed)}", starts[len(allowed)])
        seen, named = set(), []
        for k, ((key, value), start) in enumerate(zip(arguments, starts)):
            key = key or allowed[k]
            if key not in allowed:
                raise self.error(f"{name}(...) has no argument {key!r}; it takes {', '.join(allowed)}"
                                 + did_you_mean(key, allowed), start)
            if key in seen:
                raise self.error(f"{name}(...) has its argument {key!r} twice", start)
            seen.add(key)
            if not value.isdigit() or int(value) < 1:
                raise self.error(f"{name}(...)'s {key} must be a positive integer, not {value!r}", start)
            named.append((key, value))
        return named

    def parse_coordinates(self, name: str, a: int, bar: int) -> tuple[str, ...]:
        """The coordinate columns of ``exp(x + y + 0 | g)`` (tokens a+2 .. bar): column
        names joined by ``+``, and ``0 +`` or ``- 1`` (no intercept)."""
        example = f"write {name}(x + y + 0 | g)" if _COORDINATE_STRUCTURES[name] is None else f"write {name}(times + 0 | g)"
        names, no_intercept, sign = [], False, "+"
        for i in range(a + 2, bar):
            tok = self.tokens[i]
            if tok.is_op("+", "-"):
                sign = tok.text
                continue
            if tok.kind is TokenKind.NUMBER and tok.text in ("0", "1"):
                if (tok.text == "0") == (sign == "+"):
                    no_intercept = True
                    continue
                raise self.error(f"{name}() takes coordinate columns and no intercept: {example}", tok.start)
            if tok.kind is not TokenKind.NAME or sign == "-" or not self.tokens[i + 1].is_op("+", "-", "|"):
                raise self.error(f"{name}() takes numeric coordinate columns joined by '+' (glmmTMB's "
                                 f"numFactor): {example}", tok.start)
            names.append(_column_name(tok))
        if not names:
            raise self.error(f"{name}() needs numeric coordinate columns left of the bar: {example}",
                             self.tokens[bar].start)
        if not no_intercept:
            raise self.error(f"{name}() takes coordinate columns and no intercept: {example}",
                             self.tokens[a].start)
        wanted = _COORDINATE_STRUCTURES[name]
        if wanted is not None and len(names) != wanted:
            raise self.error(f"{name}() takes one coordinate column (the times): {example}", self.tokens[a].start)
        return tuple(names)

    def parse_grouping(self, lo: int, hi: int) -> list[tuple[str, ...]]:
        """``a``, ``a:b``, ``a/b`` (nested: a, a:b), ``a/b/c`` and ``a:b/c``."""
        base = self.depth[lo]
        for i in range(lo, hi):
            tok = self.tokens[i]
            if tok.kind is not TokenKind.NAME and not tok.is_op(":", "/"):
                raise self.error(
                    "a grouping factor must be a column name or an interaction/nesting of "
                    "column names such as 'a:b' or 'a/b'",
                    tok.start,
                )
        levels, seps = self.split_top(lo, hi, lambda t: t.is_op("/"), base)
        prefix: tuple[str, ...] = ()
        groupings = []
        for a, b in levels:
            names = self.parse_interaction(a, b, seps)
            repeated = [name for name in names if name in prefix]
            if repeated:
                raise self.error(f"{repeated[0]!r} is nested in itself", self.tokens[a].start)
            prefix = prefix + names
            groupings.append(prefix)
        return groupings

    def parse_interaction(self, a: int, b: int, seps: Sequence[int]) -> tuple[str, ...]:
        if a == b:
            pos = self.tokens[a].start if a < len(self.tokens) else len(self.text)
            raise self.error("missing grouping factor name", pos)
        names = []
        expect_name = True
        for i in range(a, b):
            tok = self.tokens[i]
            if expect_name != (tok.kind is TokenKind.NAME):
                raise self.error(
                    "expected a column name" if expect_name else "expected ':' or '/'", tok.start
                )
            if expect_name:
                names.append(_column_name(tok))
            expect_name = not expect_name
        if expect_name:
            raise self.error("missing grouping factor name after ':'", self.tokens[b - 1].end)
        if len(set(names)) != len(names):
            raise self.error("the same column appears twice in a grouping", self.tokens[a].start)
        return tuple(names)

    @staticmethod
    def join_fixed(parts: list[tuple[str, str]]) -> str:
        if not parts:
            return "1"
        out = []
        for k, (sign, text) in enumerate(parts):
            if k == 0:
                out.append(text if sign == "+" else f"-{text}")
            else:
                out.append(f"{sign} {text}")
        return " ".join(out)


def _column_name(token: Token) -> str:
    text = token.text
    if text.startswith("`") and text.endswith("`"):
        return text[1:-1]
    return text
