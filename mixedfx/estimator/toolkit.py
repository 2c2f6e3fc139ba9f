"""lme4's toolkit after the fit, as methods of the estimators: refits and ``update``,
information criteria, the fixed-effects table with lmerTest's degrees of freedom, R²
and the ICC, conditional modes, residuals, confidence intervals, simulation and the
ArviZ export.

Each method checks that the estimator is fitted and calls the results layer
(:mod:`mixedfx.results`, :mod:`mixedfx.lmertest`, :mod:`mixedfx.explained_variance`,
:mod:`mixedfx.profile`), which reads the fitted attributes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.validation import check_is_fitted

from mixedfx import explained_variance, results
from mixedfx.exceptions import DataError, ParameterError
from mixedfx.formula.update import update_formula
from mixedfx.model import MixedModel

__all__ = ["AfterFitMethods"]


class AfterFitMethods:
    """The methods of :class:`~mixedfx.estimator.base.MixedEffectsModel` that work on a
    fitted estimator (a mixin: it holds no state of its own)."""

    # -- after the fit: lme4's toolkit ------------------------------------------------------
    def refitted(self, *, response=None, method=None, random_state=None, bound_model=None):
        """A copy fitted again to the training rows, silently.

        The interface of :mod:`mixedfx.results` to refitting (the parametric bootstrap,
        anova's ML refit): the designs are reused, nothing is read from data again.

        Parameters
        ----------
        response : array-like of shape (``n_obs_``,), optional
            Another response, in the family's internal coding (as
            :func:`~mixedfx.results.simulate_responses` returns it); by default the
            training response.
        method : {"ml", "reml"}, optional
            Another estimation method; by default this fit's.
        random_state : int, optional
            The copy's seed.
        bound_model : MixedModel, optional
            Another model of the training rows to fit instead of ``model_`` (a null
            model's fixed design, say); its random terms must be those of
            ``random_design_``.  Not with ``response``.  The copy keeps this fit's
            designs, so that with another fixed design only its estimates are
            meaningful, not its predictions.

        Returns
        -------
        MixedEffectsRegressor or MixedEffectsClassifier
            A new fitted estimator; this one is unchanged.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, method="reml", random_state=0, verbose=0)
        >>> ml = model.refitted(method="ml", random_state=0)
        >>> model.method_, ml.method_, ml.n_obs_
        ('reml', 'ml', 600)
        """
        check_is_fitted(self, "fixed_effects_")
        new = clone(self)
        new.set_params(verbose=0, random_state=random_state)
        if method is not None:
            new.set_params(method=method)
        kept = ("formula_spec_", "family_", "response_design_", "fixed_design_", "random_design_", "classes_",
                "n_features_in_", "feature_names_in_", "dropped_rows_", "training_data_", "training_y_",
                "training_sample_weight_", "training_trials_", "zi_design_",
                "disp_design_")
        fitted = {name: getattr(self, name) for name in kept if hasattr(self, name)}
        if bound_model is not None and response is not None:
            raise ParameterError("give refitted either response or bound_model, not both")
        model = self.model_ if bound_model is None else bound_model
        if response is not None:
            model = dataclasses.replace(model, response=np.asarray(response, dtype=np.float64))
        fitted.update(new._fit_model(model, self.random_design_, progress=False))
        new._set_fitted(fitted)
        return new

    def update(self, formula=None, **params):
        """Refit with a changed formula or parameters, as lme4's ``update``.

        Parameters
        ----------
        formula : str, optional
            The change, in R's update syntax: ``"~ . - x"`` drops the fixed term
            ``x``, ``"~ . + (1 | g)"`` adds a random term, ``"~ . - (1 | g)"`` drops
            one, ``"log(y) ~ ."`` changes the response (see
            :func:`~mixedfx.formula.update.update_formula`).  By default the
            formula is kept.
        **params
            Estimator parameters to change (``method="reml"``, ``random_state=1``,
            ...); every other parameter is kept.

        Returns
        -------
        MixedEffectsRegressor or MixedEffectsClassifier
            A new estimator fitted to the training rows (``training_data_``); this
            one is unchanged.

        Raises
        ------
        FormulaError
            For an update that is not a formula, or drops a term the model lacks.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> smaller = model.update("~ . - x")
        >>> smaller.formula, list(smaller.fixed_effects_.index), smaller.random_state
        ('y ~ 1 + (1 | g)', ['Intercept'], 0)
        """
        check_is_fitted(self, "fixed_effects_")
        new = clone(self)
        if formula is not None:
            new.set_params(formula=update_formula(self.formula_spec_, formula))
        new.set_params(**params)
        return new.fit(self.training_data_, self.training_y_, sample_weight=self.training_sample_weight_,
                       trials=self.training_trials_)

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

    def fixed_effects_table(self, *, ddf=None) -> pd.DataFrame:
        """The fixed-effects table of :meth:`summary`, as lmerTest's ``coef(summary(m))``.

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}, optional
            The denominator df; by default the estimator's ``ddf`` (Satterthwaite
            for an estimator without one).  A GLMM's table holds Wald z statistics
            whatever it is (see :func:`mixedfx.results.fixed_effects_table`).

        Returns
        -------
        pandas.DataFrame
            Columns ``Estimate``, ``Std. Error``, ``df``, ``t value`` and
            ``Pr(>|t|)`` (``z value``, ``Pr(>|z|)`` and ``df = inf`` for Wald z); one
            row per fixed effect; ``attrs["ddf"]`` names the method used.

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, method="reml", random_state=0, verbose=0)
        >>> model.fixed_effects_table()["df"].round(-1).tolist()  # Satterthwaite: ~ 30 groups, ~ 600 rows
        [30.0, 570.0]
        >>> model.fixed_effects_table(ddf="residual")["df"].tolist()  # n - p
        [598.0, 598.0]
        """
        check_is_fitted(self, "fixed_effects_")
        return results.fixed_effects_table(self, ddf=ddf)

    def r2(self, *, null_intercept=None) -> pd.Series:
        """Nakagawa's marginal and conditional R², as ``performance::r2_nakagawa``.

        Parameters
        ----------
        null_intercept : float, optional
            See :func:`mixedfx.explained_variance.variance_decomposition`.

        Returns
        -------
        pandas.Series
            ``R2_conditional`` and ``R2_marginal`` (:func:`mixedfx.explained_variance.r2`).

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> r2 = model.r2()
        >>> bool(0 < r2.iloc[1] < r2.iloc[0] < 1)  # marginal below conditional
        True
        """
        check_is_fitted(self, "fixed_effects_")
        return explained_variance.r2(self, null_intercept=null_intercept)

    def icc(self, *, null_intercept=None) -> pd.Series:
        """The adjusted and unadjusted intraclass correlation, as ``performance::icc``.

        Parameters
        ----------
        null_intercept : float, optional
            See :func:`mixedfx.explained_variance.variance_decomposition`.

        Returns
        -------
        pandas.Series
            ``ICC_adjusted`` and ``ICC_unadjusted`` (:func:`mixedfx.explained_variance.icc`).

        Examples
        --------
        >>> import mixedfx
        >>> data = mixedfx.datasets.make_mixed_data(
        ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
        ...     random_sd={"g": 0.8}, random_state=2)
        >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
        >>> round(float(model.icc().iloc[0]), 1)  # 0.8² / (0.8² + 1²)
        0.4
        """
        check_is_fitted(self, "fixed_effects_")
        return explained_variance.icc(self, null_intercept=null_intercept)

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
        if X is None:
            if y is not None:
                raise ParameterError("y needs the rows X it belongs to")
            model = self.model_
            terms = model.random_terms
            eta = self._internal_linear_predictor(model.fixed_design, model.offset, terms)
            trials, rows = model.trials, model.family_rows
            observed = model.response if trials is None else model.response / trials
        else:
            data = self._input_frame(X)
            X_fixed, offset, terms = self._design_for(data, None, True)
            eta = self._internal_linear_predictor(X_fixed, offset, terms)
            observed, trials = self._observed_for(data, y)
            if trials is None and self.family_.takes_trial_weights:
                trials = np.ones(len(observed))
            rows = self.family_.row_data(trials=trials, design=self._family_design(data))
        # the family's mean and variance of the response, with its per-row data (a zero part's design)
        family_params = self._family_params_for(terms)  # with the ziformula terms' random part, if any
        mean = self.family_.response_mean(eta, family_params, rows=rows)
        residual = observed - mean
        if scaled:
            variance = self.family_.response_variance(eta, family_params, rows=rows)
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

    def confint(self, *, method="wald", level=0.95, n_boot=200, random_state=None, which=None) -> pd.DataFrame:
        """Confidence intervals, as lme4's ``confint``.

        Parameters
        ----------
        method : {"wald", "bootstrap", "profile"}, default "wald"
            ``"wald"``: estimate +- z SE for the fixed effects, and the
            coefficients of a ``ziformula`` or ``dispformula`` (the variance
            parameters get NaN, as in lme4 and glmmTMB).  ``"bootstrap"``: parametric bootstrap
            percentile intervals for every parameter: ``n_boot`` responses simulated
            from the fitted model on the training rows, each refitted (lme4's
            ``confint(method = "boot")``).  ``"profile"``: profile likelihood
            intervals (lme4's ``confint(m, method = "profile")``, its default; see
            :func:`mixedfx.profile.profile_intervals`): a REML fit is profiled on the
            ML deviance, as lme4 does; a structured term is profiled on its own
            parameters (``sd(g)``, ``rho(g)``; glmmTMB's profile; ``rr`` on its sds);
            a family with its own linear models (``ziformula``,
            ``dispformula``) is refused.
        level : float, default 0.95
        n_boot : int, default 200
            Bootstrap replicates (each a full fit).
        random_state : int, optional
            Seed of the bootstrap.
        which : sequence of str, optional
            ``method="profile"`` only: the parameters to profile (default all).

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
                                            random_state=random_state, which=which)

    def simulate(self, n=1, *, X=None, posterior=False, random_state=None, re_form="~0") -> pd.DataFrame:
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
        re_form : None, str or float, default "~0"
            The random terms held at their conditional means, as lme4's ``re.form``
            (whose ``simulate`` default is ``NA``: every term drawn anew); the
            others are drawn as ``posterior`` says.  ``None`` holds every term,
            ``"~ (1 | g)"`` the terms named (see :meth:`predict`).

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
                               trials=trials, family_design=self._family_design(data))
        rng = np.random.default_rng(random_state)
        held = self._kept_terms(True, re_form)
        simulated = results.simulate_responses(self, bound, n=int(n), rng=rng, posterior=posterior, held=held)
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
