"""Profile likelihood confidence intervals, as lme4's ``confint(profile(m))``.

For each parameter ``w`` the profile holds ``w`` at a value, maximizes the
likelihood over every other parameter, and records the signed square root of the
deviance difference, ``zeta(w) = sign(w - w_hat) sqrt(dev(w) - dev(w_hat))``.  The
interval is where ``|zeta| <= z_(1 - (1 - level) / 2)``; its ends are found by root
finding (:func:`scipy.optimize.brentq`) on ``zeta``, the other parameters optimized at
each point by L-BFGS-B, warm-started from the nearest point already profiled.

What is profiled follows lme4 (1.1-31's ``profile.merMod`` and ``devfun2``):

* Gaussian fits: the exact marginal (ML) deviance as a function of the sds,
  correlations and ``sigma`` (lme4's ``.sigNN`` and ``.sigma`` scale, on which lme4's
  ``devfun2`` profiles them too), with the fixed effects at their GLS estimate given
  them.  A fixed effect is profiled by holding it at each value (its column moved
  into the offset), the other fixed effects at their GLS estimate, ``sigma`` profiled
  out in closed form, and lme4's theta (the relative Cholesky factors, diagonals
  bounded below by 0) optimized, as lme4 does.  **A REML fit is profiled on the ML
  deviance**, as lme4 does (``devfun2`` starts with ``refitML``): lme4's profile
  intervals of a REML fit equal those of the ML fit, and so do these.
* GLMMs: the Laplace deviance at the conditional modes, a function of the fixed
  effects and the sds and correlations, every other parameter optimized.  A family's
  own parameters (a negative binomial's dispersion, an ordinal model's cutpoints) are
  held at their estimates and get no interval (NaN).  A family with its own linear
  models (``ziformula``, ``dispformula``) is refused: its coefficients, held, would
  make every interval too narrow.

A structured random term (``ar1(0 + timef | subject)``, ``cs``, ``diag``, the spatial
ones) is profiled on its structure's own parameters, as glmmTMB profiles its ``theta``:
its sds (``sd(subject)`` where the sd is common) and ``rho(subject)``, ``range(subject)``
and the like, each on the scale it is reported on
(:meth:`~mixedfx.model.covariance.CovarianceStructure.natural_coordinates`; ``toep``'s
``lag1(subject)``... are its lag correlations).  ``rr`` is profiled on its sds
``sd(subject, coef)``, each row of its loadings that sd times a unit direction, the
directions nuisance coordinates optimized at each point and not reported (at ``d = 1`` a
direction is a sign: the estimate's signs are kept).

The estimate itself is re-optimized on the profiled criterion first, so a Monte Carlo
EM fit's small error in the optimum does not shift the profile's zero.  An sd whose
profile does not reach the level before 0 gets the lower limit 0, a correlation
that does not reach it before -1 or 1 gets that bound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import optimize, stats
from sklearn.utils.validation import check_is_fitted

from mixedfx.exceptions import ParameterError
from mixedfx.inference.layout import ParameterLayout
from mixedfx.model import ModelParameters, gaussian_marginal, term_z
from mixedfx.model.covariance import term_structure
from mixedfx.model.likelihood import marginal_log_likelihood

__all__ = ["profile_intervals", "profile_intervals_at"]

_BIG = 1e12  # the deviance of an impossible point (a correlation matrix that is not positive definite)


def profile_intervals(model, *, level: float = 0.95, which=None) -> pd.DataFrame:
    """Profile likelihood confidence intervals of a fitted model, as lme4's ``confint(m, method = "profile")``.

    Parameters
    ----------
    model : MixedEffectsRegressor or MixedEffectsClassifier
        A fitted estimator.
    level : float, default 0.95
        Confidence level.
    which : sequence of str, optional
        Parameter names (as in ``confint``) to profile; default all.

    Returns
    -------
    pandas.DataFrame
        One row per parameter (fixed effects, ``sd(g)``, ``sd(g, coef)``,
        ``cor(g, a, b)``, a structured term's own parameters such as ``rho(g)``, then
        ``sigma``), columns ``"2.5 %"`` and ``"97.5 %"`` (for
        ``level=0.95``); ``attrs["criterion"]`` says which deviance was profiled and
        ``attrs["estimate"]`` holds its optimum.

    Raises
    ------
    ParameterError
        If ``level`` is not in (0, 1), ``which`` names an unknown parameter, the
        family has its own linear models (``ziformula``, ``dispformula``), or a term's
        structure has no natural coordinates.
    sklearn.exceptions.NotFittedError
        If ``model`` is not fitted.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.profile import profile_intervals
    >>> intervals = profile_intervals(model)
    >>> intervals.index.tolist(), intervals.columns.tolist()
    (['Intercept', 'x', 'sd(g)', 'sigma'], ['2.5 %', '97.5 %'])
    >>> truth = [1.0, 0.5, 0.8, 1.0]  # the simulated values are inside
    >>> bool(((intervals["2.5 %"] < truth) & (truth < intervals["97.5 %"])).all())
    True
    """
    check_is_fitted(model, "model_parameters_")
    return profile_intervals_at(model.model_, model.model_parameters_, level=level, which=which)


def profile_intervals_at(bound, params: ModelParameters, *, level: float = 0.95, which=None) -> pd.DataFrame:
    """Profile intervals of a bound model, starting from given parameter values.

    The workhorse of :func:`profile_intervals`; ``params`` need not be the optimum
    (it is re-optimized first), so lme4's estimates or a fit's serve alike.

    Parameters
    ----------
    bound : MixedModel
        The model with its data (an estimator's ``model_``).
    params : ModelParameters
        Starting values.
    level : float, default 0.95
    which : sequence of str, optional

    Returns
    -------
    pandas.DataFrame
        As :func:`profile_intervals`.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(10), 5).astype(np.int32)
    >>> y = 2.0 + rng.normal(size=10)[g] + rng.normal(size=50)
    >>> bound = MixedModel(Gaussian(), np.ones((50, 1)), y, (RandomTermData("g", g, None, 10),), ("Intercept",))
    >>> table = profile_intervals_at(bound, ModelParameters(np.array([2.0]), np.array([1.0]), {"sigma": 1.0}))
    >>> table.index.tolist()
    ['Intercept', 'sd(g)', 'sigma']
    >>> bool((table["2.5 %"] < table["97.5 %"]).all())
    True
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ParameterError(f"level must be a number between 0 and 1, got {level!r}")
    _refuse_own_coefficients(bound)
    coordinates = _Coordinates.from_model(bound)
    layout = ParameterLayout.from_model(bound)
    problem = _problem(bound, params, layout, coordinates)
    families = [n for n, kind in zip(layout.names, layout.kinds) if kind in ("family", "family_raw")]
    names = list(problem.names[:layout.n_fixed]) + coordinates.reported_names + families
    if which is None:
        chosen = names
    else:
        chosen = [which] if isinstance(which, str) else list(which)
        for name in chosen:
            if name not in names:
                raise ParameterError(f"which: unknown parameter {name!r}; the parameters are {names}")
    tail = (1.0 - level) / 2.0
    columns = [f"{100 * tail:.3g} %", f"{100 * (1 - tail):.3g} %"]
    out = pd.DataFrame(np.nan, index=[n for n in names if n in chosen], columns=columns)
    z = stats.norm.ppf(1.0 - tail)
    for name in out.index:
        if name in problem.profiled:
            out.loc[name] = [_limit(problem, name, z, side) for side in (-1.0, 1.0)]
    out.attrs["criterion"] = problem.criterion
    out.attrs["estimate"] = dict(zip(problem.names, problem.estimate.tolist()))
    return out


