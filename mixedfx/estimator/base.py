"""What the regressor and the classifier share: reading the input, fitting, the
fitted attributes and lme4's toolkit after the fit.

``fit`` parses the formula, binds the data to it (:func:`mixedfx.design.bind_data`),
binds the family (:func:`mixedfx.model.bind_model`), runs
:func:`~mixedfx.inference.fit_mcem`, finishes the fit
(:func:`mixedfx.inference.finish.finish_fit`) and stores the tables of
:mod:`mixedfx.tables`; nothing is set on the estimator until all of that succeeded.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from mixedfx import compile_cache, lmertest, tables
from mixedfx._tf import start_xla
from mixedfx.design import (
    MISSING_POLICIES,
    NEW_LEVEL_POLICIES,
    as_frame,
    bind_data,
    clean_columns,
    formula_columns,
    is_arrow_source,
    read_arrow,
)
from mixedfx.estimator.toolkit import AfterFitMethods
from mixedfx.exceptions import (
    ConvergenceWarning,
    DataError,
    FitError,
    ModelFormatError,
    ParameterError,
    SamplerWarning,
    did_you_mean,
)
from mixedfx.formula import parse_formula
from mixedfx.formula.update import select_random_terms
from mixedfx.inference import MCEMOptions, MonteCarloErrorRule, fit_mcem
from mixedfx.inference.distributed import check_strategy
from mixedfx.inference.exact import exact_fit
from mixedfx.inference.finish import finish_fit
from mixedfx.inference.layout import wald_covariance
from mixedfx.model import (
    MixedModel,
    ModelParameters,
    bind_model,
    build_joint_distribution,
    get_family,
    numpy_linear_predictor,
)
from mixedfx.model.joint import numpy_family_params
from mixedfx.report import format_summary

__all__ = ["MixedEffectsModel"]

#: The format of a pickled or saved estimator: raised whenever the fitted state changes
#: in a way an older mixedfx could not read (or this one could not read an older one's).
MODEL_FORMAT = 2  # 2: FitSummary.by_quadrature


def format_mismatch(version, model_format) -> str:
    """The message of a model that another mixedfx wrote in another format."""
    from mixedfx import __version__

    return (f"this model was written by mixedfx {version or 'unknown'} (format {model_format}); this is mixedfx "
            f"{__version__} (format {MODEL_FORMAT}), which cannot read it: load it with mixedfx {version or '?'} "
            "and refit, or refit from the data")


class MixedEffectsModel(AfterFitMethods, BaseEstimator):
    """What the regressor and the classifier share: fitting, designs and outputs.

    Not an estimator on its own: :class:`~mixedfx.MixedEffectsRegressor` and
    :class:`~mixedfx.MixedEffectsClassifier` add their parameters and predictions.
    """

    #: Family names this estimator accepts (for messages).
    _families: tuple[str, ...] = ()
    #: Whether this estimator fits the families whose response is a class label.
    _classifier: bool = False

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
        if self.options is not None and not isinstance(self.options, MCEMOptions):
            raise ParameterError(f"options must be a mixedfx.inference.MCEMOptions or None, got {self.options!r}")
        family = get_family(self.family)
        if self._method() not in ("ml", "reml"):
            raise ParameterError(f"method must be 'ml' or 'reml', got {self._method()!r}")
        if self._method() == "reml" and not family.conjugate_gaussian:
            raise ParameterError(
                f"method='reml' is defined for the Gaussian family only (family={family.name!r} is fitted by ML, "
                "as glmer does)"
            )
        if self._distribute() is not None:
            check_strategy(self._distribute())
        self._validate_ddf(family)
        if family.is_classification is not self._classifier:
            other = "MixedEffectsClassifier" if family.is_classification else "MixedEffectsRegressor"
            raise ParameterError(
                f"{type(self).__name__} fits the families {', '.join(self._families)}; "
                f"use {other} for family={family.name!r}"
            )
        return family

    def _input_frame(self, X, *, fitting: bool = False, spec=None, into: dict | None = None) -> pd.DataFrame:
        """``X`` as a pandas DataFrame (converted from polars; read from Arrow or
        Parquet, only the formula's columns; from an array only without a formula),
        with nullable dtypes made plain; never the caller's object changed.  At fit,
        records ``n_features_in_`` and ``feature_names_in_`` in ``into``."""
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
            into["n_features_in_"] = data.shape[1]
            if named:
                into["feature_names_in_"] = np.asarray(data.columns, dtype=object)
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

    def _validate_ddf(self, family) -> None:
        """The ``ddf`` parameter (the regressor's): one of lmerTest's choices, and
        Kenward-Roger only with a REML fit of the Gaussian family (as lmerTest)."""
        if not hasattr(self, "ddf"):
            return
        ddf = lmertest.check_ddf(self.ddf)
        if ddf == "kenward-roger" and family.conjugate_gaussian and self._method() != "reml":
            raise ParameterError("ddf='kenward-roger' needs method='reml' (as lmerTest and pbkrtest); "
                                 "use ddf='satterthwaite' with method='ml'")

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
        # The cached df pieces (mixedfx.lmertest) are recomputed after unpickling.
        from mixedfx import __version__

        state = super().__getstate__()
        state = {name: value for name, value in state.items() if name != "_ddf_cache"}
        if state.get("distribute") is not None:
            state = {**state, "distribute": None}
        return {**state, "_mixedfx_version": __version__, "_mixedfx_format": MODEL_FORMAT}

    def __setstate__(self, state):
        state = dict(state)
        version, model_format = state.pop("_mixedfx_version", None), state.pop("_mixedfx_format", None)
        if model_format != MODEL_FORMAT:
            raise ModelFormatError(format_mismatch(version, model_format))
        super().__setstate__(state)

    def save(self, path):
        """Write the fitted estimator to one plain file (JSON and npz in a zip; no pickle).

        Read it back with :func:`mixedfx.load`; :doc:`/prediction` describes the format.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (replaced if it exists).

        Examples
        --------
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.mixedfx"
        >>> model.save(path)
        >>> mixedfx.load(path).predict(data.head(3)).tolist() == model.predict(data.head(3)).tolist()
        True
        """
        from mixedfx.persistence import save

        save(self, path)

    def _method(self) -> str:
        method = getattr(self, "method", "ml")
        return method.lower() if isinstance(method, str) else method

    # -- fitting ------------------------------------------------------------------------
    def _encode_response(self, family, raw, into: dict):
        """Hook for the classifier's label encoding (it records ``classes_`` in ``into``);
        returns ``(family, values)``."""
        return family, raw

    def fit(self, X, y=None, sample_weight=None, *, trials=None):
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
            Prior weights, as lme4's ``weights=`` (finite, non-negative; rows of weight
            zero are left out and listed in ``dropped_rows_``).  Gaussian: precisions
            (row ``i``'s residual variance is ``sigma^2 / w_i``); every other family:
            each row's log-likelihood times its weight, so that an integer weight
            counts the row that many times.  Deprecated: with a binomial proportion
            response and no trials, the trials (use ``trials=``).
        trials : array-like of shape (n_rows,), optional
            Binomial family: the number of trials of each row, the response given as
            successes or as proportions (instead of ``cbind(successes, failures)``).

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
            ``fit_summary_.n_retries``); no estimates are returned then, and an
            estimator fitted before keeps its fitted attributes.
        """
        family = self._validate_params()
        fitted = {}
        spec = None if self.formula is None else parse_formula(self.formula)
        data = self._input_frame(X, fitting=True, spec=spec, into=fitted)
        spec = spec if spec is not None else parse_formula(self._formula_text(data))
        if y is None and spec.response is None:
            raise DataError(f"{type(self).__name__} requires y to be passed, but the target y is None, and the "
                            "formula has no response (left-hand side) to evaluate instead")
        bound = bind_data(spec, data, y=y, sample_weight=sample_weight, trials=trials, missing=self.missing,
                          ziformula=getattr(self, "ziformula", None), dispformula=getattr(self, "dispformula", None))
        model = bind_model(family, bound, encode=lambda family, raw: self._encode_response(family, raw, fitted))
        fitted.update(training_data_=data, training_y_=y, training_sample_weight_=sample_weight,
                      training_trials_=trials)
        fitted.update(formula_spec_=spec, family_=model.family, response_design_=bound.response_design,
                      fixed_design_=bound.fixed_design, random_design_=bound.random_design,
                      dropped_rows_=bound.dropped_rows, zi_design_=bound.zi_design,
                      disp_design_=bound.disp_design)
        start_xla()  # the XLA service's start-up logs, silenced once per process
        compile_cache.refresh()  # programs other processes compiled since
        try:
            fitted.update(self._fit_model(model, bound.random_design))
        finally:
            compile_cache.publish()  # programs this fit compiled, for other processes
        self._set_fitted(fitted)
        return self

    def _options(self) -> MCEMOptions:
        """The ``options`` record with the estimator's own ``n_chains``, ``n_draws``,
        ``n_leapfrog_steps`` and ``max_iter``."""
        base = self.options if self.options is not None else MCEMOptions()
        return dataclasses.replace(base, n_chains=self.n_chains, n_draws=self.n_draws,
                                   n_leapfrog_steps=self.n_leapfrog_steps, max_iter=self.max_iter)

    def _fit_model(self, model: MixedModel, random_design, *, progress: bool | None = None) -> dict:
        """Run Monte Carlo EM on a bound model and finish it; returns the fitted
        attributes (nothing is set on the estimator)."""
        seed = check_random_state(self.random_state).randint(0, 2**31 - 1, size=2)
        options = self._options()
        rule = self.stopping_rule if self.stopping_rule is not None else MonteCarloErrorRule(tol=float(self.tol))
        method = self._method()
        if method == "reml" and not model.family.conjugate_gaussian:  # a Gaussian with a dispformula
            raise ParameterError(f"method='reml' is not supported for the {model.family} (dispformula with the "
                                 "Gaussian family: a heteroscedastic model, fitted by ML only); use method='ml'")
        exact = model.exact_fixed_effects()
        if exact is not None:  # nothing to estimate but the fixed effects: lm's exact fit
            finished = exact_fit(model, exact, method=method, stacklevel=4)
        else:
            result = fit_mcem(model, method=method, options=options, stopping_rule=rule, seed=seed,
                              progress=self.verbose > 0 if progress is None else progress,
                              distribute=self._distribute())
            finished = finish_fit(model, result, reml=method == "reml", seed=int(seed[0]),
                                  distribute=self._distribute(), max_dense_entries=options.max_dense_entries,
                                  stacklevel=4)
        fitted = _estimates(model, random_design, finished)
        fitted.update(model_=model, method_=method, n_obs_=model.n_obs, n_iter_=finished.summary.n_iter,
                      fit_summary_=finished.summary)
        _check_finite_estimates(fitted)
        _warn_about_fit(finished.summary, model.family, options.rhat_warning)
        return fitted

    def _set_fitted(self, fitted: dict) -> None:
        """Set the fitted attributes at once; drop those of an earlier fit that this one lacks
        (and the cached df pieces of the earlier fit).

        One assignment of a new ``__dict__``: an interrupt (Ctrl-C) lands before or
        after it, never between two attributes."""
        stale = {"feature_names_in_", "cutpoints_", "dispersion_", "zi_fixed_effects_", "disp_fixed_effects_",
                 "wald_cov_", "_ddf_cache"} - set(fitted)
        state = {name: value for name, value in self.__dict__.items() if name not in stale}
        state.update(fitted)
        self.__dict__ = state

    # -- prediction ---------------------------------------------------------------------
    def _term_effects(self) -> list:
        """Per random term, its levels' conditional means, ``(num_levels, dim)``."""
        return [self.random_effects_[term.name][list(term.coef_names)].to_numpy()
                for term in self.random_design_.terms]

    def _internal_linear_predictor(self, X_fixed, offset, terms) -> np.ndarray:
        """The linear predictor with the fitted (internal) parameters, numpy."""
        return numpy_linear_predictor(X_fixed, self.model_parameters_.fixed_effects, self._term_effects(), terms,
                                      offset=offset)

    def _kept_terms(self, include_random, re_form) -> tuple[bool, ...]:
        """Per term of ``random_design_``, whether ``re_form`` (or the older
        ``include_random``) keeps it."""
        if include_random is not True:
            if include_random is not False:
                raise ParameterError(f"include_random must be True or False, got {include_random!r}")
            if re_form is not None:
                raise ParameterError("give re_form or include_random=False, not both (include_random=False is "
                                     "re_form='~0')")
            re_form = "~0"
        kept = select_random_terms(self.formula_spec_, re_form)
        # a term of the ziformula: kept with every term (glmmTMB's re.form = NULL), else left out
        return tuple(kept[self.formula_spec_.random.index(term.spec)] if term.predictor == "cond" else re_form is None
                     for term in self.random_design_.terms)

    def _design_for(self, X, new_levels, include_random, re_form=None):
        """``(X_fixed, offset, terms)`` of new rows; a term that ``re_form`` leaves out
        has ``z`` zero, so that it adds nothing to the prediction nor its variance."""
        check_is_fitted(self, "fixed_effects_")
        policy = self.new_levels if new_levels is None else new_levels
        if policy not in NEW_LEVEL_POLICIES:
            raise ParameterError(f"new_levels must be one of {NEW_LEVEL_POLICIES}, got {policy!r}")
        kept = self._kept_terms(include_random, re_form)
        data = self._input_frame(X)
        X_fixed = self.fixed_design_.transform(data)
        offset = self.fixed_design_.offset(data)
        terms = self.random_design_.materialize(data, new_levels=policy) if any(kept) else ()
        terms = tuple(term if keep else dataclasses.replace(term, z=np.zeros((len(data), term.dim)))
                      for term, keep in zip(terms, kept))
        return X_fixed, offset, terms

    def _family_params_for(self, terms) -> dict:
        """The fitted family parameters with, for rows of ``terms`` (from :meth:`_design_for`),
        the random parts of the family's own linear predictors (glmmTMB's ``ziformula``
        terms), as the family reads them."""
        params = dict(self.model_parameters_.family_params)
        if not terms:
            return params
        return dict(numpy_family_params(self.family_, params, self._term_effects(), terms,
                                        n_rows=len(terms[0].group_index)))

    def _zi_matrix(self, data: pd.DataFrame):
        """The zero-inflation design of ``data``'s rows (``ziformula`` replayed), or ``None``."""
        design = getattr(self, "zi_design_", None)
        return None if design is None else design.transform(data)

    def _family_design(self, data: pd.DataFrame):
        """The designs of the family's own linear models on ``data``'s rows (``ziformula``
        and ``dispformula`` replayed), by key, or ``None``."""
        designs = {key: getattr(self, f"{key}_design_", None) for key in ("zi", "disp")}
        return {key: design.transform(data) for key, design in designs.items() if design is not None} or None

    def _linear_predictor_for(self, X, new_levels, include_random, re_form=None) -> np.ndarray:
        return self._internal_linear_predictor(*self._design_for(X, new_levels, include_random, re_form))

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
                           offset=self.fixed_design_.offset(data), trials=trials,
                           family_design=self._family_design(data))
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


def _estimates(model: MixedModel, random_design, finished) -> dict:
    """The fitted attributes of the estimates: the family reports its fixed effects
    (an ordinal model's internal intercept becomes its thresholds), the tables are
    built by :mod:`mixedfx.tables`."""
    params, family = finished.parameters, model.family
    fixed_cov, blocks, block_covs = finished.fixed_effects_cov, family.coefficient_blocks(), []
    joint = finished.wald_cov
    if blocks:  # zi or disp coefficients: their correlation with the fixed effects counts
        if joint is None:  # the Gaussian family's exact finish computes none
            joint = wald_covariance(model, params, finished.conditional_means)
        p, end = len(model.fixed_names), len(joint)
        fixed_cov, start = joint[:p, :p], end - sum(len(names) for _, names in blocks)
        for _, names in blocks:  # at the end of the family's parameters, in order
            block_covs.append(joint[start:start + len(names), start:start + len(names)])
            start += len(names)
    names, beta, cov, thresholds = family.report_fixed_effects(
        model.fixed_names, params.fixed_effects, fixed_cov, params.family_params)
    terms = random_design.terms
    effects, covariances, draws = tables.random_effects_frames(
        random_design, finished.conditional_means, finished.conditional_covs, finished.draws)
    eta = numpy_linear_predictor(model.fixed_design, params.fixed_effects, finished.conditional_means,
                                 model.random_terms, offset=model.offset)
    fitted = {
        "model_parameters_": params,
        "log_likelihood_": finished.log_likelihood,
        "log_likelihood_se_": finished.log_likelihood_se,
        "log_likelihood_method_": finished.log_likelihood_method,
        "log_likelihood_laplace_": finished.log_likelihood_laplace,
        "fixed_effects_": pd.Series(beta, index=names, name="estimate", dtype=float),
        "fixed_effects_cov_": pd.DataFrame(cov, index=names, columns=names),
        "random_cov_": tables.random_cov_frames(terms, params.random_cov),
        "variance_components_": tables.variance_components_frame(
            terms, params.random_cov, residual_sd=family.residual_sd(params.family_params)),
        "random_effects_": effects,
        "random_effects_cov_": covariances,
        "random_effect_draws_": draws,
        "residual_quantiles_": tables.residual_quantiles(family, model, numpy_family_params(
            family, params.family_params, finished.conditional_means, model.random_terms, n_rows=model.n_obs), eta),
    }
    if thresholds is not None:
        fitted["cutpoints_"] = tables.thresholds_series(family, thresholds)
    if "dispersion" in family.parameter_names:
        fitted["dispersion_"] = float(params.family_params["dispersion"])
    if blocks:  # kept: predict_interval reads the fixed effects' covariance with the family's
        labels = list(model.fixed_names) + list(family.parameter_labels())
        labels = labels if len(labels) == len(joint) else list(range(len(joint)))
        fitted["wald_cov_"] = pd.DataFrame(joint, index=labels, columns=labels)
    for (key, names), block_cov in zip(blocks, block_covs):
        fitted[f"{key}_fixed_effects_"] = tables.coefficient_table(params.family_params[key], names, block_cov)
    return fitted


def _check_finite_estimates(fitted: dict) -> None:
    """Never hand out a NaN estimate: raise instead (the E-step's recovery failed)."""
    components = fitted["variance_components_"]
    pieces = {"fixed effect": fitted["fixed_effects_"],
              "variance": components.loc[components["var2"].isna()].set_index("var1", drop=False)["vcov"]}
    if "cutpoints_" in fitted:
        pieces["cutpoint"] = fitted["cutpoints_"]
    if "dispersion_" in fitted:
        pieces["dispersion"] = pd.Series([fitted["dispersion_"]], index=["dispersion"])
    for key, kind in (("zi", "zero-inflation effect"), ("disp", "dispersion effect")):
        if f"{key}_fixed_effects_" in fitted:
            pieces[kind] = fitted[f"{key}_fixed_effects_"]["Estimate"]
    bad = [f"{kind} {name}" for kind, values in pieces.items()
           for name, value in values.items() if not np.isfinite(value)]
    bad += [f"random effects of {name}" for name, frame in fitted["random_effects_"].items()
            if not np.isfinite(frame.to_numpy()).all()]
    if bad:
        raise FitError(f"the fit produced non-finite estimates ({', '.join(bad[:5])}); no estimates are returned. "
                       "Check the data for extreme values, or rescale them")


def _warn_about_fit(summary, family, rhat_warning: float) -> None:
    """Warn when Monte Carlo EM did not converge, or its chains disagree."""
    if not summary.converged:
        warnings.warn(
            f"Monte Carlo EM did not converge in {summary.n_iter} iterations "
            f"({summary.message}); the estimates average the last "
            f"{summary.n_averaged} iterations. Increase max_iter or tol.",
            ConvergenceWarning,
            stacklevel=4,
        )
    if summary.rhat > rhat_warning + summary.rhat_noise:
        affected = ("the kept draws (to_arviz, simulate(posterior=True)) are uncertain; the estimates and the "
                    "exact conditional means and sds are not" if family.conjugate_gaussian else
                    "the conditional means and sds of the random effects, and the intervals, are uncertain")
        warnings.warn(
            f"the E-step's chains disagree: R-hat of the random effects' mean squares {summary.rhat:.3f} > "
            f"{rhat_warning} + {summary.rhat_noise:.3f} (its chance level) over {summary.n_kept_draws} kept draws "
            f"per chain: {affected} (increase n_chains, n_draws or n_leapfrog_steps)",
            SamplerWarning,
            stacklevel=4,
        )
