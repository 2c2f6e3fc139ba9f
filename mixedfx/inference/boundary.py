"""Singular fits: variance components whose maximum likelihood estimate is zero.

Monte Carlo EM approaches a zero variance slowly, and its Monte Carlo noise keeps the
estimate a little above zero, so the boundary cannot be read off the trace as lme4
reads its optimizer's ``theta``.  It is tested instead: a standard deviation is at
the boundary when setting it to zero does not lower the log-likelihood (exact for
the Gaussian family, profiled over the fixed effects, or the restricted likelihood
of a REML fit; the Laplace approximation for the others) by more than ``tolerance``.
Only small standard deviations are tried.  For the families judged by the Laplace
approximation, whose estimates keep more Monte Carlo noise, a zero that passes must
also be the approximation's maximum along that standard deviation (a bounded search
between zero and twice the estimate): glmer reports 0.07, not zero, where the
likelihood at zero is only 5e-4 lower.

A small standard deviation that is not zero fares little better: where the data hold
little information on it, the EM iterates wander over a flat likelihood (0.009 to 0.055
for the sd(site) of glmmTMB's nbinom2 hurdle on Salamanders, whose maximum is at 0.0745),
and neither their average nor the stopping rule pins it down.  When the model's one random
term is a scalar one (``(1 | g)``), :func:`quadrature_components` re-estimates such an sd
on the adaptive Gauss-Hermite likelihood (:mod:`mixedfx.model.quadrature`, exact to many
digits, unlike the Laplace approximation: see there), with the family's own scalar
parameters that it trades off against; the fixed effects are held.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from mixedfx._tf import tf

from mixedfx.inference.layout import ParameterLayout
from mixedfx.model.blocks import DenseBlockTooLarge
from mixedfx.model.gaussian import gaussian_marginal
from mixedfx.model.joint import MixedModel, ModelParameters
from mixedfx.model.likelihood import marginal_log_likelihood
from mixedfx.model.quadrature import quadrature_applies, quadrature_log_likelihood

__all__ = ["boundary_components", "quadrature_components", "zero_components"]


def zero_components(params: ModelParameters, components) -> ModelParameters:
    """``params`` with the standard deviations ``components`` (``(term, coefficient)``
    pairs) set to zero: the coefficient's row of the term's Cholesky factor."""
    scale_tril = [np.array(L, dtype=np.float64) for L in params.random_scale_tril]
    for term, coefficient in components:
        scale_tril[term][coefficient, :] = 0.0
    return ModelParameters(params.fixed_effects, tuple(scale_tril), dict(params.family_params))


def _scaled_component(params: ModelParameters, component, sd: float) -> ModelParameters:
    """``params`` with the standard deviation ``component`` set to ``sd`` (its row of the
    Cholesky factor rescaled, the correlations kept)."""
    scale_tril = [np.array(L, dtype=np.float64) for L in params.random_scale_tril]
    term, coefficient = component
    row = scale_tril[term][coefficient, :]
    scale_tril[term][coefficient, :] = row * (sd / np.sqrt(row @ row))
    return ModelParameters(params.fixed_effects, tuple(scale_tril), dict(params.family_params))


def _interior_maximum(model, params, component, at_zero: float, *, seed: int, gain: float = 1e-6) -> bool:
    """Whether the Laplace log-likelihood along the standard deviation ``component``
    peaks above zero: more than ``gain`` above ``at_zero``, its value at zero, somewhere
    in (0, twice the estimate]."""
    term, coefficient = component
    row = np.asarray(params.random_scale_tril[term])[coefficient, :]
    estimate = float(np.sqrt(row @ row))
    if not estimate > 0.0:  # already at zero
        return False
    best = minimize_scalar(lambda sd: -_log_likelihood(model, _scaled_component(params, component, sd),
                                                       reml=False, seed=seed),
                           bounds=(1e-6 * estimate, 2.0 * estimate), method="bounded",
                           options={"xatol": 1e-3 * estimate})
    return -float(best.fun) > at_zero + gain


def _log_likelihood(model: MixedModel, params: ModelParameters, *, reml: bool, seed: int) -> float:
    if model.family.conjugate_gaussian:
        exact = gaussian_marginal(model, params)
        return exact.reml_log_likelihood if reml else exact.profiled_log_likelihood
    return marginal_log_likelihood(model, params, seed=seed, n_draws=0).laplace


def boundary_components(model: MixedModel, params: ModelParameters, *, reml: bool = False,
                        relative: float | None = None,
                        tolerance: float = 1e-3, seed: int = 0) -> tuple[list, list[str]]:
    """The standard deviations estimated at zero.

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
        The estimates.
    reml : bool, default False
        Judge by the restricted likelihood (a REML fit; Gaussian family).
    relative : float, optional
        Only standard deviations below ``relative`` times the residual sd (Gaussian)
        or ``relative`` on the linear predictor's scale (other families) are tried;
        by default the family's ``boundary_candidate_sd`` (0.05 Gaussian, 0.25 others).
    tolerance : float, default 1e-3
        Largest drop of the log-likelihood that still counts as no drop.
    seed : int

    Returns
    -------
    components : list of (int, int)
        ``(term, coefficient)`` of each standard deviation at zero.
    names : list of str
        Their names in :attr:`FitSummary.parameter_names`.

    Examples
    --------
    Two groups with the same mean: the likelihood is highest at a group sd of zero,
    so a small estimate is moved there; a large one is left alone:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.inference.boundary import boundary_components
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 1.0, 2.0]), (term,), ("Intercept",))
    >>> boundary_components(model, ModelParameters(np.array([1.5]), np.array([0.01]), {"sigma": 0.5}))
    ([(0, 0)], ['sd(g)'])
    >>> boundary_components(model, ModelParameters(np.array([1.5]), np.array([1.0]), {"sigma": 0.5}))
    ([], [])
    """
    layout = ParameterLayout.from_model(model)
    sd_names = [name for name, kind in zip(layout.names, layout.kinds) if kind == "sd"]
    residual_sd = model.family.residual_sd(params.family_params)
    unit = 1.0 if residual_sd is None else residual_sd
    relative = model.family.boundary_candidate_sd if relative is None else relative
    candidates, position = [], 0
    for k, L in enumerate(params.random_scale_tril):
        sds = np.sqrt(np.diag(L @ L.T))
        for c, sd in enumerate(sds):
            if sd < relative * unit:
                candidates.append(((k, c), sd_names[position]))
            position += 1
    if not candidates:
        return [], []
    try:
        reference = _log_likelihood(model, params, reml=reml, seed=seed)
    except (DenseBlockTooLarge, np.linalg.LinAlgError):  # too large or degenerate: leave it to the trace
        return [], []
    components, names = [], []
    for component, name in candidates:
        trial = zero_components(params, components + [component])
        at_zero = _log_likelihood(model, trial, reml=reml, seed=seed)
        if at_zero < reference - tolerance:
            continue
        if model.family.conjugate_gaussian or not _interior_maximum(
                model, zero_components(params, components), component, at_zero, seed=seed):
            components.append(component)
            names.append(name)
    return components, names


def quadrature_components(model: MixedModel, params: ModelParameters, *, start=None,
                          relative: float | None = None) -> tuple[ModelParameters, list[str]]:
    """A small standard deviation re-estimated on the adaptive Gauss-Hermite likelihood.

    Applies to a model whose one random term has one coefficient (see
    :func:`~mixedfx.model.quadrature.quadrature_applies`), when its sd is above zero and
    below ``relative`` (by default the family's ``boundary_candidate_sd``, on the scale
    of the residual sd where the family has one).  The sd and the family's own scalar
    parameters (a dispersion, the t's df, cutpoints), which an sd the data barely show
    trades off against, move to the maximum of the 25-node quadrature log-likelihood, the
    sd within ``(0, 2 relative]``; the fixed effects and the family's own linear models
    (``zi``, ``disp``) are held.

    Parameters
    ----------
    model : MixedModel
    params : ModelParameters
        The estimates (after :func:`boundary_components`: an sd at zero stays there).
    start : sequence of numpy.ndarray, optional
        Starting random effects for the conditional modes (the E-step's means).
    relative : float, optional

    Returns
    -------
    params : ModelParameters
    names : list of str
        The sd re-estimated (its name in :attr:`FitSummary.parameter_names`), or none.

    Examples
    --------
    Binary responses in clusters of three, whose sd of 0.2 the data barely show; the
    sd given is moved to the likelihood's maximum:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Binomial, MixedModel, ModelParameters
    >>> from mixedfx.inference.boundary import quadrature_components
    >>> rng = np.random.default_rng(3)
    >>> g = np.repeat(np.arange(400), 3).astype(np.int32)
    >>> y = rng.binomial(1, 1 / (1 + np.exp(-rng.normal(scale=0.2, size=400)[g]))).astype(float)
    >>> model = MixedModel(Binomial(), np.ones((1200, 1)), y, (RandomTermData("g", g, None, 400),),
    ...                    ("Intercept",), trials=np.ones(1200))
    >>> params, names = quadrature_components(model, ModelParameters(np.array([0.0]), np.array([0.05]), {}))
    >>> names, float(params.random_scale_tril[0][0, 0].round(3))
    (['sd(g)'], 0.164)
    """
    if not quadrature_applies(model):
        return params, []
    residual_sd = model.family.residual_sd(params.family_params)
    bound = (model.family.boundary_candidate_sd if relative is None else relative) * (
        1.0 if residual_sd is None else residual_sd)
    estimate = float(np.abs(np.ravel(params.random_scale_tril[0])[0]))
    if not 0.0 < estimate < bound:
        return params, []
    at = _SdAndOwn(model.family, params)

    def minus_log_likelihood(x):
        return -quadrature_log_likelihood(model, at(x), start=start)

    limits = (np.log(1e-6 * bound), np.log(2.0 * bound))
    if at.n_own == 0:
        best = minimize_scalar(lambda log_sd: minus_log_likelihood(np.array([log_sd])), bounds=limits,
                               method="bounded", options={"xatol": 1e-4})
    else:
        best = minimize(minus_log_likelihood, at.start(estimate), method="Nelder-Mead",
                        bounds=[limits] + [(None, None)] * at.n_own, options={"xatol": 1e-4, "fatol": 1e-7})
    layout = ParameterLayout.from_model(model)
    name, = [name for name, kind in zip(layout.names, layout.kinds) if kind == "sd"]
    return at(np.atleast_1d(best.x)), [name]


class _SdAndOwn:
    """``params`` as a function of ``x = (log sd, the family's leading free parameters)``:
    those before its coefficient blocks (:meth:`~mixedfx.model.Family.coefficient_blocks`),
    which stay as they are."""

    def __init__(self, family, params: ModelParameters):
        self.family, self.params = family, params
        self.free = np.asarray(family.free_from_parameters(params.family_params), dtype=np.float64)
        self.n_own = self.free.size - sum(len(names) for _, names in family.coefficient_blocks())

    def start(self, sd: float) -> np.ndarray:
        return np.concatenate([[np.log(sd)], self.free[:self.n_own]])

    def __call__(self, x) -> ModelParameters:
        own = dict(self.params.family_params)
        if self.n_own:
            natural = self.family.constrain(tf.constant(np.concatenate([x[1:], self.free[self.n_own:]])))
            own = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v)) for k, v in natural.items()}
        return _scaled_component(ModelParameters(self.params.fixed_effects, self.params.random_scale_tril, own),
                                 (0, 0), float(np.exp(x[0])))
