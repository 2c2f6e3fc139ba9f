"""A log-linear dispersion: glmmTMB's ``dispformula``, one family that wraps a family with
one ``dispersion`` parameter.

Row ``i``'s dispersion is ``exp(power * X_disp[i] @ disp)``, ``power`` the family's
:attr:`~mixedfx.model.Family.glmmtmb_dispersion_power` (so that ``disp`` are glmmTMB's
``fixef(fit)$disp``: log size for nbinom2, log shape for Gamma, log precision for
beta, log phi for nbinom1).  As for :class:`~mixedfx.model.ZeroInflated`, the design
travels as the family's per-row data and is built by the design layer; the coefficients
are the family's own parameters, estimated in the M-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixedfx._tf import tf
from mixedfx.model.families import Family

__all__ = ["DispersionModel"]


@dataclass(frozen=True)
class DispersionModel(Family):
    """A family whose dispersion is a log-linear model of a design: glmmTMB's ``dispformula``.

    Parameters
    ----------
    base : Family
        A family whose only own parameter is ``dispersion`` (nbinom2, nbinom1, Gamma, beta).
    disp_names : tuple of str
        Names of the dispersion design's columns.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Gamma, NegativeBinomial
    >>> family = NegativeBinomial().with_dispersion_model(("Intercept", "z"))
    >>> family.parameter_labels()
    ('disp~(Intercept)', 'disp~z')
    >>> design, params = np.array([[1.0, 0.0], [1.0, 1.0]]), {"disp": np.array([np.log(2.0), np.log(3.0)])}
    >>> family.row_dispersion(design, params).round(6).tolist()  # nbinom2's size
    [2.0, 6.0]
    >>> Gamma().with_dispersion_model(("Intercept",)).row_dispersion(design[:, :1], {"disp": np.array([np.log(4.0)])})
    array([0.25, 0.25])
    """

    base: Family
    disp_names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def glmmtmb_name(self) -> str:
        return self.base.glmmtmb_name

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return ("disp",)

    @property
    def has_dispersion(self) -> bool:
        return self.base.has_dispersion

    @property
    def link(self) -> str:
        return self.base.link

    #: Pearson residuals would need each row's dispersion, which variance() is not given.
    has_residuals = False

    def __str__(self) -> str:
        return f"{self.base} with a dispersion model"

    def coefficient_block(self):
        return "disp", self.disp_names

    def row_data(self, *, trials, design):
        return design

    def row_dispersion(self, design, parameters) -> np.ndarray:
        """Each row's ``dispersion`` (the base family's parametrisation), numpy."""
        linear = np.asarray(design, dtype=np.float64) @ np.asarray(parameters["disp"], dtype=np.float64)
        return np.exp(self.base.glmmtmb_dispersion_power * linear)

    def _natural(self, design, parameters, dtype):
        design = tf.cast(tf.convert_to_tensor(design), dtype)
        coefficients = tf.cast(tf.convert_to_tensor(parameters["disp"]), dtype)
        power = tf.constant(self.base.glmmtmb_dispersion_power, dtype)
        return {"dispersion": tf.exp(power * tf.linalg.matvec(design, coefficients))}

    def distribution(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        return self.base.distribution(eta, self._natural(trials, parameters, eta.dtype))

    def log_prob(self, linear_predictor, parameters, response, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        return self.base.log_prob(eta, self._natural(trials, parameters, eta.dtype), response)

    def fisher_weight(self, linear_predictor, parameters, *, trials=None):
        eta = tf.convert_to_tensor(linear_predictor)
        return self.base.fisher_weight(eta, self._natural(trials, parameters, eta.dtype))

    def mean(self, linear_predictor, parameters=None):
        return self.base.mean(linear_predictor, parameters)

    def constrain(self, free):
        return {"disp": free}

    def initial_free(self, response, linear_predictor, *, trials=None):
        start = np.zeros(len(self.disp_names))
        if "Intercept" in self.disp_names:
            log_dispersion = float(self.base.initial_free(response, linear_predictor)[0])
            start[self.disp_names.index("Intercept")] = log_dispersion / self.base.glmmtmb_dispersion_power
        return start

    def free_from_parameters(self, parameters):
        return np.atleast_1d(np.asarray(parameters["disp"], dtype=np.float64))

    def parameter_values(self, parameters):
        return np.atleast_1d(np.asarray(parameters["disp"], dtype=np.float64))

    def parameters_from_values(self, values):
        return {"disp": np.atleast_1d(np.asarray(values, dtype=float))}

    def parameter_labels(self):
        return tuple("disp~" + ("(Intercept)" if name == "Intercept" else name) for name in self.disp_names)

    def positive_parameters(self):
        return (False,) * len(self.disp_names)

    def parameter_scale(self, values, response, n_obs):
        return np.full(len(values), 2.0 / np.sqrt(n_obs))  # a log dispersion's, about

    def validate_response(self, response, *, trials=None, name):
        return self.base.validate_response(response, trials=trials, name=name)

    def check_response_values(self, values, name):
        self.base.check_response_values(values, name)

    def parameter_lines(self, parameters):
        return []
