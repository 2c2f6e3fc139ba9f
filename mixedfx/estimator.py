"""scikit-learn estimators for mixed-effects models, and the one-line ``lmer``/``glmer`` calls.

The estimators are the top layer: they parse the formula, build the designs, bind
them into a :class:`~mixedfx.model.MixedModel`, fit it with
:func:`~mixedfx.inference.fit_mcem`, and expose the results as pandas objects named
the way lme4 names them.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d

from mixedfx import results
from mixedfx.design import (
    MISSING_POLICIES,
    NEW_LEVEL_POLICIES,
    RandomDesign,
    ResponseDesign,
    as_frame,
    build_fixed_design,
    clean_columns,
    formula_columns,
    is_arrow_source,
    missing_rows,
    read_arrow,
)
from mixedfx.design.frame import describe_counts
from mixedfx.exceptions import (
    ConvergenceWarning,
    DataError,
    DataWarning,
    FitError,
    FormulaError,
    ParameterError,
    SamplerWarning,
    did_you_mean,
)
from mixedfx.formula import parse_formula
from mixedfx.inference import MCEMOptions, MonteCarloErrorRule, fit_mcem
from mixedfx.inference.boundary import boundary_components, zero_components
from mixedfx.inference.distributed import check_strategy, sharded_gaussian_marginal
from mixedfx.inference.layout import fixed_effects_covariance
from mixedfx.model import (
    DenseBlockTooLarge,
    Gaussian,
    MixedModel,
    ModelParameters,
    Ordinal,
    build_joint_distribution,
    gaussian_fixed_effects_iterative,
    gaussian_marginal,
    get_family,
    marginal_log_likelihood,
)
from mixedfx.report import format_summary

__all__ = ["MixedEffectsRegressor", "MixedEffectsClassifier", "lmer", "glmer"]

#: R-hat of the random effects' mean squares, beyond its chance level (see FitSummary.rhat), above which fit warns.
RHAT_WARNING = 1.05


class _MixedEffectsModel(BaseEstimator):
    """What the regressor and the classifier share: fitting, designs and outputs."""

    #: Family names this estimator accepts.
    _families: tuple[str, ...] = ()

    # -- scikit-learn plumbing ---------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self.formula is None  # else the response can come from the formula
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        tags.non_deterministic = self.random_state is None
        return tags

    def _validate_params(self):
        if self.formula is not None and not isinstance(self.formula, str):
            raise ParameterError(
                f"formula must be an lme4 formula string such as 'y ~ x + (1 | g)', or None, got {self.formula!r}"
            )
        if self.formula is not None and self.groups is not None:
            raise ParameterError("groups= is for formula=None; with a formula, name the grouping in it: '(1 | g)'")
        if self.missing not in MISSING_POLICIES:
            raise ParameterError(f"missing must be one of {MISSING_POLICIES}, got {self.missing!r}")
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
        if self._method() not in ("ml", "reml"):
            raise ParameterError(f"method must be 'ml' or 'reml', got {self._method()!r}")
        if self._method() == "reml" and not isinstance(family, Gaussian):
            raise ParameterError(
                f"method='reml' is defined for the Gaussian family only (family={family.name!r} is fitted by ML, "
                "as glmer does)"
            )
        if self._distribute() is not None:
            check_strategy(self._distribute())
        if family.name not in self._families:
            other = "MixedEffectsClassifier" if family.is_classification else "MixedEffectsRegressor"
            raise ParameterError(
                f"{type(self).__name__} fits the families {', '.join(self._families)}; "
                f"use {other} for family={family.name!r}"
            )
        return family

    def _input_frame(self, X, *, fitting: bool = False, spec=None) -> pd.DataFrame:
        """``X`` as a pandas DataFrame (converted from polars; read from Arrow or
        Parquet, only the formula's columns; from an array only without a formula),
        with nullable dtypes made plain; never the caller's object changed.  At fit,
        records ``n_features_in_`` and ``feature_names_in_``."""
        formula_less = self.formula is None
        if not fitting:
            check_is_fitted(self, "fixed_effects_")
            spec = self.formula_spec_
        if not formula_less and is_arrow_source(X):
            data = read_arrow(X, formula=spec.text, grouping=spec.grouping_columns)
            named = True
        else:
            data = as_frame(X, allow_array=formula_less)
            named = data is X or type(X).__module__.split(".")[0] == "polars"
        named = named and all(isinstance(c, str) for c in data.columns)
        if formula_less and data.shape[1] == 0:
            raise DataError(f"0 feature(s) (shape={data.shape}) while a minimum of 1 is required.")
        if fitting:
            self.n_features_in_ = data.shape[1]
            if named:
                self.feature_names_in_ = np.asarray(data.columns, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif formula_less and data.shape[1] != self.n_features_in_:
            raise DataError(
                f"X has {data.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input"
            )
        if formula_less and not named:
            # Columns by position: the names seen in fit, or x0, x1, ...
            names = getattr(self, "feature_names_in_", None) if not fitting else None
            data = data.set_axis(list(names) if names is not None else [f"x{j}" for j in range(data.shape[1])], axis=1)
        if fitting:
            return data
        return clean_columns(data, formula_columns(self.formula_spec_, data), drop_unused_categories=False)

    def _formula_text(self, data: pd.DataFrame) -> str:
        """The formula, or without one (``formula=None``) ``~ <other columns> + (1 | groups)``."""
        if self.formula is not None:
            return self.formula
        groups = self.groups
        if groups is None:
            raise ParameterError(
                "formula=None fits every column of X as a fixed effect with a random intercept per level of "
                "the groups= column(s); give groups= (a column name or position) or a formula"
            )
        chosen = []
        for group in ([groups] if isinstance(groups, (str, numbers.Integral)) else list(groups)):
            if isinstance(group, numbers.Integral) and not isinstance(group, bool):
                if not -data.shape[1] <= group < data.shape[1]:
                    raise ParameterError(f"groups={group} is not a column position of X ({data.shape[1]} columns)")
                group = data.columns[group]
            if group not in data.columns:
                raise DataError(f"groups column {group!r} is not in X." + did_you_mean(group, data.columns))
            chosen.append(group)
        for column in data.columns:
            if "`" in column:
                raise DataError(f"column {column!r} cannot be named in a formula (it holds a back-quote)")
        fixed = [f"`{c}`" for c in data.columns if c not in chosen]
        random = [f"(1 | `{g}`)" for g in dict.fromkeys(chosen)]
        return "~ " + " + ".join(["1", *fixed, *random])

    def _drop_missing(self, data, columns, y, sample_weight, *, index):
        """Apply the ``missing`` policy to rows with a missing value in ``columns``, ``y``
        or ``sample_weight``; records ``dropped_rows_``."""
        mask, counts = missing_rows(data, columns)
        for name, values in (("y", y), ("sample_weight", sample_weight)):
            if values is not None:
                isna = np.asarray(pd.isna(values), dtype=bool)
                if isna.any():
                    counts[name] = int(isna.sum())
                    mask = mask | isna
        self.dropped_rows_ = index[mask]
        n_missing = int(mask.sum())
        if not n_missing:
            return data, y, sample_weight
        where = describe_counts(counts)
        if self.missing == "raise":
            raise DataError(
                f"{n_missing} of {len(mask)} rows have missing values (NaN/None) in the columns the model uses "
                f"({where}); drop or impute them, or use missing='drop'"
            )
        if n_missing == len(mask):
            raise DataError(f"every row has a missing value in the columns the model uses ({where}); nothing is left to fit")
        warnings.warn(
            f"dropped {n_missing} of {len(mask)} rows with missing values ({where}), as lme4's na.omit does; "
            f"the fit uses the other {len(mask) - n_missing} (dropped_rows_ lists them; missing='raise' refuses them)",
            DataWarning,
            stacklevel=3,
        )
        keep = ~mask
        data = clean_columns(data.loc[keep], columns, drop_unused_categories=True)
        return data, None if y is None else y[keep], None if sample_weight is None else sample_weight[keep]

    def _distribute(self):
        return getattr(self, "distribute", None)

    def __sklearn_clone__(self):
        # A strategy names devices: a clone (a refit, a bootstrap replicate, a
        # cross-validation fold) shares it, so that its compiled programs are reused,
        # instead of deep-copying it into a new strategy over the same devices.
        strategy = self._distribute()
        if strategy is None:
            return super().__sklearn_clone__()
        params = {name: value if name == "distribute" else clone(value, safe=False)
                  for name, value in self.get_params(deep=False).items()}
        return type(self)(**params)

    def __getstate__(self):
        # A tf.distribute.Strategy holds devices and cannot be pickled; it is a setting of
        # the machine that fits, not of the model, so an unpickled estimator has none.
        state = super().__getstate__()
        if state.get("distribute") is not None:
            state = {**state, "distribute": None}
        return state

    def _method(self) -> str:
        method = getattr(self, "method", "ml")
        return method.lower() if isinstance(method, str) else method

    # -- fitting ------------------------------------------------------------------------
    def _prepare_response(self, family, raw, trials):
        """Hook for the classifier's label encoding; returns ``(family, values)``."""
        return family, raw

    def fit(self, X, y=None, sample_weight=None):
        """Fit the model.

        Parameters
        ----------
        X : pandas.DataFrame, polars.DataFrame, pyarrow.Table, or path(s) of Parquet files
            The data: every column the formula names (a polars DataFrame is converted
            to pandas).  From Arrow or Parquet only those columns are read, and the
            grouping columns become categoricals through Arrow's dictionary encoding
            (:func:`~mixedfx.design.read_arrow`).  Without a formula (``formula=None``),
            any 2-D table: every column but the ``groups`` columns is a fixed effect.
        y : array-like of shape (n_rows,), optional
            The response.  When omitted, it is the formula's left-hand side evaluated
            on ``X`` (``cbind(successes, failures)`` for a binomial response).
        sample_weight : array-like of shape (n_rows,), optional
            Binomial family only: the number of trials of each row, with the response
            given as a proportion (glmer's ``weights=``).

        Returns
        -------
        self

        Raises
        ------
        FormulaError, DataError, ParameterError
            For a formula, data or parameter that cannot be fitted, naming the term,
            column or parameter.
        FitError
            If the fit breaks down numerically even after the E-step's recovery (see
            ``fit_summary_.n_retries``); no estimates are returned then.
        """
        family = self._validate_params()
        spec = None if self.formula is None else parse_formula(self.formula)
        data = self._input_frame(X, fitting=True, spec=spec)
        spec = spec if spec is not None else parse_formula(self._formula_text(data))
        if not spec.random:
            raise FormulaError(
                "No random effects terms specified in formula: add at least one term such as "
                "'(1 | g)' (for a model without random effects use a fixed-effects regressor)",
                formula=spec.text,
            )
        if len(data) < 2:
            raise DataError(f"X has {len(data)} sample(s) (shape={data.shape}) while a minimum of 2 is required "
                            "(a mixed model needs more rows than parameters)")
        if y is None and spec.response is None:
            raise DataError(f"{type(self).__name__} requires y to be passed, but the target y is None, and the "
                            "formula has no response (left-hand side) to evaluate instead")
        columns = formula_columns(spec, data)
        data = clean_columns(data, columns, drop_unused_categories=True)
        y, sample_weight = _response_array(y, len(data)), _weight_array(sample_weight, len(data))
        data, y, sample_weight = self._drop_missing(data, columns, y, sample_weight, index=data.index)
        response_design = None if y is not None else ResponseDesign.from_text(spec.response)
        if y is not None:
            raw, trials = y, None
            response_name = "y"
        else:
            try:
                raw, trials = response_design.evaluate(data)
            except FormulaError as exc:
                raise _in_formula(exc, spec.text) from None
            response_name = spec.response
        if sample_weight is not None:
            if family.name != "binomial":
                raise ParameterError(
                    "sample_weight is supported for the binomial family only (as the trials of a proportion response)"
                )
            if trials is not None:
                raise DataError("give the trials either by cbind(successes, failures) or by sample_weight, not both")
            trials = sample_weight
            raw = np.round(np.asarray(raw, dtype=np.float64) * trials, 8)
        family, raw = self._prepare_response(family, raw, trials)
        response, trials = family.validate_response(raw, trials=trials, name=response_name)
        _check_response_values(response if trials is None else response / trials, family, response_name)
        try:
            fixed_design, X_fixed = build_fixed_design(spec.fixed, data, offsets=spec.offsets)
            random_design = RandomDesign.from_spec(spec, data)
        except FormulaError as exc:
            raise _in_formula(exc, spec.text) from None
        if isinstance(family, Ordinal) and not fixed_design.has_intercept:
            raise FormulaError(
                "an ordinal model's cutpoints take the place of the intercept; keep the intercept in the formula "
                "(it is reported as the cutpoints, not as a fixed effect)",
                formula=spec.text,
            )
        terms = random_design.materialize(data, new_levels="error")
        model = MixedModel(family, X_fixed, response, terms, fixed_design.column_names,
                           offset=fixed_design.offset(data), trials=trials)
        model.check_identifiable()
        if isinstance(family, Gaussian):
            _check_residual_variance(model, response_name)
        n_variance = sum(t.dim * (t.dim + 1) // 2 for t in terms)
        n_params = X_fixed.shape[1] + n_variance + len(family.parameter_labels())
        if model.n_obs <= n_params:
            raise DataError(
                f"{model.n_obs} rows are too few to estimate {n_params} parameters ({X_fixed.shape[1]} fixed "
                f"effects, {n_variance} variance parameters, {len(family.parameter_labels())} of the family)"
            )

        self.formula_spec_ = spec
        self.family_ = family
        self.response_design_ = response_design
        self.fixed_design_ = fixed_design
        self.random_design_ = random_design
        self._fit_model(model)
        return self

    def _fit_model(self, model: MixedModel, *, progress: bool | None = None) -> None:
        """Run Monte Carlo EM on a bound model and store the results (the designs are set)."""
        seed = check_random_state(self.random_state).randint(0, 2**31 - 1, size=2)
        options = MCEMOptions(
            n_chains=self.n_chains,
            n_draws=self.n_draws,
            n_leapfrog_steps=self.n_leapfrog_steps,
            max_iter=self.max_iter,
        )
        rule = self.stopping_rule if self.stopping_rule is not None else MonteCarloErrorRule(tol=float(self.tol))
        result = fit_mcem(model, method=self._method(), options=options, stopping_rule=rule, seed=seed,
                          progress=self.verbose > 0 if progress is None else progress, distribute=self._distribute())
        self.model_ = model
        self.n_obs_ = model.n_obs
        self.n_iter_ = result.summary.n_iter
        self.fit_summary_ = result.summary
        self._store_estimates(model, result, seed=int(seed[0]))
        self._check_finite_estimates()
        summary = result.summary
        if not summary.converged:
            warnings.warn(
                f"Monte Carlo EM did not converge in {summary.n_iter} iterations "
                f"({summary.message}); the estimates average the last "
                f"{summary.n_averaged} iterations. Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if summary.rhat > RHAT_WARNING + summary.rhat_noise:
            affected = ("the kept draws (to_arviz, simulate(posterior=True)) are uncertain; the estimates and the "
                        "exact conditional means and sds are not" if isinstance(self.family_, Gaussian) else
                        "the conditional means and sds of the random effects, and the intervals, are uncertain")
            warnings.warn(
                f"the E-step's chains disagree: R-hat of the random effects' mean squares {summary.rhat:.3f} > "
                f"{RHAT_WARNING} + {summary.rhat_noise:.3f} (its chance level) over {summary.n_kept_draws} kept draws "
                f"per chain: {affected} (increase n_chains, n_draws or n_leapfrog_steps)",
                SamplerWarning,
                stacklevel=3,
            )

    def _check_finite_estimates(self) -> None:
        """Never hand out a NaN estimate: raise instead (the E-step's recovery failed)."""
        components = self.variance_components_
        pieces = {"fixed effect": self.fixed_effects_,
                  "variance": components.loc[components["var2"].isna()].set_index("var1", drop=False)["vcov"]}
        if hasattr(self, "cutpoints_"):
            pieces["cutpoint"] = self.cutpoints_
        if hasattr(self, "dispersion_"):
            pieces["dispersion"] = pd.Series([self.dispersion_], index=["dispersion"])
        bad = [f"{kind} {name}" for kind, values in pieces.items()
               for name, value in values.items() if not np.isfinite(value)]
        bad += [f"random effects of {name}" for name, frame in self.random_effects_.items()
                if not np.isfinite(frame.to_numpy()).all()]
        if bad:
            raise FitError(f"the fit produced non-finite estimates ({', '.join(bad[:5])}); no estimates are returned. "
                           "Check the data for extreme values, or rescale them")

    def _store_estimates(self, model: MixedModel, result, *, seed: int) -> None:
        params = result.parameters
        family = self.family_
        components, names = boundary_components(model, params, reml=self._method() == "reml", seed=seed)
        if components:
            # Singular fit: these sds' ML estimate is zero, which Monte Carlo EM only approaches.
            params = zero_components(params, components)
            summary = self.fit_summary_
            estimate = summary.estimate.copy()
            estimate[[summary.parameter_names.index(name) for name in names]] = 0.0
            self.fit_summary_ = dataclasses.replace(
                summary, estimate=estimate, at_boundary=tuple(dict.fromkeys(summary.at_boundary + tuple(names))))
        names = list(model.fixed_names)
        conditional_means, conditional_covs = result.random_effects, result.random_effects_cov
        exact = None
        if isinstance(family, Gaussian):
            try:
                # Given the variance parameters, the fixed effects and the conditional
                # moments of the random effects have closed forms (lme4's, exactly).
                if self._distribute() is None:
                    exact = gaussian_marginal(model, params, profile_fixed_effects=True)
                else:  # the same sums over rows, taken shard by shard
                    exact = sharded_gaussian_marginal(model, params, strategy=self._distribute(),
                                                      profile_fixed_effects=True)
            except DenseBlockTooLarge as exc:
                # Too large to factor: the same solves by conjugate gradients, without the log-determinant.
                try:
                    exact = gaussian_fixed_effects_iterative(model, params)
                    done = "the fixed effects, their standard errors and the conditional means are exact (solved " \
                           "iteratively); the log-likelihood and the conditional sds are not computed"
                except np.linalg.LinAlgError as failure:
                    done = (f"no exact quantities computed ({failure}); the fixed effects are the Monte Carlo EM "
                            "averages, whose Monte Carlo error the stopping rule does not judge for a Gaussian fit")
                warnings.warn(f"{exc}: {done}", UserWarning, stacklevel=4)
            if exact is not None:
                params = dataclasses.replace(params, fixed_effects=exact.gls_fixed_effects)
        self.model_parameters_ = params
        beta = np.asarray(params.fixed_effects, dtype=float)
        if exact is not None:
            reml = self._method() == "reml"
            self.log_likelihood_ = exact.reml_log_likelihood if reml else exact.log_likelihood
            computed = self.log_likelihood_ is not None
            self.log_likelihood_se_ = 0.0 if computed else None
            self.log_likelihood_method_ = ("exact (REML criterion)" if reml else "exact") if computed else None
            cov = exact.fixed_effects_cov
            conditional_means = exact.conditional_means
            if exact.conditional_covs:
                conditional_covs = exact.conditional_covs
        else:
            try:
                likelihood = marginal_log_likelihood(model, params, seed=seed, start=result.random_effects)
                self.log_likelihood_ = likelihood.log_likelihood
                self.log_likelihood_se_ = likelihood.standard_error
                self.log_likelihood_method_ = likelihood.method
            except DenseBlockTooLarge as exc:
                warnings.warn(f"log-likelihood not computed: {exc}", UserWarning, stacklevel=4)
                self.log_likelihood_, self.log_likelihood_se_, self.log_likelihood_method_ = None, None, None
            try:
                cov = fixed_effects_covariance(model, params, conditional_means)
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
        self.random_effects_, self.random_effects_cov_, self.random_effect_draws_ = {}, {}, {}
        for term, means, covs, draws in zip(self.random_design_.terms, conditional_means, conditional_covs,
                                            result.draws):
            labels = self.random_design_.factors[term.factor].labels
            block = pd.DataFrame(means, index=labels, columns=list(term.coef_names))
            current = self.random_effects_.get(term.name)
            if current is None:
                self.random_effects_[term.name] = block
                self.random_effects_cov_[term.name] = covs
                self.random_effect_draws_[term.name] = draws
            else:  # uncorrelated terms of one factor, (x || g): side by side
                self.random_effects_[term.name] = current.join(block)
                self.random_effects_cov_[term.name] = _block_diagonal(self.random_effects_cov_[term.name], covs)
                self.random_effect_draws_[term.name] = np.concatenate(
                    [self.random_effect_draws_[term.name], draws], axis=-1)
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

    def _design_for(self, X, new_levels, include_random):
        """``(X_fixed, offset, terms)`` of new rows."""
        check_is_fitted(self, "fixed_effects_")
        policy = self.new_levels if new_levels is None else new_levels
        if policy not in NEW_LEVEL_POLICIES:
            raise ParameterError(f"new_levels must be one of {NEW_LEVEL_POLICIES}, got {policy!r}")
        data = self._input_frame(X)
        X_fixed = self.fixed_design_.transform(data)
        offset = self.fixed_design_.offset(data)
        terms = self.random_design_.materialize(data, new_levels=policy) if include_random else ()
        return X_fixed, offset, terms

    def _linear_predictor_for(self, X, new_levels, include_random) -> np.ndarray:
        return self._internal_linear_predictor(*self._design_for(X, new_levels, include_random))

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
        data = self._input_frame(X)
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

    # -- after the fit: lme4's toolkit ------------------------------------------------------
    def _refit(self, *, response=None, method=None, random_state=None):
        """A copy fitted again to the training rows: with another response (the
        bootstrap) or another method (anova's ML refit).  Silent."""
        check_is_fitted(self, "fixed_effects_")
        new = clone(self)
        new.set_params(verbose=0, random_state=random_state)
        if method is not None:
            new.set_params(method=method)
        for name in ("formula_spec_", "family_", "response_design_", "fixed_design_", "random_design_", "classes_"):
            if hasattr(self, name):
                setattr(new, name, getattr(self, name))
        model = self.model_ if response is None else dataclasses.replace(
            self.model_, response=np.asarray(response, dtype=np.float64))
        new._fit_model(model, progress=False)
        return new

    @property
    def aic_(self) -> float | None:
        """Akaike's information criterion, ``-2 logLik + 2 npar`` (lme4's count of
        parameters; the REML criterion for a REML fit, as lme4's ``AIC``)."""
        check_is_fitted(self, "fixed_effects_")
        if self.log_likelihood_ is None:
            return None
        return -2.0 * self.log_likelihood_ + 2.0 * results.count_parameters(self)

    @property
    def bic_(self) -> float | None:
        """Bayesian information criterion, ``-2 logLik + log(n) npar``."""
        check_is_fitted(self, "fixed_effects_")
        if self.log_likelihood_ is None:
            return None
        return -2.0 * self.log_likelihood_ + np.log(self.n_obs_) * results.count_parameters(self)

    def fixed_effects_table(self) -> pd.DataFrame:
        """The fixed-effects table of :meth:`summary` (lme4's ``coef(summary(m))``).

        Returns
        -------
        pandas.DataFrame
            Columns ``Estimate``, ``Std. Error``, ``t value`` (Gaussian) or ``z value``,
            and the two-sided normal p-value ``Pr(>|t|)`` or ``Pr(>|z|)``; one row per
            fixed effect.  The standard errors come from :attr:`fixed_effects_cov_`.
        """
        check_is_fitted(self, "fixed_effects_")
        return results.fixed_effects_table(self)

    def ranef(self, condvar=False):
        """Conditional means of the random effects, as lme4's ``ranef``.

        Parameters
        ----------
        condvar : bool, default False
            ``True`` returns lme4's ``as.data.frame(ranef(m, condVar = TRUE))``
            layout, with each level's conditional standard deviation: exact for the
            Gaussian family (given the estimated parameters, as lme4's), from the
            E-step draws for the others.

        Returns
        -------
        dict of str to pandas.DataFrame, or pandas.DataFrame
            ``condvar=False``: per grouping factor, one row per level and one column
            per coefficient (a copy of :attr:`random_effects_`).  ``condvar=True``: a
            long table with columns ``group``, ``term``, ``level``, ``condval`` and
            ``condsd``.  Each level's full conditional covariance is in
            :attr:`random_effects_cov_`.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> table = model.ranef(condvar=True)
        >>> list(table.columns), len(table)
        (['group', 'term', 'level', 'condval', 'condsd'], 30)
        """
        check_is_fitted(self, "fixed_effects_")
        if condvar:
            return results.ranef_frame(self)
        return {name: frame.copy() for name, frame in self.random_effects_.items()}

    def residuals(self, X=None, y=None, *, scaled=False) -> np.ndarray:
        """Response residuals: observed minus fitted, random effects included.

        Parameters
        ----------
        X : pandas.DataFrame, optional
            Rows to compute them on (held-out data, say); by default the training rows.
        y : array-like, optional
            The response of ``X``; by default the formula's left-hand side on ``X``.
        scaled : bool, default False
            Divide by the response's standard deviation at the fitted mean: the
            residual sd for the Gaussian family (lme4's ``resid(m, scaled = TRUE)``),
            Pearson residuals for the others.

        Returns
        -------
        numpy.ndarray of shape (n_rows,)
            On the scale of :meth:`predict` (proportions for binomial responses, 0/1
            for bernoulli ones).
        """
        check_is_fitted(self, "fixed_effects_")
        results.check_family_for_residuals(self.family_)
        params = self.model_parameters_
        if X is None:
            if y is not None:
                raise ParameterError("y needs the rows X it belongs to")
            model = self.model_
            eta = self._internal_linear_predictor(model.fixed_design, model.offset, model.random_terms)
            trials = model.trials
            observed = model.response if trials is None else model.response / trials
        else:
            data = self._input_frame(X)
            eta = self._linear_predictor_for(data, None, True)
            observed, trials = self._observed_for(data, y)
        mean = self.family_.mean(eta, params.family_params)
        residual = observed - mean
        if scaled:
            variance = self.family_.variance(mean, params.family_params, trials=trials)
            per_unit = variance if trials is None else variance / trials**2
            residual = residual / np.sqrt(np.maximum(per_unit, 1e-300))
        return residual

    def _observed_for(self, data, y):
        """The observed response of ``data`` on the scale of :meth:`predict`, and the trials."""
        if y is not None:
            return np.asarray(y, dtype=np.float64), None
        if self.response_design_ is None:
            raise DataError("the formula has no response (left-hand side) to evaluate; pass y explicitly")
        values, trials = self.response_design_.evaluate(data)
        values = np.asarray(values, dtype=np.float64)
        return (values, None) if trials is None else (values / trials, np.asarray(trials, dtype=np.float64))

    def confint(self, *, method="wald", level=0.95, n_boot=200, random_state=None) -> pd.DataFrame:
        """Confidence intervals, as lme4's ``confint``.

        Parameters
        ----------
        method : {"wald", "bootstrap"}, default "wald"
            ``"wald"``: estimate +- z SE for the fixed effects (the variance
            parameters get NaN, as in lme4).  ``"bootstrap"``: parametric bootstrap
            percentile intervals for every parameter: ``n_boot`` responses simulated
            from the fitted model on the training rows, each refitted (lme4's
            ``confint(method = "boot")``).  ``"profile"`` is not available.
        level : float, default 0.95
        n_boot : int, default 200
            Bootstrap replicates (each a full fit).
        random_state : int, optional
            Seed of the bootstrap.

        Returns
        -------
        pandas.DataFrame
            One row per parameter (named as in ``fit_summary_.parameter_names``:
            fixed effects, ``sd(group)``, ``sd(group, coef)``, ``cor(...)``,
            ``sigma``), columns ``"2.5 %"`` and ``"97.5 %"`` for ``level=0.95``.
            A bootstrap table records ``attrs["n_boot"]`` and
            ``attrs["n_not_converged"]``.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> model.confint().round(2)
                   2.5 %  97.5 %
        Intercept   0.72    1.30
        x           0.42    0.58
        sd(g)        NaN     NaN
        sigma        NaN     NaN
        """
        check_is_fitted(self, "fixed_effects_")
        return results.confidence_intervals(self, method=method, level=level, n_boot=n_boot,
                                            random_state=random_state)

    def simulate(self, n=1, *, X=None, posterior=False, random_state=None) -> pd.DataFrame:
        """New responses from the fitted model, as lme4's ``simulate``.

        Parameters
        ----------
        n : int, default 1
            Number of simulated responses per row.
        X : pandas.DataFrame, optional
            Rows to simulate for; by default the training rows.  Their grouping
            levels must have been seen in fit.
        posterior : bool, default False
            ``False`` draws new random effects from their fitted distribution
            (lme4's default, ``use.u = FALSE``).  ``True`` draws them from the
            E-step's kept draws: the posterior predictive distribution of the rows'
            own levels (given the estimated parameters).
        random_state : int, optional

        Returns
        -------
        pandas.DataFrame
            One column per simulation (``sim_1``, ...), one row per row of ``X``:
            responses on the scale of ``y`` (success counts for a binomial response,
            class labels for a classifier).

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> model.simulate(3, random_state=0).shape
        (600, 3)
        """
        check_is_fitted(self, "fixed_effects_")
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ParameterError(f"n must be a positive integer, got {n!r}")
        if X is None:
            bound = self.model_
        else:
            data = self._input_frame(X)
            trials = None
            if self.response_design_ is not None and self.response_design_.is_cbind:
                trials = self.response_design_.evaluate(data)[1]
            bound = MixedModel(self.family_, self.fixed_design_.transform(data), None,
                               self.random_design_.materialize(data, new_levels="error"),
                               self.fixed_design_.column_names, offset=self.fixed_design_.offset(data),
                               trials=trials)
        rng = np.random.default_rng(random_state)
        simulated = results.simulate_responses(self, bound, n=int(n), rng=rng, posterior=posterior)
        if hasattr(self, "classes_"):
            simulated = np.asarray(self.classes_)[simulated.astype(int)]
        frame = pd.DataFrame(simulated.T, columns=[f"sim_{k + 1}" for k in range(int(n))])
        if X is not None:
            frame.index = data.index
        return frame

    def to_arviz(self):
        """The E-step's kept draws of the random effects as ArviZ ``InferenceData``.

        Returns
        -------
        arviz.InferenceData
            A ``posterior`` group with one variable per grouping factor, dimensions
            ``(chain, draw, <group>_level, <group>_coef)``, coordinates named by level
            and coefficient.  The draws are those of the E-steps in the averaging
            window (see ``fit_summary_.n_kept_draws``), so ``arviz.summary`` gives
            their R-hat and effective sample size.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> idata = model.to_arviz()
        >>> dict(idata.posterior["g"].sizes)["g_level"]
        30
        """
        check_is_fitted(self, "fixed_effects_")
        return results.to_arviz(self)


_PARAMETERS_DOC = """
    groups : str, int or list of them, optional
        Only without a formula (``formula=None``): the column(s) of ``X``, by name or
        position, whose levels each get a random intercept; every other column of
        ``X`` is a fixed effect (with an intercept), and the response is ``y``.  With
        a 2-D array the columns are named ``x0``, ``x1``, ...
    missing : {"drop", "raise"}, default "drop"
        What ``fit`` does with rows that have a missing value (NaN, None, pandas.NA)
        in a column the model uses, in ``y`` or in ``sample_weight``: ``"drop"``
        leaves them out with a :class:`~mixedfx.DataWarning` that counts them (lme4's
        default, ``na.omit``; ``dropped_rows_`` lists them); ``"raise"`` raises
        :class:`~mixedfx.DataError`.  Prediction never drops rows: it returns one
        value per row of ``X``, so a missing value in a fixed-effect column raises
        there, and one in a grouping column follows ``new_levels``.
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
    distribute : tf.distribute.Strategy, optional
        Fit on several devices: a :class:`tf.distribute.MirroredStrategy` (the GPUs of
        one host) or a :class:`tf.distribute.MultiWorkerMirroredStrategy` (several
        hosts).  The rows are sharded across the replicas, each computes its shard's
        log-likelihood, gradient and M-step sums, and the sums are all-reduced; the
        parameters and random effects are replicated (see :doc:`/scaling`).  ``None``
        (the default) fits on one device.  A strategy is not pickled with the
        estimator.
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
    n_iter_ : int
        EM iterations run (``fit_summary_.n_iter``).
    dropped_rows_ : pandas.Index
        Index labels of the rows of ``X`` left out for missing values (see
        ``missing``); empty when none were.
    n_features_in_ : int
        Number of columns of ``X`` in ``fit``.
    feature_names_in_ : numpy.ndarray
        Their names, when they are all strings.
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
    formula : str or None
        An lme4 formula, e.g. ``"y ~ service + (1 | s) + (1 | d) + (1 | dept)"``.
        The left-hand side may be omitted when ``y`` is passed to :meth:`fit`; a
        binomial response is written ``cbind(successes, failures) ~ ...``.  ``None``
        fits ``y`` on every column of ``X`` with a random intercept per level of
        ``groups`` (see below).
    family : {"gaussian", "poisson", "negative_binomial", "binomial"} or Family, default "gaussian"
        Response family (a :class:`~mixedfx.model.Binomial` instance chooses the
        probit link).
    method : {"ml", "reml"}, default "ml"
        Maximum likelihood, or restricted maximum likelihood (Gaussian family only;
        lme4's ``REML=TRUE``, its ``lmer`` default).  ML is the default here because
        it is defined for every family, and because likelihood-ratio tests, AIC and
        BIC between models with different fixed effects are valid for ML fits only
        (lme4's ``anova`` refits REML models with ML for that reason).  REML's
        variance estimates are less biased in small samples: the residual variance
        is divided by ``n - p`` instead of ``n``, in effect.
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
        method="ml",
        groups=None,
        missing="drop",
        new_levels="population",
        max_iter=500,
        tol=0.1,
        n_chains=2,
        n_draws=5,
        n_leapfrog_steps=8,
        stopping_rule=None,
        random_state=None,
        verbose=1,
        distribute=None,
    ):
        self.formula = formula
        self.family = family
        self.method = method
        self.groups = groups
        self.missing = missing
        self.new_levels = new_levels
        self.max_iter = max_iter
        self.tol = tol
        self.n_chains = n_chains
        self.n_draws = n_draws
        self.n_leapfrog_steps = n_leapfrog_steps
        self.stopping_rule = stopping_rule
        self.random_state = random_state
        self.verbose = verbose
        self.distribute = distribute

    def predict(self, X, *, new_levels=None, include_random=True, return_std=False):
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
        return_std : bool, default False
            Also return the standard error of each prediction (see
            :meth:`predict_interval`).

        Returns
        -------
        numpy.ndarray of shape (n_rows,)
            The mean on the response scale (a proportion for the binomial family),
            given the conditional means of the random effects of each row's levels; a
            level not seen in ``fit`` contributes zero for all its coefficients under
            ``"population"``.
        std : numpy.ndarray of shape (n_rows,)
            With ``return_std=True``: the standard error of the mean, by the delta
            method through the inverse link.
        """
        X_fixed, offset, terms = self._design_for(X, new_levels, include_random)
        eta = self._internal_linear_predictor(X_fixed, offset, terms)
        mean = self.family_.mean(eta, self.model_parameters_.family_params)
        if not return_std:
            return mean
        variance = results.linear_predictor_variance(self, X_fixed, terms, include_random=include_random)
        slope = np.abs(self._mean_slope(eta))
        return mean, slope * np.sqrt(variance)

    def _mean_slope(self, eta):
        """d mean / d eta, numerically (exact enough for the delta method)."""
        step = 1e-5 * np.maximum(1.0, np.abs(eta))
        family_params = self.model_parameters_.family_params
        return (self.family_.mean(eta + step, family_params) - self.family_.mean(eta - step, family_params)) / (2 * step)

    def predict_interval(self, X, *, alpha=0.05, kind="prediction", new_levels=None, include_random=True):
        """Prediction or confidence intervals that include the random effects' uncertainty.

        The linear predictor's variance adds the fixed effects' covariance to each
        row's random effects' conditional covariance (exact for the Gaussian family,
        from the E-step draws otherwise), or to their fitted covariance for a level
        not seen in fit; the covariance between the two estimates is left out, as in
        merTools' ``predictInterval`` for lme4.

        Parameters
        ----------
        X : pandas.DataFrame
        alpha : float, default 0.05
            One minus the coverage.
        kind : {"prediction", "mean"}, default "prediction"
            ``"mean"``: an interval for the conditional mean, on the linear
            predictor's scale and mapped through the inverse link.
            ``"prediction"``: for a new observation; for the Gaussian family it adds
            the residual variance; for the others, the ``alpha/2`` and ``1-alpha/2``
            quantiles of the response at the ends of the mean's interval.
        new_levels, include_random
            As in :meth:`predict`.

        Returns
        -------
        pandas.DataFrame
            Columns ``fit`` (as :meth:`predict`), ``lower`` and ``upper``, indexed
            like ``X``.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> table = model.predict_interval(data.head(3))
        >>> list(table.columns), bool((table["lower"] < table["fit"]).all())
        (['fit', 'lower', 'upper'], True)
        """
        if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
            raise ParameterError(f"alpha must be a number between 0 and 1, got {alpha!r}")
        if kind not in ("prediction", "mean"):
            raise ParameterError(f"kind must be 'prediction' or 'mean', got {kind!r}")
        X_fixed, offset, terms = self._design_for(X, new_levels, include_random)
        eta = self._internal_linear_predictor(X_fixed, offset, terms)
        variance = results.linear_predictor_variance(self, X_fixed, terms, include_random=include_random)
        family_params = self.model_parameters_.family_params
        z = stats.norm.ppf(1.0 - alpha / 2.0)
        fit = self.family_.mean(eta, family_params)
        if isinstance(self.family_, Gaussian):
            if kind == "prediction":
                variance = variance + float(family_params["sigma"]) ** 2
            lower, upper = fit - z * np.sqrt(variance), fit + z * np.sqrt(variance)
        else:
            ends = [self.family_.mean(eta + sign * z * np.sqrt(variance), family_params) for sign in (-1.0, 1.0)]
            lower, upper = np.minimum(*ends), np.maximum(*ends)
            if kind == "prediction":
                lower = self._response_quantiles(lower, alpha / 2.0)
                upper = self._response_quantiles(upper, 1.0 - alpha / 2.0)
        return pd.DataFrame({"fit": fit, "lower": lower, "upper": upper}, index=self._input_frame(X).index)

    def _response_quantiles(self, mean, q):
        """Quantile ``q`` of a response with mean ``mean`` (scipy's discrete quantiles)."""
        name = self.family_.name
        if name == "poisson":
            return stats.poisson.ppf(q, mean)
        if name == "negative_binomial":
            size = float(self.model_parameters_.family_params["dispersion"])
            return stats.nbinom.ppf(q, size, size / (size + mean))
        raise ParameterError(
            f"kind='prediction' is not available for family {name!r} (it depends on each row's trials); "
            "use kind='mean', or simulate()"
        )

    def score(self, X, y=None, sample_weight=None):
        """Coefficient of determination R^2 of :meth:`predict` on ``X``.

        When ``y`` is omitted, the response is the formula's left-hand side evaluated
        on ``X`` (a proportion for ``cbind`` responses).
        """
        check_is_fitted(self, "fixed_effects_")
        data = self._input_frame(X)
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
    formula : str or None
        An lme4 formula, or ``None`` with ``groups``; see :class:`MixedEffectsRegressor`.
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.classifier_tags.multi_class = get_family(self.family).name != "bernoulli"  # two classes only
        except (ParameterError, TypeError):
            pass  # an invalid family is reported by fit
        return tags

    def __init__(
        self,
        formula=None,
        *,
        family="bernoulli",
        groups=None,
        missing="drop",
        new_levels="population",
        max_iter=500,
        tol=0.1,
        n_chains=2,
        n_draws=5,
        n_leapfrog_steps=8,
        stopping_rule=None,
        random_state=None,
        verbose=1,
        distribute=None,
    ):
        self.formula = formula
        self.family = family
        self.groups = groups
        self.missing = missing
        self.new_levels = new_levels
        self.max_iter = max_iter
        self.tol = tol
        self.n_chains = n_chains
        self.n_draws = n_draws
        self.n_leapfrog_steps = n_leapfrog_steps
        self.stopping_rule = stopping_rule
        self.random_state = random_state
        self.verbose = verbose
        self.distribute = distribute

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
        elif len(classes) > 2 and type_of_target(np.asarray(values)) == "continuous":
            raise DataError(
                f"Unknown label type: continuous. A bernoulli response needs exactly 2 classes, found "
                f"{len(classes)} distinct numbers; use MixedEffectsRegressor for a continuous response"
            )
        elif len(classes) != 2:
            raise DataError(
                f"a bernoulli response needs exactly 2 classes, found {len(classes)}"
                + (f" ({', '.join(map(str, classes[:6]))}{', ...' if len(classes) > 6 else ''})" if len(classes) else "")
                + ("; use family='ordinal' for ordered categories. Only binary classification is supported by "
                   "the bernoulli family (the type of the target is multiclass)" if len(classes) > 2 else "")
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
        probabilities = self.predict_proba(X, new_levels=new_levels, include_random=include_random)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def score(self, X, y=None, sample_weight=None):
        """Accuracy of :meth:`predict` on ``X`` (the response from the formula when ``y``
        is omitted)."""
        check_is_fitted(self, "fixed_effects_")
        data = self._input_frame(X)
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


def _block_diagonal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per level, the block-diagonal matrix of ``a[j]`` and ``b[j]``."""
    da, db = a.shape[-1], b.shape[-1]
    out = np.zeros(a.shape[:-2] + (da + db, da + db))
    out[..., :da, :da], out[..., da:, da:] = a, b
    return out


def _in_formula(error: FormulaError, text: str) -> FormulaError:
    """A design-layer FormulaError about a piece of the formula, pointed at in the whole."""
    if error.position is not None or not error.formula or error.formula == text:
        return error
    position = text.find(error.formula)
    if position < 0:
        return error
    return FormulaError(error.message, formula=text, position=position)


def _response_array(y, n_rows: int):
    """``y`` as a 1-D array (a pandas Categorical keeps its category order), or None."""
    if y is None:
        return None
    if isinstance(y, pd.Series) and isinstance(y.dtype, pd.CategoricalDtype):
        raw = y.array
    elif isinstance(y, pd.Series) and pd.api.types.is_extension_array_dtype(y.dtype) and y.dtype.kind in "biuf":
        raw = y.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raw = np.asarray(y)
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = column_or_1d(raw, warn=True)  # with scikit-learn's DataConversionWarning
        if raw.dtype.kind == "c":
            raise DataError("Complex data not supported: y holds complex numbers")
        if raw.dtype == object and raw.ndim == 1 and pd.api.types.infer_dtype(raw, skipna=True) in (
                "integer", "floating", "mixed-integer-float", "decimal"):
            raw = pd.to_numeric(pd.Series(raw)).to_numpy(dtype=np.float64)  # numbers stored as objects
    if raw.ndim != 1 or raw.shape[0] != n_rows:
        raise DataError(f"y must be one-dimensional with {n_rows} values, got shape {raw.shape}")
    return raw


def _weight_array(sample_weight, n_rows: int):
    if sample_weight is None:
        return None
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"sample_weight must be numeric: {exc}") from None
    if weights.shape != (n_rows,):
        raise DataError(f"sample_weight must hold {n_rows} values, got shape {weights.shape}")
    return weights


#: Gaussian responses are fitted on scales (standard deviations) between these bounds.
RESPONSE_SCALE_LIMITS = (1e-50, 1e50)


def _check_residual_variance(model: MixedModel, name: str) -> None:
    """Refuse a Gaussian response that the fixed effects reproduce exactly: its residual
    variance is zero and the likelihood grows without bound."""
    y = model.response - (0.0 if model.offset is None else model.offset)
    coefficients = np.linalg.lstsq(model.fixed_design, y, rcond=None)[0]
    residual = y - model.fixed_design @ coefficients
    total = np.sum((y - y.mean()) ** 2)
    if np.sum(residual**2) <= 1e-20 * max(total, np.finfo(float).tiny):
        raise DataError(
            f"the fixed effects reproduce the response {name!r} exactly (zero residuals): the residual variance "
            "is zero and the likelihood has no maximum; is the response also a predictor?"
        )


def _check_response_values(values: np.ndarray, family, name: str) -> None:
    """Refuse a constant response (lme4's "Response is constant") and a Gaussian response
    on a scale float64 sums of squares cannot hold."""
    values = np.asarray(values, dtype=np.float64)
    if values.size and np.all(values == values[0]):
        raise DataError(
            f"Response is constant: every value of {name!r} is {values[0]:g}, so there is no variation for the "
            "model to explain (lme4 refuses this too)"
        )
    if isinstance(family, Gaussian):
        peak = float(np.max(np.abs(values)))
        scale = peak * float(np.std(values / peak)) if peak > 0 else 0.0  # no overflow
        low, high = RESPONSE_SCALE_LIMITS
        if not low <= scale <= high:
            raise DataError(
                f"the response {name!r} has standard deviation {scale:.3g}, outside the {low:g} to {high:g} that "
                "a float64 fit handles; rescale it (multiply by a power of ten: the estimates scale with it)"
            )
