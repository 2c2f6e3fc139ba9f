"""The parameter vector of a fit: its names, scales and the maps in and out of it.

Every EM iteration records one row: the fixed effects, then for each random term the
standard deviations of its coefficients followed by their correlations, then the
family's parameters.  The stopping rule sees the rows on a *working scale* (standard
deviations and family parameters on the log scale, correlations through ``atanh``);
the estimate averages the rows with each term's covariance averaged as its structure
says (:meth:`~mixedfx.model.covariance.CovarianceStructure.average`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixedfx._tf import tf
from mixedfx.inference.information import observed_information
from mixedfx.inference.stopping import MAX_AUTOREGRESSION, monte_carlo_standard_error
from mixedfx.model.blocks import BlockSystem, DenseBlockTooLarge
from mixedfx.model.covariance import CovarianceStructure, structure_for, term_structure
from mixedfx.model.families import Family
from mixedfx.model.gaussian import gaussian_marginal, term_z
from mixedfx.model.joint import MixedModel, ModelParameters, numpy_linear_predictor

__all__ = ["ParameterLayout", "fixed_effects_covariance", "fixed_effects_scale", "wald_covariance"]

_CORRELATION_LIMIT = 1.0 - 1e-12


@dataclass(frozen=True)
class ParameterLayout:
    """Where each parameter sits in a trace row.

    Attributes
    ----------
    names : tuple of str
        ``"Intercept"``, ``"sd(g)"`` (a random intercept), ``"sd(g, Days)"``,
        ``"cor(g, (Intercept), Days)"``, ``"sigma"``.
    kinds : tuple of str
        ``"fixed"``, ``"sd"``, ``"cor"``, ``"family"`` (positive) or ``"family_raw"``
        per entry.
    n_fixed : int
    dims : tuple of int
        Coefficients per level of each random term.
    structures : tuple of CovarianceStructure
        Each random term's covariance structure.

    Examples
    --------
    A correlated random intercept and slope:

    >>> import numpy as np
    >>> from mixedfx.design import RandomTermData
    >>> from mixedfx.model import Gaussian, MixedModel, ModelParameters
    >>> from mixedfx.inference import ParameterLayout
    >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32),
    ...                       np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 2.0]]), 2, ("(Intercept)", "Days"))
    >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 1.0, 2.0]), (term,), ("Intercept",))
    >>> layout = ParameterLayout.from_model(model)
    >>> layout.names
    ('Intercept', 'sd(g, (Intercept))', 'sd(g, Days)', 'cor(g, (Intercept), Days)', 'sigma')
    >>> layout.kinds
    ('fixed', 'sd', 'sd', 'cor', 'family')
    >>> params = ModelParameters(np.array([1.5]), (np.array([[2.0, 0.0], [0.5, 1.0]]),), {"sigma": 0.5})
    >>> row = layout.row(params)  # sds sqrt(4) and sqrt(1.25), correlation 1 / (2 sqrt(1.25))
    >>> row.round(4).tolist()
    [1.5, 2.0, 1.118, 0.4472, 0.5]
    >>> layout.parameters(row).random_cov[0].round(4).tolist()
    [[4.0, 1.0], [1.0, 1.25]]
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    n_fixed: int
    dims: tuple[int, ...]
    family: Family
    structures: tuple[CovarianceStructure, ...] = ()  # per term, its covariance structure; () all "us"

    @classmethod
    def from_model(cls, model: MixedModel) -> ParameterLayout:
        names = list(model.fixed_names)
        kinds = ["fixed"] * len(names)
        for term in model.random_terms:
            coefs = term.coef_names
            # a term of the family's own linear predictor: glmmTMB's prefix (zi~sd(site))
            tag = getattr(term, "predictor", "cond")
            prefix = "" if tag == "cond" else f"{tag}~"
            name = term.name.removeprefix(prefix) if prefix else term.name
            if coefs == ("(Intercept)",):
                names.append(f"{prefix}sd({name})")
            else:
                names += [f"{prefix}sd({name}, {c})" for c in coefs]
            kinds += ["sd"] * len(coefs)
            for a, b in _pairs(len(coefs)):
                names.append(f"{prefix}cor({name}, {coefs[a]}, {coefs[b]})")
                kinds.append("cor")
        for label, positive in zip(model.family.parameter_labels(), model.family.positive_parameters()):
            names.append(label)
            kinds.append("family" if positive else "family_raw")
        return cls(tuple(names), tuple(kinds), len(model.fixed_names), tuple(t.dim for t in model.random_terms),
                   model.family, tuple(term_structure(t) for t in model.random_terms))

    @property
    def size(self) -> int:
        return len(self.names)

    def _mask(self, kind: str) -> np.ndarray:
        return np.array([k == kind for k in self.kinds])

    # -- rows <-> parameters ----------------------------------------------------------------
    def row(self, params: ModelParameters) -> np.ndarray:
        """Flatten parameters into a trace row."""
        values = list(params.fixed_effects)
        for cov in params.random_cov:
            sds = np.sqrt(np.diag(cov))
            values += list(sds)
            values += [cov[a, b] / (sds[a] * sds[b]) for a, b in _pairs(len(sds))]
        values += list(self.family.parameter_values(params.family_params))
        return np.asarray(values, dtype=np.float64)

    def covariances(self, rows: np.ndarray) -> list[np.ndarray]:
        """Per term, the covariance matrices of ``rows`` (shape ``[n_rows, dim, dim]``)."""
        rows = np.atleast_2d(rows)
        out, offset = [], self.n_fixed
        for dim in self.dims:
            sds = rows[:, offset:offset + dim]
            offset += dim
            corr = np.broadcast_to(np.eye(dim), (rows.shape[0], dim, dim)).copy()
            for a, b in _pairs(dim):
                corr[:, a, b] = corr[:, b, a] = rows[:, offset]
                offset += 1
            out.append(corr * sds[:, :, None] * sds[:, None, :])
        return out

    def parameters(self, row: np.ndarray) -> ModelParameters:
        """Parameters from a trace row (covariances through their Cholesky factors)."""
        scale_tril = tuple(_cholesky(cov[0]) for cov in self.covariances(row[None]))
        family_values = row[self._mask("family") | self._mask("family_raw")]
        return ModelParameters(row[: self.n_fixed], scale_tril, self.family.parameters_from_values(family_values))

    def residual_sd(self, row: np.ndarray) -> float:
        """The residual sd in ``row`` (1 for families without one: the link scale)."""
        return float(row[self.names.index("sigma")]) if "sigma" in self.names else 1.0

    # -- working scale, averaging, errors ---------------------------------------------------
    def working(self, rows: np.ndarray) -> np.ndarray:
        """Fixed effects as they are; sds and positive family parameters logged;
        correlations atanh."""
        out = np.array(rows, dtype=np.float64, copy=True)
        logged = self._mask("sd") | self._mask("family")
        out[:, logged] = np.log(np.maximum(out[:, logged], 1e-300))
        cor = self._mask("cor")
        out[:, cor] = np.arctanh(np.clip(out[:, cor], -_CORRELATION_LIMIT, _CORRELATION_LIMIT))
        return out

    def average(self, rows: np.ndarray) -> np.ndarray:
        """Mean of the rows, each term's covariances averaged by its structure
        (:meth:`~mixedfx.model.covariance.CovarianceStructure.average`): as matrices (the
        scale the M-step works on) where the structure is linear, else the structure at
        its mean parameters; ``rr``'s mean matrix projected back to its rank."""
        estimate = rows.mean(axis=0)
        offset = self.n_fixed
        structures = self.structures or ("us",) * len(self.dims)
        for dim, cov, structure in zip(self.dims, self.covariances(rows), structures):
            mean_cov = structure_for(structure).average(cov)
            sds = np.sqrt(np.diag(mean_cov))
            estimate[offset:offset + dim] = sds
            offset += dim
            for a, b in _pairs(dim):
                estimate[offset] = mean_cov[a, b] / (sds[a] * sds[b]) if sds[a] * sds[b] > 0 else 0.0
                offset += 1
        return estimate

    def natural_spread(self, working_spread: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """A spread on the working scale, mapped to the natural scale at ``estimate``."""
        out = np.array(working_spread, dtype=np.float64, copy=True)
        logged = self._mask("sd") | self._mask("family")
        out[logged] = out[logged] * estimate[logged]
        cor = self._mask("cor")
        out[cor] = out[cor] * (1.0 - estimate[cor] ** 2)
        return out

    def monte_carlo_error(self, rows: np.ndarray, estimate: np.ndarray, *, lead_in=None) -> np.ndarray:
        """Monte Carlo standard error of the window mean, on the natural scale (``lead_in``:
        the iterations before the window that sharpen the AR(1) coefficient, see
        :func:`~mixedfx.inference.monte_carlo_standard_error`)."""
        lead_in = None if lead_in is None or len(lead_in) == 0 else self.working(lead_in)
        return self.natural_spread(monte_carlo_standard_error(self.working(rows), lead_in=lead_in), estimate)

    def at_boundary(self, row: np.ndarray, *, residual_sd: float) -> np.ndarray:
        """Variance parameters at the edge of their space, as lme4's ``isSingular``
        judges it: an sd below ``1e-4`` of the residual sd, or a correlation of +-1."""
        flags = np.zeros(self.size, dtype=bool)
        sd = self._mask("sd")
        flags[sd] = row[sd] < 1e-4 * residual_sd
        cor = self._mask("cor")
        flags[cor] = np.abs(row[cor]) > 1.0 - 1e-6
        return flags

    def statistical_scale(self, model: MixedModel, row: np.ndarray, *, fixed_scale, posterior_var,
                          rates=None) -> np.ndarray:
        """Standard errors on the working scale: the yardstick of the stopping rule.

        Fixed effects: ``fixed_scale``.  Log sd of coefficient ``c`` of a term with
        levels ``j``: ``1 / sqrt(2 sum_j r_jc^2)``, where ``r_jc = 1 - v_jc / sd_c^2`` is
        the share of the prior variance the data explain (``v_jc`` the posterior
        variance, from the E-step draws); ``1 / sqrt(2 q)`` when every level is fully
        informed.  Fisher-z of a correlation: ``1 / sqrt(n - 3)`` with ``n`` the
        smaller of its two coefficients' ``sum_j r_jc^2``.  Log residual sd:
        ``1 / sqrt(2 n)``; other family parameters: the family's
        :meth:`~mixedfx.model.Family.parameter_scale`.  Those two are complete-data
        standard errors (as if the random effects were observed): with ``rates``, each
        parameter's EM rate (:func:`~mixedfx.inference.stopping.ar1_coefficient` of its
        trace, the fraction of its information the random effects hold), they are divided
        by ``sqrt(1 - rate)``, the scalar form of ``V_obs = V_com (I - DM)^-1`` (Meng and
        Rubin's SEM algorithm).  Measured: sigma of the ar1 fit in
        tests/test_covariance_structures.py has rate 0.81, its observed-data error is
        2.3 times ``1 / sqrt(2 n)``.

        Examples
        --------
        A residual sd from four rows, ``1 / sqrt(8)``; at an EM rate of 0.75, twice that:

        >>> import numpy as np
        >>> from mixedfx.design import RandomTermData
        >>> from mixedfx.model import Gaussian, MixedModel
        >>> from mixedfx.inference import ParameterLayout
        >>> term = RandomTermData("g", np.array([0, 0, 1, 1], dtype=np.int32), None, 2)
        >>> model = MixedModel(Gaussian(), np.ones((4, 1)), np.array([1.0, 2.0, 1.0, 2.0]), (term,), ("Intercept",))
        >>> layout = ParameterLayout.from_model(model)
        >>> row, rates = np.array([1.5, 1.0, 0.5]), np.array([0.3, 0.6, 0.75])
        >>> scale = layout.statistical_scale(model, row, fixed_scale=np.ones(1), posterior_var=[np.zeros((2, 1))])
        >>> with_rates = layout.statistical_scale(model, row, fixed_scale=np.ones(1), posterior_var=[np.zeros((2, 1))],
        ...                                       rates=rates)
        >>> scale.round(4).tolist(), with_rates.round(4).tolist()
        ([1.0, 0.5, 0.3536], [1.0, 0.5, 0.7071])
        """
        scale = np.empty(self.size)
        scale[: self.n_fixed] = fixed_scale
        offset = self.n_fixed
        for dim, variances in zip(self.dims, posterior_var):
            sds = row[offset:offset + dim]
            informed = np.clip(1.0 - variances / np.maximum(sds**2, 1e-300), 0.0, 1.0)
            information = np.sum(informed**2, axis=0)
            scale[offset:offset + dim] = 1.0 / np.sqrt(np.maximum(2.0 * information, 1e-12))
            offset += dim
            for a, b in _pairs(dim):
                scale[offset] = 1.0 / np.sqrt(max(min(information[a], information[b]) - 3.0, 1.0))
                offset += 1
        family = self._mask("family") | self._mask("family_raw")
        scale[family] = self.family.parameter_scale(row[family], model.response, model.n_obs)
        if rates is not None:
            scale[family] /= np.sqrt(1.0 - np.minimum(np.asarray(rates)[family], MAX_AUTOREGRESSION))
        return scale


def fixed_effects_scale(model: MixedModel, params: ModelParameters) -> np.ndarray:
    """Standard errors of the fixed effects at ``params`` (see
    :func:`fixed_effects_covariance`); the complete-data ones when the dense blocks do
    not fit in memory."""
    try:
        cov = fixed_effects_covariance(model, params)
    except (DenseBlockTooLarge, np.linalg.LinAlgError):
        return complete_data_scale(model, params)
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))


