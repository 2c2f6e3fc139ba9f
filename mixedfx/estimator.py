"""scikit-learn estimators for mixed-effects models, and the one-line ``lmer``/``glmer`` calls.

The estimators are the top layer: they parse the formula, build the designs, bind
them into a :class:`~mixedfx.model.MixedModel`, fit it with
:func:`~mixedfx.inference.fit_mcem`, and expose the results as pandas objects named
the way lme4 names them.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from mixedfx.design import NEW_LEVEL_POLICIES, RandomDesign, ResponseDesign, build_fixed_design
from mixedfx.exceptions import ConvergenceWarning, DataError, FormulaError, ParameterError
from mixedfx.formula import parse_formula
from mixedfx.inference import MCEMOptions, MonteCarloErrorRule, fit_mcem
from mixedfx.inference.layout import fixed_effects_covariance
from mixedfx.model import (
    DenseBlockTooLarge,
    Gaussian,
    MixedModel,
    ModelParameters,
    Ordinal,
    build_joint_distribution,
    get_family,
    marginal_log_likelihood,
)
from mixedfx.report import format_summary

__all__ = ["MixedEffectsRegressor", "MixedEffectsClassifier", "lmer", "glmer"]


class _MixedEffectsModel(BaseEstimator):
    """What the regressor and the classifier share: fitting, designs and outputs."""

    #: Family names this estimator accepts.
    _families: tuple[str, ...] = ()

    # -- scikit-learn plumbing ---------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False  # the response can come from the formula
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        tags.non_deterministic = self.random_state is None
        return tags

    def _validate_params(self):
        if not isinstance(self.formula, str):
            raise ParameterError(
                f"formula must be an lme4 formula string such as 'y ~ x + (1 | g)', got {self.formula!r}"
            )
        if self.new_levels not in NEW_LEVEL_POLICIES:
            raise ParameterError(f"new_levels must be one of {NEW_LEVEL_POLICIES}, got {self.new_levels!r}")
        for name, low in (("max_iter", 1), ("n_chains", 1), ("n_draws", 1), ("n_leapfrog_steps", 1)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ParameterError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.tol, numbers.Real) or isinstance(self.tol, bool) or not self.tol > 0:
            raise ParameterError(f"tol must be a positive number, got {self.tol!r}")
        if self.stopping_rule is not None and not callable(getattr(self.stopping_rule, "assess", None)):
            raise ParameterError("stopping_rule must have an assess(trace, *, window_start, scale, frozen) method")
        if not isinstance(self.verbose, numbers.Integral):
            raise ParameterError(f"verbose must be an integer, got {self.verbose!r}")
        family = get_family(self.family)
        if family.name not in self._families:
            other = "MixedEffectsClassifier" if family.is_classification else "MixedEffectsRegressor"
            raise ParameterError(
                f"{type(self).__name__} fits the families {', '.join(self._families)}; "
                f"use {other} for family={family.name!r}"
            )
        return family

    # -- fitting ------------------------------------------------------------------------
    def _prepare_response(self, family, raw, trials):
        """Hook for the classifier's label encoding; returns ``(family, values)``."""
        return family, raw

    def fit(self, X, y=None, sample_weight=None):
        """Fit the model.

        Parameters
        ----------
        X : pandas.DataFrame
            The data: every column the formula names.
        y : array-like of shape (n_rows,), optional
            The response.  When omitted, it is the formula's left-hand side evaluated
            on ``X`` (``cbind(successes, failures)`` for a binomial response).
        sample_weight : array-like of shape (n_rows,), optional
            Binomial family only: the number of trials of each row, with the response
            given as a proportion (glmer's ``weights=``).

        Returns
        -------
        self
        """
        family = self._validate_params()
        spec = parse_formula(self.formula)
        if not spec.random:
            raise FormulaError(
                "No random effects terms specified in formula: add at least one term such as "
                "'(1 | g)' (for a model without random effects use a fixed-effects regressor)",
                formula=spec.text,
            )
        data = _check_frame(X)
        if y is None and spec.response is None:
            raise DataError("the formula has no response (left-hand side) and no y was given to fit")
        response_design = None if y is not None else ResponseDesign.from_text(spec.response)
        if y is not None:
            raw, trials = np.asarray(y), None
            if raw.ndim != 1 or raw.shape[0] != len(data):
                raise DataError(f"y must be one-dimensional with {len(data)} values, got shape {raw.shape}")
            response_name = "y"
        else:
            raw, trials = response_design.evaluate(data)
            response_name = spec.response
        if sample_weight is not None:
            if family.name != "binomial":
                raise ParameterError(
                    "sample_weight is supported for the binomial family only (as the trials of a proportion response)"
                )
            if trials is not None:
                raise DataError("give the trials either by cbind(successes, failures) or by sample_weight, not both")
            trials = np.asarray(sample_weight, dtype=np.float64)
            if trials.shape != (len(data),):
                raise DataError(f"sample_weight must hold {len(data)} values, got shape {trials.shape}")
            raw = np.round(np.asarray(raw, dtype=np.float64) * trials, 8)
        family, raw = self._prepare_response(family, raw, trials)
        response, trials = family.validate_response(raw, trials=trials, name=response_name)
        fixed_design, X_fixed = build_fixed_design(spec.fixed, data, offsets=spec.offsets)
        if isinstance(family, Ordinal) and not fixed_design.has_intercept:
            raise FormulaError(
                "an ordinal model's cutpoints take the place of the intercept; keep the intercept in the formula "
                "(it is reported as the cutpoints, not as a fixed effect)",
                formula=spec.text,
            )
        random_design = RandomDesign.from_spec(spec, data)
        terms = random_design.materialize(data, new_levels="error")
        model = MixedModel(family, X_fixed, response, terms, fixed_design.column_names,
                           offset=fixed_design.offset(data), trials=trials)
        model.check_identifiable()
        n_params = X_fixed.shape[1] + len(terms) + len(family.parameter_labels())
        if model.n_obs <= n_params:
            raise DataError(f"{model.n_obs} rows are too few to estimate {n_params} parameters")

        seed = check_random_state(self.random_state).randint(0, 2**31 - 1, size=2)
        options = MCEMOptions(
            n_chains=self.n_chains,
            n_draws=self.n_draws,
            n_leapfrog_steps=self.n_leapfrog_steps,
            max_iter=self.max_iter,
        )
        rule = self.stopping_rule if self.stopping_rule is not None else MonteCarloErrorRule(tol=float(self.tol))
        result = fit_mcem(model, options=options, stopping_rule=rule, seed=seed, progress=self.verbose > 0)

        self.formula_spec_ = spec
        self.family_ = family
        self.response_design_ = response_design
        self.fixed_design_ = fixed_design
        self.random_design_ = random_design
        self.n_obs_ = model.n_obs
        self.fit_summary_ = result.summary
        self._store_estimates(model, result, seed=int(seed[0]))
        if not result.summary.converged:
            warnings.warn(
                f"Monte Carlo EM did not converge in {result.summary.n_iter} iterations "
                f"({result.summary.message}); the estimates average the last "
                f"{result.summary.n_averaged} iterations. Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _store_estimates(self, model: MixedModel, result, *, seed: int) -> None:
        params = result.parameters
        self.model_parameters_ = params
        family = self.family_
        names = list(model.fixed_names)
        beta = np.asarray(params.fixed_effects, dtype=float)
        try:
            likelihood = marginal_log_likelihood(model, params, seed=seed, start=result.random_effects)
            self.log_likelihood_ = likelihood.log_likelihood
            self.log_likelihood_se_ = likelihood.standard_error
            self.log_likelihood_method_ = likelihood.method
        except DenseBlockTooLarge as exc:
            warnings.warn(f"log-likelihood not computed: {exc}", UserWarning, stacklevel=3)
            self.log_likelihood_, self.log_likelihood_se_, self.log_likelihood_method_ = None, None, None
        try:
            cov = fixed_effects_covariance(model, params)
        except DenseBlockTooLarge:
            cov = np.full((len(names), len(names)), np.nan)
        if isinstance(family, Ordinal):
            intercept = names.index("Intercept")
            cuts = np.asarray(params.family_params["cutpoints"], dtype=float) - beta[intercept]
            self.cutpoints_ = pd.Series(cuts, index=list(family.parameter_labels()), name="cutpoint")
            keep = [j for j in range(len(names)) if j != intercept]
            names, beta, cov = [names[j] for j in keep], beta[keep], cov[np.ix_(keep, keep)]
        self.fixed_effects_ = pd.Series(beta, index=names, name="estimate", dtype=float)
        self.fixed_effects_cov_ = pd.DataFrame(cov, index=names, columns=names)
        if "dispersion" in family.parameter_names:
            self.dispersion_ = float(params.family_params["dispersion"])
        self.random_cov_ = tuple(
            pd.DataFrame(matrix, index=list(term.coef_names), columns=list(term.coef_names))
            for term, matrix in zip(self.random_design_.terms, params.random_cov)
        )
        rows = []
        for term, matrix in zip(self.random_design_.terms, params.random_cov):
            sds = np.sqrt(np.diag(matrix))
            for name, sd in zip(term.coef_names, sds):
                rows.append({"group": term.name, "var1": name, "var2": None, "vcov": sd**2, "sdcor": sd})
            for a in range(term.dim):
                for b in range(a + 1, term.dim):
                    rows.append({"group": term.name, "var1": term.coef_names[a], "var2": term.coef_names[b],
                                 "vcov": matrix[a, b], "sdcor": matrix[a, b] / (sds[a] * sds[b])})
        if isinstance(family, Gaussian):
            sigma = float(params.family_params["sigma"])
            rows.append({"group": "Residual", "var1": None, "var2": None, "vcov": sigma**2, "sdcor": sigma})
        frame = pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sdcor"])
        for column in ("group", "var1", "var2"):
            frame[column] = pd.Series([row[column] for row in rows], dtype=object)
        self.variance_components_ = frame
        self.random_effects_ = {}
        for term, means in zip(self.random_design_.terms, result.random_effects):
            labels = self.random_design_.factors[term.factor].labels
            block = pd.DataFrame(means, index=labels, columns=list(term.coef_names))
            current = self.random_effects_.get(term.name)
            self.random_effects_[term.name] = block if current is None else current.join(block)
        self.residual_quantiles_ = None
        if not isinstance(family, Ordinal):
            eta = self._internal_linear_predictor(model.fixed_design, model.offset, model.random_terms)
            mean = family.mean(eta, params.family_params)
            trials = np.ones(model.n_obs) if model.trials is None else model.trials
            variance = family.variance(mean, params.family_params, trials=model.trials)
            pearson = (model.response - trials * mean) / np.sqrt(np.maximum(variance, 1e-300))
            self.residual_quantiles_ = pd.Series(
                np.quantile(pearson, [0.0, 0.25, 0.5, 0.75, 1.0]), index=["Min", "1Q", "Median", "3Q", "Max"]
            )

    # -- prediction ---------------------------------------------------------------------
    def _internal_linear_predictor(self, X_fixed, offset, terms) -> np.ndarray:
        """The linear predictor with the fitted (internal) parameters, numpy."""
        eta = X_fixed @ np.asarray(self.model_parameters_.fixed_effects)
        if offset is not None:
            eta = eta + offset
        for term, data in zip(self.random_design_.terms, terms):
            effects = self.random_effects_[term.name][list(term.coef_names)].to_numpy()
            index = data.group_index
            rows = np.where(index[:, None] >= 0, effects[np.maximum(index, 0)], 0.0)
            eta = eta + (rows[:, 0] if data.z is None else np.sum(rows * data.z, axis=1))
        return eta

    def _linear_predictor_for(self, X, new_levels, include_random) -> np.ndarray:
        check_is_fitted(self, "fixed_effects_")
        policy = self.new_levels if new_levels is None else new_levels
        if policy not in NEW_LEVEL_POLICIES:
            raise ParameterError(f"new_levels must be one of {NEW_LEVEL_POLICIES}, got {policy!r}")
        data = _check_frame(X)
        X_fixed = self.fixed_design_.transform(data)
        offset = self.fixed_design_.offset(data)
        terms = self.random_design_.materialize(data, new_levels=policy) if include_random else ()
        return self._internal_linear_predictor(X_fixed, offset, terms)

    def _response_for(self, data: pd.DataFrame, y):
        if y is not None:
            return np.asarray(y)
        if self.response_design_ is None:
            raise DataError("the formula has no response (left-hand side) to evaluate; pass y explicitly")
        values, trials = self.response_design_.evaluate(data)
        return values if trials is None else values / trials

    # -- model access ---------------------------------------------------------------------
    def joint_distribution(self, X):
        """The fitted model as a TensorFlow Probability joint distribution over ``X``'s rows.

        Parameters
        ----------
        X : pandas.DataFrame
            Rows whose grouping levels were all seen in ``fit`` (with the trials
            column of a ``cbind`` response, and the offset columns, if any).

        Returns
        -------
        tfp.distributions.JointDistributionNamedAutoBatched
            One component per random term (named after its grouping factor, event
            shape ``[num_levels, n_coefficients]``) and ``"response"`` (event shape
            ``[n_rows]``), at the fitted parameters.  ``sample`` draws new random
            effects and responses; ``log_prob`` scores them.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", random_state=0, verbose=0).fit(data)
        >>> joint = model.joint_distribution(data)
        >>> draw = joint.sample(seed=(1, 2))
        >>> sorted(draw), tuple(draw["g"].shape), tuple(draw["response"].shape)
        (['g', 'response'], (30, 1), (600,))
        """
        check_is_fitted(self, "fixed_effects_")
        data = _check_frame(X)
        X_fixed = self.fixed_design_.transform(data)
        terms = self.random_design_.materialize(data, new_levels="error")
        trials = None
        if self.response_design_ is not None and self.response_design_.is_cbind:
            trials = self.response_design_.evaluate(data)[1]
        model = MixedModel(self.family_, X_fixed, None, terms, self.fixed_design_.column_names,
                           offset=self.fixed_design_.offset(data), trials=trials)
        params = self.model_parameters_
        return build_joint_distribution(
            model.tensors(),
            fixed_effects=params.fixed_effects,
            random_scale_tril=params.random_scale_tril,
            family=self.family_,
            family_params=dict(params.family_params),
        )

    def _parameters(self) -> ModelParameters:
        check_is_fitted(self, "fixed_effects_")
        return self.model_parameters_

    def summary(self, file=None) -> None:
        """Print an lme4-style summary of the fit.

        Parameters
        ----------
        file : file-like, optional
            Where to print; defaults to standard output.
        """
        check_is_fitted(self, "fixed_effects_")
        print(format_summary(self), file=file)


_PARAMETERS_DOC = """
    new_levels : {"population", "error"}, default "population"
        What prediction does with a grouping level not seen in ``fit``:
        ``"population"`` uses a zero random effect (the population mean),
        ``"error"`` raises :class:`~mixedfx.NewLevelError`.  Unseen levels of a
        fixed-effect categorical always raise.
    max_iter : int, default 500
        Maximum number of EM iterations.
    tol : float, default 0.1
        Stop when every estimate's Monte Carlo standard error is at most ``tol``
        times its statistical standard error (see
        :class:`~mixedfx.inference.MonteCarloErrorRule`).  Ignored when
        ``stopping_rule`` is given.
    n_chains : int, default 2
        HMC chains run side by side in each E-step.
    n_draws : int, default 5
        Draws kept per chain per E-step.
    n_leapfrog_steps : int, default 8
        Mean number of leapfrog steps per HMC transition.
    stopping_rule : object, optional
        A stopping rule with an ``assess`` method, such as
        :class:`~mixedfx.inference.FixedIterations`; replaces the default
        ``MonteCarloErrorRule(tol=tol)``.
    random_state : int, numpy.random.RandomState or None, default None
        Seed of the MCMC draws.  The same seed gives identical estimates on the same
        machine.
    verbose : int, default 1
        ``0`` is silent; ``1`` shows a progress bar on fits that take more than two
        seconds.
"""

_ATTRIBUTES_DOC = """
    fixed_effects_ : pandas.Series
        Fixed-effect estimates, indexed by formulaic's column names.
    fixed_effects_cov_ : pandas.DataFrame
        Covariance of the fixed-effect estimates: exact for the Gaussian family, the
        Laplace approximation at the estimates for the others.
    variance_components_ : pandas.DataFrame
        lme4's ``as.data.frame(VarCorr(m))`` layout: columns ``group``, ``var1``,
        ``var2``, ``vcov`` and ``sdcor``.  Per term, one row per coefficient
        (variance and standard deviation), then one row per pair of coefficients
        (``var2`` filled: covariance and correlation); for the Gaussian family a
        final ``"Residual"`` row.
    random_cov_ : tuple of pandas.DataFrame
        Per random term (in the order of ``random_design_.terms``), the covariance
        matrix of its coefficients.
    random_effects_ : dict of str to pandas.DataFrame
        Per grouping factor, the conditional means of its coefficients (one column
        each), indexed by level (lme4's ``ranef``).
    log_likelihood_ : float or None
        Marginal log-likelihood at the estimates: exact for the Gaussian family,
        estimated by importance sampling (Laplace proposal) for the others; ``None``
        if the computation would not fit in memory.
    log_likelihood_se_ : float or None
        Its Monte Carlo standard error (0 when exact).
    log_likelihood_method_ : str or None
    fit_summary_ : FitSummary
        Iterations, acceptance rate, objective trace, Monte Carlo errors, convergence.
    n_obs_ : int
        Number of rows used in the fit.
    formula_spec_ : FormulaSpec
    response_design_ : ResponseDesign or None
        How the response is read from data (``None`` when ``y`` was passed to fit).
    fixed_design_ : FixedDesign
    random_design_ : RandomDesign
    family_ : Family
    residual_quantiles_ : pandas.Series or None
        Quantiles of the Pearson residuals on the training rows (not for ordinal
        responses).
    model_parameters_ : ModelParameters
        The estimates in the model layer's form (Cholesky factors, the family's
        parameters; for an ordinal model the internal intercept and cutpoints), as
        :meth:`joint_distribution` uses them.
"""


class MixedEffectsRegressor(RegressorMixin, _MixedEffectsModel):
    """Mixed-effects regression from an lme4 formula, fitted by Monte Carlo EM.

    The formula's fixed part is encoded by formulaic.  Each random term adds, per level
    of its grouping factor, coefficients with a full covariance matrix: ``(1 | g)`` a
    random intercept, ``(1 + x | g)`` or ``(x | g)`` an intercept and slope,
    ``(0 + x | g)`` a slope alone; ``(x || g)`` splits into uncorrelated terms,
    ``(1 | a/b)`` into ``(1 | a) + (1 | a:b)``, and ``(1 | a:b)`` groups by the
    combinations of ``a`` and ``b`` present in the data.  ``offset(expr)`` terms add
    to the linear predictor with coefficient one.

    Estimation is by maximum likelihood with Monte Carlo EM: an HMC E-step over the
    random effects and a parameter-expanded M-step (closed form for the Gaussian
    family, Newton's method for the others), run as compiled XLA loops (see
    :mod:`mixedfx.inference`).

    Parameters
    ----------
    formula : str
        An lme4 formula, e.g. ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.
        The left-hand side may be omitted when ``y`` is passed to :meth:`fit`; a
        binomial response is written ``cbind(successes, failures) ~ ...``.
    family : {"gaussian", "poisson", "negative_binomial", "binomial"} or Family, default "gaussian"
        Response family (a :class:`~mixedfx.model.Binomial` instance chooses the
        probit link).
    %(parameters)s
    Attributes
    ----------
    %(attributes)s
    dispersion_ : float
        Negative binomial family only: the dispersion (glmmTMB's nbinom2 ``sigma``).

    See Also
    --------
    lmer, glmer : fit in one call.
    MixedEffectsClassifier : bernoulli and ordinal responses.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", random_state=0, verbose=0)
    >>> model = model.fit(data)
    >>> model.fixed_effects_.round(1).to_dict()
    {'Intercept': 1.0, 'x': 0.5}
    >>> model.variance_components_[["group", "sdcor"]].round(1).to_dict("list")
    {'group': ['g', 'Residual'], 'sdcor': [0.8, 1.0]}
    >>> model.predict(data.head(2)).shape
    (2,)
    """

    _families = ("gaussian", "poisson", "negative_binomial", "binomial")

    def __init__(
        self,
        formula=None,
        *,
        family="gaussian",
        new_levels="population",
        max_iter=500,
        tol=0.1,
        n_chains=2,
        n_draws=5,
        n_leapfrog_steps=8,
        stopping_rule=None,
        random_state=None,
        verbose=1,
    ):
        self.formula = formula
        self.family = family
        self.new_levels = new_levels
        self.max_iter = max_iter
        self.tol = tol
        self.n_chains = n_chains
        self.n_draws = n_draws
        self.n_leapfrog_steps = n_leapfrog_steps
        self.stopping_rule = stopping_rule
        self.random_state = random_state
        self.verbose = verbose

    def predict(self, X, *, new_levels=None, include_random=True):
        """Conditional mean of the response for new rows.

        Parameters
        ----------
        X : pandas.DataFrame
            Rows with the columns the formula uses (the response is not needed;
            offset columns are).
        new_levels : {"population", "error"}, optional
            Overrides the estimator's ``new_levels`` policy for this call.
        include_random : bool, default True
            ``False`` gives the population-level prediction, from the fixed part alone
            (lme4's ``predict(m, re.form = NA)``); the grouping columns are then not
            needed.

        Returns
        -------
        numpy.ndarray of shape (n_rows,)
            The mean on the response scale (a proportion for the binomial family),
            given the conditional means of the random effects of each row's levels; a
            level not seen in ``fit`` contributes zero for all its coefficients under
            ``"population"``.
        """
        eta = self._linear_predictor_for(X, new_levels, include_random)
        return self.family_.mean(eta, self.model_parameters_.family_params)

    def score(self, X, y=None, sample_weight=None):
        """Coefficient of determination R^2 of :meth:`predict` on ``X``.

        When ``y`` is omitted, the response is the formula's left-hand side evaluated
        on ``X`` (a proportion for ``cbind`` responses).
        """
        check_is_fitted(self, "fixed_effects_")
        data = _check_frame(X)
        truth = np.asarray(self._response_for(data, y), dtype=np.float64)
        return r2_score(truth, self.predict(data), sample_weight=sample_weight)


class MixedEffectsClassifier(ClassifierMixin, _MixedEffectsModel):
    """Mixed-effects classification from an lme4 formula: bernoulli or ordinal.

    ``family="bernoulli"`` models a two-class response with a logit link (a
    :class:`~mixedfx.model.Bernoulli` instance with ``link_name="probit"`` chooses
    probit), as ``glmer(..., family = binomial)``; ``family="ordinal"`` models ordered
    categories with a cumulative logit link and ``K - 1`` cutpoints, as
    ``ordinal::clmm``.  The classes are the sorted distinct values of the response
    (a categorical response keeps its category order); for the bernoulli family the
    second class is the "positive" one.

    Parameters
    ----------
    formula : str
        An lme4 formula; see :class:`MixedEffectsRegressor`.
    family : {"bernoulli", "ordinal"} or Family, default "bernoulli"
    %(parameters)s
    Attributes
    ----------
    classes_ : numpy.ndarray
        The class labels, in order.
    cutpoints_ : pandas.Series
        Ordinal family only: the ``K - 1`` cutpoints, named like clmm's (``"1|2"``).
    %(attributes)s

    See Also
    --------
    glmer : fit in one call.

    Examples
    --------
    >>> import numpy as np
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> data["high"] = np.where(data["y"] > 1.0, "yes", "no")
    >>> model = mixedfx.MixedEffectsClassifier("high ~ x + (1 | g)", random_state=0, verbose=0).fit(data)
    >>> model.classes_.tolist()
    ['no', 'yes']
    >>> model.predict_proba(data.head(3)).sum(axis=1).round(12).tolist()
    [1.0, 1.0, 1.0]
    """

    _families = ("bernoulli", "ordinal")

    def __init__(
        self,
        formula=None,
        *,
        family="bernoulli",
        new_levels="population",
        max_iter=500,
        tol=0.1,
        n_chains=2,
        n_draws=5,
        n_leapfrog_steps=8,
        stopping_rule=None,
        random_state=None,
        verbose=1,
    ):
        self.formula = formula
        self.family = family
        self.new_levels = new_levels
        self.max_iter = max_iter
        self.tol = tol
        self.n_chains = n_chains
        self.n_draws = n_draws
        self.n_leapfrog_steps = n_leapfrog_steps
        self.stopping_rule = stopping_rule
        self.random_state = random_state
        self.verbose = verbose

    def _prepare_response(self, family, raw, trials):
        values = pd.Series(raw)
        if values.isna().any():
            raise DataError(f"the response has {int(values.isna().sum())} missing value(s); drop those rows first")
        if isinstance(values.dtype, pd.CategoricalDtype):
            classes = np.asarray([c for c in values.cat.categories if (values == c).any()], dtype=object)
        else:
            try:
                classes = np.sort(pd.unique(values))
            except TypeError:
                classes = np.asarray(pd.unique(values), dtype=object)
        if isinstance(family, Ordinal):
            if len(classes) < 3:
                raise DataError(
                    f"an ordinal response needs at least 3 classes, found {len(classes)} "
                    f"({', '.join(map(str, classes))}); use family='bernoulli' for two"
                )
            family = Ordinal(n_categories=len(classes), labels=tuple(str(c) for c in classes))
        elif len(classes) != 2:
            raise DataError(
                f"a bernoulli response needs exactly 2 classes, found {len(classes)}"
                + (f" ({', '.join(map(str, classes[:6]))}{', ...' if len(classes) > 6 else ''})" if len(classes) else "")
                + ("; use family='ordinal' for ordered categories" if len(classes) > 2 else "")
            )
        self.classes_ = classes
        codes = pd.Index(classes).get_indexer(values)
        return family, codes.astype(np.float64)

    def decision_function(self, X, *, new_levels=None, include_random=True):
        """The linear predictor: log-odds of the second class (bernoulli, logit link),
        or the latent location that the cutpoints cut (ordinal)."""
        eta = self._linear_predictor_for(X, new_levels, include_random)
        if isinstance(self.family_, Ordinal):
            eta = eta - self.model_parameters_.fixed_effects[list(self.fixed_design_.column_names).index("Intercept")]
        return eta

    def predict_proba(self, X, *, new_levels=None, include_random=True):
        """Class probabilities given the conditional means of the random effects.

        Returns
        -------
        numpy.ndarray of shape (n_rows, n_classes)
            Rows sum to one; columns follow :attr:`classes_`.
        """
        eta = self._linear_predictor_for(X, new_levels, include_random)
        params = self.model_parameters_.family_params
        if isinstance(self.family_, Ordinal):
            return self.family_.probabilities(eta, np.asarray(params["cutpoints"]))
        positive = self.family_.mean(eta, params)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X, *, new_levels=None, include_random=True):
        """The most probable class of each row."""
        return self.classes_[np.argmax(self.predict_proba(X, new_levels=new_levels, include_random=include_random),
                                       axis=1)]

    def score(self, X, y=None, sample_weight=None):
        """Accuracy of :meth:`predict` on ``X`` (the response from the formula when ``y``
        is omitted)."""
        check_is_fitted(self, "fixed_effects_")
        data = _check_frame(X)
        return accuracy_score(self._response_for(data, y), self.predict(data), sample_weight=sample_weight)


