"""Covariance structures of a random term, as glmmTMB and lme4 2.0 write them inside the bar.

``ar1(0 + timef | subject)`` gives each subject's effects at the times of ``timef`` an
autoregressive covariance; ``(x | g)`` (``us``) an unstructured one.  Each structure is
one class: the number of its parameters, the ``dim x dim`` covariance they build
(constraints through :mod:`tensorflow_probability` bijectors), the M-step's projection
of the effects' second moment onto the structure, and what ``VarCorr`` reports.

The fitted state of a term stays its covariance matrix (a Cholesky factor), so the
E-step, the exact Gaussian likelihood, ``ranef``, ``predict`` and ``simulate`` read it
as they read an unstructured one; the structure constrains the M-step and the report.

=========  ===========================================  ==========================
structure  covariance                                   parameters
=========  ===========================================  ==========================
us         any                                          dim sds, dim(dim-1)/2 cors
diag       diagonal                                     dim sds
homdiag    ``sd^2 I``                                   1 sd
cs         ``D (rho 11' + (1 - rho) I) D``              dim sds, rho
homcs      ``sd^2 (rho 11' + (1 - rho) I)``             1 sd, rho
ar1        ``sd^2 rho^|i - j|``                         1 sd, rho
toep       ``D R D``, ``R[i, j] = r_|i - j|``           dim sds, dim - 1 cors
ou         ``sd^2 exp(-rate |t_i - t_j|)``              1 sd, rate
exp        ``sd^2 exp(-d_ij / range)``                  1 sd, range
gau        ``sd^2 exp(-(d_ij / range)^2)``              1 sd, range
mat        ``sd^2 M_kappa(d_ij / range)`` (Matérn)      1 sd, range, kappa
rr         ``Lambda Lambda'`` (rank ``d``, a floor)      dim d - d(d-1)/2 loadings
=========  ===========================================  ==========================

``M_kappa(x) = x^kappa K_kappa(x) / (2^(kappa - 1) Gamma(kappa))``, ``K`` the modified
Bessel function of the second kind (TMB's ``matern``, as glmmTMB's ``mat``).

The continuous structures (``ou``, ``exp``, ``gau``, ``mat``) have one coefficient per distinct
point of their coordinate columns (glmmTMB's ``numFactor``); ``d_ij`` is the Euclidean
distance between points ``i`` and ``j``.  The design hands the points to
:func:`structure_for` (``coordinates=``), and the structure owns their distances.

``rr(x | g, d = 2)`` (glmmTMB's reduced rank) takes the argument ``d`` written after the term
(:func:`structure_for`'s ``arguments=``); see :class:`ReducedRank`.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy.spatial import distance

from mixedfx._tf import tf, tfp
from mixedfx.model.matern_kernel import matern_correlation, scipy_matern

tfb = tfp.bijectors

__all__ = ["CovarianceStructure", "STRUCTURES", "structure_for", "term_structure"]

_NEWTON_STEPS = 40
_HALVINGS = 30


class CovarianceStructure:
    """Base class: an unstructured covariance (glmmTMB's and lme4 2.0's ``us``).

    Subclasses set ``name`` and override :meth:`n_params`, :meth:`covariance`,
    :meth:`start`, and where they have names for them :meth:`parameters`.

    Attributes
    ----------
    name : str
        glmmTMB's spelling.
    needs_coordinates : bool
        Whether the term's coefficients are the distinct points of numeric coordinate
        columns (``exp(x + y + 0 | g)``), whose distances the structure owns.
    expansion : str
        Which scale expansions ``C`` (PX-EM, :mod:`mixedfx.inference.mstep`) keep the
        structure: ``"full"`` (any matrix), ``"diagonal"`` (heterogeneous sds) or
        ``"scalar"`` (one common sd).
    needs_times : bool
        Whether the term's coefficients are equally spaced times (a factor's levels,
        no intercept), as ``ar1`` and ``toep`` need.
    correlates : bool
        Whether the structure has correlation parameters of its own (``cs``,
        ``homcs``, ``ar1``, ``toep``): its term needs two coefficients or more.
    whitened_e_step : bool
        Whether the E-step samples the effects whitened by the covariance's Cholesky
        factor (``b = L z``), as a nearly singular covariance (``rr``) needs.
    linear : bool
        Whether the structure's covariances are a convex set (``us``, ``diag``,
        ``homdiag``, ``homcs``: linear in their variances and covariances), so that a
        mean of covariances in it is in it (:meth:`average`).

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model.covariance import structure_for
    >>> ar1 = structure_for("ar1")
    >>> ar1.n_params(4), ar1.expansion
    (2, 'scalar')
    >>> cov = ar1.covariance(np.array([np.log(2.0), np.arctanh(0.5)]), 3).numpy()
    >>> cov.round(3).tolist()
    [[4.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 4.0]]
    >>> report = ar1.report(cov)
    >>> report["sd"].round(3).tolist(), round(report["parameters"]["rho"], 3)
    ([2.0, 2.0, 2.0], 0.5)
    """

    name = "us"
    expansion = "full"
    needs_times = False
    needs_coordinates = False  # whether the coefficients are points of numeric coordinate columns
    correlates = False  # whether the structure has correlation parameters of its own
    whitened_e_step = False  # whether the E-step samples L^-1 b (a nearly singular covariance)
    linear = True  # whether a mean of covariances in the structure is in it
    #: the unconstrained parameters' reported scales, in :meth:`covariance`'s order
    #: (:meth:`natural_coordinates`): ``"sds"`` an sd per coefficient, ``"sd"`` a common
    #: one, ``"rho"`` the correlation, ``"lags"`` lag correlations (``toep``, which maps
    #: them itself), any other name a positive scale; ``None``: none
    natural_scales = None

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @classmethod
    def build(cls, *, coordinates=None, arguments=()) -> CovarianceStructure:
        """The structure of one term: ``coordinates`` its points (continuous structures),
        ``arguments`` the ``(name, value)`` pairs written after the term (``rr``'s ``d``;
        the parser admits them only where a structure takes them)."""
        return cls()

    @property
    def unstructured(self) -> bool:
        """Whether this is ``us``, lme4's default ``(x | g)``."""
        return self.name == "us"

    def n_params(self, dim: int) -> int:
        """Number of free parameters of a ``dim x dim`` covariance."""
        return dim * (dim + 1) // 2

    def covariance(self, params, dim: int):
        """The ``dim x dim`` covariance at unconstrained ``params`` (a TF tensor)."""
        params = tf.convert_to_tensor(params, tf.float64)
        sds = tf.exp(params[:dim])
        chol = tfb.CorrelationCholesky().forward(params[dim:])
        scale = sds[:, None] * chol
        return tf.linalg.matmul(scale, scale, transpose_b=True)

    def start(self, cov):
        """Unconstrained parameters near ``cov`` (a TF ``dim x dim`` covariance), where
        :meth:`project`'s Newton steps start."""
        sds = tf.sqrt(tf.linalg.diag_part(cov))
        corr = cov / (sds[:, None] * sds[None, :])
        chol = tf.linalg.cholesky(corr + 1e-9 * tf.eye(tf.shape(cov)[0], dtype=cov.dtype))
        return tf.concat([tf.math.log(sds), tfb.CorrelationCholesky().inverse(chol)], 0)

    def unconstrained(self, cov) -> np.ndarray:
        """The unconstrained parameters of a covariance in the structure (numpy): the
        inverse of :meth:`covariance`."""
        return self.start(tf.constant(np.asarray(cov, dtype=np.float64))).numpy()

    def average(self, covs) -> np.ndarray:
        """The estimate from the covariances of an averaging window (numpy, shape
        ``[n, dim, dim]``): their mean matrix where the structure is :attr:`linear` (the
        scale the M-step averages on, ``B'B / n``), else the structure at the mean of
        their :meth:`unconstrained` parameters (a mean matrix of a nonlinear kernel is
        not the kernel at any parameters).

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model.covariance import structure_for
        >>> us, ar1 = structure_for("us"), structure_for("ar1")
        >>> covs = np.stack([ar1.covariance(np.array([0.0, np.arctanh(r)]), 3).numpy() for r in (0.2, 0.8)])
        >>> us.average(covs)[0].round(3).tolist()  # lag 2: (0.04 + 0.64) / 2, not 0.5^2
        [1.0, 0.5, 0.34]
        >>> ar1.average(covs)[0].round(3).tolist()  # rho = tanh(mean atanh) = 0.572, lag 2 rho^2
        [1.0, 0.572, 0.327]
        """
        covs = np.asarray(covs, dtype=np.float64)
        if self.linear:
            return covs.mean(axis=0)
        params = np.mean([self.unconstrained(cov) for cov in covs], axis=0)
        return np.asarray(self.covariance(params, covs.shape[-1]))

    def linear_basis(self, dim: int) -> list[np.ndarray] | None:
        """Symmetric ``dim x dim`` matrices ``G_i`` whose combinations ``sum_i gamma_i G_i``
        are the structure's covariances (Kenward and Roger's linear parametrization, as
        pbkrtest writes lme4's), or ``None`` where no such basis exists (a covariance
        nonlinear in its parameters: ``cs``, ``ar1``, ``toep``, the spatial ones, ``rr``).
        ``us``: every variance, then every covariance, column by column of the lower
        triangle.

        Examples
        --------
        >>> from mixedfx.model.covariance import structure_for
        >>> [G.tolist() for G in structure_for("homcs").linear_basis(2)]  # b I + a 11'
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]
        >>> len(structure_for("us").linear_basis(3)), structure_for("ar1").linear_basis(3)
        (6, None)
        """
        basis = []
        for b in range(dim):
            for a in range(b, dim):
                G = np.zeros((dim, dim))
                G[a, b] = G[b, a] = 1.0
                basis.append(G)
        return basis

    def expansion_basis(self, dim: int) -> np.ndarray:
        """The scale expansions ``C`` that keep the structure, as columns spanning
        ``vec(C)`` (row-major, ``dim * dim`` rows)."""
        if self.expansion == "full":
            return np.eye(dim * dim)
        if self.expansion == "diagonal":
            return np.eye(dim * dim)[:, [j * dim + j for j in range(dim)]]
        return np.eye(dim).reshape(dim * dim, 1)

    def adapt_expansion(self, scale_matrix, second_moment):
        """The scale expansion ``C`` the M-step applies (PX-EM, :mod:`mixedfx.inference.mstep`),
        from the regression's estimate and the effects' second moment: as it is (the
        expansion basis keeps the structure)."""
        return scale_matrix

    def project(self, second_moment, n_levels):
        """The M-step: the covariance in the structure that maximizes the expected
        complete-data log-likelihood of ``n_levels`` effects with second moment
        ``second_moment`` (sum over levels of ``b b'``),
        ``-n/2 log|Sigma| - 1/2 tr(Sigma^-1 B'B)``.  Unstructured: ``B'B / n``."""
        return tf.convert_to_tensor(second_moment, tf.float64) / tf.cast(n_levels, tf.float64)

    def parameters(self, cov) -> dict:
        """The structure's named correlation parameters of a covariance in it."""
        return {}

    def natural_coordinates(self, coef_names) -> list[tuple] | None:
        """The structure's parameters on the scales they are reported on (what profile
        intervals hold, :mod:`mixedfx.profile`, as glmmTMB profiles its ``theta``): per
        parameter ``(name, coefficient, (lower, upper))``, ``coefficient`` that of a
        per-coefficient sd (else ``None``), in :meth:`natural_values`' order, a fourth entry
        ``False`` for a nuisance coordinate (optimized at each point, not reported: ``rr``'s
        directions).  ``None`` for ``us`` (profiled on its sds and correlations).

        Examples
        --------
        >>> from mixedfx.model.covariance import structure_for
        >>> structure_for("cs").natural_coordinates(["a", "b", "c"])
        [('sd', 'a', (0.0, None)), ('sd', 'b', (0.0, None)), ('sd', 'c', (0.0, None)), ('rho', None, (-0.5, 1.0))]
        >>> structure_for("toep").natural_coordinates(["t1", "t2", "t3"])[3:]
        [('lag1', None, (-1.0, 1.0)), ('lag2', None, (-1.0, 1.0))]
        """
        if self.natural_scales is None:
            return None
        out = []
        for scale in self.natural_scales:
            if scale == "sds":
                out += [("sd", c, (0.0, None)) for c in coef_names]
            elif scale == "rho":
                out.append(("rho", None, self._rho_scale(len(coef_names))[1]))
            elif scale == "lags":
                out += [(f"lag{k}", None, (-1.0, 1.0)) for k in range(1, len(coef_names))]
            else:
                out.append((scale, None, (0.0, None)))
        return out

    def _natural_bijectors(self, dim: int) -> list:
        """Per unconstrained parameter, the bijector onto its reported scale."""
        out = []
        for scale in self.natural_scales:
            count = dim if scale == "sds" else 1
            out += [self._rho_scale(dim)[0] if scale == "rho" else tfb.Exp()] * count
        return out

    def natural_values(self, cov) -> np.ndarray:
        """:meth:`natural_coordinates`' values of a covariance in the structure (numpy)."""
        raw = self.unconstrained(cov)
        return np.array([float(b.forward(tf.constant(u, tf.float64)))
                         for u, b in zip(raw, self._natural_bijectors(len(cov)))])

    def natural_covariance(self, values, dim: int) -> np.ndarray:
        """The ``dim x dim`` covariance at :meth:`natural_coordinates`' ``values`` (numpy)."""
        raw = [b.inverse(tf.constant(v, tf.float64)) for v, b in zip(values, self._natural_bijectors(dim))]
        return np.asarray(self.covariance(tf.stack(raw), dim))

    def _rho_scale(self, dim: int):
        """The correlation parameter's bijector and bounds: ``tanh`` onto (-1, 1)."""
        return tfb.Tanh(), (-1.0, 1.0)

    def report(self, cov) -> dict:
        """What glmmTMB's ``VarCorr`` shows of a covariance in the structure.

        Returns a dict with ``sd`` (per coefficient), ``correlation`` (the matrix) and
        ``parameters`` (``{"rho": ...}`` for ``ar1``, ``cs``, ``homcs``; the lag
        correlations for ``toep``).
        """
        cov = np.asarray(cov, dtype=np.float64)
        sds = np.sqrt(np.diag(cov))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.outer(sds, sds)
        corr = np.where(np.isfinite(corr), corr, 0.0)
        np.fill_diagonal(corr, 1.0)
        return {"sd": sds, "correlation": corr, "parameters": self.parameters(cov)}

    def components(self, coef_names, cov) -> list[tuple]:
        """Rows ``(var1, var2, vcov, sdcor)`` of ``variance_components_``, one per
        parameter of the structure: an sd per coefficient (one row, named by the first
        coefficient, where the sd is common), then ``us``'s correlation per pair, or the
        structure's own parameters with ``var1`` its name (``("ar1", "rho")``,
        ``("toep", "lag1")``) and ``vcov`` NaN."""
        cov = np.asarray(cov, dtype=np.float64)
        report = self.report(cov)
        sds, corr = report["sd"], report["correlation"]
        names = list(coef_names)[:1] if self.expansion == "scalar" else list(coef_names)
        rows = [(name, None, sds[j] ** 2, sds[j]) for j, name in enumerate(names)]
        if self.unstructured:
            rows += [(coef_names[a], coef_names[b], cov[a, b], corr[a, b])
                     for a in range(len(sds)) for b in range(a + 1, len(sds))]
        else:
            rows += [(self.name, key, np.nan, value) for key, value in report["parameters"].items()]
        return rows

    def label(self, cov) -> str:
        """What lme4-style ``summary()`` prints after a structured term's correlations:
        ``"(ar1)"``, ``"(cs)"``; empty for ``us``."""
        return "" if self.unstructured else f"({self.name})"

    def validate(self, *, coef_names, intercept: bool, factor_levels) -> str | None:
        """Why the term's coefficients do not suit the structure, or ``None``.

        ``intercept``: whether the term has an intercept; ``factor_levels``: the levels
        of the single factor the term is made of, in order, or ``None`` when it is not
        one factor.
        """
        if self.needs_times and intercept:
            return (f"{self.name}() needs one coefficient per time and no intercept: "
                    f"write it as {self.name}(0 + times | g)")
        if self.needs_times and factor_levels is None:
            return (f"{self.name}() needs a factor of equally spaced times (one level per time); "
                    f"convert a numeric time column with pandas' astype('category')")
        if self.correlates and len(coef_names) < 2:
            return f"{self.name}() correlates coefficients: it needs at least two left of the bar"
        return None