def complete_data_scale(model: MixedModel, params: ModelParameters) -> np.ndarray:
    """Standard errors of the fixed effects with the random effects known, ``diag(X'WX)^-1/2``
    (``W`` the Fisher weights at the fixed part of the linear predictor): one pass over
    the rows, a lower bound of the marginal ones for the Gaussian family."""
    X = model.fixed_design
    eta = numpy_linear_predictor(X, params.fixed_effects, (), (), offset=model.offset)
    weight = _fisher_weight(model, params, eta)
    cov = np.linalg.pinv(X.T @ (weight[:, None] * X))
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))


def _fisher_weight(model: MixedModel, params: ModelParameters, eta: np.ndarray) -> np.ndarray:
    """The family's Fisher weight of each row at linear predictor ``eta`` (numpy)."""
    trials = None if model.family_rows is None else tf.constant(model.family_rows)
    weights = None if model.weights is None else tf.constant(model.weights)
    return model.family.weighted_fisher_weight(tf.constant(eta), params.family_tensors(), trials=trials,
                                               weights=weights).numpy()


def fixed_effects_covariance(model: MixedModel, params: ModelParameters, random_effects=None) -> np.ndarray:
    """Covariance of the fixed-effect estimates at ``params``.

    Gaussian family: exact.  Others: the Laplace approximation of penalized IRLS, as
    glmer's ``vcov``, ``(X'WX - X'WU A^-1 U'WX)^-1`` with ``W`` the Fisher weights at
    the linear predictor with ``random_effects`` (per term, ``(num_levels, dim)``: the
    conditional means or modes; zero when omitted).  With random terms in the family's
    own linear predictors (glmmTMB's ``zi``): the fixed effects' block of
    :func:`wald_covariance`.

    Raises
    ------
    DenseBlockTooLarge
        When the dense blocks would not fit in memory.
    """
    X = model.fixed_design
    if not X.shape[1]:
        return np.zeros((0, 0))
    if model.family.conjugate_gaussian:
        return gaussian_marginal(model, params, solver="auto").fixed_effects_cov
    if model.predictors is not None:  # terms in the family's own linear predictors: the joint observed information
        effects = random_effects or [np.zeros((t.num_levels, t.dim)) for t in model.random_terms]
        return wald_covariance(model, params, effects)[:X.shape[1], :X.shape[1]]
    eta = numpy_linear_predictor(X, params.fixed_effects, random_effects or (), model.random_terms,
                                 offset=model.offset)
    weight = _fisher_weight(model, params, eta)
    scaled = [term_z(t, model.n_obs) @ L for t, L in zip(model.random_terms, params.random_scale_tril)]
    system = BlockSystem(model.random_terms, scaled, weight)
    v1, vr = system.project(X)
    x1, xr = system.solve(v1, vr)
    information = X.T @ (weight[:, None] * X) - system.quadratic(v1, vr, x1, xr)
    return np.linalg.pinv(0.5 * (information + information.T))


