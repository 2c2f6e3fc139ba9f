"""The response: one expression, or lme4's ``cbind(successes, failures)``.

A response that is a plain column is taken as it is (class labels stay labels, for the
classifier); any other expression is evaluated by formulaic as a Python expression of
the columns, such as ``log(y)`` or ``size - incidence``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mixedfx.design.fixed import evaluate_numeric
from mixedfx.exceptions import DataError, FormulaError, did_you_mean
from mixedfx.formula.tokens import TokenKind, tokenize

__all__ = ["ResponseDesign"]


@dataclass(frozen=True)
class ResponseDesign:
    """How the response is read from a data frame.

    Attributes
    ----------
    text : str
        The left-hand side as written.
    parts : tuple of str
        One expression, or the successes and failures of ``cbind(...)``.
    is_cbind : bool

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.design import ResponseDesign
    >>> frame = pd.DataFrame({"incidence": [2, 0], "size": [10, 4]})
    >>> response = ResponseDesign.from_text("cbind(incidence, size - incidence)")
    >>> values, trials = response.evaluate(frame)
    >>> values.tolist(), trials.tolist()
    ([2.0, 0.0], [10.0, 4.0])
    """

    text: str
    parts: tuple[str, ...]
    is_cbind: bool = False

    @classmethod
    def from_text(cls, text: str) -> ResponseDesign:
        """Parse the left-hand side of a formula."""
        tokens = tokenize(text)
        if tokens and tokens[0].kind is TokenKind.NAME and tokens[0].text == "cbind":
            if len(tokens) < 3 or tokens[1].kind is not TokenKind.LPAREN or tokens[-1].kind is not TokenKind.RPAREN:
                raise FormulaError("cbind must read cbind(successes, failures)", formula=text, position=0)
            depth, commas = 0, []
            for i, token in enumerate(tokens[2:-1], start=2):
                if token.kind in (TokenKind.LPAREN, TokenKind.LBRACKET, TokenKind.LBRACE):
                    depth += 1
                elif token.kind in (TokenKind.RPAREN, TokenKind.RBRACKET, TokenKind.RBRACE):
                    depth -= 1
                elif token.kind is TokenKind.COMMA and depth == 0:
                    commas.append(i)
            if len(commas) != 1:
                raise FormulaError("cbind takes exactly two arguments: cbind(successes, failures)",
                                   formula=text, position=tokens[1].start)
            comma = commas[0]
            if comma == 2 or comma == len(tokens) - 2:
                raise FormulaError("empty argument in cbind(successes, failures)", formula=text,
                                   position=tokens[comma].start)
            successes = text[tokens[2].start:tokens[comma - 1].end]
            failures = text[tokens[comma + 1].start:tokens[-2].end]
            return cls(text=text, parts=(successes, failures), is_cbind=True)
        return cls(text=text, parts=(text,))

    def evaluate(self, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """The response values, and the binomial trials for ``cbind``.

        Raises
        ------
        DataError
            For a missing column, missing values, or a non-numeric expression.
        """
        if self.is_cbind:
            successes = self._numeric(self.parts[0], data)
            failures = self._numeric(self.parts[1], data)
            return successes, successes + failures
        return self._values(self.parts[0], data), None

    def _values(self, expression: str, data: pd.DataFrame) -> np.ndarray:
        column = expression.strip().strip("`")
        if column in data.columns:
            values = data[column]
            missing = int(pd.isna(values).sum())
            if missing:
                raise DataError(f"the response {column!r} has {missing} missing value(s); drop those rows first")
            if isinstance(values.dtype, pd.CategoricalDtype):
                return values.array  # a pandas.Categorical: the category order is kept for classifiers
            return values.to_numpy()
        if expression.strip().isidentifier():
            raise DataError(f"the response column {expression.strip()!r} is not in the data."
                            + did_you_mean(expression.strip(), data.columns))
        return self._numeric(expression, data)

    def _numeric(self, expression: str, data: pd.DataFrame) -> np.ndarray:
        column = expression.strip().strip("`")
        if column in data.columns:
            values = data[column]
            if pd.isna(values).any():
                raise DataError(f"the response {column!r} has {int(pd.isna(values).sum())} missing value(s)")
            if values.dtype.kind not in "biuf":
                raise DataError(f"the response {column!r} must be numeric, got dtype {values.dtype}")
            return values.to_numpy(dtype=np.float64)
        return evaluate_numeric(expression, data, role="response")[0]
