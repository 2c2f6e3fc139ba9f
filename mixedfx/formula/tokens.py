"""A character-level tokenizer for lme4 formulas.

The tokenizer is deliberately small: it recognises names (R and Python style, with
dots), back-quoted names, numbers, quoted strings, brackets and the operators that
appear in formulas.  It records every token's character span, so the parser can slice
the original text (the fixed part is handed to formulaic verbatim) and point at the
exact position of an error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mixedfx.exceptions import FormulaError

__all__ = ["TokenKind", "Token", "tokenize"]


class TokenKind(enum.Enum):
    NAME = "name"
    NUMBER = "number"
    STRING = "string"
    OPERATOR = "operator"
    LPAREN = "("
    RPAREN = ")"
    LBRACKET = "["
    RBRACKET = "]"
    LBRACE = "{"
    RBRACE = "}"
    COMMA = ","


@dataclass(frozen=True)
class Token:
    """One token: its kind, its text, and its ``[start, end)`` span in the formula."""

    kind: TokenKind
    text: str
    start: int
    end: int

    def is_op(self, *texts: str) -> bool:
        return self.kind is TokenKind.OPERATOR and self.text in texts


_OPENERS = {"(": TokenKind.LPAREN, "[": TokenKind.LBRACKET, "{": TokenKind.LBRACE}
_CLOSERS = {")": TokenKind.RPAREN, "]": TokenKind.RBRACKET, "}": TokenKind.RBRACE}
# Longest first, so that "||" wins over "|" and "**" over "*".
_OPERATORS = (
    "%in%", "||", "**", "==", "!=", "<=", ">=", "&&",
    "~", "+", "-", "*", "/", ":", "^", "|", "=", "<", ">", "!", "&", "@", "%", ".", "$",
)


def _is_name_start(ch: str) -> bool:
    return ch.isalpha() or ch == "_" or ch == "."


def _is_name_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_."


def tokenize(formula: str) -> list[Token]:
    """Split ``formula`` into tokens.

    Parameters
    ----------
    formula : str
        The formula text.

    Returns
    -------
    list of Token
        Tokens in order; whitespace is dropped.

    Raises
    ------
    FormulaError
        On a character that cannot start any token, or an unterminated string or
        back-quoted name.

    Examples
    --------
    >>> from mixedfx.formula.tokens import tokenize
    >>> [t.text for t in tokenize("y ~ x + (1 | g)")]
    ['y', '~', 'x', '+', '(', '1', '|', 'g', ')']
    """
    if not isinstance(formula, str):
        raise FormulaError(f"a formula must be a string, got {type(formula).__name__}")
    tokens: list[Token] = []
    i, n = 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch.isspace():
            i += 1
            continue
        start = i
        if ch.isdigit() or (ch == "." and i + 1 < n and formula[i + 1].isdigit()):
            i = _scan_number(formula, i)
            tokens.append(Token(TokenKind.NUMBER, formula[start:i], start, i))
        elif _is_name_start(ch):
            while i < n and _is_name_char(formula[i]):
                i += 1
            text = formula[start:i]
            if text.strip(".") == "":
                # A lone "." (formulaic's "all other columns") is an operator-like token.
                tokens.append(Token(TokenKind.OPERATOR, text, start, i))
            else:
                tokens.append(Token(TokenKind.NAME, text, start, i))
        elif ch == "`":
            end = formula.find("`", i + 1)
            if end < 0:
                raise FormulaError("unterminated back-quoted name", formula=formula, position=start)
            if end == i + 1:
                raise FormulaError("empty back-quoted name", formula=formula, position=start)
            i = end + 1
            tokens.append(Token(TokenKind.NAME, formula[start:i], start, i))
        elif ch in "'\"":
            i = _scan_string(formula, i)
            tokens.append(Token(TokenKind.STRING, formula[start:i], start, i))
        elif ch in _OPENERS:
            i += 1
            tokens.append(Token(_OPENERS[ch], ch, start, i))
        elif ch in _CLOSERS:
            i += 1
            tokens.append(Token(_CLOSERS[ch], ch, start, i))
        elif ch == ",":
            i += 1
            tokens.append(Token(TokenKind.COMMA, ch, start, i))
        else:
            for op in _OPERATORS:
                if formula.startswith(op, i):
                    i += len(op)
                    tokens.append(Token(TokenKind.OPERATOR, op, start, i))
                    break
            else:
                raise FormulaError(f"unexpected character {ch!r}", formula=formula, position=start)
    return tokens


def _scan_number(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isdigit():
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i].isdigit():
            i += 1
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and text[j].isdigit():
            i = j
            while i < n and text[i].isdigit():
                i += 1
    return i


def _scan_string(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    raise FormulaError("unterminated string", formula=text, position=i)