def _pairs(dim: int) -> list[tuple[int, int]]:
    """Coefficient pairs of the correlations, in lme4's order."""
    return [(a, b) for a in range(dim) for b in range(a + 1, dim)]


def _cholesky(cov: np.ndarray) -> np.ndarray:
    cov = 0.5 * (cov + cov.T)
    jitter = 1e-12 * max(float(np.trace(cov)), 1e-300)
    return np.linalg.cholesky(cov + jitter * np.eye(cov.shape[0]))


#: Random-effect coefficients up to which :func:`wald_covariance` takes their uncertainty
#: into account (a dense Hessian); beyond, it holds them at their conditional means.
DENSE_RANDOM_LIMIT = 4000


def wald_covariance(model, params, random_effects) -> np.ndarray:
    """Wald covariance of the fixed effects and the family's unconstrained parameters
    jointly, ``(n_fixed + n_free)`` square, at ``params``.

    The joint log density's observed information in the fixed effects, the family's
    parameters and the random effects (at ``random_effects``, per term ``(num_levels,
    dim)``), the random effects profiled out by a Schur complement: glmer's ``vcov``
    approximation, extended to the family's own parameters, which a zero-inflated
    family needs (its coefficients are correlated with the conditional intercept).
    With more than :data:`DENSE_RANDOM_LIMIT` random coefficients they are held at
    ``random_effects`` instead (no Schur complement: smaller standard errors).  The
    information is assembled from each row's second derivatives in its linear
    predictors and the family's parameters
    (:func:`~mixedfx.inference.information.observed_information`).
    """
    p = model.fixed_design.shape[1]
    n_free = len(model.family.free_from_parameters(params.family_params))
    effects = [np.asarray(b, dtype=np.float64) for b in random_effects]
    n_random = sum(b.size for b in effects)
    dense = n_random <= DENSE_RANDOM_LIMIT
    information = observed_information(model, params, effects, dense=dense)
    a = p + n_free
    profiled = information[:a, :a]
    if dense and n_random:
        profiled = profiled - information[:a, a:] @ np.linalg.solve(information[a:, a:], information[a:, :a])
    return np.linalg.pinv(0.5 * (profiled + profiled.T))
