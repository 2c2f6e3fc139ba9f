"""Response families.

A family owns its likelihood, link, inverse link, mean, the constraints of its own
parameters (the residual sd for the Gaussian) and the checks on the response.  The
joint-distribution builder and the inference layer only ask it.  Families hold no
TensorFlow state: they are small frozen values, safe to pickle and to compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mixedfx._tf import tf, tfb, tfd
from mixedfx.exceptions import DataError, ParameterError

__all__ = ["Family", "Gaussian", "get_family", "FAMILIES"]


@dataclass(frozen=True)
class Family:
    """Base class of response families.

    Subclasses set :attr:`name`, :attr:`link` and :attr:`parameter_names`, and
    implement :meth:`distribution`, :meth:`inverse_link`, :meth:`fisher_weight`,
    :meth:`parameter_bijectors` and :meth:`validate_response`.
    """

    name: ClassVar[str] = "family"
    link: ClassVar[str] = "identity"
    #: Names of the family's own parameters, estimated in the M-step.
    parameter_names: ClassVar[tuple[str, ...]] = ()
    #: Whether the family has a free dispersion, so that a grouping factor with one
    #: level per row is confounded with the residual (lme4 refuses such lmer fits).
    has_dispersion: ClassVar[bool] = False

    def distribution(self, linear_predictor, parameters: Mapping[str, tf.Tensor]) -> tfd.Distribution:
        """Distribution of the response given the linear predictor (batch over rows)."""
        raise NotImplementedError

    def inverse_link(self, linear_predictor: np.ndarray) -> np.ndarray:
        """Mean of the response on its own scale (numpy)."""
        raise NotImplementedError

    def fisher_weight(self, linear_predictor, parameters: Mapping[str, tf.Tensor]):
        """Expected information per row about the linear predictor."""
        raise NotImplementedError

    def parameter_bijectors(self) -> dict[str, tfb.Bijector]:
        """Bijectors from unconstrained reals onto each family parameter's support."""
        return {}

    def validate_response(self, response: np.ndarray, *, name: str) -> np.ndarray:
        """Check the response values; returns them as float64."""
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.name} ({self.link} link)"


@dataclass(frozen=True)
class Gaussian(Family):
    """Normal response with identity link and a learned residual sd ``sigma``.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.model import Gaussian
    >>> family = Gaussian()
    >>> family.parameter_names
    ('sigma',)
    >>> family.inverse_link(np.array([0.5, 2.0])).tolist()
    [0.5, 2.0]
    """

    name: ClassVar[str] = "gaussian"
    link: ClassVar[str] = "identity"
    parameter_names: ClassVar[tuple[str, ...]] = ("sigma",)
    has_dispersion: ClassVar[bool] = True

    def distribution(self, linear_predictor, parameters):
        return tfd.Normal(loc=linear_predictor, scale=parameters["sigma"])

    def inverse_link(self, linear_predictor):
        return np.asarray(linear_predictor, dtype=np.float64)

    def fisher_weight(self, linear_predictor, parameters):
        sigma = tf.convert_to_tensor(parameters["sigma"], dtype=linear_predictor.dtype)
        return tf.ones_like(linear_predictor) / tf.square(sigma)

    def parameter_bijectors(self):
        return {"sigma": tfb.Exp()}

    def validate_response(self, response, *, name):
        values = np.asarray(response)
        if values.dtype.kind not in "biuf":
            raise DataError(
                f"the response {name!r} must be numeric for the gaussian family, got dtype {values.dtype}"
            )
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise DataError(f"the response {name!r} has {bad} non-finite value(s) (NaN or inf)")
        return values


FAMILIES: dict[str, type[Family]] = {"gaussian": Gaussian}


def get_family(family: str | Family) -> Family:
    """Resolve a family name or instance.

    Examples
    --------
    >>> from mixedfx.model import get_family
    >>> get_family("gaussian")
    Gaussian()
    """
    if isinstance(family, Family):
        return family
    if isinstance(family, str) and family.lower() in FAMILIES:
        return FAMILIES[family.lower()]()
    raise ParameterError(
        f"unknown family {family!r}; supported: {', '.join(sorted(FAMILIES))}"
    )