class _Projected(CovarianceStructure):
    """A structure whose M-step has no closed form: damped Newton steps on its
    parameters, from :meth:`start`, until a step moves no parameter by more than
    ``newton_tolerance`` (0: until one fails to decrease the objective, or 40 steps).
    Nonlinear in its parameters (not :attr:`linear`) unless a subclass says so."""

    newton_tolerance = 0.0
    linear = False

    def linear_basis(self, dim: int):
        """None: nonlinear in its parameters (see :meth:`CovarianceStructure.linear_basis`)."""
        return None

    def project(self, second_moment, n_levels):
        """Newton's method on ``log|Sigma(theta)| + tr(Sigma(theta)^-1 S)``, ``S`` the
        mean second moment, from :meth:`start` at ``S``; each step halves until the
        objective decreases (the M-step is a generalized EM step)."""
        S = tf.convert_to_tensor(second_moment, tf.float64) / tf.cast(n_levels, tf.float64)
        S = 0.5 * (S + tf.transpose(S))
        dim = int(S.shape[0])
        floor = 1e-10 * tf.maximum(tf.reduce_max(tf.linalg.diag_part(S)), tf.constant(1e-300, tf.float64))
        S = S + floor * tf.eye(dim, dtype=tf.float64)

        def objective(theta):
            chol = tf.linalg.cholesky(self.covariance(theta, dim))
            log_det = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
            value = log_det + tf.linalg.trace(tf.linalg.cholesky_solve(chol, S))
            return tf.where(tf.math.is_finite(value), value, tf.constant(np.inf, tf.float64))

        def newton(_, theta):
            """One damped Newton step (the gradient where Newton's is no descent)."""
            with tf.GradientTape() as outer:
                outer.watch(theta)
                with tf.GradientTape() as inner:
                    inner.watch(theta)
                    value = objective(theta)
                gradient = inner.gradient(value, theta)
            hessian = outer.jacobian(gradient, theta, experimental_use_pfor=True)
            step = self._newton_step(hessian, gradient)

            def halve(j, scale, accepted):
                better = objective(theta - scale * step) <= value
                return j + 1, tf.where(better, scale, scale / 2.0), better

            _, scale, accepted = tf.while_loop(
                lambda j, scale, accepted: tf.logical_and(j < _HALVINGS, tf.logical_not(accepted)),
                halve, (0, tf.constant(1.0, tf.float64), tf.constant(False)))
            return tf.where(accepted, theta - scale * step, theta)

        def step(i, theta, _):
            new = newton(i, theta)
            return i + 1, new, tf.reduce_max(tf.abs(new - theta)) <= self.newton_tolerance

        _, theta, _ = tf.while_loop(lambda i, theta, done: tf.logical_and(i < _NEWTON_STEPS, tf.logical_not(done)),
                                    step, (0, self.start(S), tf.constant(False)))
        return self.covariance(theta, dim)

    def _newton_step(self, hessian, gradient):
        """Newton's step ``H^-1 g`` (ridged), or the gradient where that is no descent."""
        n = tf.shape(gradient)[0]
        ridge = 1e-8 * (1.0 + tf.reduce_max(tf.abs(tf.linalg.diag_part(hessian))))
        step = tf.linalg.solve(hessian + ridge * tf.eye(n, dtype=tf.float64), gradient[:, None])[:, 0]
        descent = tf.logical_and(tf.reduce_sum(step * gradient) > 0.0, tf.reduce_all(tf.math.is_finite(step)))
        return tf.where(descent, step, gradient)


