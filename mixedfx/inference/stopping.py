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

from mixedfx._tf import tf, tfp

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

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference import MonteCarloErrorRule
    >>> rule = MonteCarloErrorRule()
    >>> rule.assess(np.zeros((5, 2)), window_start=None, scale=np.ones(2))
    Decision(window_start=None, converged=False, mcse=None, tolerance=None, message='warming up')
    >>> trace = 1.0 + 0.001 * np.random.default_rng(0).standard_normal((30, 2))
    >>> decision = rule.assess(trace, window_start=10, scale=np.ones(2))
    >>> decision.converged, decision.window_start, decision.message
    (True, 10, 'Monte Carlo error within tolerance over 20 iterations')
    """

    window_start: int | None
    converged: bool
    mcse: np.ndarray | None = None
    tolerance: np.ndarray | None = None
    message: str = ""


def monte_carlo_standard_error(series: np.ndarray) -> np.ndarray:
    """Standard error of the mean of each column of an autocorrelated series.

    Uses the effective sample size from :func:`tfp.mcmc.effective_sample_size`.

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
    """
    series = np.asarray(series, dtype=np.float64)
    if series.shape[0] < 2:
        return np.full(series.shape[1:], np.inf)
    sd = series.std(axis=0, ddof=1)
    with np.errstate(invalid="ignore"):
        ess = tfp.mcmc.effective_sample_size(tf.constant(series)).numpy()
    ess = np.where(np.isfinite(ess) & (ess > 0), np.minimum(ess, series.shape[0]), 1.0)
    return np.where(sd > 0, sd / np.sqrt(ess), 0.0)


@dataclass(frozen=True)
class MonteCarloErrorRule:
    """Stop when the Monte Carlo error is a small fraction of the statistical error.

    1. *Warm-up.*  The iterates drift towards the estimate.  After each block of
       ``block_size`` iterations the means of the last two blocks are compared; when
       they differ by less than ``drift_z`` Monte Carlo standard errors (or by less
       than the tolerance itself), the averaging window opens.
    2. *Averaging.*  Once the window spans four blocks, its first and second halves
       are compared the same way; a drift restarts the window.  Once the window holds ``min_window`` iterations,
       the rule stops when every parameter's Monte Carlo standard error is at most
       ``tol`` times its statistical scale.

    The statistical scale (``scale`` in :meth:`assess`) is a standard error on the
    working scale, supplied by the fitting loop: for a fixed effect its standard error
    (exact for the Gaussian family), for the log of a random-effect sd ``1/sqrt(2 q)``
    with ``q`` levels, for the log of the residual sd ``1/sqrt(2 n)``.  With the
    default ``tol=0.1``, Monte Carlo noise adds about one percent to the variance of
    an estimate.

    Parameters
    ----------
    tol : float, default 0.1
    block_size : int, default 5
        Iterations per block; the fitting loop checks the rule after every block.
    min_window : int, default 20
    drift_z : float, default 3.5

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
    drift_z: float = 3.5

    def assess(self, trace, *, window_start, scale, frozen=None) -> Decision:
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

        Returns
        -------
        Decision
        """
        trace = np.asarray(trace, dtype=np.float64)
        n_iter = trace.shape[0]
        active = np.ones(trace.shape[1], dtype=bool) if frozen is None else ~np.asarray(frozen, dtype=bool)
        tolerance = self.tol * np.asarray(scale, dtype=np.float64)
        b = self.block_size
        if window_start is None:
            if n_iter < 2 * b:
                return Decision(None, False, message="warming up")
            if self._stationary(trace[n_iter - 2 * b:n_iter - b], trace[n_iter - b:], tolerance, active):
                return Decision(n_iter, False, tolerance=tolerance, message="drift has died out; averaging")
            return Decision(None, False, tolerance=tolerance, message="warming up: parameters still drifting")
        window = trace[window_start:]
        if len(window) >= 4 * b:
            half = (len(window) // (2 * b)) * b
            if not self._stationary(window[:half], window[half:], tolerance, active):
                return Decision(n_iter, False, tolerance=tolerance, message="drift within the window; averaging restarted")
        if len(window) < self.min_window:
            return Decision(window_start, False, tolerance=tolerance, message="averaging")
        mcse = monte_carlo_standard_error(window)
        ratio = np.where(active, mcse / tolerance, 0.0)
        converged = bool(np.all(ratio <= 1.0))
        message = (
            f"Monte Carlo error within tolerance over {len(window)} iterations"
            if converged
            else f"averaging: largest Monte Carlo error is {ratio.max():.2f} x tolerance"
        )
        return Decision(window_start, converged, mcse=mcse, tolerance=tolerance, message=message)

    def _stationary(self, first, second, tolerance, active) -> bool:
        """Whether the trace's two halves agree within the noise and ``tolerance``."""
        # The noise level comes from the pooled series with its linear trend removed: an
        # effective sample size from a handful of iterates per half would be unreliable,
        # and a trend left in would pass for noise.
        pooled = np.concatenate([first, second])
        steps = np.arange(len(pooled), dtype=np.float64)
        design = np.column_stack([np.ones_like(steps), steps - steps.mean()])
        coefficients, *_ = np.linalg.lstsq(design, pooled, rcond=None)
        mcse = monte_carlo_standard_error(pooled - design @ coefficients)
        se = mcse * np.sqrt(len(pooled) / len(first) + len(pooled) / len(second))
        drift = np.abs(second.mean(axis=0) - first.mean(axis=0))
        ok = drift <= np.maximum(self.drift_z * se, tolerance)
        return bool(np.all(ok[active]))


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
        mcse = monte_carlo_standard_error(trace[start:]) if n_iter - start >= 2 else None
        return Decision(window, done, mcse=mcse, message=f"iteration {n_iter} of {self.n_iter}")
