"""Monte Carlo EM: the fitting loop.

One compiled call runs ``iterations_per_call`` EM iterations inside a
``tf.while_loop`` under ``tf.function(jit_compile=True)``: each iteration is an HMC
E-step (:mod:`mixedfx.inference.estep`) followed by the parameter-expanded M-step
(:mod:`mixedfx.inference.mstep`).  Python runs only between calls, to consult the
stopping rule (:mod:`mixedfx.inference.stopping`) and to update the progress bar.

Compiled functions are cached per static configuration (family, sampler settings,
term structure), so fits of data with the same shapes, as in cross-validation or a
grid search, compile once.  Nothing compiled is ever stored on an estimator.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mixedfx._tf import tf, tfp
from mixedfx.exceptions import FitError
from mixedfx.inference.estep import Centering, hmc_e_step, preconditioner_scale
from mixedfx.inference.initial import initial_parameters
from mixedfx.inference.mstep import Expansion, gaussian_px_m_step, gaussian_statistics
from mixedfx.inference.stopping import Decision, MonteCarloErrorRule
from mixedfx.inference.summary import FitSummary
from mixedfx.model.families import Family, Gaussian
from mixedfx.model.gaussian import DenseBlockTooLarge, gaussian_marginal
from mixedfx.model.joint import RESPONSE, MixedModel, ModelParameters, ModelTensors, build_joint_distribution, linear_predictor

__all__ = ["MCEMOptions", "MCEMResult", "fit_mcem", "location_expansions", "nested_centering"]


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


@dataclass(frozen=True, eq=False)
class MCEMResult:
    """Estimates, conditional means of the random effects, and the fit record."""

    parameters: ModelParameters
    random_effects: tuple[np.ndarray, ...]
    summary: FitSummary


def location_expansions(model: MixedModel) -> tuple[Expansion, ...]:
    """For each random intercept, the fixed-effect columns constant within its levels."""
    X = model.fixed_design
    expansions = []
    for term in model.random_terms:
        if term.z is not None or X.shape[1] == 0:
            expansions.append(Expansion((), None))
            continue
        q = term.num_levels
        lo = np.full((q, X.shape[1]), np.inf)
        hi = np.full((q, X.shape[1]), -np.inf)
        np.minimum.at(lo, term.group_index, X)
        np.maximum.at(hi, term.group_index, X)
        constant = np.all(lo == hi, axis=0)
        columns = tuple(int(j) for j in np.flatnonzero(constant))
        values = lo[:, list(columns)] if columns else None
        if columns and np.linalg.matrix_rank(values) < len(columns):
            columns, values = (), None
        expansions.append(Expansion(columns, None if values is None else values))
    return tuple(expansions)


def nested_centering(model: MixedModel) -> Centering:
    """Find random intercepts nested in others and centre each on its closest parent.

    Term ``l`` is nested in term ``k`` when each level of ``l`` occurs with a single
    level of ``k``.  Each term gets at most one parent (the nesting term with the most
    levels) and at most one child (the nested term with the most levels).
    """
    terms = model.random_terms
    intercepts = [k for k, t in enumerate(terms) if t.z is None]
    parent_of: dict[int, tuple[int, np.ndarray]] = {}
    for child in intercepts:
        best = None
        for parent in intercepts:
            if terms[parent].num_levels >= terms[child].num_levels:
                continue
            pairs = np.unique(terms[child].group_index.astype(np.int64) * terms[parent].num_levels + terms[parent].group_index)
            if len(pairs) != terms[child].num_levels:
                continue
            if best is None or terms[parent].num_levels > terms[best].num_levels:
                best = parent
        if best is not None:
            level_map = np.zeros(terms[child].num_levels, dtype=np.int32)
            level_map[terms[child].group_index] = terms[best].group_index
            parent_of[child] = (best, level_map)
    parent = [None] * len(terms)
    parent_level = [None] * len(terms)
    taken: set[int] = set()
    for child in sorted(parent_of, key=lambda c: -terms[c].num_levels):
        p, level_map = parent_of[child]
        if p in taken:
            continue
        taken.add(p)
        parent[child], parent_level[child] = p, level_map
    return Centering(parent=tuple(parent), parent_level=tuple(parent_level))


@dataclass(frozen=True)
class _StaticConfig:
    """What a compiled function depends on besides tensor shapes (the cache key)."""

    family: Family
    n_draws: int
    n_burnin: int
    n_leapfrog_steps: int
    target_accept_prob: float
    iterations_per_call: int
    num_levels: tuple[int, ...]
    keys: tuple[str, ...]
    expansion_columns: tuple[tuple[int, ...], ...]
    centering_parent: tuple


@functools.lru_cache(maxsize=16)
def _compiled_iterations(config: _StaticConfig):
    if not isinstance(config.family, Gaussian):
        raise NotImplementedError(f"Monte Carlo EM has no M-step for the {config.family.name} family yet")
    n_iter = config.iterations_per_call

    @tf.function(jit_compile=True, autograph=False)
    def run(fixed_effects, random_sd, sigma, state, step_size, seed, num_burnin, data):
        fixed_design, response = data["fixed_design"], data["response"]
        group_index, z = data["group_index"], data["z"]
        dtype = fixed_design.dtype
        tensors = ModelTensors(fixed_design, response, group_index, z, config.num_levels, config.keys)
        expansions = tuple(
            Expansion(cols, values) for cols, values in zip(config.expansion_columns, data["level_values"])
        )
        n_obs = tf.cast(tf.shape(response)[0], dtype)
        centering = Centering(parent=config.centering_parent, parent_level=data["parent_level"])

        def body(i, fixed_effects, random_sd, sigma, state, step_size, seed, sums, sq_sums, traces):
            seed, step_seed = tfp.random.split_seed(seed)
            family_params = {"sigma": sigma}
            joint = build_joint_distribution(
                tensors, fixed_effects=fixed_effects, random_sd=random_sd, family=config.family,
                family_params=family_params,
            )

            def target_log_prob(*effects):
                return joint.log_prob({**dict(zip(config.keys, effects)), RESPONSE: response})

            def statistics(current):
                stats = gaussian_statistics(
                    current, fixed_design=fixed_design, response=response, group_index=group_index,
                    z=z, expansions=expansions,
                )
                stats["log_joint"] = target_log_prob(*current)
                return stats

            eta = linear_predictor(fixed_design, fixed_effects, [tf.reduce_mean(s, 0) for s in state], group_index, z)
            scale = preconditioner_scale(
                weight=config.family.fisher_weight(eta, family_params), group_index=group_index, z=z,
                num_levels=config.num_levels, random_sd=random_sd, centering=centering,
                parent_level=data["parent_level"],
            )
            # The first E-step of a call may burn in longer (chains starting at zero).
            burnin = tf.where(i == 0, num_burnin, config.n_burnin)
            e_step = hmc_e_step(
                target_log_prob, current_state=state, scale=scale, step_size=step_size,
                num_draws=config.n_draws, num_burnin=burnin, num_leapfrog_steps=config.n_leapfrog_steps,
                target_accept_prob=config.target_accept_prob, trace_fn=statistics, seed=step_seed,
                centering=centering, parent_level=data["parent_level"],
            )

            new_beta, new_sd, new_sigma, scale_factor, location = gaussian_px_m_step(
                e_step.statistics, fixed_xtx=data["xtx"], fixed_xty=data["xty"], response_ss=data["yty"],
                n_obs=n_obs, num_levels=config.num_levels, expansions=expansions,
            )
            # Carry the chains into the reduced parametrization of the new estimate.
            new_state = []
            for k, s in enumerate(e_step.final_state):
                if location[k] is not None:
                    s = s - tf.linalg.matvec(expansions[k].level_values, location[k])
                new_state.append(scale_factor[k] * s)
            sums = [a + b for a, b in zip(sums, e_step.effects_sum)]
            sq_sums = [a + b for a, b in zip(sq_sums, e_step.effects_sq_sum)]
            row = tf.concat([new_beta, new_sd, [new_sigma]], axis=0)
            traces = {
                "parameters": traces["parameters"].write(i, row),
                "objective": traces["objective"].write(i, e_step.statistics["log_joint"]),
                "acceptance": traces["acceptance"].write(i, e_step.acceptance_rate),
                "step_size": traces["step_size"].write(i, e_step.step_size),
            }
            return i + 1, new_beta, new_sd, new_sigma, new_state, e_step.step_size, seed, sums, sq_sums, traces

        sums = [tf.zeros([q], dtype) for q in config.num_levels]
        sq_sums = [tf.zeros([q], dtype) for q in config.num_levels]
        traces = {name: tf.TensorArray(dtype, size=n_iter) for name in ("parameters", "objective", "acceptance", "step_size")}
        loop = tf.while_loop(
            lambda i, *_: i < n_iter,
            body,
            (tf.constant(0), fixed_effects, random_sd, sigma, state, step_size, seed, sums, sq_sums, traces),
        )
        _, fixed_effects, random_sd, sigma, state, step_size, seed, sums, sq_sums, traces = loop
        return {
            "fixed_effects": fixed_effects,
            "random_sd": random_sd,
            "sigma": sigma,
            "state": state,
            "step_size": step_size,
            "seed": seed,
            "effects_sum": sums,
            "effects_sq_sum": sq_sums,
            **{f"trace_{name}": array.stack() for name, array in traces.items()},
        }

    return run


def fit_mcem(
    model: MixedModel,
    *,
    initial: ModelParameters | None = None,
    options: MCEMOptions | None = None,
    stopping_rule=None,
    seed=None,
    progress: bool = False,
) -> MCEMResult:
    """Fit a mixed model by Monte Carlo EM.

    Parameters
    ----------
    model : MixedModel
        The model bound to its training data.
    initial : ModelParameters, optional
        Starting values; by default :func:`initial_parameters`.
    options : MCEMOptions, optional
    stopping_rule : object with an ``assess`` method, optional
        By default :class:`MonteCarloErrorRule` with ``tol=0.1``.
    seed : int or Tensor of shape [2], optional
        Stateless seed; the same seed gives the same fit on the same machine.
    progress : bool, default False
        Show a tqdm progress bar (it appears only on fits longer than two seconds).

    Returns
    -------
    MCEMResult
    """
    options = options or MCEMOptions()
    rule = stopping_rule if stopping_rule is not None else MonteCarloErrorRule()
    initial = initial or initial_parameters(model)
    family = model.family
    expansions = location_expansions(model)
    centering = nested_centering(model)
    config = _StaticConfig(
        family=family,
        n_draws=options.n_draws,
        n_burnin=options.n_burnin,
        n_leapfrog_steps=options.n_leapfrog_steps,
        target_accept_prob=options.target_accept_prob,
        iterations_per_call=options.iterations_per_call,
        num_levels=tuple(t.num_levels for t in model.random_terms),
        keys=model.keys,
        expansion_columns=tuple(e.columns for e in expansions),
        centering_parent=centering.parent,
    )
    run = _compiled_iterations(config)
    tensors = model.tensors()
    X, y = model.fixed_design, model.response
    data = {
        "fixed_design": tensors.fixed_design,
        "response": tensors.response,
        "group_index": tensors.group_index,
        "z": tensors.z,
        "level_values": tuple(
            None if e.level_values is None else tf.constant(e.level_values, tf.float64) for e in expansions
        ),
        "parent_level": tuple(None if m is None else tf.constant(m, tf.int32) for m in centering.parent_level),
        "xtx": tf.constant(X.T @ X),
        "xty": tf.constant(X.T @ y),
        "yty": tf.constant(float(y @ y), tf.float64),
    }
    names = _parameter_names(model)
    p, n_terms = X.shape[1], len(model.random_terms)
    fixed_effects = tf.constant(initial.fixed_effects, tf.float64)
    random_sd = tf.constant(initial.random_sd, tf.float64)
    sigma = tf.constant(float(initial.family_params["sigma"]), tf.float64)
    state = [tf.zeros([options.n_chains, q], tf.float64) for q in config.num_levels]
    step_size = tf.constant(options.initial_step_size, tf.float64)
    seed = tf.constant(_seed_pair(seed), tf.int32)

    rows, objective, acceptance, step_sizes = [], [], [], []
    window_start, sums_from, draws_summed = None, None, 0
    sums = [np.zeros(q) for q in config.num_levels]
    decision = Decision(None, False, message="not started")
    fixed_scale = None
    start_time = time.perf_counter()
    first_call_seconds = 0.0
    bar = tqdm(desc="MCEM", unit="it", disable=not progress, delay=2.0, leave=False, dynamic_ncols=True)
    bar.set_postfix_str("tracing and compiling (XLA)", refresh=False)
    try:
        while len(rows) < options.max_iter:
            num_burnin = options.n_initial_burnin if not rows else options.n_burnin
            out = run(fixed_effects, random_sd, sigma, state, step_size, seed, tf.constant(num_burnin), data)
            if not rows:
                first_call_seconds = time.perf_counter() - start_time
            fixed_effects, random_sd, sigma = out["fixed_effects"], out["random_sd"], out["sigma"]
            state, step_size, seed = out["state"], out["step_size"], out["seed"]
            chunk = out["trace_parameters"].numpy()
            if not np.all(np.isfinite(chunk)):
                bad = [names[j] for j in np.flatnonzero(~np.all(np.isfinite(chunk), axis=0))]
                raise FitError(
                    f"Monte Carlo EM produced non-finite values of {', '.join(bad)} within iterations "
                    f"{len(rows) + 1}-{len(rows) + len(chunk)}; check the data for extreme values"
                )
            rows.extend(chunk)
            objective.extend(out["trace_objective"].numpy())
            acceptance.extend(out["trace_acceptance"].numpy())
            step_sizes.extend(out["trace_step_size"].numpy())
            if sums_from is not None:
                for k, s in enumerate(out["effects_sum"]):
                    sums[k] += s.numpy()
                draws_summed += options.iterations_per_call * options.n_draws * options.n_chains
            trace = np.asarray(rows)
            frozen = _at_boundary(trace[-1], p=p, n_terms=n_terms)
            chunk_draws = options.iterations_per_call * options.n_draws * options.n_chains
            posterior_var = [
                np.maximum(q.numpy() / chunk_draws - (m.numpy() / chunk_draws) ** 2, 0.0)
                for m, q in zip(out["effects_sum"], out["effects_sq_sum"])
            ]
            if fixed_scale is None:
                # Exact standard errors cost about one EM iteration: computed once, after
                # the first (parameter-expanded) iterations brought the estimate close.
                fixed_scale = _fixed_effects_scale(model, trace[-1])
            scale = _statistical_scale(model, trace[-1], fixed_scale=fixed_scale, posterior_var=posterior_var)
            decision = rule.assess(_working(trace, p), window_start=window_start, scale=scale, frozen=frozen)
            if decision.window_start != window_start:
                window_start = decision.window_start
                sums = [np.zeros(q) for q in config.num_levels]
                draws_summed = 0
                sums_from = len(rows) if window_start is not None else None
            bar.update(len(chunk))
            bar.set_postfix_str(decision.message, refresh=False)
            if decision.converged:
                break
    finally:
        bar.close()

    trace = np.asarray(rows)
    n_iter = trace.shape[0]
    if window_start is None or window_start >= n_iter:
        window_start = max(n_iter - options.iterations_per_call, 0)
    window = trace[window_start:]
    estimate = _average(window, p=p)
    mcse = _natural_mcse(window, estimate, p=p)
    tolerance = decision.tolerance if decision.tolerance is not None else np.full(len(names), np.nan)
    tolerance = _natural_from_working_spread(tolerance, estimate, p=p)
    if draws_summed == 0:  # never reached a window: use the last E-step's draws
        sums = [s.numpy() for s in out["effects_sum"]]
        draws_summed = options.iterations_per_call * options.n_draws * options.n_chains
    frozen = _at_boundary(estimate, p=p, n_terms=n_terms)
    summary = FitSummary(
        converged=bool(decision.converged),
        message=decision.message if decision.converged else f"stopped at max_iter={options.max_iter}: {decision.message}",
        n_iter=n_iter,
        window_start=window_start,
        n_averaged=n_iter - window_start,
        n_draws_averaged=draws_summed,
        parameter_names=names,
        initial=np.concatenate([initial.fixed_effects, initial.random_sd, [initial.family_params["sigma"]]]),
        estimate=estimate,
        mcse=mcse,
        tolerance=tolerance,
        trace=trace,
        objective=np.asarray(objective),
        acceptance=np.asarray(acceptance),
        step_size=np.asarray(step_sizes),
        n_chains=options.n_chains,
        n_draws=options.n_draws,
        n_leapfrog_steps=options.n_leapfrog_steps,
        at_boundary=tuple(name for name, flag in zip(names, frozen) if flag),
        elapsed_seconds=time.perf_counter() - start_time,
        first_call_seconds=first_call_seconds,
    )
    parameters = ModelParameters(
        fixed_effects=estimate[:p],
        random_sd=estimate[p:p + n_terms],
        family_params={"sigma": float(estimate[p + n_terms])},
    )
    random_effects = tuple(s / draws_summed for s in sums)
    return MCEMResult(parameters=parameters, random_effects=random_effects, summary=summary)


def _parameter_names(model: MixedModel) -> tuple[str, ...]:
    return (
        tuple(model.fixed_names)
        + tuple(f"sd({t.name})" for t in model.random_terms)
        + tuple(f"{name}" for name in model.family.parameter_names)
    )


def _seed_pair(seed) -> list[int]:
    if seed is None:
        return [int(x) for x in np.random.default_rng().integers(0, 2**31 - 1, size=2)]
    if np.ndim(seed) == 0:
        return [int(x) for x in np.random.default_rng(int(seed)).integers(0, 2**31 - 1, size=2)]
    return [int(x) for x in np.asarray(seed).ravel()[:2]]


def _working(trace: np.ndarray, p: int) -> np.ndarray:
    """Fixed effects as they are; sds and family parameters on the log scale."""
    out = np.array(trace, dtype=np.float64, copy=True)
    out[:, p:] = np.log(np.maximum(out[:, p:], 1e-300))
    return out


def _average(window: np.ndarray, p: int) -> np.ndarray:
    """Mean of the window; sds are averaged as variances (the scale EM works on)."""
    estimate = window.mean(axis=0)
    estimate[p:] = np.sqrt(np.mean(window[:, p:] ** 2, axis=0))
    return estimate


def _natural_mcse(window: np.ndarray, estimate: np.ndarray, p: int) -> np.ndarray:
    from mixedfx.inference.stopping import monte_carlo_standard_error

    mcse = monte_carlo_standard_error(_working(window, p))
    mcse[p:] = mcse[p:] * estimate[p:]
    return mcse


def _natural_from_working_spread(spread: np.ndarray, estimate: np.ndarray, p: int) -> np.ndarray:
    out = np.array(spread, dtype=np.float64, copy=True)
    out[p:] = out[p:] * estimate[p:]
    return out


def _at_boundary(row: np.ndarray, *, p: int, n_terms: int) -> np.ndarray:
    """Random-effect sds below 1e-4 of the residual sd (lme4's isSingular tolerance)."""
    flags = np.zeros(row.shape[0], dtype=bool)
    sigma = row[p + n_terms]
    flags[p:p + n_terms] = row[p:p + n_terms] < 1e-4 * sigma
    return flags


def _fixed_effects_scale(model: MixedModel, row: np.ndarray) -> np.ndarray:
    """Standard errors of the fixed effects at ``row``: exact for the Gaussian family
    (when the dense blocks fit in memory), else the complete-data ones,
    ``sigma * sqrt(diag((X'X)^-1))``, a lower bound."""
    X = model.fixed_design
    p, n_terms = X.shape[1], len(model.random_terms)
    if not p:
        return np.zeros(0)
    sigma = float(row[p + n_terms])
    if isinstance(model.family, Gaussian):
        params = ModelParameters(row[:p], row[p:p + n_terms], {"sigma": sigma})
        try:
            return np.sqrt(np.clip(np.diag(gaussian_marginal(model, params).fixed_effects_cov), 0.0, None))
        except (DenseBlockTooLarge, np.linalg.LinAlgError):
            pass
    return sigma * np.sqrt(np.clip(np.diag(np.linalg.pinv(X.T @ X)), 0.0, None))


def _statistical_scale(model: MixedModel, row: np.ndarray, *, fixed_scale, posterior_var) -> np.ndarray:
    """Standard errors on the working scale: the yardstick of the stopping rule.

    Fixed effects: ``fixed_scale``.  Log random-effect sd of a term with levels ``j``:
    ``1 / sqrt(2 sum_j r_j^2)`` with ``r_j = 1 - v_j / sd^2`` the share of the prior
    variance the data explain at level ``j`` (``v_j`` its posterior variance, from the
    E-step draws); ``1 / sqrt(2 q)`` when every level is fully informed.  Log residual
    sd: ``1 / sqrt(2 n)``.
    """
    p, n_terms = model.fixed_design.shape[1], len(model.random_terms)
    scale = np.empty(row.shape[0])
    scale[:p] = fixed_scale
    for k, variances in enumerate(posterior_var):
        informed = np.clip(1.0 - variances / max(row[p + k] ** 2, 1e-300), 0.0, 1.0)
        scale[p + k] = 1.0 / np.sqrt(max(2.0 * float(np.sum(informed**2)), 1e-12))
    scale[p + n_terms:] = 1.0 / np.sqrt(2.0 * model.n_obs)
    return scale