def _log_sds(cov):
    return 0.5 * tf.math.log(tf.linalg.diag_part(cov))


def _mean_correlation(cov, lag: int):
    sds = tf.sqrt(tf.linalg.diag_part(cov))
    corr = cov / (sds[:, None] * sds[None, :])
    return tf.reduce_mean(tf.linalg.diag_part(corr, k=lag))


class Diagonal(CovarianceStructure):
    """``diag``: independent coefficients, one sd each (lme4's ``(x || g)``)."""

    name = "diag"
    expansion = "diagonal"
    natural_scales = ("sds",)

    def n_params(self, dim: int) -> int:
        return dim

    def covariance(self, params, dim: int):
        return tf.linalg.diag(tf.exp(2.0 * tf.convert_to_tensor(params, tf.float64)))

    def start(self, cov):
        return _log_sds(cov)

    def linear_basis(self, dim: int) -> list[np.ndarray]:
        """One variance per coefficient: ``e_a e_a'``."""
        return [np.diag(np.eye(dim)[a]) for a in range(dim)]

    def project(self, second_moment, n_levels):
        """Closed form: the diagonal of the mean second moment."""
        S = tf.convert_to_tensor(second_moment, tf.float64) / tf.cast(n_levels, tf.float64)
        return tf.linalg.diag(tf.linalg.diag_part(S))


