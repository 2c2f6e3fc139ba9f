"""Stopping rules for Monte Carlo EM.

Monte Carlo EM never settles on a point: after the deterministic drift has died out,
its iterates wander around the maximum likelihood estimate with Monte Carlo noise.
The estimate is the mean of the iterates over an *averaging window*, and a stopping
rule decides when that window starts and when its mean is precise enough.

A stopping rule is any object with an ``assess`` method of the signature of
:meth:`MonteCarloErrorRule.assess`; pass one as ``stopping_rule=`` to swap it in.
Rules see the parameter trace on a *working scale*: fixed effects as they are,
standard deviations and family parameters on the log scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Decision", "MonteCarloErrorRule", "FixedIterations", "monte_carlo_standard_error"]


@dataclass(frozen=True)
class Decision:
    """A stopping rule's verdict after a block of iterations.

    Attributes
    ----------
    window_start : int or None
        Index into the trace where the averaging window starts; ``None`` while the
        iterates are still drifting.
    converged : bool
        Whether to stop now.
    mcse : numpy.ndarray or None
        Monte Carlo standard error of the window mean, on the working scale.
    tolerance : numpy.ndarray or None
        What the rule requires of ``mcse``.
    message : str
        The verdict in words.
    stop_at : int or None
        While the rule averages a *fresh* window after its criteria were met (see
        :class:`MonteCarloErrorRule`'s ``confirm``), the iteration at which it stops; the
        fitting loop hands it back to the next :meth:`~MonteCarloErrorRule.assess`.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference import MonteCarloErrorRule
    >>> rule = MonteCarloErrorRule()
    >>> rule.assess(np.zeros((5, 2)), window_start=None, scale=np.ones(2)).message
    'warming up'
    >>> trace = 1.0 + 0.001 * np.random.default_rng(0).standard_normal((50, 2))
    >>> decision = rule.assess(trace[:30], window_start=10, scale=np.ones(2))
    >>> decision.converged, decision.window_start, decision.message
    (True, 10, 'Monte Carlo error within tolerance over 20 iterations')

    With ``confirm=True`` the rule first averages a fresh window as long:

    >>> rule = MonteCarloErrorRule(confirm=True)
    >>> decision = rule.assess(trace[:30], window_start=10, scale=np.ones(2))
    >>> decision.converged, decision.window_start, decision.stop_at
    (False, 30, 50)
    >>> decision = rule.assess(trace, window_start=30, scale=np.ones(2), stop_at=50)
    >>> decision.converged, decision.window_start
    (True, 30)
    """

    window_start: int | None
    converged: bool
    mcse: np.ndarray | None = None
    tolerance: np.ndarray | None = None
    message: str = ""
    stop_at: int | None = None


#: E-foldings of the approach to the fixed point, ``1 / (1 - rho)`` iterations each, that
#: must pass before the averaging window: the parameter-expanded first iterations
#: overshoot, and the overshoot relaxes more slowly than the AR(1) rate near the fixed
#: point says.  Measured on grouseticks (rho = 0.93 for sd(LOCATION), one e-folding 14
#: iterations): 200-iteration windows of two 3000-iteration runs averaged sd(LOCATION)
#: 0.596, 0.589 and 0.584 from iterations 15, 45 and 100 on, against 0.581 late.
SETTLE_E_FOLDS = 7.0

#: A parameter whose iterates span at most this fraction of its tolerance over the whole
#: averaging window has settled, whatever its AR(1) coefficient: one the M-step computes
#: without Monte Carlo error (a zero-inflation or hurdle zero part without random
#: effects) is constant from some iteration on, and its lead-in -- a step to that
#: constant -- regresses with a coefficient of one.  Measured on the Salamanders hurdles:
#: the zero part's coefficients spanned 0 over 20-iteration windows, while their
#: coefficient of one kept every window's first half dropped until max_iter.
STILL_FRACTION = 1e-3

#: The largest AR(1) coefficient the error estimate believes: beyond it the series is
#: treated as a random walk, whose mean has no finite error (``inf``).
MAX_AUTOREGRESSION = 0.995


#: Largest spread of a column, relative to ``1 + |mean|``, that counts as constant (an
#: exact M-step's rounding): its Monte Carlo error is 0, not the AR(1) formula's.
FLAT_SPREAD = 1e-9


def ar1_coefficient(series: np.ndarray) -> np.ndarray:
    """Per column, the lag-one autoregression coefficient of a series, bias-corrected.

    The least-squares slope of ``x[t]`` on ``x[t-1]`` (each with its own mean), plus
    Kendall's correction ``(1 + 3 rho) / n`` of its downward bias in short series,
    clipped to ``[0, 1]``.  Near the fixed point, Monte Carlo EM's iterates follow a
    vector AR(1) whose coefficient is the Jacobian of the EM map, the fraction of
    missing information: the deterministic approach to the fixed point and the Monte
    Carlo noise decay at the same rate, so a trace that still holds some of its
    approach estimates the same coefficient (a regression, not an autocorrelation
    about the mean, which a trend would inflate towards one).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference.stopping import ar1_coefficient
    >>> rng = np.random.default_rng(0)
    >>> x = np.zeros(2000)
    >>> for t in range(1, 2000):
    ...     x[t] = 0.8 * x[t - 1] + rng.standard_normal()
    >>> bool(abs(ar1_coefficient(x[:, None])[0] - 0.8) < 0.03)
    True
    >>> approach = 0.9 ** np.arange(40)  # a noiseless approach to a fixed point at 0
    >>> bool(abs(ar1_coefficient(approach[:, None])[0] - 0.9) < 0.15)
    True
    """
    series = np.asarray(series, dtype=np.float64)
    n = series.shape[0]
    if n < 4:
        return np.ones(series.shape[1:])
    before = series[:-1] - series[:-1].mean(axis=0)
    after = series[1:] - series[1:].mean(axis=0)
    denominator = np.sum(before**2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denominator > 0, np.sum(before * after, axis=0) / denominator, 0.0)
    rho = rho + (1.0 + 3.0 * rho) / n
    return np.clip(rho, 0.0, 1.0)


def monte_carlo_standard_error(series: np.ndarray, *, lead_in: np.ndarray | None = None) -> np.ndarray:
    """Standard error of the mean of each column of an autocorrelated series.

    Each column is taken as an AR(1) series, ``x[t] - m = rho (x[t-1] - m) + e[t]``:
    the mean of ``n`` iterates has variance ``sigma_e^2 / ((1 - rho)^2 n)`` (the AR(1)
    long-run variance over ``n``) times ``1 - 2 rho (1 - rho^n) / (n (1 - rho^2))``,
    the share a window shorter than the series' memory sees.  ``rho`` is :func:`ar1_coefficient` of ``lead_in``
    followed by ``series`` (``lead_in``: iterates before the series, which sharpen the
    estimate of ``rho``; a short series alone underestimates it), ``sigma_e^2`` the
    residual variance of the series about that autoregression.  An effective sample
    size from a few dozen strongly autocorrelated iterates is biased high; this
    estimate is not, and it is infinite where ``rho`` is at least
    :data:`MAX_AUTOREGRESSION` or the series holds fewer than three iterates.

    Examples
    --------
    Independent draws give ``sd / sqrt(n)``; positively autocorrelated ones (an
    AR(1) series with coefficient 0.9 has about ``1/19`` as many effective draws) a
    larger error:

    >>> import numpy as np
    >>> from mixedfx.inference import monte_carlo_standard_error
    >>> rng = np.random.default_rng(0)
    >>> independent = rng.standard_normal(1000)
    >>> correlated = np.zeros(1000)
    >>> for i in range(1, 1000):
    ...     correlated[i] = 0.9 * correlated[i - 1] + np.sqrt(1 - 0.81) * rng.standard_normal()
    >>> mcse = monte_carlo_standard_error(np.column_stack([independent, correlated]))
    >>> bool(abs(mcse[0] - independent.std() / np.sqrt(1000)) < 0.005), bool(mcse[1] > 3 * mcse[0])
    (True, True)
    >>> monte_carlo_standard_error(np.ones((2, 1)))
    array([inf])
    """
    series = np.asarray(series, dtype=np.float64)
    n = series.shape[0]
    if n < 3:
        return np.full(series.shape[1:], np.inf)
    history = series if lead_in is None or len(lead_in) == 0 else np.concatenate(
        [np.asarray(lead_in, dtype=np.float64), series])
    return _long_run_error(series, ar1_coefficient(history))


def _long_run_error(series: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """The AR(1) standard error of each column's mean, given the coefficients ``rho``:
    ``inf`` from :data:`MAX_AUTOREGRESSION` on or with under three iterates, ``0`` for
    a constant column (its spread at most :data:`FLAT_SPREAD` of ``1 + |mean|``)."""
    n = series.shape[0]
    if n < 3:
        return np.full(series.shape[1:], np.inf)
    safe = np.minimum(rho, MAX_AUTOREGRESSION)
    centred = series - series.mean(axis=0)
    residual = centred[1:] - safe * centred[:-1]
    # Var(mean) = sigma_e^2 / (n (1 - rho)^2) [1 - 2 rho (1 - rho^n) / (n (1 - rho^2))]:
    # the long-run variance over n, less what a window shorter than the memory misses.
    short = 1.0 - 2.0 * safe * (1.0 - safe**n) / (n * (1.0 - safe**2))
    mcse = np.sqrt(np.sum(residual**2, axis=0) / ((n - 2) * n) * short) / (1.0 - safe)
    # a column that moves only at the rounding level of an exact M-step (a hurdle's zero
    # part, a logistic regression apart from the random effects) has no Monte Carlo error
    flat = np.ptp(series, axis=0) <= FLAT_SPREAD * (1.0 + np.abs(series.mean(axis=0)))
    return np.where(flat, 0.0, np.where(rho >= MAX_AUTOREGRESSION, np.inf, mcse))


def window_drift(window: np.ndarray, *, rho: np.ndarray, long_run_sd: np.ndarray) -> tuple:
    """How far a window's mean may still be from the fixed point, and its standard error.

    With ``b`` the least-squares slope of a column against the iteration, the window
    mean sits ``b (n - 1) / 2`` behind the window's last iterate, and that one, if the
    iterates approach the fixed point at the AR(1) rate ``rho``, ``b / (1 - rho)``
    short of it: the projected drift is ``|b| ((n - 1) / 2 + 1 / (1 - rho))``.  Its
    standard error is the slope's under the AR(1) noise (``long_run_sd`` over the root
    of the sum of the squared centred iteration numbers, about ``sqrt(12 / n^3)``
    times it), scaled the same way.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference.stopping import window_drift
    >>> drift, se = window_drift(np.linspace(0, 1, 11)[:, None], rho=np.array([0.5]), long_run_sd=np.array([0.1]))
    >>> round(float(drift[0]), 3), round(float(se[0]), 4)
    (0.7, 0.0667)
    """
    n = window.shape[0]
    steps = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    slope = steps @ (window - window.mean(axis=0)) / np.sum(steps**2)
    slope_se = long_run_sd / np.sqrt(np.sum(steps**2))
    with np.errstate(divide="ignore", invalid="ignore"):
        reach = (n - 1) / 2.0 + 1.0 / (1.0 - rho)
    return np.abs(slope) * reach, slope_se * reach


@dataclass(frozen=True)
class MonteCarloErrorRule:
    """Stop when the Monte Carlo error is a small fraction of the statistical error.

    1. *Warm-up.*  The iterates drift towards the estimate.  After each block of
       ``block_size`` iterations the means of the last two blocks are compared; when
       they differ by less than ``drift_z`` Monte Carlo standard errors (or by less
       than the tolerance itself), the averaging window opens.
    2. *Averaging.*  Once the window spans four blocks, the drift left in it is
       tested (:func:`window_drift`): the slope of each parameter over the window,
       carried to the fixed point at the iterates' AR(1) rate ``rho`` (the EM map's
       rate), projects how far the window mean may still be from the fixed point.
       Where that exceeds both the tolerance and ``drift_z`` of its standard errors,
       the window's first half is dropped.  Once the window holds ``min_window``
       iterations, the rule stops when every parameter's Monte Carlo standard error
       (:func:`monte_carlo_standard_error`, the AR(1) long-run variance, with
       ``rho`` estimated from the trace since the first block) is at most ``tol``
       times its statistical scale, the window holds ``min_effective`` effective
       iterations, and the drift test passes.  The window never starts before
       :data:`SETTLE_E_FOLDS` e-foldings, ``1 / (1 - rho)`` iterations each, of the
       slowest parameter's approach.  A parameter whose iterates span at most
       :data:`STILL_FRACTION` of its tolerance over the window has settled and is left
       out of these criteria.
    3. *A fresh window* (``confirm=True``, opt-in).  When the criteria first pass, after ``n``
       iterations in the window, the rule averages the next ``n`` iterations, and their
       mean is the estimate.  The iteration at which the criteria pass depends on the
       iterates themselves -- a window whose AR(1) coefficient happens to look small
       stops early -- and a mean taken at that data-chosen time is biased (optional
       stopping).  The fresh window's length is fixed before it is seen.  Measured on
       grouseticks (``TICKS ~ YEAR + cHEIGHT + (1|BROOD) + (1|LOCATION)``, Poisson),
       the rule replayed on 20 traces of 800 iterations: the stopped windows' means of
       sd(BROOD) and sd(LOCATION) were 3.3 and 3.5 standard errors of the 20-seed mean
       from the traces' long-run mean; the fresh windows' 0.3 and 0.3, at 1.6 times the
       iterations (median 330 to 542).  Against a 3000-iteration run the twenty real
       fits' means stayed 4.0 and 3.1 standard errors off (tests/test_mcse.py): a slower
       drift, sd(BROOD) up and sd(LOCATION) down together, is left, so the cost is not
       yet the default's.

    The statistical scale (``scale`` in :meth:`assess`) is a standard error on the
    working scale, supplied by the fitting loop: for a fixed effect its standard error
    (exact for the Gaussian family), for the log of a random-effect sd ``1/sqrt(2 q)``
    with ``q`` levels, for the log of the residual sd ``1/sqrt(2 n)`` over
    ``sqrt(1 - r)``, ``r`` its EM rate (see
    :meth:`~mixedfx.inference.ParameterLayout.statistical_scale`).  With the
    default ``tol=0.1``, Monte Carlo noise adds about one percent to the variance of
    an estimate.

    Parameters
    ----------
    tol : float, default 0.1
    block_size : int, default 5
        Iterations per block; the fitting loop checks the rule after every block.
    min_window : int, default 20
    drift_z : float, default 3.0
    min_effective : float, default 5
        The fewest effective iterations, ``n (1 - rho) / (1 + rho)``, a window needs
        before its Monte Carlo error is believed: the error of fewer is itself too
        uncertain, and stopping at the first block whose error looks small would stop
        early.
    confirm : bool, default False
        Average a fresh window as long as the one that met the criteria, and report
        its mean and Monte Carlo error (step 3).  ``False`` stops at once, with the
        window that met the criteria.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference import MonteCarloErrorRule
    >>> rule = MonteCarloErrorRule(tol=0.1)
    >>> rng = np.random.default_rng(0)
    >>> trace = 1.0 + 0.001 * rng.standard_normal((10, 2))
    >>> rule.assess(trace, window_start=None, scale=np.ones(2)).window_start
    10
    """

    tol: float = 0.1
    block_size: int = 5
    min_window: int = 20
    drift_z: float = 3.0
    min_effective: float = 5.0
    confirm: bool = False

    def assess(self, trace, *, window_start, scale, frozen=None, stop_at=None) -> Decision:
        """Judge the trace so far.

        Parameters
        ----------
        trace : numpy.ndarray of shape (n_iter, n_parameters)
            Parameters after each M-step, on the working scale.
        window_start : int or None
            The current averaging window's start, as returned last time.
        scale : numpy.ndarray of shape (n_parameters,)
            Statistical scale of each parameter (see the class docstring).
        frozen : numpy.ndarray of bool, optional
            Parameters to leave out of the criteria (variances at the boundary).
        stop_at : int, optional
            The last decision's ``stop_at``: the fresh window is being averaged.

        Returns
        -------
        Decision
        """
        trace = np.asarray(trace, dtype=np.float64)
        n_iter = trace.shape[0]
        active = np.ones(trace.shape[1], dtype=bool) if frozen is None else ~np.asarray(frozen, dtype=bool)
        tolerance = self.tol * np.asarray(scale, dtype=np.float64)
        b = self.block_size
        if stop_at is not None:
            return self._fresh_window(trace, window_start=window_start, stop_at=stop_at, tolerance=tolerance)
        if window_start is None:
            if n_iter < 2 * b:
                return Decision(None, False, message="warming up")
            if self._stationary(trace[n_iter - 2 * b:n_iter - b], trace[n_iter - b:], tolerance, active):
                return Decision(n_iter, False, tolerance=tolerance, message="drift has died out; averaging")
            return Decision(None, False, tolerance=tolerance, message="warming up: parameters still drifting")
        window = trace[window_start:]
        lead_in = trace[lead_in_start(window_start, n_iter, skip=b):window_start]
        # Parameters still over the whole window have settled: none of the criteria asks more of them.
        active = active & ~(np.ptp(window, axis=0) <= STILL_FRACTION * tolerance)
        rho = np.where(active, ar1_coefficient(np.concatenate([lead_in, window])), 0.0)
        settled = self._settled_start(rho[active])
        if settled > window_start:
            start = min(settled, n_iter)
            return Decision(start, False, tolerance=tolerance,
                            message=f"averaging from iteration {start}, {SETTLE_E_FOLDS:g} e-foldings of the approach")
        mcse = _long_run_error(window, rho)
        if len(window) >= 4 * b:
            drift, drift_se = window_drift(window, rho=np.minimum(rho, MAX_AUTOREGRESSION),
                                           long_run_sd=mcse * np.sqrt(len(window)))
            # A coefficient at the random-walk bound: nothing settled yet, the old half goes.
            unsettled = rho >= MAX_AUTOREGRESSION
            drifting = (unsettled | (drift > np.maximum(tolerance, self.drift_z * drift_se))) & active
            if np.any(drifting):
                half = (len(window) // (2 * b)) * b
                return Decision(window_start + half, False, tolerance=tolerance,
                                message="drift within the window; its first half dropped")
        if len(window) < self.min_window:
            return Decision(window_start, False, tolerance=tolerance, message="averaging")
        ratio = np.where(active, mcse / tolerance, 0.0)
        effective = len(window) * (1.0 - rho) / (1.0 + rho)
        if np.any(active & (effective < self.min_effective)):
            return Decision(window_start, False, mcse=mcse, tolerance=tolerance,
                            message=f"averaging: {np.min(effective[active]):.1f} effective iterations "
                                    f"of {self.min_effective:g}")
        converged = bool(np.all(ratio <= 1.0))
        if converged and self.confirm:
            return Decision(n_iter, False, mcse=mcse, tolerance=tolerance, stop_at=n_iter + len(window),
                            message=f"Monte Carlo error within tolerance over {len(window)} iterations; "
                                    f"averaging a fresh window as long")
        message = (
            f"Monte Carlo error within tolerance over {len(window)} iterations"
            if converged
            else f"averaging: largest Monte Carlo error is {ratio.max():.2f} x tolerance"
        )
        return Decision(window_start, converged, mcse=mcse, tolerance=tolerance, message=message)

    def _fresh_window(self, trace, *, window_start, stop_at, tolerance) -> Decision:
        """Step 3: wait for ``stop_at``, then stop with the fresh window's mean and its
        Monte Carlo error (AR(1) coefficient from the whole trace since the first block,
        as in the criteria), whatever that error is: its length was fixed in advance."""
        n_iter = trace.shape[0]
        if n_iter < stop_at:
            return Decision(window_start, False, tolerance=tolerance, stop_at=stop_at,
                            message=f"averaging a fresh window: iteration {n_iter} of {stop_at}")
        window = trace[window_start:]
        lead_in = trace[lead_in_start(window_start, n_iter, skip=self.block_size):window_start]
        rho = ar1_coefficient(np.concatenate([lead_in, window]))
        mcse = _long_run_error(window, rho)
        return Decision(window_start, True, mcse=mcse, tolerance=tolerance,
                        message=f"Monte Carlo error within tolerance; estimate from a fresh window of "
                                f"{len(window)} iterations")

    def _settled_start(self, rho) -> int:
        """The first block boundary :data:`SETTLE_E_FOLDS` e-foldings of the slowest
        parameter's approach into the trace."""
        slowest = float(np.max(rho, initial=0.0))
        if slowest >= MAX_AUTOREGRESSION:
            return 0  # nothing settled: the error is infinite anyway
        iterations = SETTLE_E_FOLDS / (1.0 - slowest)
        return int(np.ceil(iterations / self.block_size)) * self.block_size

    def _stationary(self, first, second, tolerance, active) -> bool:
        """Whether two consecutive blocks agree within the noise and ``tolerance``."""
        # The noise level comes from the pooled series with its linear trend removed: a
        # trend left in would pass for noise.
        pooled = np.concatenate([first, second])
        steps = np.arange(len(pooled), dtype=np.float64)
        design = np.column_stack([np.ones_like(steps), steps - steps.mean()])
        coefficients, *_ = np.linalg.lstsq(design, pooled, rcond=None)
        mcse = monte_carlo_standard_error(pooled - design @ coefficients)
        se = mcse * np.sqrt(len(pooled) / len(first) + len(pooled) / len(second))
        drift = np.abs(second.mean(axis=0) - first.mean(axis=0))
        ok = drift <= np.maximum(self.drift_z * se, tolerance)
        return bool(np.all(ok[active]))


