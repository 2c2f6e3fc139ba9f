"""The exact fit: a response that the fixed effects reproduce without error.

Its residual variance is zero and the likelihood grows without bound as the residual
sd goes to zero, so there is nothing for Monte Carlo EM to do.  R's ``lm`` returns such
a fit with the warning "essentially perfect fit: summary may be unreliable"; lme4
refuses the data.  :func:`exact_fit` returns lm's fit: the least-squares fixed effects,
every variance (residual and random effects) at zero, and a warning that says so.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

from mixedfx.exceptions import DataWarning
from mixedfx.inference.finish import FinishedFit
from mixedfx.inference.layout import ParameterLayout
from mixedfx.inference.summary import FitSummary
from mixedfx.model import MixedModel

__all__ = ["EXACT_FIT_MESSAGE", "exact_fit"]

#: The fit record's message, and the start of the warning.
EXACT_FIT_MESSAGE = "essentially perfect fit: the fixed effects reproduce the response exactly"


def exact_fit(model: MixedModel, fixed_effects: np.ndarray, *, method: str = "ml",
              stacklevel: int = 2) -> FinishedFit:
    """The finished fit of a response that the fixed effects reproduce exactly.

    Parameters
    ----------
    model : MixedModel
        A model whose :meth:`~mixedfx.model.MixedModel.exact_fixed_effects` is not ``None``.
    fixed_effects : numpy.ndarray of shape (n_fixed,)
        Those coefficients.
    method : str, default "ml"
        Recorded in the fit record (the estimate is the same for ML and REML).
    stacklevel : int, default 2
        Of the warning, counted from this function (2: its caller).

    Returns
    -------
    FinishedFit
        The fixed effects; zero residual sd, random-effect sds, standard errors and
        conditional modes; no log-likelihood (it has no maximum); a fit record of zero
        Monte Carlo EM iterations whose message says why.

    Warns
    -----
    DataWarning
        Always: the fit is exact, and every variance is zero (as lm's "essentially
        perfect fit").

    Examples
    --------
    >>> import numpy as np, pandas as pd, warnings
    >>> from mixedfx import parse_formula
    >>> from mixedfx.design import bind_data
    >>> from mixedfx.model import Gaussian, bind_model
    >>> frame = pd.DataFrame({"x": np.arange(6.0), "g": list("aabbcc")}).assign(y=lambda d: 1.0 + 2.0 * d["x"])
    >>> model = bind_model(Gaussian(), bind_data(parse_formula("y ~ x + (1 | g)"), frame))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     finished = exact_fit(model, model.exact_fixed_effects())
    >>> finished.parameters.fixed_effects.round(6).tolist(), finished.parameters.family_params["sigma"]
    ([1.0, 2.0], 0.0)
    >>> finished.summary.n_iter, str(caught[0].message)[:40]
    (0, 'essentially perfect fit: the fixed effec')
    """
    start = time.perf_counter()
    layout = ParameterLayout.from_model(model)
    row = np.zeros(layout.size)
    row[: layout.n_fixed] = fixed_effects
    n_params = layout.size
    text = (f"{EXACT_FIT_MESSAGE} (zero residuals): the residual variance and the random effects' variances are "
            "zero, and so are the standard errors (R's lm warns the same; lme4 refuses such data). Is the response "
            "also a predictor?")
    warnings.warn(text, DataWarning, stacklevel=stacklevel)
    summary = FitSummary(
        converged=True, message=text, n_iter=0, window_start=None, n_averaged=0, n_draws_averaged=0,
        parameter_names=layout.names, initial=row.copy(), estimate=row, mcse=np.zeros(n_params),
        tolerance=np.zeros(n_params), trace=np.zeros((0, n_params)), objective=np.zeros(0),
        acceptance=np.zeros(0), step_size=np.zeros(0), n_chains=0, n_draws=0, n_leapfrog_steps=0,
        at_boundary=tuple(name for name, kind in zip(layout.names, layout.kinds) if kind in ("sd", "family")),
        elapsed_seconds=time.perf_counter() - start, first_call_seconds=0.0, method=method, e_step="none",
        data_warnings=(text,))
    shapes = [(term.num_levels, term.dim) for term in model.random_terms]
    zero = tuple(np.zeros((dim, dim)) for dim in layout.dims)
    return FinishedFit(
        parameters=dataclasses.replace(layout.parameters(row), random_scale_tril=zero), summary=summary,
        fixed_effects_cov=np.zeros((layout.n_fixed, layout.n_fixed)),
        log_likelihood=None, log_likelihood_se=None, log_likelihood_method=None, log_likelihood_laplace=None,
        conditional_means=tuple(np.zeros(shape) for shape in shapes),
        conditional_covs=tuple(np.zeros(shape + (shape[1],)) for shape in shapes),
        draws=tuple(np.zeros((1, 0) + shape) for shape in shapes),
        boundary_names=summary.at_boundary)