class HomogeneousDiagonal(Diagonal):
    """``homdiag``: independent coefficients with one common sd."""

    name = "homdiag"
    expansion = "scalar"
    natural_scales = ("sd",)

    def n_params(self, dim: int) -> int:
        return 1

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        return tf.exp(2.0 * params[0]) * tf.eye(dim, dtype=tf.float64)

    def start(self, cov):
        return 0.5 * tf.math.log(tf.reduce_mean(tf.linalg.diag_part(cov)))[None]

    def linear_basis(self, dim: int) -> list[np.ndarray]:
        """One common variance: ``I``."""
        return [np.eye(dim)]

    def project(self, second_moment, n_levels):
        """Closed form: the mean of the second moment's diagonal, times the identity."""
        S = tf.convert_to_tensor(second_moment, tf.float64) / tf.cast(n_levels, tf.float64)
        dim = int(S.shape[0])
        return tf.reduce_mean(tf.linalg.diag_part(S)) * tf.eye(dim, dtype=tf.float64)


def _cs_rho(t, dim: int):
    """Compound symmetry's rho in ``(-1 / (dim - 1), 1)``, where the matrix is positive definite."""
    low = -1.0 / max(dim - 1, 1)
    return low + (1.0 - low) * tf.sigmoid(t)


def _cs_rho_inverse(rho, dim: int):
    low = -1.0 / max(dim - 1, 1)
    p = (tf.clip_by_value(rho, low + 1e-3, 1.0 - 1e-3) - low) / (1.0 - low)
    return tf.math.log(p) - tf.math.log1p(-p)


