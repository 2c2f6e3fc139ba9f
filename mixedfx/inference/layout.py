"""The parameter vector of a fit: its names, scales and the maps in and out of it.

Every EM iteration records one row: the fixed effects, then for each random term the
standard deviations of its coefficients followed by their correlations, then the
family's parameters.  The stopping rule sees the rows on a *working scale* (standard
deviations and family parameters on the log scale, correlations through ``atanh``);
the estimate averages the rows with each covariance matrix averaged as a matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixedfx.inference.stopping import monte_carlo_standard_error
from mixedfx.model.families import Gaussian
from mixedfx.model.gaussian import DenseBlockTooLarge, gaussian_marginal
from mixedfx.model.joint import MixedModel, ModelParameters

__all__ = ["ParameterLayout"]

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
        ``"fixed"``, ``"sd"``, ``"cor"`` or ``"family"`` per entry.
    n_fixed : int
    dims : tuple of int
        Coefficients per level of each random term.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    n_fixed: int
    dims: tuple[int, ...]

    @classmethod
    def from_model(cls, model: MixedModel) -> ParameterLayout:
        names = list(model.fixed_names)
        kinds = ["fixed"] * len(names)
        for term in model.random_terms:
            coefs = term.coef_names
            if coefs == ("(Intercept)",):
                names.append(f"sd({term.name})")
            else:
                names += [f"sd({term.name}, {c})" for c in coefs]
            kinds += ["sd"] * len(coefs)
            for a, b in _pairs(len(coefs)):
                names.append(f"cor({term.name}, {coefs[a]}, {coefs[b]})")
                kinds.append("cor")
        names += list(model.family.parameter_names)
        kinds += ["family"] * len(model.family.parameter_names)
        return cls(tuple(names), tuple(kinds), len(model.fixed_names), tuple(t.dim for t in model.random_terms))

    @property
    def size(self) -> int:
        return len(self.names)

    def _mask(self, kind: str) -> np.ndarray:
        return np.array([k == kind for k in self.kinds])

    # -- rows <-> parameters ----------------------------------------------------------------
    def row(self, params: ModelParameters, family_names: tuple[str, ...]) -> np.ndarray:
        """Flatten parameters into a trace row."""
        values = list(params.fixed_effects)
        for cov in params.random_cov:
            sds = np.sqrt(np.diag(cov))
            values += list(sds)
            values += [cov[a, b] / (sds[a] * sds[b]) for a, b in _pairs(len(sds))]
        values += [params.family_params[name] for name in family_names]
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

    def parameters(self, row: np.ndarray, family_names: tuple[str, ...]) -> ModelParameters:
        """Parameters from a trace row (covariances through their Cholesky factors)."""
        scale_tril = tuple(_cholesky(cov[0]) for cov in self.covariances(row[None]))
        family = {name: float(v) for name, v in zip(family_names, row[self._mask("family")])}
        return ModelParameters(row[: self.n_fixed], scale_tril, family)

    # -- working scale, averaging, errors ---------------------------------------------------
    def working(self, rows: np.ndarray) -> np.ndarray:
        """Fixed effects as they are; sds and family parameters logged; correlations atanh."""
        out = np.array(rows, dtype=np.float64, copy=True)
        logged = self._mask("sd") | self._mask("family")
        out[:, logged] = np.log(np.maximum(out[:, logged], 1e-300))
        cor = self._mask("cor")
        out[:, cor] = np.arctanh(np.clip(out[:, cor], -_CORRELATION_LIMIT, _CORRELATION_LIMIT))
        return out

    def average(self, rows: np.ndarray) -> np.ndarray:
        """Mean of the rows, each covariance matrix averaged as a matrix (the scale the
        M-step works on), the residual sd averaged as a variance."""
        estimate = rows.mean(axis=0)
        offset = self.n_fixed
        for dim, cov in zip(self.dims, self.covariances(rows)):
            mean_cov = cov.mean(axis=0)
            sds = np.sqrt(np.diag(mean_cov))
            estimate[offset:offset + dim] = sds
            offset += dim
            for a, b in _pairs(dim):
                estimate[offset] = mean_cov[a, b] / (sds[a] * sds[b]) if sds[a] * sds[b] > 0 else 0.0
                offset += 1
        family = self._mask("family")
        estimate[family] = np.sqrt(np.mean(rows[:, family] ** 2, axis=0))
        return estimate

    def natural_spread(self, working_spread: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """A spread on the working scale, mapped to the natural scale at ``estimate``."""
        out = np.array(working_spread, dtype=np.float64, copy=True)
        logged = self._mask("sd") | self._mask("family")
        out[logged] = out[logged] * estimate[logged]
        cor = self._mask("cor")
        out[cor] = out[cor] * (1.0 - estimate[cor] ** 2)
        return out

    def monte_carlo_error(self, rows: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """Monte Carlo standard error of the window mean, on the natural scale."""
        return self.natural_spread(monte_carlo_standard_error(self.working(rows)), estimate)

    def at_boundary(self, row: np.ndarray, *, residual_sd: float) -> np.ndarray:
        """Variance parameters at the edge of their space, as lme4's ``isSingular``
        judges it: an sd below ``1e-4`` of the residual sd, or a correlation of +-1."""
        flags = np.zeros(self.size, dtype=bool)
        sd = self._mask("sd")
        flags[sd] = row[sd] < 1e-4 * residual_sd
        cor = self._mask("cor")
        flags[cor] = np.abs(row[cor]) > 1.0 - 1e-6
        return flags

    def statistical_scale(self, model: MixedModel, row: np.ndarray, *, fixed_scale, posterior_var) -> np.ndarray:
        """Standard errors on the working scale: the yardstick of the stopping rule.

        Fixed effects: ``fixed_scale``.  Log sd of coefficient ``c`` of a term with
        levels ``j``: ``1 / sqrt(2 sum_j r_jc^2)``, where ``r_jc = 1 - v_jc / sd_c^2`` is
        the share of the prior variance the data explain (``v_jc`` the posterior
        variance, from the E-step draws); ``1 / sqrt(2 q)`` when every level is fully
        informed.  Fisher-z of a correlation: ``1 / sqrt(n - 3)`` with ``n`` the
        smaller of its two coefficients' ``sum_j r_jc^2``.  Log residual sd:
        ``1 / sqrt(2 n)``.
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
        scale[self._mask("family")] = 1.0 / np.sqrt(2.0 * model.n_obs)
        return scale


def fixed_effects_scale(model: MixedModel, params: ModelParameters) -> np.ndarray:
    """Standard errors of the fixed effects: exact for the Gaussian family (when the
    dense blocks fit in memory), else the complete-data ones, a lower bound."""
    X = model.fixed_design
    if not X.shape[1]:
        return np.zeros(0)
    if isinstance(model.family, Gaussian):
        try:
            return np.sqrt(np.clip(np.diag(gaussian_marginal(model, params).fixed_effects_cov), 0.0, None))
        except (DenseBlockTooLarge, np.linalg.LinAlgError):
            pass
    sigma = float(params.family_params.get("sigma", 1.0))
    return sigma * np.sqrt(np.clip(np.diag(np.linalg.pinv(X.T @ X)), 0.0, None))


def _pairs(dim: int) -> list[tuple[int, int]]:
    """Coefficient pairs of the correlations, in lme4's order."""
    return [(a, b) for a in range(dim) for b in range(a + 1, dim)]


def _cholesky(cov: np.ndarray) -> np.ndarray:
    cov = 0.5 * (cov + cov.T)
    jitter = 1e-12 * max(float(np.trace(cov)), 1e-300)
    return np.linalg.cholesky(cov + jitter * np.eye(cov.shape[0]))