def lead_in_start(window_start: int, n_iter: int, *, skip: int) -> int:
    """Where the iterations that sharpen the AR(1) coefficient start: every iteration
    before the window but the first ``skip`` (the parameter-expanded first block).  The
    approach to the fixed point decays at the coefficient the noise does, so the whole
    trace estimates it; a window of a few dozen iterates alone underestimates it.

    Examples
    --------
    >>> from mixedfx.inference.stopping import lead_in_start
    >>> lead_in_start(40, 100, skip=5), lead_in_start(3, 100, skip=5)
    (5, 3)
    """
    return min(skip, window_start)


@dataclass(frozen=True)
class FixedIterations:
    """Run a fixed number of iterations and average the last ``n_average``.

    Useful for benchmarks and for reproducing a fixed schedule.

    Parameters
    ----------
    n_iter : int
        Total EM iterations.
    n_average : int
        Iterations at the end whose mean is the estimate.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference import FixedIterations
    >>> rule = FixedIterations(n_iter=20, n_average=10)
    >>> rule.assess(np.zeros((10, 1)), window_start=None, scale=np.ones(1)).window_start
    10
    """

    n_iter: int = 100
    n_average: int = 50
    block_size: int = 5

    def assess(self, trace, *, window_start, scale, frozen=None) -> Decision:
        """Average the last ``n_average`` iterations; converged after ``n_iter``."""
        trace = np.asarray(trace, dtype=np.float64)
        n_iter = trace.shape[0]
        start = max(self.n_iter - self.n_average, 0)
        window = start if n_iter >= start else None
        if window is None:
            return Decision(None, False, message=f"iteration {n_iter} of {self.n_iter}")
        done = n_iter >= self.n_iter
        mcse = monte_carlo_standard_error(trace[start:]) if n_iter - start >= 3 else None
        return Decision(window, done, mcse=mcse, message=f"iteration {n_iter} of {self.n_iter}")
