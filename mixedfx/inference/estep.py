"""The E-step: Hamiltonian Monte Carlo over the random effects.

The random effects are sampled from ``p(b | y, theta)`` with
:class:`tfp.mcmc.HamiltonianMonteCarlo`:

* with jittered trajectory lengths (:class:`JitteredLeapfrogSteps`);
* in a *centred* parametrization for nested grouping factors (:class:`Centering`):
  for instructors nested in departments, the sampler moves each instructor's total
  effect ``b_instructor + b_department`` instead of ``b_instructor``, which removes
  the strong posterior correlation between a department and its instructors;
* preconditioned by a diagonal scale, the conditional standard deviation of each
  coordinate under a Gaussian approximation, applied through
  :class:`tfp.mcmc.TransformedTransitionKernel` with :class:`tfp.bijectors.Scale`;
* with its step size adapted during each E-step's short burn-in by
  :class:`tfp.mcmc.SimpleStepSizeAdaptation`.

The whole E-step is a ``tf.while_loop`` inside the caller's compiled function: no
Python runs per HMC step.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensorflow_probability.python.internal import unnest

from mixedfx._tf import tf, tfb, tfp

__all__ = [
    "DIVERGENCE_ENERGY",
    "Centering",
    "EStepResult",
    "JitteredLeapfrogSteps",
    "hmc_e_step",
    "data_precision_diagonal",
    "prior_precision_diagonal",
]


#: Energy error (minus the log acceptance ratio) above which an HMC transition counts
#: as divergent, as in Stan: the leapfrog integrator left the target's typical set.
DIVERGENCE_ENERGY = 1000.0


@dataclass(frozen=True)
class Centering:
    """Hierarchical centring of nested random intercepts.

    When every level of term ``l``'s factor lies within one level of term ``k``'s
    factor (instructors within departments), the sampler works with the centred
    coordinate ``s_l = b_l + s_k[parent_l]`` instead of ``b_l``.  The map has unit
    Jacobian, so the target density is unchanged; only the geometry improves.  Each
    term has at most one parent and one child, so the coordinates form chains, and
    the likelihood depends on the last term of each chain only.

    Attributes
    ----------
    parent : tuple of (int or None)
        Per term, the index of the term it is centred on.
    parent_level : tuple of (numpy.ndarray or None)
        Per centred term, the parent level of each of its levels (int32).

    Examples
    --------
    Three lecturers in two departments; the lecturers' coordinates become their
    effects plus their department's:

    >>> import numpy as np
    >>> from mixedfx.inference.estep import Centering
    >>> centering = Centering(parent=(1, None), parent_level=(np.array([0, 0, 1], dtype=np.int32), None))
    >>> centering.roots, centering.children
    (((1, 0),), (None, 0))
    >>> effects = [np.array([[0.1], [0.2], [0.3]]), np.array([[1.0], [2.0]])]
    >>> sampler = centering.to_sampler(effects, centering.parent_level)
    >>> [np.asarray(s).ravel().round(4).tolist() for s in sampler]
    [[1.1, 1.2, 2.3], [1.0, 2.0]]
    >>> [np.asarray(b).ravel().round(4).tolist() for b in centering.to_model(sampler, centering.parent_level)]
    [[0.1, 0.2, 0.3], [1.0, 2.0]]
    """

    parent: tuple
    parent_level: tuple

    @classmethod
    def none(cls, n_terms: int) -> Centering:
        """No term centred."""
        return cls(parent=(None,) * n_terms, parent_level=(None,) * n_terms)

    @property
    def children(self) -> tuple:
        """Per term, the index of the term centred on it (or None)."""
        out = [None] * len(self.parent)
        for child, parent in enumerate(self.parent):
            if parent is not None:
                out[parent] = child
        return tuple(out)

    @property
    def roots(self) -> tuple:
        """``(root, child)`` pairs: centred chains' first terms, which have a child
        but no parent of their own."""
        children = self.children
        return tuple((k, children[k]) for k in range(len(self.parent))
                     if children[k] is not None and self.parent[k] is None)

    def conditional_variances(self, parent_level, num_levels, prior_precision):
        """Per chain root, the variance ``1 / P_j`` of its coordinate given the rest.

        A root's coordinate enters the joint density only through its own prior and its
        child's (the data reach it through the child), so given everything else it is
        Gaussian, level by level, whatever the family, with precision
        ``P_j = 1/sd^2 + n_j/sd_child^2`` (``n_j`` children of level ``j``).

        Returns
        -------
        dict of int to Tensor
            ``1/P_j`` per root, shape ``[num_levels]``.
        """
        variances = {}
        for root, child in self.roots:
            count = tf.math.unsorted_segment_sum(
                tf.ones_like(parent_level[child], dtype=prior_precision[child].dtype), parent_level[child],
                num_levels[root],
            )
            variances[root] = 1.0 / (prior_precision[root][0] + count * prior_precision[child][0])
        return variances

    def conditional_means(self, coordinates, parent_level, num_levels, prior_precision):
        """Replace each chain root's coordinates by their conditional mean given the rest,
        ``sum_{children} s_child / sd_child^2 / P_j`` (see :meth:`conditional_variances`).

        Statistics evaluated at this mean, plus the known variance where they are
        quadratic, are Rao-Blackwellized: the same expectation with much less Monte
        Carlo noise.
        """
        out = list(coordinates)
        variances = self.conditional_variances(parent_level, num_levels, prior_precision)
        for root, child in self.roots:
            total = tf.math.unsorted_segment_sum(
                tf.transpose(coordinates[child][..., 0]), parent_level[child], num_levels[root]
            )  # [levels, chains]
            mean = tf.transpose(total) * prior_precision[child][0] * variances[root]
            out[root] = mean[..., None]
        return out

    def _order(self):
        """Terms with parents after their parents."""
        order, placed = [], set()
        while len(order) < len(self.parent):
            for k, parent in enumerate(self.parent):
                if k not in placed and (parent is None or parent in placed):
                    order.append(k)
                    placed.add(k)
        return order

    def to_sampler(self, effects, parent_level):
        """Model coordinates ``b`` to sampler coordinates ``s``."""
        out = list(effects)
        for k in self._order():
            parent = self.parent[k]
            if parent is not None:
                out[k] = effects[k] + tf.gather(out[parent], parent_level[k], axis=-2)
        return out

    def to_model(self, coordinates, parent_level):
        """Sampler coordinates ``s`` to model coordinates ``b``."""
        out = list(coordinates)
        for k, parent in enumerate(self.parent):
            if parent is not None:
                out[k] = coordinates[k] - tf.gather(coordinates[parent], parent_level[k], axis=-2)
        return out

    def scale(self, data_precision, prior_precision, parent_level, num_levels):
        """Diagonal preconditioner in sampler coordinates, ``[num_levels, dim]`` per term.

        A term without a centred child keeps its data precision; a term with one
        gets, instead, the prior precision its child's levels contribute (the data
        reach it only through the child).  Every term adds its own prior precision.
        """
        children = self.children
        scales = []
        for k, precision in enumerate(data_precision):
            child = children[k]
            if child is not None:
                count = tf.math.unsorted_segment_sum(
                    tf.ones_like(parent_level[child], dtype=precision.dtype), parent_level[child], num_levels[k]
                )
                precision = count[:, None] * prior_precision[child]
            scales.append(tf.math.rsqrt(precision + prior_precision[k]))
        return scales


class JitteredLeapfrogSteps(tfp.mcmc.TransitionKernel):
    """Draw HMC's number of leapfrog steps uniformly around its mean at every step.

    A fixed trajectory length resonates with near-Gaussian targets: directions whose
    period divides the trajectory barely move, and the effective sample size of some
    statistics collapses.  Jittering the trajectory length is the standard remedy.
    This kernel wraps a :class:`tfp.mcmc.HamiltonianMonteCarlo` kernel and sets the
    ``num_leapfrog_steps`` stored in its kernel results before each step, uniformly
    in ``[ceil(L / 2), L + floor(L / 2)]``; the results pass through unchanged, so
    step-size adaptation sees the HMC results as usual.

    Parameters
    ----------
    inner_kernel : tfp.mcmc.HamiltonianMonteCarlo
    mean_leapfrog_steps : int

    Examples
    --------
    With a mean of 6, each transition takes between 3 and 9 leapfrog steps:

    >>> import numpy as np
    >>> import tensorflow_probability as tfp
    >>> from mixedfx.inference.estep import JitteredLeapfrogSteps
    >>> target = tfp.distributions.Normal(np.float64(0.0), np.float64(1.0)).log_prob
    >>> hmc = tfp.mcmc.HamiltonianMonteCarlo(target, step_size=np.float64(0.5), num_leapfrog_steps=6)
    >>> draws, steps = tfp.mcmc.sample_chain(
    ...     10, current_state=np.float64(0.0), kernel=JitteredLeapfrogSteps(hmc, 6),
    ...     trace_fn=lambda _, results: results.accepted_results.num_leapfrog_steps, seed=(1, 2))
    >>> bool(steps.numpy().min() >= 3), bool(steps.numpy().max() <= 9), len(set(steps.numpy().tolist())) > 1
    (True, True, True)
    """

    def __init__(self, inner_kernel, mean_leapfrog_steps, name=None):
        parameters = inner_kernel.parameters
        if parameters.get("store_parameters_in_results") is False:
            # HMC reads the number of leapfrog steps from its results only when asked to.
            inner_kernel = type(inner_kernel)(**{**parameters, "store_parameters_in_results": True})
        self._parameters = dict(inner_kernel=inner_kernel, mean_leapfrog_steps=mean_leapfrog_steps, name=name)

    @property
    def inner_kernel(self):
        """The wrapped HMC kernel."""
        return self._parameters["inner_kernel"]

    @property
    def parameters(self):
        """Constructor arguments, as TFP's kernels expose them."""
        return self._parameters

    @property
    def is_calibrated(self):
        """Whether the wrapped kernel is calibrated (HMC is)."""
        return self.inner_kernel.is_calibrated

    def bootstrap_results(self, init_state):
        """The wrapped kernel's initial results, with a tensor step count."""
        results = self.inner_kernel.bootstrap_results(init_state)
        # A tensor from the start, so that loops see the same structure at every step.
        steps = tf.constant(int(self._parameters["mean_leapfrog_steps"]), tf.int32)
        return unnest.replace_innermost(results, num_leapfrog_steps=steps)

    def one_step(self, current_state, previous_kernel_results, seed=None):
        """One HMC transition with a freshly drawn number of leapfrog steps."""
        jitter_seed, step_seed = tfp.random.split_seed(seed)
        mean = int(self._parameters["mean_leapfrog_steps"])
        low, high = max(1, (mean + 1) // 2), mean + mean // 2
        steps = tf.random.stateless_uniform([], jitter_seed, minval=low, maxval=high + 1, dtype=tf.int32)
        results = unnest.replace_innermost(previous_kernel_results, num_leapfrog_steps=steps)
        return self.inner_kernel.one_step(current_state, results, seed=step_seed)


@dataclass(frozen=True)
class EStepResult:
    """Output of one E-step (tensors).

    Attributes
    ----------
    statistics : dict of Tensor
        ``trace_fn``'s output averaged over draws and chains.
    effects_sum : list of Tensor
        Per term, the sum over draws and chains of each level's sampled effect.
    effects_outer_sum : list of Tensor
        Per term, the same sum of each level's outer product ``b b'``,
        ``[num_levels, dim, dim]``.
    draws : list of Tensor
        Per term, the kept draws, ``[num_draws, n_chains, num_levels, dim]`` (model
        coordinates).
    final_state : list of Tensor
        The chains' last state, shape ``[n_chains, num_levels, dim]`` per term.
    step_size : Tensor
        The adapted step size.
    acceptance_rate : Tensor
        Mean acceptance over the kept draws.
    divergences : Tensor
        How many of the kept transitions (all chains) diverged: an energy error
        above :data:`DIVERGENCE_ENERGY`, or a NaN log density along the trajectory.
    """

    statistics: dict
    effects_sum: list
    effects_outer_sum: list
    draws: list
    final_state: list
    step_size: tf.Tensor
    acceptance_rate: tf.Tensor
    divergences: tf.Tensor


def prior_precision_diagonal(random_scale_tril):
    """``diag(Sigma^-1)`` per term, from each term's Cholesky factor."""
    out = []
    for scale_tril in random_scale_tril:
        inverse = tf.linalg.triangular_solve(scale_tril, tf.eye(tf.shape(scale_tril)[0], dtype=scale_tril.dtype))
        out.append(tf.reduce_sum(tf.square(inverse), axis=0))
    return out


def data_precision_diagonal(*, weight, group_index, z, num_levels):
    """Per term, ``sum_{rows in level} weight * z_c^2`` for each level and coefficient,
    ``[num_levels, dim]``: the data's share of the diagonal of the posterior precision
    (``weight`` the family's Fisher weight of each row, or per term the curvature of
    the linear predictor it enters).  A sum over rows."""
    data_precision = []
    weights = weight if isinstance(weight, (list, tuple)) else (weight,) * len(num_levels)
    for weight, index, term_z, q in zip(weights, group_index, z, num_levels):
        if term_z is None:
            data_precision.append(tf.math.unsorted_segment_sum(weight, index, q)[:, None])
        else:
            data_precision.append(tf.math.unsorted_segment_sum(weight[:, None] * tf.square(term_z), index, q))
    return data_precision


def hmc_e_step(
    target_log_prob_fn,
    *,
    current_state,
    scale,
    step_size,
    num_draws: int,
    num_burnin,
    num_leapfrog_steps: int,
    target_accept_prob: float,
    trace_fn,
    seed,
    centering: Centering | None = None,
    parent_level=None,
    statistics_coordinates=None,
    whitening=None,
) -> EStepResult:
    """Run one E-step: ``num_burnin`` adapting transitions, then ``num_draws`` kept ones.

    The kernel is HMC with jittered trajectory lengths, preconditioned by ``scale``,
    with its step size adapted during the burn-in.

    Parameters
    ----------
    target_log_prob_fn : callable
        ``log p(y, b | theta)`` as a function of the random-effect vectors.
    current_state : list of Tensor
        Starting state per term, ``[n_chains, num_levels, dim]``.
    scale : list of Tensor
        Diagonal preconditioner per term, ``[num_levels, dim]``.
    step_size : Tensor
        Initial leapfrog step size on the preconditioned scale.
    num_draws : int
        Kept transitions per chain.
    num_burnin : int or Tensor
        Transitions spent adapting the step size before the kept ones.
    num_leapfrog_steps : int
        Mean number of leapfrog steps; each transition draws its own
        (:class:`JitteredLeapfrogSteps`).
    target_accept_prob : float
    trace_fn : callable
        Maps a state to a dict of per-chain statistics (leading dimension
        ``n_chains``), averaged by this function.
    seed : Tensor
        Stateless seed, shape ``[2]``.
    centering : Centering, optional
        Sampler coordinates for nested factors.  States, draws, ``target_log_prob_fn``
        and ``trace_fn`` all stay in model coordinates; ``scale`` is in sampler ones.
    parent_level : tuple of Tensor, optional
        The parent level maps of ``centering``.
    statistics_coordinates : callable, optional
        Applied to the sampler coordinates before ``trace_fn`` sees them (in model
        coordinates); for Rao-Blackwellization, see :meth:`Centering.conditional_means`.
    whitening : list of (Tensor or None), optional
        Per term, a lower-triangular ``(dim, dim)`` factor ``L``: the sampler moves
        ``z`` with ``b = L z`` (each level's row), ``scale`` preconditioning ``z``; a
        nearly singular covariance (``rr``) needs its effects whitened.  ``None``: ``b``.

    Returns
    -------
    EStepResult

    Examples
    --------
    Two chains over three standard normal "levels" (in the fit, the target is
    ``log p(y, b | theta)`` and the statistics are those the M-step needs):

    >>> import numpy as np
    >>> import tensorflow as tf
    >>> import tensorflow_probability as tfp
    >>> from mixedfx.inference.estep import hmc_e_step
    >>> normal = tfp.distributions.Normal(np.float64(0.0), np.float64(1.0))
    >>> result = hmc_e_step(
    ...     lambda effects: tf.reduce_sum(normal.log_prob(effects), axis=[-2, -1]),
    ...     current_state=[tf.zeros([2, 3, 1], tf.float64)], scale=[tf.ones([3, 1], tf.float64)],
    ...     step_size=tf.constant(0.5, tf.float64), num_draws=4, num_burnin=2, num_leapfrog_steps=4,
    ...     target_accept_prob=0.75, seed=tf.constant([1, 2]),
    ...     trace_fn=lambda effects: {"mean_square": tf.reduce_mean(tf.square(effects[0]), axis=[-2, -1])})
    >>> result.draws[0].shape.as_list(), result.final_state[0].shape.as_list()  # [draws, chains, levels, dim]
    ([4, 2, 3, 1], [2, 3, 1])
    >>> sorted(result.statistics), bool(0.0 < result.acceptance_rate <= 1.0)
    (['mean_square'], True)
    """
    centering = centering or Centering.none(len(current_state))

    def to_model(coordinates):
        return centering.to_model(coordinates, parent_level)

    def sampler_log_prob(*coordinates):
        return target_log_prob_fn(*to_model(list(coordinates)))

    hmc = tfp.mcmc.HamiltonianMonteCarlo(
        target_log_prob_fn=sampler_log_prob,
        step_size=step_size,
        num_leapfrog_steps=num_leapfrog_steps,
    )
    jittered = JitteredLeapfrogSteps(hmc, num_leapfrog_steps)
    whitening = whitening or [None] * len(scale)
    bijectors = [tfb.Scale(s) if W is None else tfb.Chain([tfb.ScaleMatvecTriL(scale_tril=tf.cast(W, s.dtype)),
                                                          tfb.Scale(s)]) for s, W in zip(scale, whitening)]
    preconditioned = tfp.mcmc.TransformedTransitionKernel(jittered, bijector=bijectors)
    kernel = tfp.mcmc.SimpleStepSizeAdaptation(
        preconditioned,
        num_adaptation_steps=num_burnin,
        target_accept_prob=tf.cast(target_accept_prob, step_size.dtype),
    )

    def trace(state, results):
        coordinates = state if statistics_coordinates is None else statistics_coordinates(state)
        hmc_results = results.inner_results.inner_results
        # A divergent transition: its energy error exceeds DIVERGENCE_ENERGY, or is NaN.
        divergent = tf.logical_not(hmc_results.log_accept_ratio > -DIVERGENCE_ENERGY)
        return trace_fn(to_model(coordinates)), hmc_results.is_accepted, divergent

    draws, (statistics, accepted, divergent), final_results = tfp.mcmc.sample_chain(
        num_results=num_draws,
        current_state=centering.to_sampler(current_state, parent_level),
        kernel=kernel,
        num_burnin_steps=num_burnin,
        trace_fn=trace,
        return_final_kernel_results=True,
        seed=seed,
    )
    dtype = step_size.dtype
    draws = to_model(draws)
    mean_statistics = tf.nest.map_structure(lambda s: tf.reduce_mean(s, axis=[0, 1]), statistics)
    return EStepResult(
        statistics=mean_statistics,
        effects_sum=[tf.reduce_sum(d, axis=[0, 1]) for d in draws],
        effects_outer_sum=[tf.einsum("scqa,scqb->qab", d, d) for d in draws],
        draws=draws,
        final_state=[d[-1] for d in draws],
        step_size=tf.convert_to_tensor(final_results.new_step_size, dtype=dtype),
        acceptance_rate=tf.reduce_mean(tf.cast(accepted, dtype)),
        divergences=tf.reduce_sum(tf.cast(divergent, dtype)),
    )
