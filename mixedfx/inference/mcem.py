"""Monte Carlo EM: the fitting loop's entry point, :func:`fit_mcem`.

One compiled call runs ``iterations_per_call`` EM iterations inside a
``tf.while_loop`` under ``tf.function(jit_compile=True)``
(:mod:`mixedfx.inference.loop`): each iteration is an HMC E-step
(:mod:`mixedfx.inference.estep`) followed by the parameter-expanded M-step, whose
regression is one of two strategies (:mod:`mixedfx.inference.msteps`).  Python runs
only between calls (:mod:`mixedfx.inference.driver`), to recover from breakdowns,
keep the traces and draws, consult the stopping rule
(:mod:`mixedfx.inference.stopping`) and update the progress bar.

Compiled functions are cached per static configuration (family, sampler settings,
term structure) and tensor shapes, and the rows and levels are padded up to shape
buckets (:mod:`mixedfx.inference.buckets`), so fits of data of similar sizes, as in
cross-validation, a bootstrap or a grid search, compile once.  Nothing compiled is
ever stored on an estimator.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from mixedfx._tf import tf
from mixedfx.inference.buckets import ShapeBuckets
from mixedfx.inference.convergence import effective_sample_size, potential_scale_reduction
from mixedfx.inference.driver import MCEMDriver
from mixedfx.inference.faults import FaultInjection
from mixedfx.inference.initial import initial_parameters
from mixedfx.inference.layout import ParameterLayout
from mixedfx.inference.loop import EMState, LoopConfig, compiled_iterations
from mixedfx.inference.memory import check_memory, peak_memory_bytes
from mixedfx.inference.rows import chunk_rows_for
from mixedfx.inference.stopping import MonteCarloErrorRule, lead_in_start
from mixedfx.inference.structure import location_expansions, nested_centering
from mixedfx.inference.summary import FitSummary
from mixedfx.exceptions import ParameterError
from mixedfx.model.covariance import term_structure
from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["MCEMOptions", "MCEMResult", "fit_mcem"]


@dataclass(frozen=True)
class MCEMOptions:
    """Settings of the Monte Carlo EM loop.

    Attributes
    ----------
    n_chains : int, default 2
        HMC chains run side by side (vectorized) in each E-step.
    n_draws : int, default 5
        Draws kept per chain per E-step.
    n_burnin : int, default 3
        Transitions per E-step that adapt the step size before the kept draws.  The
        chains carry over from one E-step to the next, so little burn-in is needed.
    n_initial_burnin : int, default 50
        Burn-in of the very first E-step, whose chains start at zero.
    n_leapfrog_steps : int, default 8
    target_accept_prob : float, default 0.75
    initial_step_size : float, default 0.5
        On the preconditioned scale, where the conditional sds are about one.
    iterations_per_call : int, default 5
        EM iterations per compiled call; the stopping rule is consulted between calls.
    max_iter : int, default 500
    max_retries : int, default 6
        How often a block of iterations may be run again from its starting
        parameters when its E-steps produced non-finite values or more than half of
        their HMC transitions diverged: first with the chains moved to the random
        effects' conditional modes (:func:`conditional_modes`), then with a tenth of
        the step size each time.  Past that, the fit raises :class:`~mixedfx.FitError`.
    max_kept_draws : int, default 1000
        Draws kept per chain for diagnostics (the latest of the averaging window).
    draws_memory_bytes : int, default 64 MiB
        Bound on the memory of the kept draws; fewer are kept when it binds (their
        diagnostics need a few times as much, briefly).
    float32_e_step : bool, default True
        Gaussian family: the E-step's per-row work on the random effects (gathering
        each row's coefficients, the residual, and the scatter of its gradient back to
        the levels) in float32, the fixed part ``y - X beta`` and every sum over rows in
        float64 (see :func:`mixedfx.model.gaussian_log_likelihood_float32`).  The M-step, the stopping
        rule and the reported log-likelihood stay float64.  The other families are
        float64 throughout.
    max_rows_per_chunk : int, default 131072
        Rows per chunk of the sums over rows inside the compiled loop (bounds the
        memory of the per-row intermediates; see :mod:`mixedfx.inference.rows`).
    max_dense_entries : int, default 60,000,000
        Largest dense block (entries) of the exact Gaussian computations, about
        480 MB of float64; past it the conjugate-gradient path is used.
    diagnostic_entries : int, default 1,048,576
        Draws per slice of levels in the sampler diagnostics (8 MiB of float64).
    rhat_warning : float, default 1.05
        R-hat of the random effects' mean squares, beyond its chance level (see
        ``FitSummary.rhat``), above which the estimators warn.
    memory_limit_bytes : int, optional
        The memory a fit may use; before it allocates, its peak is estimated
        (:func:`~mixedfx.inference.memory.estimate_peak_bytes`) and a larger estimate
        raises :class:`~mixedfx.MemoryEstimateError`.  By default the
        memory available to the process (``MemAvailable`` on Linux; the check is
        skipped where it is unknown).
    e_step : {"auto", "hmc", "gibbs"}, default "auto"
        The E-step's MCMC kernel.  ``"hmc"``: Hamiltonian Monte Carlo
        (:func:`~mixedfx.inference.estep.hmc_e_step`), for every family.  ``"gibbs"``:
        blocked Gibbs sampling (:class:`~mixedfx.inference.gibbs.BlockedGibbs`), exact
        draws of each term's random effects given the others, one pass over the rows
        per term and sweep; only for a family whose response given the linear
        predictor is normal (``family.conditionally_gaussian``: the Gaussian, also with
        precision weights, an offset or a dispersion model) or logistic in it
        (``family.polya_gamma_augmentable``: binomial and bernoulli with the logit
        link, drawn given Polya-Gamma variables,
        :class:`~mixedfx.inference.polya_gamma.PolyaGammaGibbs`), else a
        :class:`~mixedfx.ParameterError`.  ``"auto"``, the default: the family's
        ``preferred_e_step``, the kernel with the most effective samples per second
        for it (``benchmarks/kernels.py``): Gibbs for a conditionally Gaussian family,
        HMC for every other (Polya-Gamma Gibbs samples a logit model at about a tenth
        of HMC's rate on a CPU, so it stays opt-in).  A sharded fit (``distribute=``)
        runs HMC: ``"gibbs"`` raises there, ``"auto"`` falls back to HMC.  Gibbs is float64 throughout
        (``float32_e_step`` concerns HMC only), samples nested random intercepts in
        the same centred coordinates as HMC, and under REML draws the fixed effects
        given the random effects at the start of each sweep.  The chains' draws (the
        random stream) differ from HMC's, so a fit's estimates move within their Monte
        Carlo error.  ``n_leapfrog_steps``, ``target_accept_prob`` and
        ``initial_step_size`` are HMC's; ``n_burnin`` and ``n_initial_burnin`` count
        Gibbs sweeps.
    fault_injection : tuple, optional
        A test hook, not a setting: ``(iteration, "nan" | "inf")`` sets every chain's
        state to NaN or inf at the start of that EM iteration's E-step (counted from 1),
        once; ``(iteration, kind, times)`` hits that many attempts at it (see
        :class:`~mixedfx.inference.faults.FaultInjection`).  None (the default) adds
        nothing to the compiled program.

    Examples
    --------
    The estimators build it from their ``n_chains``, ``n_draws``,
    ``n_leapfrog_steps`` and ``max_iter``; :func:`fit_mcem` takes it directly:

    >>> import dataclasses
    >>> from mixedfx.inference import MCEMOptions
    >>> options = MCEMOptions()
    >>> options.n_chains, options.n_draws, options.n_leapfrog_steps, options.max_iter
    (2, 5, 8, 500)
    >>> dataclasses.replace(options, n_chains=4).n_chains
    4
    """

    n_chains: int = 2
    n_draws: int = 5
    n_burnin: int = 3
    n_initial_burnin: int = 50
    n_leapfrog_steps: int = 8
    target_accept_prob: float = 0.75
    initial_step_size: float = 0.5
    iterations_per_call: int = 5
    max_iter: int = 500
    max_retries: int = 6
    max_kept_draws: int = 1000
    draws_memory_bytes: int = 64 * 2**20
    float32_e_step: bool = True
    max_rows_per_chunk: int = 1 << 17
    max_dense_entries: int = 60_000_000
    diagnostic_entries: int = 1 << 20
    rhat_warning: float = 1.05
    memory_limit_bytes: int | None = None
    fault_injection: tuple | None = None
    e_step: str = "auto"


#: The values of :attr:`MCEMOptions.e_step`.
E_STEP_KERNELS = ("hmc", "gibbs", "auto")


def e_step_kernel(family, options: MCEMOptions, *, distribute=None) -> str:
    """The E-step kernel a fit runs, ``"hmc"`` or ``"gibbs"``, from
    :attr:`MCEMOptions.e_step` and what the family offers (it is asked, never named).

    Examples
    --------
    >>> from mixedfx.inference import MCEMOptions
    >>> from mixedfx.inference.mcem import e_step_kernel
    >>> from mixedfx.model import Gaussian, Poisson
    >>> auto = MCEMOptions(e_step="auto")
    >>> e_step_kernel(Gaussian(), auto), e_step_kernel(Poisson(), auto), e_step_kernel(Gaussian(), MCEMOptions())
    ('gibbs', 'hmc', 'gibbs')
    >>> e_step_kernel(Gaussian(), MCEMOptions(e_step="hmc"))
    'hmc'
    >>> e_step_kernel(Poisson(), MCEMOptions(e_step="gibbs"))
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.ParameterError: e_step='gibbs' needs a response that is normal given the linear predictor, or logistic in it (Polya-Gamma augmentation: binomial or bernoulli, logit link); the poisson family's is not: use e_step='hmc' or 'auto'
    >>> from mixedfx.model import Bernoulli
    >>> e_step_kernel(Bernoulli(), MCEMOptions(e_step="gibbs"))  # Polya-Gamma augmented
    'gibbs'
    """
    choice = options.e_step
    if choice not in E_STEP_KERNELS:
        raise ParameterError(f"e_step must be one of {', '.join(map(repr, E_STEP_KERNELS))}, got {choice!r}")
    if choice == "hmc":
        return "hmc"
    if choice == "gibbs" and not (family.conditionally_gaussian or family.polya_gamma_augmentable):
        raise ParameterError(f"e_step='gibbs' needs a response that is normal given the linear predictor, or "
                             f"logistic in it (Polya-Gamma augmentation: binomial or bernoulli, logit link); the "
                             f"{family.name} family's is not: use e_step='hmc' or 'auto'")
    if distribute is not None:
        if choice == "gibbs":
            raise ParameterError("e_step='gibbs' is not available for a sharded fit (distribute=): use e_step='hmc' "
                                 "or 'auto' (which runs HMC there)")
        return "hmc"
    return "gibbs" if choice == "gibbs" else family.preferred_e_step


@dataclass(frozen=True, eq=False)
class MCEMResult:
    """Estimates, conditional moments and draws of the random effects, and the fit record.

    Attributes
    ----------
    parameters : ModelParameters
    random_effects : tuple of numpy.ndarray
        Per term, the mean of the sampled coefficients over the averaging window's
        draws, shape ``(num_levels, dim)``.
    random_effects_cov : tuple of numpy.ndarray
        Per term, their covariance over the same draws (the conditional covariance
        of each level's coefficients), shape ``(num_levels, dim, dim)``.
    draws : tuple of numpy.ndarray
        Per term, the kept draws, shape ``(n_chains, n_kept, num_levels, dim)``: the
        draws of the E-steps in the averaging window (the latest ``max_kept_draws``
        per chain at most, and within ``draws_memory_bytes``).
    summary : FitSummary

    Examples
    --------
    :func:`fit_mcem` returns one; the estimators turn it into their fitted attributes:

    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> from mixedfx.design import RandomDesign, build_fixed_design
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> spec = mixedfx.parse_formula("y ~ x + (1 | g)")
    >>> fixed, X = build_fixed_design(spec.fixed, data)
    >>> terms = RandomDesign.from_spec(spec, data).materialize(data)
    >>> model = MixedModel(Gaussian(), X, data["y"].to_numpy(), terms, fixed.column_names)
    >>> from mixedfx.inference import fit_mcem
    >>> result = fit_mcem(model, seed=[1, 2])
    >>> result.parameters.fixed_effects.round(1).tolist()
    [1.0, 0.5]
    >>> result.random_effects[0].shape, result.random_effects_cov[0].shape  # 30 levels, 1 coefficient
    ((30, 1), (30, 1, 1))
    >>> draws = result.draws[0]  # (chains, kept draws, levels, coefficients)
    >>> draws.shape[0], draws.shape[2:], result.summary.converged
    (2, (30, 1), True)
    """

    parameters: ModelParameters
    random_effects: tuple[np.ndarray, ...]
    random_effects_cov: tuple[np.ndarray, ...]
    draws: tuple[np.ndarray, ...]
    summary: FitSummary


def fit_mcem(
    model: MixedModel,
    *,
    initial: ModelParameters | None = None,
    method: str = "ml",
    options: MCEMOptions | None = None,
    stopping_rule=None,
    seed=None,
    progress: bool = False,
    distribute=None,
) -> MCEMResult:
    """Fit a mixed model by Monte Carlo EM.

    Parameters
    ----------
    model : MixedModel
        The model bound to its training data.
    initial : ModelParameters, optional
        Starting values; by default :func:`initial_parameters`.
    method : {"ml", "reml"}, default "ml"
        Maximum likelihood, or restricted maximum likelihood (Gaussian family only):
        the E-step then integrates the fixed effects out under a flat prior.
    options : MCEMOptions, optional
    stopping_rule : object with an ``assess`` method, optional
        By default :class:`MonteCarloErrorRule` with ``tol=0.1``.
    seed : int or array of two ints, optional
        Stateless seed; the same seed gives the same fit on the same machine.
    progress : bool, default False
        Show a tqdm progress bar (it appears only on fits longer than two seconds).
    distribute : tf.distribute.Strategy, optional
        Shard the rows across the strategy's replicas and all-reduce their sums
        (:mod:`mixedfx.inference.distributed`).

    Returns
    -------
    MCEMResult

    Examples
    --------
    The estimators call it on the model they bind; the layers below the estimator
    can also be used directly (formula, designs, model, then this):

    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> from mixedfx.design import RandomDesign, build_fixed_design
    >>> from mixedfx.model import Gaussian, MixedModel
    >>> spec = mixedfx.parse_formula("y ~ x + (1 | g)")
    >>> fixed, X = build_fixed_design(spec.fixed, data)
    >>> terms = RandomDesign.from_spec(spec, data).materialize(data)
    >>> model = MixedModel(Gaussian(), X, data["y"].to_numpy(), terms, fixed.column_names)
    >>> from mixedfx.inference import fit_mcem
    >>> result = fit_mcem(model, seed=[1, 2])
    >>> result.summary.converged
    True
    >>> result.parameters.fixed_effects.round(1).tolist(), round(float(result.parameters.family_params["sigma"]), 1)
    ([1.0, 0.5], 1.0)
    >>> sd = result.parameters.random_scale_tril[0][0, 0]
    >>> bool(0.6 < sd < 1.0)  # simulated with sd 0.8
    True
    """
    options = options or MCEMOptions()
    kernel = e_step_kernel(model.family, options, distribute=distribute)
    model, _ = model.row_scaled()  # precision weights (Gaussian): the same fit on rows scaled by sqrt(w)
    if method not in ("ml", "reml"):
        raise ValueError(f"method must be 'ml' or 'reml', got {method!r}")
    reml = method == "reml"
    if reml and not model.family.conjugate_gaussian:
        raise ValueError(f"REML is defined for the Gaussian family only, not {model.family.name!r}")
    rule = stopping_rule if stopping_rule is not None else MonteCarloErrorRule()
    fault = FaultInjection.from_option(options.fault_injection)
    # Before anything of the fit's own is allocated.
    memory_estimate = check_memory(model, options, distribute=distribute)
    initial = initial or initial_parameters(model)
    layout = ParameterLayout.from_model(model)
    expansions = location_expansions(model)
    centering = nested_centering(model)
    num_levels = tuple(t.num_levels for t in model.random_terms)
    centred = {k for k, parent in enumerate(centering.parent) if parent is not None} | set(centering.parent)
    buckets = ShapeBuckets.for_sizes(model.n_obs, num_levels, unpadded_terms=centred)
    config = _loop_config(model, options, buckets=buckets, expansions=expansions, centering=centering, reml=reml)
    config = dataclasses.replace(config, e_step=kernel)
    if fault is not None:
        config = dataclasses.replace(config, fault_kind=fault.kind)
    run = compiled_iterations(config, distribute)
    if distribute is None:
        row_data = _padded_rows(model, buckets)
    else:
        from mixedfx.inference.distributed import ShardedRows

        row_data = ShardedRows(model, distribute).shards
    data = _fit_tensors(model, buckets=buckets, expansions=expansions, centering=centering, reml=reml)
    em = EMState(
        fixed_effects=tf.constant(initial.fixed_effects, tf.float64),
        scale_tril=[tf.constant(L, tf.float64) for L in initial.random_scale_tril],
        free=tf.constant(model.family.free_from_parameters(initial.family_params), tf.float64),
        chains=[tf.zeros([options.n_chains, q, d], tf.float64) for q, d in zip(config.num_levels, config.dims)],
        step_size=tf.constant(options.initial_step_size, tf.float64),
        seed=tf.constant(_seed_pair(seed), tf.int32),
    )

    def run_block(em, num_burnin):
        if fault is None:
            return run(em, num_burnin, data, row_data)
        at = fault.iteration_in_call(first=driver.accumulators.n_iter, length=options.iterations_per_call)
        return run(em, num_burnin, {**data, "fault_iteration": tf.constant(at, tf.int32)}, row_data)

    driver = MCEMDriver(run_block, em=em, model=model, layout=layout, options=options, rule=rule, buckets=buckets,
                        progress=progress)
    start_time = time.perf_counter()
    driver.run()
    result = _result(driver, initial=layout.row(initial), method=method, start_time=start_time)
    summary = dataclasses.replace(result.summary, memory_estimate_bytes=memory_estimate,
                                  memory_peak_bytes=peak_memory_bytes(), e_step=kernel)
    return dataclasses.replace(result, summary=summary)


def _loop_config(model, options, *, buckets, expansions, centering, reml) -> LoopConfig:
    """The static configuration of the compiled loop (its cache key)."""
    dims = tuple(t.dim for t in model.random_terms)
    draw_bytes = 8 * options.n_chains * options.n_draws * sum(q * d for q, d in zip(buckets.padded_levels, dims))
    return LoopConfig(
        family=model.family,
        n_draws=options.n_draws,
        n_burnin=options.n_burnin,
        n_leapfrog_steps=options.n_leapfrog_steps,
        target_accept_prob=options.target_accept_prob,
        iterations_per_call=options.iterations_per_call,
        num_levels=buckets.padded_levels,
        dims=dims,
        keys=model.keys,
        expansion_targets=tuple(e.targets for e in expansions),
        centering_parent=centering.parent,
        reml=reml,
        keep_all_draws=draw_bytes <= 16 * 2**20,
        chunk_rows=chunk_rows_for(buckets.padded_rows, max_rows=options.max_rows_per_chunk),
        one_hot=one_hot_terms(buckets.padded_levels),
        float32_e_step=options.float32_e_step and model.family.conjugate_gaussian,
        structures=tuple(term_structure(t) for t in model.random_terms),
        predictors=model.predictors,
    )


def _fit_tensors(model, *, buckets, expansions, centering, reml) -> dict:
    """The per-fit tensors of the compiled loop besides the rows (see
    :func:`~mixedfx.inference.loop.compiled_iterations`)."""
    X = model.fixed_design
    # The Gaussian regression works on the response less any offset, relative to its
    # least-squares fit on X: y'y itself would cancel catastrophically (y near 1e10).
    y = model.response - (0.0 if model.offset is None else model.offset)
    ols_beta = np.linalg.lstsq(X, y, rcond=None)[0] if X.shape[1] else np.zeros(0)
    ols_residual = y - X @ ols_beta
    n_terms = len(model.random_terms)

    def constant(values):
        return None if values is None else tf.constant(values, tf.float64)

    return {
        "level_weight": tuple(constant(buckets.level_weight(k)) for k in range(n_terms)),
        "n_obs": tf.constant(float(model.n_obs), tf.float64),
        "level_count": tuple(tf.constant(float(t.num_levels), tf.float64) for t in model.random_terms),
        "level_values": tuple(constant(buckets.pad_levels(k, e.level_values)) for k, e in enumerate(expansions)),
        "parent_level": tuple(None if m is None else tf.constant(m, tf.int32) for m in centering.parent_level),
        "xtx": tf.constant(X.T @ X),
        "xtx_inv": tf.constant(np.linalg.pinv(X.T @ X) if reml else np.zeros((X.shape[1],) * 2)),
        "xty": tf.constant(X.T @ y),
        "ols_beta": tf.constant(ols_beta, tf.float64),
        "ols_rss": tf.constant(float(ols_residual @ ols_residual), tf.float64),
    }


def _result(driver: MCEMDriver, *, initial: np.ndarray, method: str, start_time: float) -> MCEMResult:
    """The estimates, the random effects' moments and draws, and the fit record, from a
    driver that has run: the estimate is the trace's average over the averaging window
    (the last block's iterations if the rule never set one)."""
    layout, options, acc, decision = driver.layout, driver.options, driver.accumulators, driver.decision
    trace = np.asarray(acc.trace_rows)
    n_iter = trace.shape[0]
    window_start = acc.window_start
    if window_start is None or window_start >= n_iter:
        window_start = max(n_iter - options.iterations_per_call, 0)
    window = trace[window_start:]
    estimate = layout.average(window)
    if decision.tolerance is not None:
        tolerance = layout.natural_spread(decision.tolerance, estimate)
    else:
        tolerance = np.full(layout.size, np.nan)
    tolerance[driver.unjudged] = np.nan  # the rule required nothing of these
    random_effects, random_effects_cov, draws_summed = acc.moments(driver.last, real=driver.real,
                                                                   draws_per_call=driver.draws_per_call)
    draws = acc.window_draws(window_start)
    diagnostics = sampler_diagnostics(draws, diagnostic_entries=options.diagnostic_entries)
    frozen = layout.at_boundary(estimate, residual_sd=layout.residual_sd(estimate))
    recoveries = driver.recovery.recoveries
    summary = FitSummary(
        converged=bool(decision.converged),
        message=decision.message if decision.converged else f"stopped at max_iter={options.max_iter}: {decision.message}",
        n_iter=n_iter,
        window_start=window_start,
        n_averaged=n_iter - window_start,
        n_draws_averaged=draws_summed,
        parameter_names=layout.names,
        initial=initial,
        estimate=estimate,
        mcse=layout.monte_carlo_error(window, estimate, lead_in=trace[lead_in_start(
            window_start, n_iter, skip=options.iterations_per_call):window_start]),
        tolerance=tolerance,
        trace=trace,
        objective=np.asarray(acc.objective),
        acceptance=np.asarray(acc.acceptance),
        step_size=np.asarray(acc.step_sizes),
        n_chains=options.n_chains,
        n_draws=options.n_draws,
        n_leapfrog_steps=options.n_leapfrog_steps,
        at_boundary=tuple(name for name, flag in zip(layout.names, frozen) if flag),
        elapsed_seconds=time.perf_counter() - start_time,
        first_call_seconds=driver.first_call_seconds,
        method=method,
        divergences=np.asarray(acc.divergences, dtype=np.int64),
        n_retries=len(recoveries),
        recoveries=tuple(recoveries),
        **diagnostics,
    )
    return MCEMResult(parameters=layout.parameters(estimate), random_effects=random_effects,
                      random_effects_cov=random_effects_cov, draws=draws, summary=summary)


#: Terms with at most this many (padded) levels are applied by one-hot products on a GPU.
ONE_HOT_MAX_LEVELS = 64


def one_hot_terms(num_levels, *, devices=None) -> tuple[bool, ...]:
    """Per term, whether the compiled loop applies it by a one-hot product.

    On a GPU, a factor with few levels (at most :data:`ONE_HOT_MAX_LEVELS`) is applied
    as a product of the rows' one-hot indicators with its coefficients, whose gradient
    is another matrix product, instead of a gather, whose gradient is a scatter-add
    that many rows crowd onto few levels.  On a CPU, gathers are as fast and lighter.

    Parameters
    ----------
    num_levels : sequence of int
    devices : sequence of str, optional
        Device types to decide for (default: the logical devices TensorFlow sees).

    Examples
    --------
    >>> from mixedfx.inference.mcem import one_hot_terms
    >>> one_hot_terms([3072, 1152, 16], devices=["CPU", "GPU"]), one_hot_terms([16], devices=["CPU"])
    ((False, False, True), (False,))
    """
    if devices is None:
        devices = [d.device_type for d in tf.config.list_logical_devices()]
    gpu = "GPU" in devices
    return tuple(bool(gpu and q <= ONE_HOT_MAX_LEVELS) for q in num_levels)


def _padded_rows(model: MixedModel, buckets: ShapeBuckets) -> dict:
    """The model's rows as tensors, padded to the bucket (see :mod:`mixedfx.inference.rows`)."""
    pad = buckets.pad_rows
    # padded rows repeat the first row's response (and trials): a value every family's density
    # takes (0 is outside a Gamma's or a beta's support, and -inf times a zero weight is NaN)
    response = tf.constant(pad(model.response, fill=model.response[0]), tf.float64)
    rows = {
        "fixed_design": tf.constant(pad(model.fixed_design), tf.float64),
        "response": response,
        "regression_response": response if model.offset is None else tf.constant(pad(model.response - model.offset),
                                                                                  tf.float64),
        "row_weight": tf.constant(buckets.row_weight(), tf.float64),
    }
    if model.offset is not None:
        rows["offset"] = tf.constant(pad(model.offset), tf.float64)
    if model.family_rows is not None:  # with the response
        rows["trials"] = tf.constant(pad(model.family_rows, fill=model.family_rows[0]), tf.float64)
    if model.weights is not None:
        rows["prior_weight"] = tf.constant(pad(model.weights, fill=1.0), tf.float64)
    for k, term in enumerate(model.random_terms):
        rows[f"group_index_{k}"] = tf.constant(pad(term.group_index), tf.int32)
        if term.z is not None:
            rows[f"z_{k}"] = tf.constant(pad(term.z), tf.float64)
    return rows


def sampler_diagnostics(draws, *, diagnostic_entries: int = 1 << 20) -> dict:
    """R-hat and effective sample sizes of kept draws (TFP's estimators, in NumPy:
    :func:`~mixedfx.inference.convergence.potential_scale_reduction` and
    :func:`~mixedfx.inference.convergence.effective_sample_size`).

    Parameters
    ----------
    draws : sequence of numpy.ndarray
        Per term, ``(n_chains, n_draws, num_levels, dim)``.
    diagnostic_entries : int, default 1,048,576
        Draws per slice of coefficients (8 MiB of float64): the per-level diagnostics
        run a slice of every term's level coefficients at a time, since their FFTs take
        several times the draws' memory (:attr:`MCEMOptions.diagnostic_entries`).

    Returns
    -------
    dict
        ``rhat``: the largest R-hat of the statistics the M-step uses, each term's
        mean square of every coefficient over its levels (what a chain that has not
        mixed gets wrong first), chains against each other.  ``rhat_noise``: how far
        above 1 that R-hat goes by chance alone (its 95% point when the chains agree,
        about ``1.92 / ESS`` per chain for two chains), for the same statistic.
        ``rhat_max``: the largest R-hat over every coefficient of every level; with
        thousands of levels and a hundred draws per chain its chance fluctuations
        alone reach about 1.1.  ``ess_min``: the smallest effective sample size over
        levels, all chains together.  ``n_kept_draws``: draws per chain.  R-hat is
        ``nan`` with fewer than 4 draws per chain, or a single chain.

    Notes
    -----
    The chains are compared with each other, not split in halves: within the
    averaging window the parameters still move by their Monte Carlo error, which
    shifts both chains' draws alike and would make a chain's halves differ even
    when the chains agree.

    Examples
    --------
    Two chains of independent draws agree; R-hat stays within its chance level:

    >>> import numpy as np
    >>> from mixedfx.inference.mcem import sampler_diagnostics
    >>> draws = np.random.default_rng(0).standard_normal((2, 200, 30, 1))
    >>> out = sampler_diagnostics([draws], diagnostic_entries=2 * 200 * 8)  # slices of 8 levels
    >>> out["n_kept_draws"], bool(out["rhat"] < 1.0 + out["rhat_noise"] + 0.05)
    (200, True)
    """
    n_chains, n_kept = draws[0].shape[:2]
    nan = float("nan")
    out = {"rhat": nan, "rhat_noise": nan, "rhat_max": nan, "ess_min": nan, "n_kept_draws": int(n_kept)}
    if n_kept < 4:
        return out
    # Every term's coefficients side by side, (draw, chain, entry), a slice of entries at
    # a time: the FFTs take several times the draws' memory.
    step = max(1, diagnostic_entries // max(1, n_chains * n_kept))
    ess, levels_rhat = [], []
    for samples in _entry_slices(draws, step):
        ess.append(effective_sample_size(samples, cross_chain=n_chains > 1))
        if n_chains > 1:
            levels_rhat.append(potential_scale_reduction(samples))
    out["ess_min"] = float(min(np.nanmin(e) for e in ess))
    if n_chains < 2:
        return out
    # each term's mean square of every coefficient over its levels, (draw, chain, coefficient)
    mean_square = np.concatenate([np.mean(np.square(np.swapaxes(d, 0, 1)), axis=2) for d in draws], axis=-1)
    rhat = potential_scale_reduction(mean_square)
    ess_per_chain = effective_sample_size(mean_square) / n_chains
    # R-hat^2 - 1 is about the between-chain variance over the within-chain one:
    # chi-square with n_chains - 1 degrees of freedom over (n_chains - 1) ESS.
    chi2_95 = {1: 3.841, 2: 5.991, 3: 7.815}.get(n_chains - 1, 3.841 + 1.645 * np.sqrt(2 * (n_chains - 1)))
    noise = np.sqrt(1.0 + chi2_95 / ((n_chains - 1) * np.maximum(ess_per_chain, 1.0))) - 1.0
    j = int(np.nanargmax(rhat - noise))
    out["rhat"], out["rhat_noise"] = float(rhat[j]), float(noise[j])
    out["rhat_max"] = float(max(np.nanmax(r) for r in levels_rhat))
    return out


def _entry_slices(draws, step: int):
    """Every term's draws ``(chain, draw, level, coefficient)`` as entries side by side,
    ``(draw, chain, entries)``, yielded about ``step`` entries at a time (whole levels;
    the last slice shorter): only one slice is copied at a time."""
    pieces, size = [], 0
    for d in draws:
        n_chains, n_kept, num_levels, dim = d.shape
        level = 0
        while level < num_levels:
            take = max(1, (step - size) // dim)
            piece = np.swapaxes(d[:, :, level:level + take], 0, 1).reshape(n_kept, n_chains, -1)
            pieces.append(piece)
            size += piece.shape[-1]
            level += take
            if size >= step:
                yield np.concatenate(pieces, axis=-1)
                pieces, size = [], 0
    if pieces:
        yield np.concatenate(pieces, axis=-1)


def _seed_pair(seed) -> list[int]:
    """A stateless seed pair from ``seed`` (None: fresh entropy; an int: drawn from it)."""
    if seed is None:
        return [int(x) for x in np.random.default_rng().integers(0, 2**31 - 1, size=2)]
    if np.ndim(seed) == 0:
        return [int(x) for x in np.random.default_rng(int(seed)).integers(0, 2**31 - 1, size=2)]
    return [int(x) for x in np.asarray(seed).ravel()[:2]]