def _cs_correlation(rho, dim: int):
    return rho * tf.ones([dim, dim], tf.float64) + (1.0 - rho) * tf.eye(dim, dtype=tf.float64)


class CompoundSymmetry(_Projected):
    """``cs``: one correlation ``rho`` between every pair, an sd per coefficient
    (glmmTMB's heterogeneous compound symmetry)."""

    name = "cs"
    expansion = "diagonal"
    correlates = True
    natural_scales = ("sds", "rho")

    def n_params(self, dim: int) -> int:
        return dim + 1

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        sds = tf.exp(params[:dim])
        return sds[:, None] * _cs_correlation(_cs_rho(params[dim], dim), dim) * sds[None, :]

    def start(self, cov):
        dim = int(cov.shape[0])
        sds = tf.sqrt(tf.linalg.diag_part(cov))
        corr = cov / (sds[:, None] * sds[None, :])
        rho = (tf.reduce_sum(corr) - float(dim)) / float(dim * (dim - 1))
        return tf.concat([tf.math.log(sds), _cs_rho_inverse(rho, dim)[None]], 0)

    def _rho_scale(self, dim: int):
        """A sigmoid onto ``(-1 / (dim - 1), 1)``, as :func:`_cs_rho`."""
        low = -1.0 / max(dim - 1, 1)
        shift, scale = tf.constant(low, tf.float64), tf.constant(1.0 - low, tf.float64)
        return tfb.Chain([tfb.Shift(shift), tfb.Scale(scale), tfb.Sigmoid()]), (low, 1.0)

    def parameters(self, cov) -> dict:
        corr = np.asarray(cov) / np.outer(np.sqrt(np.diag(cov)), np.sqrt(np.diag(cov)))
        dim = corr.shape[0]
        return {"rho": float((corr.sum() - dim) / (dim * (dim - 1)))}


class HomogeneousCompoundSymmetry(CompoundSymmetry):
    """``homcs``: one correlation ``rho`` between every pair and one common sd."""

    name = "homcs"
    expansion = "scalar"
    correlates = True
    natural_scales = ("sd", "rho")
    linear = True  # sd^2 (rho 11' + (1 - rho) I) = a 11' + b I

    def n_params(self, dim: int) -> int:
        return 2

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        return tf.exp(2.0 * params[0]) * _cs_correlation(_cs_rho(params[1], dim), dim)

    def start(self, cov):
        dim = int(cov.shape[0])
        variance = tf.reduce_mean(tf.linalg.diag_part(cov))
        rho = (tf.reduce_sum(cov) - tf.linalg.trace(cov)) / float(dim * (dim - 1)) / variance
        return tf.stack([0.5 * tf.math.log(variance), _cs_rho_inverse(rho, dim)])

    def linear_basis(self, dim: int) -> list[np.ndarray]:
        """``b I + a 11'``: the identity and the matrix of ones."""
        return [np.eye(dim), np.ones((dim, dim))]


