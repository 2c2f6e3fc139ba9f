"""Exceptions and warnings raised by mixedfx.

Every error a user can trigger with bad input is a :class:`MixedFXError`, and also a
``ValueError`` or ``TypeError`` so that generic handlers keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning

__all__ = [
    "MixedFXError",
    "FormulaError",
    "DataError",
    "NewLevelError",
    "ParameterError",
    "FitError",
    "ConvergenceWarning",
    "SamplerWarning",
    "DataWarning",
]


class MixedFXError(Exception):
    """Base class of every exception mixedfx raises on purpose."""


class FormulaError(MixedFXError, ValueError):
    """A formula that cannot be parsed or does not fit the data.

    Parameters
    ----------
    message : str
        What is wrong.
    formula : str, optional
        The formula text.  When given with ``position``, the message shows the formula
        with a caret under the offending character.
    position : int, optional
        Zero-based character offset into ``formula``.

    Examples
    --------
    >>> from mixedfx import FormulaError
    >>> print(FormulaError("unexpected ')'", formula="y ~ x)", position=5))
    unexpected ')' at position 5
        y ~ x)
             ^
    """

    def __init__(self, message: str, *, formula: str | None = None, position: int | None = None):
        self.message = message
        self.formula = formula
        self.position = position
        super().__init__(self._render())

    def _render(self) -> str:
        if self.formula is None or self.position is None:
            if self.formula is not None:
                return f"{self.message}\n    {self.formula}"
            return self.message
        return (
            f"{self.message} at position {self.position}\n"
            f"    {self.formula}\n"
            f"    {' ' * self.position}^"
        )

    def __reduce__(self):
        return (_rebuild_formula_error, (self.message, self.formula, self.position))


def _rebuild_formula_error(message, formula, position):
    return FormulaError(message, formula=formula, position=position)


class DataError(MixedFXError, ValueError):
    """The data do not fit the model: a missing column, bad values, too few levels."""


class NewLevelError(DataError):
    """A grouping or categorical level at predict time that was not seen in ``fit``."""


class ParameterError(MixedFXError, ValueError):
    """An estimator or function argument with an invalid value."""


class FitError(MixedFXError, RuntimeError):
    """The fit broke down numerically (non-finite values); no estimates are returned."""


class ConvergenceWarning(_SklearnConvergenceWarning):
    """Monte Carlo EM stopped before reaching its convergence criterion.

    A subclass of :class:`sklearn.exceptions.ConvergenceWarning`, so scikit-learn's
    warning filters apply to it too.
    """


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or an empty string."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" Did you mean {matches[0]!r}?" if matches else ""


class SamplerWarning(UserWarning):
    """The E-step's chains did not mix well enough for their draws to be trusted.

    Raised when the R-hat (between chains) of the random effects' mean squares over
    the kept draws exceeds 1.05 plus its chance level (see
    :attr:`mixedfx.FitSummary.rhat` and ``rhat_noise``).  The estimates average
    many EM iterations and are judged by the Monte Carlo error rule; this warning
    concerns the draws themselves: the conditional means and sds of the random
    effects, :meth:`~mixedfx.MixedEffectsRegressor.to_arviz` and the intervals.
    """


class DataWarning(UserWarning):
    """The data were changed on the way in, or look like they will hurt the fit.

    Raised when ``fit`` drops rows with missing values (``missing="drop"``, lme4's
    ``na.omit``), and when fixed-effect columns are on very different scales (lme4's
    "Some predictor variables are on very different scales: consider rescaling").

    Examples
    --------
    >>> import warnings
    >>> from mixedfx import DataWarning
    >>> issubclass(DataWarning, UserWarning)
    True
    """
