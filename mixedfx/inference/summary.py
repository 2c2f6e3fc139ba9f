"""The record every Monte Carlo EM fit leaves behind."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["FitSummary"]


@dataclass(frozen=True, eq=False)
class FitSummary:
    """What happened during a Monte Carlo EM fit (compare MixedModels.jl's OptSummary).

    Attributes
    ----------
    converged : bool
        Whether the stopping rule was satisfied before ``max_iter``.
    message : str
        The stopping rule's last verdict, in words.
    n_iter : int
        EM iterations run (each one E-step and one M-step).
    window_start : int or None
        First iteration of the averaging window whose mean is the estimate.
    n_averaged : int
        Number of iterations averaged into the estimate.
    n_draws_averaged : int
        Number of MCMC draws averaged into the conditional means of the random effects.
    parameter_names : tuple of str
        Names of the parameters, in the order of the arrays below.
    initial : numpy.ndarray
        Starting values (the warm start).
    estimate : numpy.ndarray
        Final estimates.
    mcse : numpy.ndarray
        Monte Carlo standard error of each estimate: the AR(1) long-run error of the
        window mean (:func:`~mixedfx.inference.monte_carlo_standard_error`), the scale
        on which fits with other seeds scatter.
    tolerance : numpy.ndarray
        What the stopping rule required of each ``mcse``; NaN where it required
        nothing: a Gaussian fit's fixed effects, which the fit reports as the exact GLS
        values at the variance estimates (``estimate`` and ``mcse`` are the EM iterates'
        window mean and its error).
    trace : numpy.ndarray of shape (n_iter, n_parameters)
        Parameter values after every M-step.
    objective : numpy.ndarray of shape (n_iter,)
        Mean complete-data log joint density ``log p(y, b | theta)`` over each
        E-step's draws (the quantity the TFP tutorial plots as its loss, negated).
    acceptance : numpy.ndarray of shape (n_iter,)
        HMC acceptance rate of each E-step (1 for blocked Gibbs, ``e_step="gibbs"``,
        whose draws are exact).
    step_size : numpy.ndarray of shape (n_iter,)
        Adapted HMC step size of each E-step (unused, and carried unchanged, by Gibbs).
    n_chains, n_draws, n_leapfrog_steps : int
        Sampler settings: chains run in parallel, kept draws per chain per E-step,
        and leapfrog steps per HMC transition.
    at_boundary : tuple of str
        Variance parameters estimated at (numerically) zero: a singular fit.
    elapsed_seconds : float
        Wall time of the fit, compilation included.
    first_call_seconds : float
        Wall time of the first compiled call: tracing and XLA compilation (unless the
        compiled code was cached by an earlier fit of the same shapes) plus its
        iterations.
    method : str
        ``"ml"`` or ``"reml"``.
    e_step : str
        The E-step's kernel: ``"hmc"``, ``"gibbs"`` (blocked Gibbs; Pólya-Gamma
        augmented for a logit model), or ``"none"`` for a fit without iterations.
    rhat : float
        Largest R-hat (between chains, not split) of each term's mean square of its
        coefficients over the kept draws (those of the E-steps in the averaging
        window, per chain): the statistics the M-step uses.
    rhat_noise : float
        How far above 1 that R-hat goes by chance alone with this many chains and
        effective draws (its 95% point).  The estimators warn when ``rhat`` exceeds
        ``1.05 + rhat_noise``.
    rhat_max : float
        Largest R-hat over every coefficient of every level (noisier: with
        thousands of levels it reaches about 1.1 by chance alone).
    ess_min : float
        Smallest effective sample size of the random effects over those draws.
    n_kept_draws : int
        Kept draws per chain.
    divergences : numpy.ndarray of int, shape (n_iter,)
        Per EM iteration, how many of the E-step's kept HMC transitions (all chains)
        diverged: an energy error above 1000, or a NaN log density on the trajectory.
        A few are harmless (the transition is rejected); many mean the step size is
        too large for the target's curvature.
    n_retries : int
        How many blocks of iterations were run again from their starting parameters
        because their E-steps produced non-finite values or mostly divergent
        transitions: first with the chains moved to the random effects' conditional
        modes, then with a tenth of the step size each time (see ``recoveries``).
        The failed iterations are not in the trace.
    recoveries : tuple of str
        One line per retry: the iterations, what went wrong, what was changed.
    data_warnings : tuple of str
        What the data did to the fit that a warning said at fit time and
        :meth:`~mixedfx.MixedEffectsRegressor.summary` repeats: complete or
        quasi-complete separation, naming the columns; a response that does not vary
        within the levels of a grouping factor, naming it; fixed effects whose
        estimates ran away across the iterations, naming them (see :doc:`/diagnostics`).
    memory_estimate_bytes : int or None
        The peak memory estimated before the fit allocated
        (:func:`~mixedfx.inference.memory.estimate_peak_bytes`).
    memory_peak_bytes : int or None
        The measured peak: the resident-memory high-water mark of the whole process
        (not of this fit alone) after the fit, and after the exact computations that
        finish it; ``None`` where the platform does not report it.
    by_quadrature : tuple of str
        Standard deviations whose estimate is the maximum of the adaptive Gauss-Hermite
        likelihood along them, not the EM iterates' average: a small sd of a model with
        one scalar random term (see :func:`~mixedfx.inference.boundary.quadrature_components`).

    Examples
    --------
    Every fitted estimator keeps one as ``fit_summary_``:

    >>> import mixedfx
    >>> summary = model.fit_summary_
    >>> summary.converged, summary.method, summary.parameter_names
    (True, 'ml', ('Intercept', 'x', 'sd(g)', 'sigma'))
    >>> table = summary.table()  # one row per parameter
    >>> judged = table["tolerance"].notna()  # a Gaussian fit's fixed effects are exact GLS: not judged
    >>> table.columns.tolist(), judged.tolist(), bool((table["mcse"] <= table["tolerance"])[judged].all())
    (['initial', 'estimate', 'mcse', 'tolerance'], [False, False, True, True], True)
    >>> summary.parameter_trace().shape == (summary.n_iter, 4), summary.n_averaged <= summary.n_iter
    (True, True)
    """

    converged: bool
    message: str
    n_iter: int
    window_start: int | None
    n_averaged: int
    n_draws_averaged: int
    parameter_names: tuple[str, ...]
    initial: np.ndarray
    estimate: np.ndarray
    mcse: np.ndarray
    tolerance: np.ndarray
    trace: np.ndarray
    objective: np.ndarray
    acceptance: np.ndarray
    step_size: np.ndarray
    n_chains: int
    n_draws: int
    n_leapfrog_steps: int
    at_boundary: tuple[str, ...]
    elapsed_seconds: float
    first_call_seconds: float
    method: str = "ml"
    e_step: str = "hmc"
    rhat: float = float("nan")
    rhat_noise: float = float("nan")
    rhat_max: float = float("nan")
    ess_min: float = float("nan")
    n_kept_draws: int = 0
    divergences: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_retries: int = 0
    recoveries: tuple[str, ...] = ()
    data_warnings: tuple[str, ...] = ()
    memory_estimate_bytes: int | None = None
    memory_peak_bytes: int | None = None
    by_quadrature: tuple[str, ...] = ()

    @property
    def n_divergent(self) -> int:
        """Divergent HMC transitions over the whole fit (kept transitions of the
        iterations in the trace)."""
        return int(np.sum(self.divergences))

    @property
    def acceptance_rate(self) -> float:
        """Mean HMC acceptance rate over the averaging window (or the last iteration);
        1 for a blocked Gibbs E-step; NaN for a fit without iterations (an exact fit)."""
        if self.n_iter == 0:
            return float("nan")
        start = self.window_start if self.window_start is not None and self.window_start < self.n_iter else self.n_iter - 1
        return float(np.mean(self.acceptance[start:]))

    @property
    def final_step_size(self) -> float:
        """The HMC step size adapted in the last E-step (on the preconditioned scale);
        NaN for a fit without iterations."""
        return float(self.step_size[-1]) if len(self.step_size) else float("nan")

    @property
    def final_acceptance_rate(self) -> float:
        """The HMC acceptance rate of the last E-step; NaN for a fit without iterations."""
        return float(self.acceptance[-1]) if len(self.acceptance) else float("nan")

    @property
    def is_singular(self) -> bool:
        """Whether some parameter ended at a boundary (see :attr:`at_boundary`)."""
        return bool(self.at_boundary)

    def parameter_trace(self) -> pd.DataFrame:
        """The parameter trace as a DataFrame, one row per EM iteration."""
        frame = pd.DataFrame(self.trace, columns=list(self.parameter_names))
        frame.index = pd.RangeIndex(1, self.n_iter + 1, name="iteration")
        return frame

    def table(self) -> pd.DataFrame:
        """Initial value, estimate, Monte Carlo standard error and tolerance per parameter."""
        return pd.DataFrame(
            {"initial": self.initial, "estimate": self.estimate, "mcse": self.mcse, "tolerance": self.tolerance},
            index=pd.Index(self.parameter_names, name="parameter"),
        )

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        return (
            f"FitSummary({state} after {self.n_iter} iterations, {self.n_averaged} averaged; "
            f"{self.e_step} E-step, acceptance {self.acceptance_rate:.2f}; R-hat {self.rhat:.3f}; "
            + (f"{self.n_divergent} divergent transitions; " if self.n_divergent else "")
            + (f"{self.n_retries} retries; " if self.n_retries else "")
            + f"{self.elapsed_seconds:.1f}s; {self.message})"
        )