class AutoRegressive(_Projected):
    """``ar1``: ``sd^2 rho^|i - j|`` over equally spaced times, ``rho`` in ``(-1, 1)``
    through ``tanh`` (glmmTMB's ``ar1``: one common sd)."""

    name = "ar1"
    expansion = "scalar"
    correlates = True
    needs_times = True
    natural_scales = ("sd", "rho")

    def n_params(self, dim: int) -> int:
        return 2

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        rho = tfb.Tanh().forward(params[1])
        lags = np.abs(np.subtract.outer(np.arange(dim), np.arange(dim))).astype(np.float64)
        # rho ** lag with rho's sign, finite at rho = 0
        sign = tf.where(np.mod(lags, 2.0) == 1.0, tf.sign(rho) * tf.ones_like(lags), tf.ones_like(lags))
        powers = tf.where(lags == 0.0, tf.ones_like(lags), sign * tf.pow(tf.abs(rho), lags))
        return tf.exp(2.0 * params[0]) * powers

    def start(self, cov):
        variance = tf.reduce_mean(tf.linalg.diag_part(cov))
        rho = tf.clip_by_value(_mean_correlation(cov, 1), -0.95, 0.95)
        return tf.stack([0.5 * tf.math.log(variance), tfb.Tanh().inverse(rho)])

    def parameters(self, cov) -> dict:
        cov = np.asarray(cov)
        return {"rho": float(np.mean(np.diag(cov, 1)) / np.mean(np.diag(cov)))}

    def unconstrained(self, cov) -> np.ndarray:
        cov = np.asarray(cov, dtype=np.float64)
        return np.array([0.5 * np.log(np.mean(np.diag(cov))), np.arctanh(self.parameters(cov)["rho"])])


def _toeplitz_from_partial(partial, dim: int):
    """Autocorrelations at lags ``1 .. dim - 1`` from partial autocorrelations in
    ``(-1, 1)`` (Durbin-Levinson): every such sequence is positive definite."""
    rho, phi = [], []
    for k in range(dim - 1):
        p = partial[k]
        if k == 0:
            r = p
            phi = [p]
        else:
            ahead = tf.add_n([phi[j] * rho[k - 1 - j] for j in range(k)])
            behind = tf.add_n([phi[j] * rho[j] for j in range(k)])
            r = ahead + p * (1.0 - behind)
            phi = [phi[j] - p * phi[k - 1 - j] for j in range(k)] + [p]
        rho.append(r)
    return rho


class Toeplitz(_Projected):
    """``toep``: a correlation per lag, ``R[i, j] = r_|i - j|``, an sd per time (glmmTMB's
    heterogeneous Toeplitz), parametrized by partial autocorrelations through ``tanh``."""

    name = "toep"
    expansion = "diagonal"
    correlates = True
    needs_times = True
    natural_scales = ("sds", "lags")  # reported and profiled: the lag correlations, as glmmTMB's theta

    def n_params(self, dim: int) -> int:
        return 2 * dim - 1

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        sds = tf.exp(params[:dim])
        partial = tfb.Tanh().forward(params[dim:])
        lags = _toeplitz_from_partial([partial[k] for k in range(dim - 1)], dim)
        table = tf.stack([tf.constant(1.0, tf.float64)] + lags)
        index = np.abs(np.subtract.outer(np.arange(dim), np.arange(dim)))
        return sds[:, None] * tf.gather(table, index) * sds[None, :]

    def start(self, cov):
        dim = int(cov.shape[0])
        sds = tf.sqrt(tf.linalg.diag_part(cov))
        first = tf.clip_by_value(_mean_correlation(cov, 1), -0.9, 0.9)
        partial = tf.concat([tfb.Tanh().inverse(first)[None], tf.zeros([dim - 2], tf.float64)], 0)
        return tf.concat([tf.math.log(sds), partial], 0)

    def parameters(self, cov) -> dict:
        cov = np.asarray(cov)
        sds = np.sqrt(np.diag(cov))
        corr = cov / np.outer(sds, sds)
        return {f"lag{k}": float(np.mean(np.diag(corr, k))) for k in range(1, corr.shape[0])}

    def natural_values(self, cov) -> np.ndarray:
        """The sds, then the lag correlations."""
        cov = np.asarray(cov, dtype=np.float64)
        return np.concatenate([np.sqrt(np.diag(cov)), list(self.parameters(cov).values())])

    def natural_covariance(self, values, dim: int) -> np.ndarray:
        """``D R D`` with ``R`` the Toeplitz matrix of the lag correlations (``NaN`` where it
        is not positive definite: no covariance of the structure)."""
        values = np.asarray(values, dtype=np.float64)
        lags = np.concatenate([[1.0], values[dim:]])
        corr = lags[np.abs(np.subtract.outer(np.arange(dim), np.arange(dim)))]
        if np.linalg.eigvalsh(corr)[0] <= 0.0:
            return np.full((dim, dim), np.nan)
        return values[:dim, None] * corr * values[None, :dim]

    def unconstrained(self, cov) -> np.ndarray:
        """Log sds and ``atanh`` of the partial autocorrelations (Durbin-Levinson)."""
        cov = np.asarray(cov, dtype=np.float64)
        lags = np.concatenate([[1.0], list(self.parameters(cov).values())])
        partial = []
        for k in range(1, len(lags)):
            R = lags[np.abs(np.subtract.outer(np.arange(k), np.arange(k)))]
            partial.append(np.linalg.solve(R, lags[1:k + 1])[-1])
        return np.concatenate([0.5 * np.log(np.diag(cov)), np.arctanh(partial)])


