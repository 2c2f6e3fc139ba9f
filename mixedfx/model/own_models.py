"""The family's own linear models (glmmTMB's ``ziformula`` and ``dispformula``): the
questions every family answers about them, as a mixin of
:class:`~mixedfx.model.Family`; the wrappers are
:class:`~mixedfx.model.ZeroInflated` and :class:`~mixedfx.model.DispersionModel`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mixedfx.exceptions import ParameterError

if TYPE_CHECKING:
    from mixedfx.model.families import Family

__all__ = ["OwnLinearModels"]


class OwnLinearModels:
    """Mixin of :class:`~mixedfx.model.Family`: zero inflation and a dispersion model."""

    #: Whether the family takes a zero-inflation model (glmmTMB's ``ziformula``; a count
    #: family whose own per-row data are none, see :meth:`zero_inflated`).
    zero_inflatable: ClassVar[bool] = False
    #: A dispersion model (glmmTMB's ``dispformula``): the family's log ``dispersion`` is
    #: this times glmmTMB's dispersion linear predictor (-1 for Gamma, whose glmmTMB
    #: coefficients are its log shape, ``1 / dispersion``).
    glmmtmb_dispersion_power: ClassVar[float] = 1.0

    @property
    def dispersion_parameter(self) -> str | None:
        """The parameter a dispersion model (``dispformula``) gives each row: ``"dispersion"``
        where the family has one (the Gaussian and t families: ``"sigma"``); ``None``: no
        dispersion model."""
        return "dispersion" if "dispersion" in self.parameter_names else None

    # -- the linear predictors random terms may enter ------------------------------------------
    def linear_predictors(self) -> tuple[str, ...]:
        """The linear predictors that random terms may enter: ``"cond"`` (the family's own
        ``linear_predictor``) always; a zero-inflated family's ``"zi"`` too (glmmTMB's
        random terms in the ``ziformula``).

        Examples
        --------
        >>> from mixedfx.model import Poisson
        >>> Poisson().linear_predictors(), Poisson().zero_inflated(("Intercept",)).linear_predictors()
        (('cond',), ('cond', 'zi'))
        """
        return ("cond",)

    def with_predictor_offsets(self, parameters: Mapping, offsets: Mapping) -> Mapping:
        """``parameters`` with the random parts of the family's own linear predictors
        (``offsets``: per key of :meth:`linear_predictors` but ``"cond"``, a per-row tensor,
        leading sample dimensions allowed), in the form the family's methods read; the
        parameters themselves when there are none.  A ParameterError for a key the family
        has no linear predictor of.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import Poisson
        >>> Poisson().with_predictor_offsets({}, {})
        {}
        >>> Poisson().with_predictor_offsets({}, {"zi": np.zeros(2)})
        Traceback (most recent call last):
        ...
        mixedfx.exceptions.ParameterError: the poisson family has no 'zi' linear predictor for random terms (it has: cond)
        """
        extra = [key for key in offsets if key not in self.linear_predictors() or key == "cond"]
        if extra:
            raise ParameterError(f"the {self.name} family has no {extra[0]!r} linear predictor for random terms (it "
                                 f"has: {', '.join(self.linear_predictors())})")
        return parameters

    # -- zero inflation (glmmTMB's ziformula) ------------------------------------------------
    def zero_inflated(self, zi_names) -> "Family":
        """This family with a zero-inflation model whose design has columns ``zi_names``
        (:class:`~mixedfx.model.zero_inflation.ZeroInflated`); a ParameterError for a family
        that takes none.

        Examples
        --------
        >>> from mixedfx.model import Gaussian, Poisson
        >>> str(Poisson().zero_inflated(("Intercept",)))
        'zero-inflated poisson (log link)'
        >>> Gaussian().zero_inflated(("Intercept",))
        Traceback (most recent call last):
        ...
        mixedfx.exceptions.ParameterError: ziformula (zero inflation) is for the families poisson, negative_binomial (nbinom2), nbinom1 and binomial, not gaussian
        """
        if not self.zero_inflatable:
            raise ParameterError("ziformula (zero inflation) is for the families poisson, negative_binomial "
                                 f"(nbinom2), nbinom1 and binomial, not {self.name}")
        from mixedfx.model.zero_inflation import ZeroInflated

        return ZeroInflated(self, tuple(zi_names))

    def with_dispersion_model(self, disp_names) -> "Family":
        """This family with its ``dispersion`` a log-linear model of a design whose columns
        are ``disp_names`` (glmmTMB's ``dispformula``;
        :class:`~mixedfx.model.dispersion_model.DispersionModel`); a ParameterError for a
        family without a :attr:`dispersion_parameter` (or with trials).

        Examples
        --------
        >>> from mixedfx.model import Poisson
        >>> Poisson().with_dispersion_model(("Intercept", "z"))
        Traceback (most recent call last):
        ...
        mixedfx.exceptions.ParameterError: dispformula is for families with a dispersion parameter (nbinom2, nbinom1, Gamma, beta, gaussian, t, zero-inflated nbinom2 and nbinom1), not poisson
        """
        if self.dispersion_parameter is None or self.takes_trial_weights:
            raise ParameterError("dispformula is for families with a dispersion parameter (nbinom2, nbinom1, Gamma, "
                                 f"beta, gaussian, t, zero-inflated nbinom2 and nbinom1), not {self.name}")
        from mixedfx.model.dispersion_model import DispersionModel

        return DispersionModel(self, tuple(disp_names))

    def coefficient_block(self):
        """``(key, column names)`` of the family's own linear model (``("zi", ...)`` for zero
        inflation, ``("disp", ...)`` for a dispersion model), the last of its free
        parameters; ``None`` here."""
        return None

    def coefficient_blocks(self) -> tuple:
        """Every ``(key, column names)`` of the family's own linear models, in the order of
        its free parameters, at their end (zero inflation's, then a dispersion model's)."""
        block = self.coefficient_block()
        return () if block is None else (block,)

    @staticmethod
    def own_design(design, key: str):
        """The design of the own linear model ``key`` (``"zi"``, ``"disp"``) out of the
        model's family designs: a mapping from the keys, or one matrix (one model)."""
        return design[key] if isinstance(design, Mapping) else design

    def row_data(self, *, trials, design):
        """The per-row data that the family's methods take as ``trials=``: the binomial
        trials here (``None`` for most families); a zero-inflated family's design."""
        return trials

    def zero_probability(self, design, parameters: Mapping[str, object]) -> np.ndarray:
        """Each row's probability of a structural zero (glmmTMB's ``predict(type="zprob")``):
        none here."""
        return np.zeros(np.shape(design)[0])

    def r2_refusal(self) -> str | None:
        """Why r2 and the ICC are not defined for this family (``None``: they are): a
        zero-inflated, hurdle or truncated response, or a per-row dispersion, has no single
        distribution-specific variance."""
        return None

    # -- the response's distribution given the linear predictor and the family's per-row data ----
    def response_mean(self, linear_predictor, parameters: Mapping[str, object], *, rows=None) -> np.ndarray:
        """The mean of the response (glmmTMB's ``predict(type = "response")``), given each
        row's linear predictor and the family's per-row data ``rows``
        (:meth:`row_data`): :meth:`~mixedfx.model.Family.mean` here; ``(1 - pi)`` times
        the count part's with zero inflation or a hurdle.

        Examples
        --------
        >>> import numpy as np
        >>> from mixedfx.model import Poisson
        >>> family = Poisson().zero_inflated(("Intercept",))
        >>> family.response_mean(np.log([4.0]), {"zi": np.array([0.0])}, rows=np.ones((1, 1))).tolist()
        [2.0]
        """
        return self.mean(linear_predictor, parameters)

    def conditional_mean(self, linear_predictor, parameters: Mapping[str, object], *, rows=None) -> np.ndarray:
        """The mean of the count part (glmmTMB's ``predict(type = "conditional")``): the
        response's mean without zero inflation; ``mu`` with it; a hurdle's truncated mean."""
        return self.response_mean(linear_predictor, parameters, rows=rows)

    def response_variance(self, linear_predictor, parameters: Mapping[str, object], *, rows=None) -> np.ndarray:
        """The variance of the response (for Pearson residuals): :meth:`~mixedfx.model.Family.variance`
        at the mean, with ``rows`` as the trials, here."""
        return self.variance(self.mean(linear_predictor, parameters), parameters, trials=rows)

    def response_quantile_at(self, linear_predictor, q: float, parameters: Mapping[str, object], *,
                             rows=None) -> np.ndarray:
        """Quantile ``q`` of the response (prediction intervals):
        :meth:`~mixedfx.model.Family.response_quantile` at the mean here."""
        return self.response_quantile(self.mean(linear_predictor, parameters), q, parameters)
