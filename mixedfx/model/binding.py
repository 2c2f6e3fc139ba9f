"""A family bound to a data set: :func:`bind_model` turns the design layer's
:class:`~mixedfx.design.BoundData` into a :class:`MixedModel`, asking the family to
check the response and the design."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from mixedfx.design.bind import BoundData
from mixedfx.exceptions import DataError, FormulaError, ParameterError
from mixedfx.model.covariance import term_structure
from mixedfx.model.families import Family
from mixedfx.model.joint import MixedModel

__all__ = ["bind_model"]


def bind_model(family: Family, bound: BoundData, *, encode: Callable | None = None) -> MixedModel:
    """The model of ``family`` on the bound data, after the family's checks.

    In order: ``sample_weight`` becomes the prior weights (or, deprecated, the trials of
    a binomial proportion response without ``trials``), ``encode``
    recodes the response (a classifier's labels), the family validates the response
    and refuses a constant one, and a fixed part or a design it cannot fit; then the
    grouping factors and the number of parameters are checked against the rows.

    Parameters
    ----------
    family : Family
    bound : BoundData
        From :func:`mixedfx.design.bind_data`.
    encode : callable, optional
        ``encode(family, response) -> (family, values)``: for a classifier, the
        family fitted to its classes and the response as class codes.

    Returns
    -------
    MixedModel
        Its ``family`` is the one ``encode`` returned.

    Raises
    ------
    DataError, FormulaError, ParameterError
        Naming the response, the term or the parameter.

    Examples
    --------
    >>> import pandas as pd
    >>> from mixedfx.formula import parse_formula
    >>> from mixedfx.design import bind_data
    >>> from mixedfx.model import Gaussian, bind_model
    >>> frame = pd.DataFrame({"y": [1.0, 2.0, 4.0, 3.0, 0.5], "x": [0.0, 1.0, 2.0, 3.0, 1.0], "g": list("ababa")})
    >>> model = bind_model(Gaussian(), bind_data(parse_formula("y ~ x + (1 | g)"), frame))
    >>> model.n_obs, model.fixed_names
    (5, ('Intercept', 'x'))
    >>> bind_model(Gaussian(), bind_data(parse_formula("y ~ x + (1 | g)"), frame.assign(y=1.0)))
    Traceback (most recent call last):
    ...
    mixedfx.exceptions.DataError: Response is constant: every value of 'y' is 1, so there is no variation for the model to explain (lme4 refuses this too)
    """
    raw, trials, name = bound.response, bound.trials, bound.response_name
    if bound.zi_design is not None:
        family = family.zero_inflated(bound.zi_design.column_names)
    if bound.disp_design is not None:
        family = family.with_dispersion_model(bound.disp_design.column_names)
    raw, trials, weights = _weights_and_trials(family, raw, trials, bound.sample_weight)
    if encode is not None:
        family, raw = encode(family, raw)
    response, trials = family.validate_response(raw, trials=trials, name=name)
    family.check_response_values(response if trials is None else response / trials, name)
    family.check_fixed_design(has_intercept=bound.fixed_design.has_intercept, formula=bound.spec.text)
    _check_structures(bound)
    family_design = {key: matrix for key, matrix in (("zi", bound.zi_matrix), ("disp", bound.disp_matrix))
                     if matrix is not None} or None
    model = MixedModel(family, bound.fixed_matrix, response, bound.random_terms, bound.fixed_design.column_names,
                       offset=bound.offset, trials=trials, weights=weights, family_design=family_design)
    if model.exact_fixed_effects() is None:  # an exact fit needs neither (see mixedfx.inference.exact)
        model.check_identifiable()
        _check_enough_rows(model)
    return model


def _check_enough_rows(model: MixedModel) -> None:
    """Refuse fewer rows than parameters (weighted rows counted by their weights,
    except precision weights)."""
    family, weights = model.family, model.weights
    n_fixed = model.fixed_design.shape[1]
    n_variance = sum(term_structure(t).n_params(t.dim) for t in model.random_terms)
    n_family = len(family.parameter_labels())
    n_params = n_fixed + n_variance + n_family
    # an integer weight counts its row that many times, except for precision weights
    n_rows = model.n_obs if weights is None or family.weights_scale_rows else float(np.sum(weights))
    if n_rows <= n_params:
        raise DataError(
            f"{n_rows:g} rows are too few to estimate {n_params} parameters ({n_fixed} fixed "
            f"effects, {n_variance} variance parameters, {n_family} of the family)"
        )


def _check_structures(bound: BoundData) -> None:
    """Each random term's coefficients suit its covariance structure (``ar1`` and
    ``toep`` need one factor of times and no intercept): else a FormulaError at the term."""
    for term in bound.random_design.terms:
        reason = term_structure(term).validate(
            coef_names=term.coef_names, intercept="(Intercept)" in term.coef_names, factor_levels=term.factor_levels)
        if reason is not None:
            raise FormulaError(f"{reason} (term {term.spec.text!r})", formula=bound.spec.text,
                               position=term.spec.position)


def _weights_and_trials(family: Family, raw, trials, sample_weight):
    """``(response, trials, prior weights)``: a proportion response with trials gives
    successes; a binomial proportion with ``sample_weight`` and no trials takes them
    as its trials, with a deprecation warning (glmer's ``prop ~ ..., weights = n``)."""
    if sample_weight is not None and family.weights_are_trials(raw, trials):
        warnings.warn(
            "sample_weight as the trials of a proportion response is deprecated: pass fit(..., trials=n) "
            "(or write cbind(successes, failures)); sample_weight now gives prior weights",
            FutureWarning, stacklevel=4,
        )
        trials, sample_weight = sample_weight, None
    if trials is not None and not family.takes_trial_weights:
        raise ParameterError(f"trials (cbind(successes, failures) or trials=) are for the binomial family, not "
                             f"the {family.name} family")
    if trials is not None:
        values = np.asarray(raw, dtype=np.float64) if np.asarray(raw).dtype.kind in "biuf" else None
        if values is not None and np.all(values <= 1) and np.any(values != np.round(values)):
            raw, trials = family.trials_from_proportion(values, trials)
    return raw, trials, sample_weight