class _Continuous(_Projected):
    """Base of the continuous structures: ``sd^2 exp(-f(d_ij))`` over the distances of
    the term's points (one common sd), with one scale parameter on the log scale.

    ``scale_name`` names it (``"range"``; ``"rate"`` for ``ou``), ``power`` is the
    power of the distance in the exponent (1: exponential, 2: Gaussian; no other), ``inverse``
    whether the scale multiplies the distance (a rate) instead of dividing it.
    Parameters ``(log sd, log scale)``, as glmmTMB's ``theta``.  The structure is
    stationary, so its M-step is Newton's on those two (:class:`_Projected`).
    """

    expansion = "scalar"
    needs_coordinates = True
    correlates = True
    scale_name = "range"
    power = 1
    inverse = False
    nugget = 0.0  # relative diagonal jitter of ill-conditioned kernels (gau)

    def __init__(self, coordinates=None):
        self.coordinates = coordinates

    @classmethod
    def build(cls, *, coordinates=None, arguments=()) -> CovarianceStructure:
        return cls(coordinates)

    def __eq__(self, other) -> bool:
        return (type(self) is type(other) and (self.coordinates is None) == (other.coordinates is None)
                and (self.coordinates is None or np.array_equal(self.coordinates, other.coordinates)))

    __hash__ = CovarianceStructure.__hash__

    def __repr__(self) -> str:
        points = "" if self.coordinates is None else f"coordinates=<{len(self.coordinates)} points>"
        return f"{type(self).__name__}({points})"

    @property
    def natural_scales(self):
        return ("sd", self.scale_name)

    def distances(self, dim: int) -> np.ndarray:
        """The ``dim x dim`` Euclidean distances between the points (numpy)."""
        if self.coordinates is None:
            raise ValueError(f"{self.name}() needs its points: structure_for({self.name!r}, coordinates=...)")
        points = np.asarray(self.coordinates, dtype=np.float64).reshape(len(self.coordinates), -1)
        if len(points) != dim:
            raise ValueError(f"{self.name}() has {len(points)} points, not {dim}")
        return distance.cdist(points, points)

    def n_params(self, dim: int) -> int:
        return 2

    def _reduced(self, distances, log_scale):
        """``d / range`` (or ``rate d``), whose ``power`` is minus the log correlation."""
        return distances * tf.exp(log_scale if self.inverse else -log_scale)

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        reduced = self._reduced(tf.constant(self.distances(dim)), params[1])
        exponent = reduced if self.power == 1 else tf.square(reduced)  # pow's second derivative is NaN at 0
        corr = tf.exp(-exponent) + self.nugget * tf.eye(dim, dtype=tf.float64)
        return tf.exp(2.0 * params[0]) * corr

    def _log_scale(self, log_distance, log_neg_log_corr):
        """The log scale that gives correlation ``c`` at distance ``d``."""
        log_range = log_distance - log_neg_log_corr / self.power
        return -log_range if self.inverse else log_range

    def start(self, cov):
        """The mean variance, and the geometric mean over pairs of the scale that gives
        each pair's correlation (clipped to 0.05 .. 0.95), kept within the points' span."""
        dim = int(cov.shape[0])
        d = self.distances(dim)
        pairs = np.nonzero(np.triu(d > 0, 1))
        variance = tf.reduce_mean(tf.linalg.diag_part(cov))
        corr = tf.clip_by_value(tf.gather_nd(cov, np.stack(pairs, 1)) / variance, 0.05, 0.95)
        log_scale = tf.reduce_mean(self._log_scale(np.log(d[pairs]), tf.math.log(-tf.math.log(corr))))
        bounds = sorted([self._log_scale(np.log(d[pairs].min()), np.log(3.0)),
                         self._log_scale(np.log(d[pairs].max()), np.log(0.1))])
        return tf.stack([0.5 * tf.math.log(variance), tf.clip_by_value(log_scale, *bounds)])

    def unconstrained(self, cov) -> np.ndarray:
        """``(log sd, log scale)`` of a covariance in the structure: the mean variance,
        and the scale by least squares on ``(-log corr)^(1 / power) = d / range``."""
        cov = np.asarray(cov, dtype=np.float64)
        variance = np.mean(np.diag(cov))
        d = self.distances(cov.shape[0])
        pairs = np.nonzero(np.triu(d > 0, 1))
        y = (-np.log(np.clip(cov[pairs] / variance, 1e-300, 1.0))) ** (1.0 / self.power)
        inverse_range = np.sum(d[pairs] * y) / np.sum(d[pairs] ** 2)
        log_range = -np.log(inverse_range)
        return np.array([0.5 * np.log(variance), -log_range if self.inverse else log_range])

    def parameters(self, cov) -> dict:
        return {self.scale_name: float(np.exp(self.unconstrained(cov)[1]))}

    def validate(self, *, coef_names, intercept: bool, factor_levels) -> str | None:
        if len(coef_names) < 2:
            return f"{self.name}() needs at least two distinct points (coordinate values)"
        return None


class OrnsteinUhlenbeck(_Continuous):
    """``ou``: ``sd^2 exp(-rate |t_i - t_j|)`` over one numeric time column, unequally
    spaced times allowed (glmmTMB's ``ou(times + 0 | g)``, parameters log sd, log rate)."""

    name = "ou"
    scale_name = "rate"
    inverse = True


class Exponential(_Continuous):
    """``exp``: ``sd^2 exp(-d_ij / range)`` over the Euclidean distances of the points of
    one or more coordinate columns (glmmTMB's ``exp(pos + 0 | g)``, log sd, log range)."""

    name = "exp"


class GaussianKernel(_Continuous):
    """``gau``: ``sd^2 exp(-(d_ij / range)^2)`` (glmmTMB's ``gau(pos + 0 | g)``, log sd,
    log range); a relative nugget of 1e-8 on the diagonal keeps the Cholesky factor of
    the notoriously ill-conditioned kernel finite."""

    name = "gau"
    power = 2
    nugget = 1e-8


