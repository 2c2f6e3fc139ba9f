"""A log-linear dispersion: glmmTMB's ``dispformula``, one family that wraps a family with
a dispersion parameter.

Row ``i``'s dispersion parameter (the base family's
:attr:`~mixedfx.model.Family.dispersion_parameter`: ``dispersion``, or ``sigma`` for the
Gaussian and t families) is ``exp(power * X_disp[i] @ disp)``, ``power`` the family's
:attr:`~mixedfx.model.Family.glmmtmb_dispersion_power` (so that ``disp`` are glmmTMB's
``fixef(fit)$disp``: log size for nbinom2, log shape for Gamma, log precision for
beta, log phi for nbinom1, log sigma for the Gaussian and t).  The base family's other
parameters (t's ``df``, zero inflation's ``zi``) stay its own: the wrapper's free vector
is the base family's without the driven parameter, then ``disp``.  As for
:class:`~mixedfx.model.ZeroInflated`, the design travels as the family's per-row data
(its columns first, then the base family's own per-row data) and is built by the design
layer; the coefficients are estimated in the M-step.

A Gaussian with a dispersion model is a heteroscedastic LMM: not
:attr:`~mixedfx.model.Family.conjugate_gaussian`, it is fitted by the generic path (no
REML, no closed-form M-step, no exact-fit shortcut), and its prior weights stay
precisions (row ``i``'s sd ``sigma_i / sqrt(w_i)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixedfx._tf import tf
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.model.families import Family

__all__ = ["DispersionModel"]


@dataclass(frozen=True)
class DispersionModel(Family):
    """A family whose dispersion is a log-linear model of a design: glmmTMB's ``dispformula``.

    Parameters
    ----------
    base : Family
        A family with a :attr:`~mixedfx.model.Family.dispersion_parameter` (nbinom2,
        nbinom1, Gamma, beta, Gaussian, t, or a zero-inflated nbinom2 or nbinom1).
    disp_names : tuple of str
        Names of the dispersion design's columns.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Gamma, NegativeBinomial, StudentT
    >>> family = NegativeBinomial().with_dispersion_model(("Intercept", "z"))
    >>> family.parameter_labels()
    ('disp~(Intercept)', 'disp~z')
    >>> design, params = np.array([[1.0, 0.0], [1.0, 1.0]]), {"disp": np.array([np.log(2.0), np.log(3.0)])}
    >>> family.row_dispersion(design, params).round(6).tolist()  # nbinom2's size
    [2.0, 6.0]
    >>> Gamma().with_dispersion_model(("Intercept",)).row_dispersion(design[:, :1], {"disp": np.array([np.log(4.0)])})
    array([0.25, 0.25])
    >>> StudentT().with_dispersion_model(("Intercept",)).parameter_labels()  # t's df stays its own
    ('df', 'disp~(Intercept)')
    """

    base: Family
    disp_names: tuple[str, ...]

    #: Pearson residuals would need each row's dispersion, which variance() is not given.
    has_residuals = False

    # -- what the family is -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.base.name

    @property
    def glmmtmb_name(self) -> str:
        return self.base.glmmtmb_name

    @property
    def driven(self) -> str:
        """The base family's parameter that the dispersion model gives each row."""
        return self.base.dispersion_parameter

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return (*(name for name in self.base.parameter_names if name != self.driven), "disp")

    @property
    def has_dispersion(self) -> bool:
        return self.base.has_dispersion

    @property
    def weights_scale_rows(self) -> bool:
        return self.base.weights_scale_rows

    @property
    def boundary_candidate_sd(self) -> float:
        return self.base.boundary_candidate_sd

    @property
    def link(self) -> str:
        return self.base.link

    def __str__(self) -> str:
        return f"{self.base} with a dispersion model"

    def coefficient_block(self):
        return "disp", self.disp_names

    def linear_predictors(self) -> tuple[str, ...]:
        """The base family's (random terms do not enter the dispersion model)."""
        return self.base.linear_predictors()

    def with_predictor_offsets(self, parameters, offsets):
        """The base family's (its parameters pass through :meth:`_natural`)."""
        return self.base.with_predictor_offsets(parameters, offsets)

    def coefficient_blocks(self):
        return (*self.base.coefficient_blocks(), ("disp", self.disp_names))

    # -- the per-row data: the dispersion design, then the base family's ---------------------------
    def _base_has_rows(self) -> bool:
        return bool(self.base.coefficient_blocks())

    def row_data(self, *, trials, design):
        own = np.asarray(self.own_design(design, "disp"), dtype=np.float64)
        if not self._base_has_rows():
            return own
        return np.column_stack([own, self.base.row_data(trials=trials, design=design)])

    def _split(self, rows, dtype):
        """``(the dispersion design, the base family's per-row data or None)``."""
        rows = tf.cast(tf.convert_to_tensor(rows), dtype)
        k = len(self.disp_names)
        return rows[..., :k], (rows[..., k:] if self._base_has_rows() else None)

    def row_dispersion(self, design, parameters) -> np.ndarray:
        """Each row's dispersion parameter (the base family's parametrisation), numpy,
        from its dispersion design row."""
        design = np.asarray(design, dtype=np.float64)[:, :len(self.disp_names)]
        linear = design @ np.asarray(parameters["disp"], dtype=np.float64)
        return np.exp(self.base.glmmtmb_dispersion_power * linear)

    def _natural(self, rows, parameters, dtype):
        """``(the base family's parameters with each row's driven one, its per-row data)``."""
        design, base_rows = self._split(rows, dtype)
        coefficients = tf.cast(tf.convert_to_tensor(parameters["disp"]), dtype)
        power = tf.constant(self.base.glmmtmb_dispersion_power, dtype)
        natural = {key: value for key, value in parameters.items() if key != "disp"}
        natural[self.driven] = tf.exp(power * tf.linalg.matvec(design, coefficients))
        return natural, base_rows

    # -- the likelihood ---------------------------------------------------------------------------
    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        natural, base_rows = self._natural(trials, parameters, eta.dtype)
        return self.base.distribution(eta, natural, trials=base_rows)

    def log_prob(self, linear_predictor, parameters, response, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        natural, base_rows = self._natural(trials, parameters, eta.dtype)
        return self.base.log_prob(eta, natural, response, trials=base_rows)

    def weighted_log_prob(self, linear_predictor, parameters, response, *, trials=None, weights=None):
        """The base family's weighting (the Gaussian's precision weights, else ``w`` times the
        row's log-likelihood) at each row's dispersion."""
        eta = tf.convert_to_tensor(linear_predictor)
        natural, base_rows = self._natural(trials, parameters, eta.dtype)
        return self.base.weighted_log_prob(eta, natural, response, trials=base_rows, weights=weights)

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        natural, base_rows = self._natural(trials, parameters, eta.dtype)
        return self.base.fisher_weight(eta, natural, trials=base_rows)

    def mean(self, linear_predictor, parameters=None):
        return self.base.mean(linear_predictor, parameters)

    def variance(self, mean, parameters, *, trials=None):
        """Refused: the variance depends on each row's dispersion (so there is no single
        distribution-specific variance for r2 or the ICC)."""
        raise ParameterError(f"the {self.name} family with a dispersion model (dispformula) has a variance per "
                             "row, not one: r2, the ICC and Pearson residuals are not defined for it")

    def r2_refusal(self) -> str:
        """Each row has its own dispersion, so no one distribution-specific variance."""
        return (f"the {self.name} family with a dispersion model (dispformula) has a variance per row, not one: r2 "
                "and the ICC are not defined for it")

    def exact_fit(self, fixed_design, response, offset):
        """Refused where the base family would fit exactly (zero residuals): the
        dispersion model's coefficients would run to minus infinity."""
        if self.base.exact_fit(fixed_design, response, offset) is not None:
            raise DataError("the fixed effects reproduce the response exactly (zero residuals): a dispersion model "
                            "(dispformula) has no finite estimate there; fit without dispformula for lm's exact fit")
        return None

    def zero_probability(self, design, parameters) -> np.ndarray:
        """The base family's (``design``: the zero-inflation design)."""
        return self.base.zero_probability(design, parameters)

    def _numpy_natural(self, rows, parameters):
        """numpy's :meth:`_natural`: the base family's parameters with each row's driven one,
        and the base family's per-row data (or None)."""
        rows = np.asarray(rows, dtype=np.float64)
        natural = {key: value for key, value in parameters.items() if key != "disp"}
        natural[self.driven] = self.row_dispersion(rows, parameters)
        return natural, (rows[:, len(self.disp_names):] if self._base_has_rows() else None)

    def response_mean(self, linear_predictor, parameters, *, rows=None):
        """The base family's response mean at each row's dispersion (a zero-inflated
        base's ``(1 - pi) mu``; a hurdle's truncated mean depends on the dispersion)."""
        natural, base_rows = self._numpy_natural(rows, parameters)
        return self.base.response_mean(linear_predictor, natural, rows=base_rows)

    def conditional_mean(self, linear_predictor, parameters, *, rows=None):
        """The base family's conditional mean at each row's dispersion."""
        natural, base_rows = self._numpy_natural(rows, parameters)
        return self.base.conditional_mean(linear_predictor, natural, rows=base_rows)

    # -- the family's own parameters: the base family's but the driven one, then disp ---------------
    def _index(self) -> int:
        """Where the driven parameter sits in the base family's free vector."""
        return self.base.parameter_labels().index(self.driven)

    def _with_driven(self, values, fill):
        """The base family's vector: ``values`` (numpy) with ``fill`` where the driven one goes."""
        return np.insert(np.asarray(values, dtype=np.float64), self._index(), fill)

    def _n_rest(self) -> int:
        return len(self.base.parameter_labels()) - 1

    def constrain(self, free):
        i, n = self._index(), self._n_rest()
        full = tf.concat([free[:i], tf.zeros([1], free.dtype), free[i:n]], axis=0)
        natural = {key: value for key, value in self.base.constrain(full).items() if key != self.driven}
        return {**natural, "disp": free[n:]}

    def initial_free(self, response, linear_predictor, *, trials=None):
        base_rows = None if trials is None or not self._base_has_rows() else \
            np.asarray(trials)[:, len(self.disp_names):]
        full = self.base.initial_free(response, linear_predictor, trials=base_rows)
        start = np.zeros(len(self.disp_names))
        if "Intercept" in self.disp_names:
            start[self.disp_names.index("Intercept")] = full[self._index()] / self.base.glmmtmb_dispersion_power
        return np.concatenate([np.delete(full, self._index()), start])

    def _base_parameters(self, parameters):
        natural = {key: value for key, value in parameters.items() if key != "disp"}
        return {**natural, self.driven: 1.0}

    def free_from_parameters(self, parameters):
        rest = np.delete(self.base.free_from_parameters(self._base_parameters(parameters)), self._index())
        return np.concatenate([rest, np.atleast_1d(np.asarray(parameters["disp"], dtype=np.float64))])

    def parameter_values(self, parameters):
        rest = np.delete(self.base.parameter_values(self._base_parameters(parameters)), self._index())
        return np.concatenate([rest, np.atleast_1d(np.asarray(parameters["disp"], dtype=np.float64))])

    def parameters_from_values(self, values):
        values = np.atleast_1d(np.asarray(values, dtype=float))
        n = self._n_rest()
        natural = self.base.parameters_from_values(self._with_driven(values[:n], 1.0))
        natural.pop(self.driven)
        return {**natural, "disp": values[n:]}

    def parameter_labels(self):
        rest = tuple(label for label in self.base.parameter_labels() if label != self.driven)
        return (*rest, *("disp~" + ("(Intercept)" if name == "Intercept" else name) for name in self.disp_names))

    def positive_parameters(self):
        rest = list(self.base.positive_parameters())
        del rest[self._index()]
        return (*rest, *(False,) * len(self.disp_names))

    def parameter_scale(self, values, response, n_obs):
        n = self._n_rest()
        rest = np.delete(self.base.parameter_scale(self._with_driven(values[:n], 1.0), response, n_obs),
                         self._index())
        return np.concatenate([rest, np.full(len(values) - n, 2.0 / np.sqrt(n_obs))])  # a log dispersion's, about

    def validate_response(self, response, *, trials=None, name):
        return self.base.validate_response(response, trials=trials, name=name)

    def check_response_values(self, values, name):
        self.base.check_response_values(values, name)

    def parameter_lines(self, parameters):
        """The base family's scalar parameters but the driven one (t's df; the summary
        prints the dispersion and zero-inflation tables itself)."""
        blocks = {key for key, _ in self.base.coefficient_blocks()}
        return [f"{name}: {float(parameters[name]):.4g}" for name in self.parameter_names
                if name != "disp" and name not in blocks]