def _refuse_own_coefficients(bound) -> None:
    """The Laplace deviance profiled here holds a family's own parameters at their
    estimates; a family with its own linear models (glmmTMB's ``zi``, ``disp``) has
    coefficients correlated with the fixed effects, which held would make every
    interval too narrow, and those models' random terms (``zi~site``) would be profiled
    with their own fixed effects held: refused, naming them."""
    blocks = [key for key, _ in bound.family.coefficient_blocks()]
    if not blocks:
        return
    own = [t.name for t in bound.random_terms if getattr(t, "predictor", "cond") != "cond"]
    terms = f" and the random terms {', '.join(own)} of those linear predictors" if own else ""
    raise ParameterError(
        f"profile intervals are not available for the {bound.family} family: its own coefficients "
        f"({', '.join(blocks)}){terms} would be held at their estimates while the other parameters are "
        "profiled, which makes the intervals too narrow; use method='wald' or 'bootstrap'")


@dataclasses.dataclass
class _Problem:
    """A deviance to profile and its optimum.

    ``deviance(x, focal=None)`` takes the vector ``x`` of every parameter named in
    ``names``; entries the criterion profiles out analytically (a Gaussian model's
    fixed effects, unless one of them is the focal parameter) are ignored.
    ``free(focal)`` lists the indices optimized while ``focal`` is held.
    """

    names: tuple
    profiled: tuple
    bounds: list
    deviance: object
    free: object
    estimate: np.ndarray
    minimum: float
    scale: np.ndarray
    criterion: str
    step: float = 1e-6
    cache: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Coordinates:
    """The random terms' entries of the profiled vector: per ``us`` term its sds and
    correlations (lme4's scale), per structured term its structure's own parameters on
    their reported scales (:meth:`~mixedfx.model.covariance.CovarianceStructure.natural_coordinates`:
    ``sd(g, coef)``, ``rho(g)``, ``range(g)``; glmmTMB profiles the same parameters).
    A natural coordinate with a fourth entry ``False`` (``rr``'s directions) is a nuisance
    one: optimized at each profile point, neither profiled nor reported."""

    dims: tuple
    structures: tuple
    natural: tuple  # per term: None (us), else its structure's natural_coordinates
    names: tuple
    kinds: tuple  # "sd" (a positive scale) or "cor" (bounded): the first step away from the estimate (_step)
    bounds: tuple
    reported: tuple  # per coordinate: whether it is a row of the table (False: a nuisance coordinate)

    @classmethod
    def from_model(cls, bound) -> _Coordinates:
        """The coordinates of ``bound``'s terms; a structure without natural coordinates is refused."""
        layout = ParameterLayout.from_model(bound)
        us = iter([(n, k) for n, k in zip(layout.names, layout.kinds) if k in ("sd", "cor")])
        structures, natural, names, kinds, bounds, reported = [], [], [], [], [], []
        for term in bound.random_terms:
            structure = term_structure(term)
            coords = None if structure.unstructured else structure.natural_coordinates(term.coef_names)
            if coords is None and not structure.unstructured:
                raise ParameterError(f"profile intervals are not available for {structure.name}(... | {term.name}): "
                                     f"its parameters are not each one reported sd or correlation; "
                                     f"use method='bootstrap' or 'wald'")
            count = term.dim * (term.dim + 1) // 2
            if coords is None:
                pairs = [next(us) for _ in range(count)]
                names += [n for n, _ in pairs]
                kinds += [k for _, k in pairs]
                bounds += [(0.0, None) if k == "sd" else (-1.0, 1.0) for _, k in pairs]
                reported += [True] * count
            else:
                for _ in range(count):  # the layout's sds and correlations of the matrix: not profiled
                    next(us)
                names += [f"{n}({term.name}, {c})" if c is not None else f"{n}({term.name})" for n, c, *_ in coords]
                kinds += ["sd" if b == (0.0, None) else "cor" for _, _, b, *_ in coords]
                bounds += [b for _, _, b, *_ in coords]
                reported += [len(c) < 4 or bool(c[3]) for c in coords]
            structures.append(structure)
            natural.append(coords)
        return cls(tuple(t.dim for t in bound.random_terms), tuple(structures), tuple(natural), tuple(names),
                   tuple(kinds), tuple(bounds), tuple(reported))

    @property
    def reported_names(self) -> list:
        """The coordinates that are rows of the table (every one but the nuisance ones)."""
        return [n for n, shown in zip(self.names, self.reported) if shown]

    @property
    def unstructured(self) -> bool:
        """Whether every term is ``us`` (lme4's theta describes them)."""
        return all(coords is None for coords in self.natural)

    def _slices(self):
        """Per term: its slice of the coordinates, its dimension and its natural coordinates."""
        start = 0
        for dim, coords in zip(self.dims, self.natural):
            size = dim * (dim + 1) // 2 if coords is None else len(coords)
            yield slice(start, start + size), dim, coords
            start += size

    def values(self, scale_trils) -> np.ndarray:
        """The coordinates of each term's ``L L'``."""
        out = []
        for (_, dim, coords), structure, L in zip(self._slices(), self.structures, scale_trils):
            if coords is None:
                out.append(_sdcor((L,)))
            else:
                out.append(structure.natural_values(L @ L.T))
        return np.concatenate(out) if out else np.zeros(0)

    def trils(self, values) -> tuple | None:
        """Each term's scale factor at the coordinates ``values`` (``None`` if one is impossible)."""
        out = []
        for (part, dim, coords), structure in zip(self._slices(), self.structures):
            if coords is None:
                root = _scale_trils(values[part], (dim,))
                root = None if root is None else root[0]
            else:
                root = _root(structure.natural_covariance(values[part], dim))
            if root is None:
                return None
            out.append(root)
        return tuple(out)