for _estimator in (MixedEffectsRegressor, MixedEffectsClassifier):
    _estimator.__doc__ = _estimator.__doc__.replace("%(parameters)s", _PARAMETERS_DOC.strip()).replace(
        "%(attributes)s", _ATTRIBUTES_DOC.strip())


def lmer(formula: str, data: pd.DataFrame, **kwargs) -> MixedEffectsRegressor:
    """Fit a linear mixed model in one call, as lme4's ``lmer(formula, data, REML=FALSE)``.

    Parameters
    ----------
    formula : str
        lme4 formula, e.g. ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.
    data : pandas.DataFrame
    **kwargs
        Other :class:`MixedEffectsRegressor` parameters (``random_state``,
        ``verbose``, ``tol``, ...).

    Returns
    -------
    MixedEffectsRegressor
        The fitted estimator.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> fit = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> list(fit.variance_components_["group"])
    ['g', 'Residual']
    """
    kwargs.setdefault("family", "gaussian")
    return MixedEffectsRegressor(formula, **kwargs).fit(data)


def glmer(formula: str, data: pd.DataFrame, *, family="bernoulli", **kwargs):
    """Fit a generalized linear mixed model in one call, as lme4's ``glmer``.

    Parameters
    ----------
    formula : str
        lme4 formula; ``cbind(successes, failures) ~ ...`` for a binomial response,
        ``offset(log(exposure))`` for rates.
    data : pandas.DataFrame
    family : str or Family, default "bernoulli"
        ``"bernoulli"`` and ``"ordinal"`` give a :class:`MixedEffectsClassifier`;
        ``"binomial"``, ``"poisson"``, ``"negative_binomial"`` and ``"gaussian"`` a
        :class:`MixedEffectsRegressor`.
    **kwargs
        Other estimator parameters.

    Returns
    -------
    MixedEffectsClassifier or MixedEffectsRegressor
        The fitted estimator.

    Examples
    --------
    >>> import numpy as np
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> data["count"] = np.random.default_rng(0).poisson(np.exp(0.3 + 0.2 * data["x"]))
    >>> fit = mixedfx.glmer("count ~ x + (1 | g)", data, family="poisson", random_state=0, verbose=0)
    >>> type(fit).__name__, fit.family_.link
    ('MixedEffectsRegressor', 'log')
    """
    resolved = get_family(family)
    estimator = MixedEffectsClassifier if resolved.is_classification else MixedEffectsRegressor
    return estimator(formula, family=family, **kwargs).fit(data)


def _check_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    raise DataError(
        f"X must be a pandas DataFrame with the columns the formula names, got {type(X).__name__}"
    )
