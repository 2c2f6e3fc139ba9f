"""scikit-learn estimators for mixed-effects models, and the one-line ``lmer`` call.

The estimator is the top layer: it parses the formula, builds the designs, binds
them into a :class:`~mixedfx.model.MixedModel`, fits it with
:func:`~mixedfx.inference.fit_mcem`, and exposes the results as pandas objects named
the way lme4 names them.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from mixedfx.design import NEW_LEVEL_POLICIES, RandomDesign, build_fixed_design
from mixedfx.exceptions import ConvergenceWarning, DataError, FormulaError, ParameterError
from mixedfx.formula import parse_formula
from mixedfx.inference import MCEMOptions, MonteCarloErrorRule, fit_mcem
from mixedfx.model import (
    DenseBlockTooLarge,
    Gaussian,
    MixedModel,
    ModelParameters,
    build_joint_distribution,
    gaussian_marginal,
    get_family,
)
from mixedfx.report import format_summary

__all__ = ["MixedEffectsRegressor", "lmer"]


class MixedEffectsRegressor(RegressorMixin, BaseEstimator):
    """Mixed-effects regression from an lme4 formula, fitted by Monte Carlo EM.

    The formula's fixed part is encoded by formulaic.  Each random term adds, per level
    of its grouping factor, coefficients with a full covariance matrix: ``(1 | g)`` a
    random intercept, ``(1 + x | g)`` or ``(x | g)`` an intercept and slope,
    ``(0 + x | g)`` a slope alone; ``(x || g)`` splits into uncorrelated terms,
    ``(1 | a/b)`` into ``(1 | a) + (1 | a:b)``, and ``(1 | a:b)`` groups by the
    combinations of ``a`` and ``b`` present in the data.  Estimation is by maximum likelihood
    with Monte Carlo EM: an HMC E-step over the random effects and a closed-form,
    parameter-expanded M-step over the fixed effects and variance parameters, run as
    compiled XLA loops (see :mod:`mixedfx.inference`).

    Parameters
    ----------
    formula : str
        An lme4 formula, e.g. ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.
        The left-hand side may be omitted when ``y`` is passed to :meth:`fit`.
    family : {"gaussian"} or Family, default "gaussian"
        Response family.
    new_levels : {"population", "error"}, default "population"
        What :meth:`predict` does with a grouping level not seen in ``fit``:
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

    Attributes
    ----------
    fixed_effects_ : pandas.Series
        Fixed-effect estimates, indexed by formulaic's column names.
    fixed_effects_cov_ : pandas.DataFrame
        Covariance of the fixed-effect estimates (exact for the Gaussian family).
    variance_components_ : pandas.DataFrame
        lme4's ``as.data.frame(VarCorr(m))`` layout: columns ``group``, ``var1``,
        ``var2``, ``vcov`` and ``sdcor``.  Per term, one row per coefficient
        (variance and standard deviation), then one row per pair of coefficients
        (``var2`` filled: covariance and correlation); a final ``"Residual"`` row.
    random_cov_ : tuple of pandas.DataFrame
        Per random term (in the order of ``random_design_.terms``), the covariance
        matrix of its coefficients.
    random_effects_ : dict of str to pandas.DataFrame
        Per grouping factor, the conditional means of its coefficients (one column
        each), indexed by level (lme4's ``ranef``).
    log_likelihood_ : float or None
        Marginal log-likelihood at the estimates (exact for the Gaussian family;
        ``None`` if the exact computation would not fit in memory).
    fit_summary_ : FitSummary
        Iterations, acceptance rate, objective trace, Monte Carlo errors, convergence.
    n_obs_ : int
        Number of rows used in the fit.
    formula_spec_ : FormulaSpec
    fixed_design_ : FixedDesign
    random_design_ : RandomDesign
    family_ : Family
    residual_quantiles_ : pandas.Series
        Quantiles of the scaled (Pearson) residuals on the training rows.

    See Also
    --------
    lmer : fit in one call.

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
        return get_family(self.family)

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit the model.

        Parameters
        ----------
        X : pandas.DataFrame
            The data: every column the formula names.
        y : array-like of shape (n_rows,), optional
            The response.  When omitted, it is the formula's left-hand side evaluated
            on ``X``.

        Returns
        -------
        self : MixedEffectsRegressor
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
        fixed_design, X_fixed, response = build_fixed_design(
            spec.fixed, data, response=spec.response if y is None else None
        )
        if y is not None:
            response = np.asarray(y)
            if response.ndim != 1 or response.shape[0] != len(data):
                raise DataError(f"y must be one-dimensional with {len(data)} values, got shape {response.shape}")
        response_name = spec.response if y is None else "y"
        response = family.validate_response(response, name=response_name)
        random_design = RandomDesign.from_spec(spec, data)
        terms = random_design.materialize(data, new_levels="error")
        model = MixedModel(family, X_fixed, response, terms, fixed_design.column_names)
        model.check_identifiable()
        n_params = X_fixed.shape[1] + len(terms) + len(family.parameter_names)
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
        self.fixed_design_ = fixed_design
        self.random_design_ = random_design
        self.n_obs_ = model.n_obs
        self.fit_summary_ = result.summary
        self._store_estimates(model, result)
        if not result.summary.converged:
            warnings.warn(
                f"Monte Carlo EM did not converge in {result.summary.n_iter} iterations "
                f"({result.summary.message}); the estimates average the last "
                f"{result.summary.n_averaged} iterations. Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _store_estimates(self, model: MixedModel, result) -> None:
        params = result.parameters
        names = list(model.fixed_names)
        self.fixed_effects_ = pd.Series(params.fixed_effects, index=names, name="estimate", dtype=float)
        self.log_likelihood_ = None
        cov = np.full((len(names), len(names)), np.nan)
        if isinstance(model.family, Gaussian):
            try:
                marginal = gaussian_marginal(model, params)
                self.log_likelihood_ = marginal.log_likelihood
                cov = marginal.fixed_effects_cov
            except DenseBlockTooLarge as exc:
                warnings.warn(f"log-likelihood and standard errors not computed: {exc}", UserWarning, stacklevel=3)
        self.fixed_effects_cov_ = pd.DataFrame(cov, index=names, columns=names)
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
        fitted = self._linear_predictor(model.fixed_design, model.random_terms)
        scaled = (model.response - self.family_.inverse_link(fitted)) / sigma
        self.residual_quantiles_ = pd.Series(
            np.quantile(scaled, [0.0, 0.25, 0.5, 0.75, 1.0]), index=["Min", "1Q", "Median", "3Q", "Max"]
        )

    # -- prediction ---------------------------------------------------------------------
    def _linear_predictor(self, X_fixed, terms) -> np.ndarray:
        eta = X_fixed @ self.fixed_effects_.to_numpy()
        for term, data in zip(self.random_design_.terms, terms):
            effects = self.random_effects_[term.name][list(term.coef_names)].to_numpy()
            index = data.group_index
            rows = np.where(index[:, None] >= 0, effects[np.maximum(index, 0)], 0.0)
            eta = eta + (rows[:, 0] if data.z is None else np.sum(rows * data.z, axis=1))
        return eta

    def predict(self, X, *, new_levels=None, include_random=True):
        """Conditional mean of the response for new rows.

        Parameters
        ----------
        X : pandas.DataFrame
            Rows with the columns the formula uses (the response is not needed).
        new_levels : {"population", "error"}, optional
            Overrides the estimator's ``new_levels`` policy for this call.
        include_random : bool, default True
            ``False`` gives the population-level prediction, the fixed part alone
            (lme4's ``predict(m, re.form = NA)``); the grouping columns are then not
            needed.

        Returns
        -------
        numpy.ndarray of shape (n_rows,)
            Fixed part plus, for each random term, the conditional means of the
            coefficients of the row's level times the row's ``z``; a level not seen in
            ``fit`` contributes zero for all its coefficients under ``"population"``.
        """
        check_is_fitted(self, "fixed_effects_")
        policy = self.new_levels if new_levels is None else new_levels
        if policy not in NEW_LEVEL_POLICIES:
            raise ParameterError(f"new_levels must be one of {NEW_LEVEL_POLICIES}, got {policy!r}")
        data = _check_frame(X)
        X_fixed = self.fixed_design_.transform(data)
        if not include_random:
            return self.family_.inverse_link(X_fixed @ self.fixed_effects_.to_numpy())
        terms = self.random_design_.materialize(data, new_levels=policy)
        return self.family_.inverse_link(self._linear_predictor(X_fixed, terms))

    def score(self, X, y=None, sample_weight=None):
        """Coefficient of determination R^2 of :meth:`predict` on ``X``.

        When ``y`` is omitted, the response is the formula's left-hand side evaluated
        on ``X``.
        """
        check_is_fitted(self, "fixed_effects_")
        data = _check_frame(X)
        truth = self.fixed_design_.transform_response(data) if y is None else np.asarray(y, dtype=np.float64)
        return r2_score(truth, self.predict(data), sample_weight=sample_weight)

    # -- model access ---------------------------------------------------------------------
    def joint_distribution(self, X):
        """The fitted model as a TensorFlow Probability joint distribution over ``X``'s rows.

        Parameters
        ----------
        X : pandas.DataFrame
            Rows whose grouping levels were all seen in ``fit``.

        Returns
        -------
        tfp.distributions.JointDistributionNamedAutoBatched
            One component per random term (named after its grouping factor, event
            shape ``[num_levels, n_coefficients]``) and ``"response"`` (event shape
            ``[n_rows]``), at the fitted parameters.  ``sample`` draws new random effects and responses;
            ``log_prob`` scores them.

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
        model = MixedModel(self.family_, X_fixed, None, terms, tuple(self.fixed_effects_.index))
        params = self._parameters()
        return build_joint_distribution(
            model.tensors(),
            fixed_effects=params.fixed_effects,
            random_scale_tril=params.random_scale_tril,
            family=self.family_,
            family_params=dict(params.family_params),
        )

    def _parameters(self) -> ModelParameters:
        residual = self.variance_components_.loc[self.variance_components_["group"] == "Residual", "sdcor"]
        return ModelParameters(
            fixed_effects=self.fixed_effects_.to_numpy(),
            random_scale_tril=tuple(np.linalg.cholesky(cov.to_numpy()) for cov in self.random_cov_),
            family_params={"sigma": float(residual.iloc[0])},
        )

    def summary(self, file=None) -> None:
        """Print an lme4-style summary of the fit.

        Parameters
        ----------
        file : file-like, optional
            Where to print; defaults to standard output.
        """
        check_is_fitted(self, "fixed_effects_")
        print(format_summary(self), file=file)


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


def _check_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    raise DataError(
        f"X must be a pandas DataFrame with the columns the formula names, got {type(X).__name__}"
    )
