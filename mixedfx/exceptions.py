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
    "ModelFormatError",
    "MemoryEstimateError",
    "ConvergenceWarning",
    "SamplerWarning",
    "DataWarning",
    "NewLevelWarning",
]


class MixedFXError(Exception):
    """Base class of every exception mixedfx raises on purpose.

    Examples
    --------
    >>> import mixedfx
    >>> try:
    ...     mixedfx.parse_formula("y ~ x + (1 | )")
    ... except mixedfx.MixedFXError as error:
    ...     print(type(error).__name__)
    FormulaError
    >>> [cls.__name__ for cls in (mixedfx.FormulaError, mixedfx.DataError, mixedfx.NewLevelError,
    ...                           mixedfx.ParameterError, mixedfx.FitError) if issubclass(cls, mixedfx.MixedFXError)]
    ['FormulaError', 'DataError', 'NewLevelError', 'ParameterError', 'FitError']
    """


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
    """The data do not fit the model: a missing column, bad values, too few levels.

    Examples
    --------
    >>> import mixedfx
    >>> mixedfx.MixedEffectsRegressor("y ~ xx + (1 | g)", verbose=0).fit(data)
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: column 'xx' used in the formula 'xx' is not in the data. Did you mean 'x'?
    """


class NewLevelError(DataError):
    """A grouping or categorical level at predict time that was not seen in ``fit``.

    Raised for a grouping level only when asked, with ``new_levels="error"``
    (lme4's ``allow.new.levels = FALSE``); by default such a level gets a zero random
    effect.

    Examples
    --------
    >>> import mixedfx
    >>> new = data.head(1).assign(g="a new group")
    >>> model.predict(new, new_levels="error")
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.NewLevelError: 1 row(s) have level(s) of grouping factor 'g' not seen in fit (e.g. 'a new group'); use new_levels='population' to predict them with a zero random effect
    >>> bool(model.predict(new)[0] == model.predict(new, include_random=False)[0])  # the default
    True
    """


class ParameterError(MixedFXError, ValueError):
    """An estimator or function argument with an invalid value.

    Estimators check their arguments in ``fit``, as scikit-learn's do.

    Examples
    --------
    >>> import mixedfx
    >>> mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", n_chains=0).fit(data)
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.ParameterError: n_chains must be an integer >= 1, got 0
    """


class FitError(MixedFXError, RuntimeError):
    """The fit broke down numerically (non-finite values); no estimates are returned.

    Examples
    --------
    An E-step whose HMC step size is far too large keeps diverging; once its retries
    (chains at the conditional modes, then smaller steps) are used up, the fit stops:

    >>> import mixedfx
    >>> from mixedfx.inference import MCEMOptions, fit_mcem
    >>> options = MCEMOptions(e_step="hmc", initial_step_size=1e4, max_retries=1)
    >>> try:
    ...     fit_mcem(model.model_, options=options, seed=0)
    ... except mixedfx.FitError as error:
    ...     print(str(error).split(" (")[0])
    Monte Carlo EM broke down in iterations 1-5
    """


class ModelFormatError(MixedFXError, ValueError):
    """A pickled or saved model that this mixedfx cannot read.

    Pickles and saved files carry the mixedfx version that wrote them and a format
    number; a model written in another format is refused with both versions named,
    instead of failing later with a confusing error.

    Examples
    --------
    >>> import pickle
    >>> import mixedfx
    >>> state = model.__getstate__()
    >>> state["_mixedfx_version"], state["_mixedfx_format"]
    ('0.1.0', 2)
    >>> old = mixedfx.MixedEffectsRegressor.__new__(mixedfx.MixedEffectsRegressor)
    >>> old.__setstate__({**state, "_mixedfx_version": "0.0.9", "_mixedfx_format": 0})
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.ModelFormatError: this model was written by mixedfx 0.0.9 (format 0); this is mixedfx 0.1.0 (format 2), which cannot read it: load it with mixedfx 0.0.9 and refit, or refit from the data
    """


class MemoryEstimateError(FitError):
    """A fit's estimated peak memory exceeds the memory it may use; nothing was allocated.

    Raised before Monte Carlo EM allocates (see
    :func:`~mixedfx.inference.memory.estimate_peak_bytes`), with the estimate, the
    memory the fit may use (``MCEMOptions.memory_limit_bytes``, else the available
    memory) and what to change.

    Examples
    --------
    >>> import mixedfx
    >>> from mixedfx.inference import MCEMOptions, fit_mcem
    >>> try:
    ...     fit_mcem(model.model_, options=MCEMOptions(memory_limit_bytes=10**9), seed=0)
    ... except mixedfx.MemoryEstimateError as error:
    ...     print(str(error).split(" (")[0])
    the fit's peak memory is estimated at 1.3 GB, more than the 1 GB it may use
    """


class ConvergenceWarning(_SklearnConvergenceWarning):
    """Monte Carlo EM stopped before reaching its convergence criterion.

    A subclass of :class:`sklearn.exceptions.ConvergenceWarning`, so scikit-learn's
    warning filters apply to it too.

    Examples
    --------
    Ten EM iterations are too few for the stopping rule; the fit still returns,
    with the estimates averaged over the last iterations:

    >>> import mixedfx
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     model = mixedfx.lmer("y ~ x + (1 | g)", data, max_iter=10, random_state=0, verbose=0)
    >>> [warning.category.__name__ for warning in caught]
    ['ConvergenceWarning']
    >>> model.fit_summary_.converged, model.fit_summary_.n_iter
    (False, 10)
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

    Examples
    --------
    Turn it into an error where the draws matter; this fit's chains agree:

    >>> import mixedfx
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", mixedfx.SamplerWarning)
    ...     model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> summary = model.fit_summary_
    >>> bool(summary.rhat <= 1.05 + summary.rhat_noise)
    True
    """


class DataWarning(UserWarning):
    """The data were changed on the way in, or look like they will hurt the fit.

    Raised when ``fit`` drops rows with missing values (``missing="drop"``, lme4's
    ``na.omit``), and when fixed-effect columns are on very different scales (lme4's
    "Some predictor variables are on very different scales: consider rescaling").

    Examples
    --------
    >>> import warnings
    >>> import mixedfx
    >>> data.loc[[3, 7], "x"] = None
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> [str(w.message).split(",")[0] for w in caught if issubclass(w.category, mixedfx.DataWarning)]
    ["dropped 2 of 600 rows with missing values ('x': 2)"]
    >>> model.n_obs_, model.dropped_rows_.tolist()
    (598, [3, 7])
    """


class NewLevelWarning(DataWarning):
    """Most rows of a prediction have a grouping level that ``fit`` did not see.

    Raised by ``predict`` (and the other methods that take new data) when more than
    half of the rows have a level of a grouping factor not seen in fit, whatever the
    ``new_levels`` policy: those rows get the population prediction (or raise
    :class:`NewLevelError`), which is rarely what was meant.  Levels are matched by
    value, not dtype (``7``, ``7.0``, ``"7"`` and a categorical ``"7"`` are one level),
    so the usual cause is another column or recoded values.  A subclass of
    :class:`DataWarning`.

    Examples
    --------
    >>> import warnings
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = model.predict(data.head(4).assign(g=["new", "new", "new", data.g[0]]))
    >>> [str(w.message).split(";")[0] for w in caught if issubclass(w.category, mixedfx.NewLevelWarning)]
    ["3 of 4 rows have a level of grouping factor 'g' not seen in fit (e.g. 'new')"]
    """