def _root(cov: np.ndarray) -> np.ndarray | None:
    """A Cholesky factor of a covariance, its sds on the diagonal's scale so that an sd of 0 or
    a correlation of 1 (a profile's bound) still has one; ``None`` if not finite."""
    if not np.all(np.isfinite(cov)):
        return None
    sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
    scale = np.where(sd > 0, sd, 1.0)
    corr = cov / np.outer(scale, scale)
    corr[sd == 0, :] = corr[:, sd == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    for ridge in (0.0, 1e-10, 1e-7):
        try:
            return sd[:, None] * np.linalg.cholesky(corr + ridge * np.eye(len(sd)))
        except np.linalg.LinAlgError:
            continue
    return None


def _problem(bound, params: ModelParameters, layout: ParameterLayout, coordinates: _Coordinates) -> _Problem:
    """The profiling problem of ``bound``: its criterion, bounds, scales and optimum."""
    p = layout.n_fixed
    gaussian = bound.family.conjugate_gaussian
    names = tuple(layout.names[:p]) + coordinates.names + (("sigma",) if gaussian else ())
    start = np.concatenate([params.fixed_effects, coordinates.values(params.random_scale_tril)]
                           + ([[float(params.family_params["sigma"])]] if gaussian else []))
    kinds = ["fixed"] * p + list(coordinates.kinds) + (["sigma"] if gaussian else [])
    bounds = [(None, None)] * p + list(coordinates.bounds) + ([(1e-8, None)] if gaussian else [])
    if gaussian:
        deviance, free = _gaussian_deviance(bound, coordinates, p), _gaussian_free(p, len(names))
        criterion = "ML deviance (exact; fixed effects by GLS; a REML fit is profiled by ML, as lme4)"
    else:
        deviance, free = _laplace_deviance(bound, params, coordinates, p), _all_free(len(names))
        criterion = "Laplace deviance at the conditional modes"
    scale = np.array([_step(k, v) for k, v in zip(kinds, start)])
    profiled = tuple(n for n in names if n not in coordinates.names or n in coordinates.reported_names)
    # a Laplace deviance is smooth only to the mode search's tolerance: larger finite-difference steps
    problem = _Problem(names, profiled, bounds, deviance, free, start, np.inf, scale, criterion,
                       1e-6 if gaussian else 1e-4)
    estimate, minimum = _optimize(problem, start, None)
    if gaussian:  # the fixed effects at their GLS estimate given the variance parameters
        estimate[:p] = deviance.gls(estimate)
    problem.estimate, problem.minimum = estimate, minimum
    problem.scale = np.array([_step(k, v) for k, v in zip(kinds, estimate)])
    if gaussian:
        problem.scale[:p] = 2.0 * deviance.standard_errors(estimate)  # zeta is about (w - w_hat) / se
    return problem


def _step(kind: str, value: float) -> float:
    """A first step away from the estimate when bracketing a limit."""
    if kind == "cor":
        return 0.25
    if kind == "fixed":
        return max(0.2 * abs(value), 0.05)
    return max(0.3 * abs(value), 1e-3)


def _sdcor(scale_trils) -> np.ndarray:
    """Per term its sds then its correlations (in ``ParameterLayout``'s order)."""
    out = []
    for L in scale_trils:
        cov = L @ L.T
        sd = np.sqrt(np.diag(cov))
        out += sd.tolist()
        d = len(sd)
        for a in range(d):
            for b in range(a + 1, d):
                out.append(cov[a, b] / (sd[a] * sd[b]) if sd[a] > 0 and sd[b] > 0 else 0.0)
    return np.asarray(out, dtype=np.float64)


def _scale_trils(values: np.ndarray, dims) -> tuple | None:
    """Inverse of :func:`_sdcor`: each term's ``L = diag(sd) chol(R)``.

    ``None`` if some correlation matrix ``R`` is not positive definite.
    """
    out, i = [], 0
    for d in dims:
        sd, i = values[i:i + d], i + d
        corr = np.eye(d)
        for a in range(d):
            for b in range(a + 1, d):
                corr[a, b] = corr[b, a] = values[i]
                i += 1
        if d == 1:
            root = np.ones((1, 1))
        elif d == 2:  # explicit, so that a correlation of +-1 is allowed
            r = float(np.clip(corr[1, 0], -1.0, 1.0))
            root = np.array([[1.0, 0.0], [r, np.sqrt(1.0 - r * r)]])
        else:
            try:
                root = np.linalg.cholesky(corr)
            except np.linalg.LinAlgError:
                return None
        out.append(np.diag(sd) @ root)
    return tuple(out)


def _tril(dim: int):
    """Row and column indices of a lower triangle, column by column (lme4's order of theta)."""
    cols, rows = np.triu_indices(dim)
    return rows, cols


def _theta(trils, sigma: float) -> np.ndarray:
    """lme4's theta: each term's relative factor ``L / sigma``, its lower triangle column by column."""
    return np.concatenate([(L / sigma)[_tril(L.shape[0])] for L in trils])


def _theta_diagonal(dims) -> np.ndarray:
    """Which entries of theta are diagonals (bounded below by 0, as lme4's ``lower``)."""
    return np.concatenate([np.equal(*_tril(d)) for d in dims])


def _from_theta(theta: np.ndarray, dims) -> tuple:
    """Inverse of :func:`_theta` (with ``sigma = 1``)."""
    out, start = [], 0
    for d in dims:
        factor = np.zeros((d, d))
        rows, cols = _tril(d)
        factor[rows, cols] = theta[start:start + len(rows)]
        out.append(factor)
        start += len(rows)
    return tuple(out)


def _gaussian_free(p: int, size: int):
    """The optimized indices of a Gaussian profile: the variance parameters other than the focal one."""
    def free(focal):
        return [i for i in range(p, size) if i != focal]
    return free


def _all_free(size: int):
    def free(focal):
        return [i for i in range(size) if i != focal]
    return free


def _gaussian_deviance(bound, coordinates: _Coordinates, p: int):
    """The exact ML deviance of a Gaussian model, the fixed effects profiled out by GLS.

    With ``focal`` a fixed effect's index, that fixed effect is held at ``x[focal]``
    (its column moved into the offset) and the others are profiled out.
    """
    X, n = bound.fixed_design, bound.n_obs
    dims = coordinates.dims
    offset = np.zeros(n) if bound.offset is None else bound.offset
    reduced = {}

    def model_for(focal):
        if focal is None or focal >= p:
            return bound, None
        if focal not in reduced:
            keep = [j for j in range(p) if j != focal]
            reduced[focal] = dataclasses.replace(bound, fixed_design=np.ascontiguousarray(X[:, keep]),
                                                 fixed_names=tuple(bound.fixed_names[j] for j in keep))
        return reduced[focal], focal

    def marginal(x, focal=None):
        model, held = model_for(focal)
        trils = coordinates.trils(x[p:-1])
        if trils is None:
            return None
        if held is not None:
            model = dataclasses.replace(model, offset=offset + X[:, held] * x[held])
        params = ModelParameters(np.zeros(model.fixed_design.shape[1]), trils, {"sigma": float(x[-1])})
        return gaussian_marginal(model, params, profile_fixed_effects=True)

    def deviance(x, focal=None):
        result = marginal(x, focal)
        return _BIG if result is None else -2.0 * result.profiled_log_likelihood

    def sigma_profiled(theta, x, focal):
        """The ML deviance at relative factors ``theta`` with ``sigma`` profiled out (lme4's ``devfun``), and
        the penalized residual sum of squares that gives ``sigma``."""
        model, held = model_for(focal)
        model = dataclasses.replace(model, offset=offset + X[:, held] * x[held])
        params = ModelParameters(np.zeros(model.fixed_design.shape[1]), _from_theta(theta, dims), {"sigma": 1.0})
        result = gaussian_marginal(model, params, profile_fixed_effects=True)
        residual = model.response - model.offset - model.fixed_design @ result.gls_fixed_effects
        # with sigma = 1, V^-1 r = r - Z b at the conditional means b: r' V^-1 r is the penalized RSS
        fitted = sum(np.sum(term_z(t, n) * b[t.group_index], axis=1)
                     for t, b in zip(model.random_terms, result.conditional_means))
        pwrss = float(residual @ (residual - fitted))
        if not pwrss > 0:
            return _BIG, pwrss
        logdet = -2.0 * result.profiled_log_likelihood - n * np.log(2 * np.pi) - pwrss
        return logdet + n * (1.0 + np.log(2 * np.pi * pwrss / n)), pwrss

    def fixed_effect_profile(start, focal):
        """Hold fixed effect ``focal`` at ``start[focal]``; optimize lme4's theta (L-BFGS-B, diagonals >= 0),
        ``sigma`` and the other fixed effects profiled out, as lme4 profiles a fixed effect (with a
        structured term: ``None``, the structure's own parameters optimized instead)."""
        if focal is None or focal >= p or not coordinates.unstructured:
            return None
        trils = _scale_trils(start[p:-1], dims)
        diagonal = _theta_diagonal(dims)
        theta0 = _theta(trils, start[-1]) if trils is not None else diagonal.astype(np.float64)
        bounds = [(0.0, None) if d else (None, None) for d in diagonal]
        theta0 = np.where(diagonal, np.abs(theta0), theta0)
        result = optimize.minimize(lambda t: sigma_profiled(t, start, focal)[0], theta0,
                                   method="L-BFGS-B", bounds=bounds,
                                   options={"ftol": 1e-12, "gtol": 1e-6, "eps": 1e-6, "maxiter": 500})
        dev, pwrss = sigma_profiled(result.x, start, focal)
        sigma = np.sqrt(pwrss / n)
        x = np.array(start, dtype=np.float64)
        x[p:-1] = _sdcor(tuple(sigma * L for L in _from_theta(result.x, dims)))
        x[-1] = sigma
        return x, float(dev)

    deviance.fixed_effect_profile = fixed_effect_profile
    deviance.gls = lambda x: marginal(x).gls_fixed_effects
    deviance.standard_errors = lambda x: np.sqrt(np.diag(marginal(x).fixed_effects_cov))
    return deviance


def _laplace_deviance(bound, params: ModelParameters, coordinates: _Coordinates, p: int):
    """The Laplace deviance of a GLMM at ``x = [fixed effects, sds and correlations]``.

    The mode search starts from the modes of the last evaluation (warm start); the
    family's own parameters stay at ``params``' values.
    """
    state = {"modes": None}

    def deviance(x, focal=None):
        trils = coordinates.trils(x[p:])
        if trils is None:
            return _BIG
        result = marginal_log_likelihood(bound, ModelParameters(x[:p], trils, dict(params.family_params)),
                                         n_draws=0, start=state["modes"])
        if not np.isfinite(result.laplace):
            return _BIG
        state["modes"] = result.conditional_modes
        return -2.0 * result.laplace

    return deviance


def _optimize(problem: _Problem, start: np.ndarray, focal):
    """Minimize the deviance over ``problem.free(focal)`` from ``start`` (L-BFGS-B, within the bounds).

    The free parameters are measured in units of ``problem.scale`` (so that one
    finite-difference step suits them all) from ``start``.
    """
    free = problem.free(focal)
    x = np.array(start, dtype=np.float64)
    scale = problem.scale[free]
    lower = np.array([-np.inf if problem.bounds[i][0] is None else problem.bounds[i][0] for i in free])
    upper = np.array([np.inf if problem.bounds[i][1] is None else problem.bounds[i][1] for i in free])
    origin = np.clip(x[free], lower, upper)
    # An sd at 0 is a stationary point (the deviance is even in it): a finite-difference
    # gradient there is nil, and L-BFGS-B would never leave it; start half a unit away.
    origin = np.where((lower == 0.0) & (origin <= 0.0), 0.5 * scale, origin)

    def objective(units):
        trial = x.copy()
        trial[free] = origin + scale * units
        return problem.deviance(trial, focal)

    if not free:
        return x, objective(np.zeros(0))
    bounds = list(zip((lower - origin) / scale, (upper - origin) / scale))
    smooth = problem.step < 1e-5  # an exact deviance; a Laplace one is smooth only to its mode search
    result = optimize.minimize(objective, np.zeros(len(free)), method="L-BFGS-B", bounds=bounds,
                               options={"ftol": 1e-12 if smooth else 1e-10, "gtol": 1e-6 if smooth else 1e-4,
                                        "eps": problem.step, "maxiter": 500})
    x[free] = origin + scale * result.x
    return x, float(result.fun)


def _zeta(problem: _Problem, focal: int, value: float) -> float:
    """Signed root of the profiled deviance difference at ``names[focal] = value`` (cached, warm-started)."""
    key = (focal, float(value))
    if key in problem.cache:
        return problem.cache[key][0]
    done = sorted([(abs(v - value), v, x) for (f, v), (_, x) in problem.cache.items() if f == focal]
                  + [(abs(problem.estimate[focal] - value), problem.estimate[focal], problem.estimate)],
                  key=lambda item: item[0])
    start = done[0][2].copy()
    if len(done) > 1 and done[0][1] != done[1][1]:  # the path of the other parameters, extrapolated
        start += (value - done[0][1]) / (done[0][1] - done[1][1]) * (done[0][2] - done[1][2])
    start[focal] = value
    special = getattr(problem.deviance, "fixed_effect_profile", None)  # a Gaussian fixed effect: on lme4's theta
    found = None if special is None else special(start, focal)
    x, dev = found if found is not None else _optimize(problem, start, focal)
    difference = max(dev - problem.minimum, 0.0)
    zeta = float(np.sign(value - problem.estimate[focal]) * np.sqrt(difference))
    problem.cache[key] = (zeta, x)
    return zeta


def _limit(problem: _Problem, name: str, z: float, side: float) -> float:
    """One end of the interval: where ``zeta = side * z``, bracketed by doubling steps from the estimate."""
    focal = problem.names.index(name)
    estimate = float(problem.estimate[focal])
    low, high = problem.bounds[focal]
    edge = low if side < 0 else high
    step, inside = problem.scale[focal], estimate
    for _ in range(40):
        outside = estimate + side * step
        if edge is not None and side * (outside - edge) >= 0:
            outside = edge
        reached = side * _zeta(problem, focal, outside)
        if reached >= z:
            break
        if outside == edge:
            return float(edge)  # the profile does not reach the level before the bound (lme4: 0 for an sd)
        # zeta is nearly linear in the parameter: aim just past the level, at most 4 times as far
        inside, step = outside, step * (4.0 if reached <= 0 else min(4.0, max(1.2, 1.1 * z / reached)))
    else:
        return float("nan")
    tol = 1e-4 * max(problem.scale[focal], 1e-8)
    return float(optimize.brentq(lambda v: _zeta(problem, focal, v) - side * z, inside, outside, xtol=tol))
