"""The Python side of Monte Carlo EM: between compiled calls.

:class:`MCEMDriver` calls the compiled iterations (:mod:`mixedfx.inference.loop`)
block after block.  Between blocks it

* checks the block for a breakdown and, if there is one, runs it again from where it
  started (:class:`Recovery`: first with the chains at the random effects' conditional
  modes, then with a tenth of the step size each time);
* keeps what the fit reports (:class:`Accumulators`): the traces, the kept draws and
  the sums of the draws over the averaging window;
* asks the stopping rule (:mod:`mixedfx.inference.stopping`) where the averaging
  window starts and whether the fit has converged.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from mixedfx._tf import native_logs_silenced, tf
from mixedfx.exceptions import FitError
from mixedfx.inference.initial import conditional_modes
from mixedfx.inference.layout import complete_data_scale, fixed_effects_scale
from mixedfx.inference.loop import BlockOutput, EMState
from mixedfx.inference.stopping import Decision, ar1_coefficient
from mixedfx.model.joint import ModelParameters

__all__ = ["Accumulators", "MCEMDriver", "Recovery"]


@dataclass
class Accumulators:
    """What the fit keeps between compiled calls.

    Attributes
    ----------
    trace_rows : list of numpy.ndarray
        One parameter row per EM iteration (see :func:`~mixedfx.inference.loop.trace_row`).
    objective, acceptance, step_sizes, divergences : list of float
        Per EM iteration.
    kept : collections.deque
        ``(iteration, draws)`` pairs, the latest ``maxlen`` draws (per term
        ``(n_chains, levels, dim)``).
    effects_sum, effects_outer_sum : list of numpy.ndarray
        Per term, the sums of the effects and their outer products over the draws of the
        averaging window (the data's levels only).
    draws_summed : int
        Draws in those sums, all chains together.
    window_start : int or None
        The first iteration of the averaging window.

    Examples
    --------
    >>> from mixedfx.inference.driver import Accumulators
    >>> acc = Accumulators.empty(num_levels=(3,), dims=(1,), max_kept=10)
    >>> acc.n_iter, acc.effects_sum[0].shape, acc.effects_outer_sum[0].shape
    (0, (3, 1), (3, 1, 1))
    """

    trace_rows: list
    kept: collections.deque
    effects_sum: list
    effects_outer_sum: list
    objective: list = field(default_factory=list)
    acceptance: list = field(default_factory=list)
    step_sizes: list = field(default_factory=list)
    divergences: list = field(default_factory=list)
    draws_summed: int = 0
    window_start: int | None = None

    @classmethod
    def empty(cls, *, num_levels, dims, max_kept: int) -> Accumulators:
        """Nothing recorded yet; at most ``max_kept`` draws per chain kept."""
        return cls(trace_rows=[], kept=collections.deque(maxlen=max(1, max_kept)),
                   effects_sum=[np.zeros((q, d)) for q, d in zip(num_levels, dims)],
                   effects_outer_sum=[np.zeros((q, d, d)) for q, d in zip(num_levels, dims)])

    @property
    def n_iter(self) -> int:
        """EM iterations recorded."""
        return len(self.trace_rows)

    def record(self, out: BlockOutput, block: np.ndarray, *, real, draws_per_call: int) -> None:
        """Add a block's traces and kept draws, and its draws' sums when the window has
        started (``real``: per term, the data's levels among the padded ones)."""
        self.divergences.extend(out.traces["divergences"].numpy())
        self.trace_rows.extend(block)
        self.objective.extend(out.traces["objective"].numpy())
        self.acceptance.extend(out.traces["acceptance"].numpy())
        self.step_sizes.extend(out.traces["step_size"].numpy())
        block_draws = [d.numpy()[:, :, :, levels] for d, levels in zip(out.draws, real)]
        first = self.n_iter - len(block)
        self.kept.extend((first + j, [d[j, t] for d in block_draws])
                         for j in range(len(block)) for t in range(block_draws[0].shape[1]))
        if self.window_start is not None:
            for k, (s, o) in enumerate(zip(out.effects_sum, out.effects_outer_sum)):
                self.effects_sum[k] += s.numpy()[real[k]]
                self.effects_outer_sum[k] += o.numpy()[real[k]]
            self.draws_summed += draws_per_call

    def move_window(self, window_start: int) -> None:
        """Start the averaging window at ``window_start``: its sums start again."""
        self.window_start = window_start
        self.effects_sum = [np.zeros_like(s) for s in self.effects_sum]
        self.effects_outer_sum = [np.zeros_like(o) for o in self.effects_outer_sum]
        self.draws_summed = 0

    def window_draws(self, window_start: int) -> tuple:
        """Per term, the kept draws from ``window_start`` on (the last one if none),
        ``(n_chains, n_kept, num_levels, dim)``: ArviZ's (chain, draw, ...) order."""
        window = [draw for iteration, draw in self.kept if iteration >= window_start] or [self.kept[-1][1]]
        return tuple(np.stack([d[k] for d in window], axis=1) for k in range(len(self.effects_sum)))

    def moments(self, last: BlockOutput, *, real, draws_per_call: int):
        """Per term, the mean and covariance of each level's effects over the window's
        draws (over the last block's if the window never started)."""
        sums, outer_sums, n = self.effects_sum, self.effects_outer_sum, self.draws_summed
        if n == 0:
            sums = [s.numpy()[levels] for s, levels in zip(last.effects_sum, real)]
            outer_sums = [o.numpy()[levels] for o, levels in zip(last.effects_outer_sum, real)]
            n = draws_per_call
        means = tuple(s / n for s in sums)
        covariances = tuple(o / n - m[:, :, None] * m[:, None, :] for o, m in zip(outer_sums, means))
        return means, covariances, n


@dataclass
class Recovery:
    """What to do when a block of iterations breaks down (see :func:`block_fault`).

    The block runs again from where it started: first with the chains moved to the
    random effects' conditional modes, then, if it breaks down again at the same
    place, with a tenth of the step size each time; after ``max_retries`` retries in
    all, :class:`~mixedfx.FitError`.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx._tf import tf
    >>> from mixedfx.inference.driver import Recovery
    >>> from mixedfx.inference.loop import EMState
    >>> em = EMState(None, None, None, ["chains"], tf.constant(1.0, tf.float64), tf.constant([1, 2]))
    >>> recovery = Recovery(max_retries=3)
    >>> em = recovery.retry(em, fault="diverged", first=0, length=5, seed=em.seed, chains_at_modes=lambda: ["modes"])
    >>> em.chains, float(em.step_size)
    (['modes'], 1.0)
    >>> em = recovery.retry(em, fault="diverged", first=0, length=5, seed=em.seed, chains_at_modes=None)
    >>> float(em.step_size), recovery.recoveries[-1]
    (0.1, 'iterations 1-5: diverged; retried with step size 1 -> 0.1')
    """

    max_retries: int
    recoveries: list = field(default_factory=list)
    restarted_at: int | None = None

    def retry(self, em: EMState, *, fault: str, first: int, length: int, seed, chains_at_modes) -> EMState:
        """The state to run a broken block of iterations again from.

        The block is iterations ``first + 1`` to ``first + length``; it runs again with
        the broken block's ``seed``.  ``chains_at_modes()`` gives the chains at the
        modes.  Raises :class:`FitError` past ``max_retries``."""
        block = f"iterations {first + 1}-{first + length}"
        if len(self.recoveries) >= self.max_retries:
            raise FitError(
                f"Monte Carlo EM broke down in {block} ({fault}) and {len(self.recoveries)} retries with "
                f"smaller HMC step sizes did not help; check the data for extreme values or rescale them, and "
                "whether the model fits the response exactly (a residual variance of zero)"
            )
        if self.restarted_at != first:
            # First, move the chains to where the random effects' mass is.
            em = em._replace(chains=chains_at_modes())
            self.restarted_at, action = first, "retried from the random effects' conditional modes"
        else:
            smaller = float(em.step_size) / 10.0
            action = f"retried with step size {float(em.step_size):.3g} -> {smaller:.3g}"
            em = em._replace(step_size=tf.constant(smaller, tf.float64))
        self.recoveries.append(f"{block}: {fault}; {action}")
        return em._replace(seed=seed)


def block_fault(out: BlockOutput, block: np.ndarray, names, *, transitions: int) -> str | None:
    """What went wrong in a block of iterations, or None: non-finite parameters, log
    densities or chains, or more than half of the kept HMC transitions divergent.

    ``block`` holds the block's trace rows, ``names`` the parameters' names and
    ``transitions`` the kept transitions per iteration (all chains)."""
    divergent = out.traces["divergences"].numpy()
    record = f"{int(divergent.sum())} of {transitions * len(divergent)} kept HMC transitions diverged"
    if not np.all(np.isfinite(block)):
        bad = [names[j] for j in np.flatnonzero(~np.all(np.isfinite(block), axis=0))]
        return f"non-finite values of {', '.join(bad)}; {record}"
    if not np.all(np.isfinite(out.traces["objective"].numpy())):
        return f"non-finite log densities in the E-step; {record}"
    if not all(np.all(np.isfinite(s.numpy())) for s in out.em.chains):
        return f"non-finite random effects in the E-step's chains; {record}"
    if divergent.sum() > 0.5 * transitions * len(divergent):
        return record
    return None


def chains_at_modes(model, em: EMState, *, n_chains: int, buckets):
    """Every chain's state at the random effects' conditional modes at ``em``'s
    parameters (see :func:`~mixedfx.inference.initial.conditional_modes`); padded
    levels at zero."""
    params = ModelParameters(em.fixed_effects.numpy(), tuple(L.numpy() for L in em.scale_tril),
                             {k: v.numpy() for k, v in model.family.constrain(em.free).items()})
    modes = [buckets.pad_levels(k, m) for k, m in enumerate(conditional_modes(model, params))]
    return [tf.constant(np.broadcast_to(m, (n_chains,) + m.shape).copy(), tf.float64) for m in modes]


class MCEMDriver:
    """Runs the compiled blocks of EM iterations until the stopping rule is satisfied.

    Parameters
    ----------
    run_block : callable
        ``run_block(em, num_burnin) -> BlockOutput`` (the compiled iterations with the
        fit's data bound).
    em : EMState
        Where the fit starts.
    model : MixedModel
    layout : ParameterLayout
    options : MCEMOptions
    rule : object with an ``assess`` method
    buckets : ShapeBuckets
    progress : bool, default False

    Attributes
    ----------
    accumulators : Accumulators
    recovery : Recovery
    decision : Decision
        The stopping rule's last decision.
    last : BlockOutput
        The last block that did not break down.
    unjudged : numpy.ndarray of bool
        Parameters whose Monte Carlo error the rule does not judge: a Gaussian fit's
        fixed effects, which the fit replaces by the exact GLS values at the variance
        estimates.
    first_call_seconds : float

    Examples
    --------
    :func:`~mixedfx.inference.fit_mcem` makes one, runs it and reads the fit off it:

    >>> from mixedfx.inference.driver import MCEMDriver
    >>> [name for name in ("run", "assess") if callable(getattr(MCEMDriver, name))]
    ['run', 'assess']
    """

    def __init__(self, run_block, *, em: EMState, model, layout, options, rule, buckets, progress=False):
        self.run_block, self.em = run_block, em
        self.model, self.layout, self.options, self.rule, self.buckets = model, layout, options, rule, buckets
        self.progress = progress
        num_levels = tuple(t.num_levels for t in model.random_terms)
        dims = tuple(t.dim for t in model.random_terms)
        self.real = [slice(0, q) for q in num_levels]  # the data's levels among the padded ones
        self.draws_per_call = options.iterations_per_call * options.n_draws * options.n_chains
        bytes_per_draw = 8 * options.n_chains * sum(q * d for q, d in zip(num_levels, dims))
        max_kept = min(options.max_kept_draws, options.draws_memory_bytes // bytes_per_draw)
        self.accumulators = Accumulators.empty(num_levels=num_levels, dims=dims, max_kept=max_kept)
        self.recovery = Recovery(options.max_retries)
        self.decision = Decision(None, False, message="not started")
        self.last = None
        self.first_call_seconds = 0.0
        self._fixed_scale = None
        # Gaussian fits report the exact GLS fixed effects at the variance estimates, so
        # their Monte Carlo error is not judged (and the fit record gives them no tolerance).
        self.unjudged = np.arange(layout.size) < (layout.n_fixed if model.family.conjugate_gaussian else 0)

    def run(self) -> None:
        """Run blocks until the stopping rule says converged, or ``max_iter``."""
        options, acc = self.options, self.accumulators
        start_time = time.perf_counter()
        bar = tqdm(desc="MCEM", unit="it", disable=not self.progress, delay=2.0, leave=False, dynamic_ncols=True)
        bar.set_postfix_str("tracing and compiling (XLA)", refresh=False)
        try:
            while acc.n_iter < options.max_iter:
                num_burnin = options.n_initial_burnin if not acc.n_iter else options.n_burnin
                if acc.n_iter:
                    out = self.run_block(self.em, tf.constant(num_burnin))
                else:
                    # A program loaded from the persistent cache logs a spurious error.
                    with native_logs_silenced():
                        out = self.run_block(self.em, tf.constant(num_burnin))
                    self.first_call_seconds = time.perf_counter() - start_time
                block = out.traces["parameters"].numpy()
                fault = block_fault(out, block, self.layout.names, transitions=options.n_chains * options.n_draws)
                if fault is not None:
                    self.em = self.recovery.retry(
                        self.em, fault=fault, first=acc.n_iter, length=len(block), seed=out.em.seed,
                        chains_at_modes=lambda: chains_at_modes(self.model, self.em, n_chains=options.n_chains,
                                                                buckets=self.buckets))
                    continue
                self.em, self.last = out.em, out
                acc.record(out, block, real=self.real, draws_per_call=self.draws_per_call)
                self.decision = self.assess(out)
                if self.decision.window_start != acc.window_start:
                    # The conditional means average the draws from the window's start on.
                    acc.move_window(self.decision.window_start)
                bar.update(len(block))
                bar.set_postfix_str(self.decision.message, refresh=False)
                if self.decision.converged:
                    break
            if not self.decision.converged and self.decision.stop_at is not None:
                # max_iter came while the rule averaged its fresh window: its criteria were
                # met, the window is shorter than planned.
                self.decision = self.assess(self.last, stop_at=acc.n_iter)
        finally:
            bar.close()

    def assess(self, out: BlockOutput, *, stop_at=None) -> Decision:
        """The stopping rule's decision after block ``out``, on the working scale, with
        each parameter's statistical scale and the parameters at a boundary frozen; the
        last decision's ``stop_at`` (or the one given) handed back to rules that set it."""
        layout, model, acc = self.layout, self.model, self.accumulators
        trace = np.asarray(acc.trace_rows)
        posterior_var = [
            np.maximum(np.diagonal(o.numpy()[levels], axis1=1, axis2=2) / self.draws_per_call
                       - (m.numpy()[levels] / self.draws_per_call) ** 2, 0.0)
            for m, o, levels in zip(out.effects_sum, out.effects_outer_sum, self.real)
        ]
        if self._fixed_scale is None:
            # Exact standard errors cost about one EM iteration: computed once, after the
            # first (parameter-expanded) iterations brought the estimate close.  For the
            # Gaussian family the complete-data standard errors only label the trace.
            parameters = layout.parameters(trace[-1])
            self._fixed_scale = (complete_data_scale(model, parameters) if model.family.conjugate_gaussian
                                 else fixed_effects_scale(model, parameters))
        # Each parameter's EM rate, from the trace after the parameter-expanded first block
        # once it holds three blocks more.
        skip = self.options.iterations_per_call
        rates = ar1_coefficient(layout.working(trace[skip:])) if len(trace) >= 4 * skip else None
        scale = layout.statistical_scale(model, trace[-1], fixed_scale=self._fixed_scale, posterior_var=posterior_var,
                                         rates=rates)
        frozen = layout.at_boundary(trace[-1], residual_sd=layout.residual_sd(trace[-1])) | self.unjudged
        stop_at = stop_at if stop_at is not None else getattr(self.decision, "stop_at", None)
        extra = {} if stop_at is None else {"stop_at": stop_at}
        return self.rule.assess(layout.working(trace), window_start=acc.window_start, scale=scale, frozen=frozen,
                                **extra)