class Matern(_Continuous):
    """``mat``: ``sd^2 M_kappa(d_ij / range)``, the Matérn correlation over the Euclidean
    distances of the points (glmmTMB's ``mat(pos + 0 | g)``, parameters log sd, log range,
    log kappa as its ``theta``).  ``kappa = 1/2`` is ``exp``; large ``kappa`` nears ``gau``,
    so the same relative nugget of 1e-8 keeps the Cholesky factor finite."""

    name = "mat"
    nugget = 1e-8
    newton_tolerance = 1e-9
    natural_scales = ("sd", "range", "kappa")

    def n_params(self, dim: int) -> int:
        return 3

    def covariance(self, params, dim: int):
        params = tf.convert_to_tensor(params, tf.float64)
        corr = matern_correlation(self.distances(dim), params[1], params[2])
        return tf.exp(2.0 * params[0]) * (corr + self.nugget * tf.eye(dim, dtype=tf.float64))

    def _newton_step(self, hessian, gradient):
        """Newton's step on the Hessian with its eigenvalues made positive (``|lambda|``, at
        least 1e-6 of the largest): the objective is not convex in ``(log range, log kappa)``
        away from its minimum, where a plain Newton step can leap far uphill.  No
        coordinate moves more than 1 (a factor e) per step."""
        values, vectors = tf.linalg.eigh(0.5 * (hessian + tf.transpose(hessian)))
        values = tf.maximum(tf.abs(values), 1e-6 * tf.reduce_max(tf.abs(values)) + 1e-12)
        step = tf.linalg.matvec(vectors, tf.linalg.matvec(vectors, gradient, transpose_a=True) / values)
        step = step / tf.maximum(tf.constant(1.0, tf.float64), tf.reduce_max(tf.abs(step)))
        return tf.where(tf.reduce_all(tf.math.is_finite(step)), step, gradient)

    def start(self, cov):
        """``exp``'s start (the Matérn at ``kappa = 1/2``)."""
        return tf.concat([super().start(cov), tf.constant([np.log(0.5)], tf.float64)], 0)

    def unconstrained(self, cov) -> np.ndarray:
        """``(log sd, log range, log kappa)``: the mean variance, and range and kappa by
        least squares of the correlations on scipy's Matérn, from ``exp``'s range at
        ``kappa = 1/2``."""
        cov = np.asarray(cov, dtype=np.float64)
        log_sd, log_range = super().unconstrained(cov)
        d = self.distances(cov.shape[0])
        pairs = np.nonzero(np.triu(d > 0, 1))
        corr, d = cov[pairs] / np.exp(2.0 * log_sd), d[pairs]

        def residuals(theta):
            return scipy_matern(d, *np.exp(theta)) - corr

        fit = optimize.least_squares(residuals, [log_range, np.log(0.5)], xtol=1e-14, ftol=1e-14, gtol=1e-14)
        return np.concatenate([[log_sd], fit.x])

    def parameters(self, cov) -> dict:
        _, log_range, log_kappa = self.unconstrained(cov)
        return {"range": float(np.exp(log_range)), "kappa": float(np.exp(log_kappa))}



# rr subclasses CovarianceStructure, defined above; mixedfx.model imports this module first.
from mixedfx.model.reduced_rank import ReducedRank  # noqa: E402

#: The structures mixedfx fits, by glmmTMB's name.
STRUCTURES = {cls.name: cls for cls in (CovarianceStructure, Diagonal, HomogeneousDiagonal, CompoundSymmetry,
                                        HomogeneousCompoundSymmetry, AutoRegressive, Toeplitz, OrnsteinUhlenbeck,
                                        Exponential, GaussianKernel, Matern, ReducedRank)}


def structure_for(name="us", *, coordinates=None, arguments=()) -> CovarianceStructure:
    """The structure called ``name`` (glmmTMB's spelling; ``"us"`` for lme4's ``(x | g)``);
    a structure given instead of a name is returned as it is.

    ``coordinates``: the points of a continuous structure (``ou``, ``exp``, ``gau``, ``mat``),
    shape ``(dim, n_columns)``, one per coefficient; the structure computes their distances.
    ``arguments``: the ``(name, value)`` pairs written after the term, ``(("d", "1"),)`` for
    ``rr(x | g, d = 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model.covariance import structure_for
    >>> structure_for("toep").n_params(5)
    9
    >>> exp = structure_for("exp", coordinates=np.array([[0.0, 0.0], [3.0, 4.0]]))
    >>> exp.covariance(np.log([2.0, 5.0]), 2).numpy().round(4).tolist()  # 4 exp(-5 / 5)
    [[4.0, 1.4715], [1.4715, 4.0]]
    >>> structure_for("rr", arguments=(("d", "1"),))
    ReducedRank(rank=1)
    """
    if isinstance(name, CovarianceStructure):
        return name
    return STRUCTURES[name].build(coordinates=coordinates, arguments=arguments)


def term_structure(term) -> CovarianceStructure:
    """A random term's structure, with its points and arguments where it has them (``term``:
    a design's or a model's random term, with ``covariance``, ``coordinates`` and
    ``covariance_args``)."""
    return structure_for(getattr(term, "covariance", "us"), coordinates=getattr(term, "coordinates", None),
                         arguments=getattr(term, "covariance_args", ()))
