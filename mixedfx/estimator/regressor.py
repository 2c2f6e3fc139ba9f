"""The mixed-effects regressor: Gaussian, Poisson, negative binomial and binomial responses."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_is_fitted

from mixedfx import results
from mixedfx.estimator.base import MixedEffectsModel
from mixedfx.estimator.docstrings import fill_docstring
from mixedfx.exceptions import ParameterError
from mixedfx.model.joint import numpy_random_part

INTERVAL_DRAWS = 4096
"""Quasi-random draws of the linear predictors behind :meth:`MixedEffectsRegressor.predict_interval`
when random terms enter the family's own linear predictors (a power of two: Sobol's balance)."""

__all__ = ["MixedEffectsRegressor"]


@fill_docstring
class MixedEffectsRegressor(RegressorMixin, MixedEffectsModel):
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
    ddf : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}, default "satterthwaite"
        The denominator degrees of freedom of the t and F tests of a Gaussian fit
        (:meth:`summary`, :meth:`fixed_effects_table`, ``mixedfx.anova(model)``), as
        lmerTest: Satterthwaite's (lmerTest's default), Kenward-Roger's (pbkrtest;
        needs ``method="reml"``, with its adjusted standard errors), ``"residual"``
        (``n - p``) or ``"asymptotic"`` (Wald z, normal p-values).  Other families
        have no denominator df: their tables are Wald z tests whatever ``ddf`` says,
        as lme4's ``glmer``.  Checked in ``fit``.
    ziformula : str, default "~0"
        glmmTMB's zero-inflation formula: with ``"~ x"`` the response is zero with
        probability ``pi = logistic(X_zi @ zi)`` and otherwise from the count family
        (``"poisson"``, ``"negative_binomial"``/``"nbinom2"``, ``"nbinom1"``; or zero
        successes of ``"binomial"``).  Random terms (``"~ x + (1 | g)"``) enter the zero
        part's linear predictor, named ``"zi~g"`` in ``variance_components_`` and
        ``random_effects_``; ``"~0"``: no zero inflation.  The coefficients are
        ``zi_fixed_effects_``; see ``predict(type=...)``.
    dispformula : str, default "~1"
        glmmTMB's dispersion formula: with ``"~ z"`` the family's dispersion is
        log-linear in ``z`` (``"negative_binomial"``/``"nbinom2"``: log size;
        ``"gamma"``: log shape; ``"beta"``: log precision; ``"nbinom1"``: log phi;
        ``"inverse_gaussian"``: log dispersion, untested against R, which has none), its
        coefficients ``disp_fixed_effects_`` (glmmTMB's ``fixef(fit)$disp``).  Fixed
        terms only; not with a ``ziformula`` yet; ``"~1"``: one dispersion.
    %(parameters)s
    Attributes
    ----------
    %(attributes)s
    dispersion_ : float
        Negative binomial family only: the dispersion (glmmTMB's nbinom2 ``sigma``).
    zi_fixed_effects_ : pandas.DataFrame
        With a ``ziformula``: glmmTMB's "Zero-inflation model" table (``Estimate``,
        ``Std. Error``, ``z value``, ``Pr(>|z|)``; Wald standard errors with the random
        effects profiled out and the variance parameters held, as glmer's ``vcov``).
    zi_design_ : FixedDesign or None
        The zero-inflation design, replayed on new rows.
    disp_fixed_effects_ : pandas.DataFrame
        With a ``dispformula``: glmmTMB's "Dispersion model" table.
    disp_design_ : FixedDesign or None
        The dispersion design.
    wald_cov_ : pandas.DataFrame
        With a ``ziformula`` or ``dispformula``: the Wald covariance of the (internal)
        fixed effects and the family's unconstrained parameters jointly, labelled by
        the fit's parameter names, computed once per fit; ``fixed_effects_cov_`` and the
        zi and disp tables' standard errors are its blocks.

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
    _classifier = False

    def __init__(
        self,
        formula=None,
        *,
        family="gaussian",
        method="ml",
        ddf="satterthwaite",
        ziformula="~0",
        dispformula="~1",
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
        options=None,
        distribute=None,
    ):
        self.formula = formula
        self.family = family
        self.method = method
        self.ddf = ddf
        self.ziformula = ziformula
        self.dispformula = dispformula
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
        self.options = options
        self.distribute = distribute

    def predict(self, X, *, new_levels=None, include_random=True, return_std=False, re_form=None, type="response"):
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
        re_form : None, str or float, optional
            Which random terms to include, as lme4's ``re.form``: ``None`` all of
            them, ``"~0"`` (or ``"NA"``, ``numpy.nan``) none, or a formula of the
            terms to keep, e.g. ``"~ (1 | g1)"``; terms are matched by grouping
            factor and expression, not by spelling.  The ``ziformula``'s random
            terms are kept by ``None`` only.  When some but not all terms are
            kept, every grouping column is still needed.  ``include_random=False``
            is ``re_form="~0"``.
        type : {"response", "conditional", "zprob", "link"}, default "response"
            glmmTMB's ``predict(type=)``: the mean of the response, ``(1 - pi) mu``
            with a ``ziformula`` (``(1 - pi) mu / (1 - f(0))`` for a hurdle, a
            truncated family's: ``mu / (1 - f(0))`` without one); ``"conditional"``
            the count part's mean (``mu``, or the truncated ``mu / (1 - f(0))``);
            ``"zprob"`` the probability ``pi`` of a structural zero (0 without a
            ``ziformula``); ``"link"`` the linear predictor of ``mu``.  ``return_std``
            is for ``"response"`` without a ``ziformula``, and ``"conditional"``.

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
        kinds = ("response", "conditional", "zprob", "link")
        if type not in kinds:
            raise ParameterError(f"type must be one of {kinds}, got {type!r}")
        X_fixed, offset, terms = self._design_for(X, new_levels, include_random, re_form)
        eta = self._internal_linear_predictor(X_fixed, offset, terms)
        family_params = self._family_params_for(terms)  # with the ziformula's random part, if any
        data = self._input_frame(X)
        zi_matrix = self._zi_matrix(data)
        if return_std and (type in ("zprob", "link") or (type == "response" and zi_matrix is not None)):
            raise ParameterError(f"return_std is not available for type={type!r}"
                                 + (" with a ziformula" if type == "response" else ""))
        if type == "link":
            return eta
        if type == "zprob":
            return np.zeros(len(eta)) if zi_matrix is None else self.family_.zero_probability(zi_matrix, family_params)
        rows = self._prediction_rows(data)
        chosen = self.family_.response_mean if type == "response" else self.family_.conditional_mean

        def mean_of(values):
            return chosen(values, family_params, rows=rows)

        mean = mean_of(eta)
        if not return_std:
            return mean
        variance = results.linear_predictor_variance(self, X_fixed, terms, include_random=bool(terms))
        step = 1e-5 * np.maximum(1.0, np.abs(eta))
        slope = np.abs((mean_of(eta + step) - mean_of(eta - step)) / (2 * step))  # d mean / d eta, numerically
        return mean, slope * np.sqrt(variance)

    def _prediction_rows(self, data):
        """The family's per-row data of ``data``'s rows (its zero-part design; one trial per
        row: predictions are per trial)."""
        design = self._family_design(data)
        trials = np.ones(len(data)) if self.family_.takes_trial_weights else None
        return self.family_.row_data(trials=trials, design=design)

    def predict_interval(self, X, *, alpha=0.05, kind="prediction", new_levels=None, include_random=True,
                         re_form=None):
        """Prediction or confidence intervals that include the random effects' uncertainty.

        The linear predictor's variance adds the fixed effects' covariance to each
        row's random effects' conditional covariance (exact for the Gaussian family,
        from the E-step draws otherwise), or to their fitted covariance for a level
        not seen in fit; the covariance between the two estimates is left out, as in
        merTools' ``predictInterval`` for lme4.  With random terms in the zero part
        (``ziformula = "~ x + (1 | g)"``) both linear predictors vary: the zero part's
        variance likewise (its coefficients' Wald covariance, jointly with the fixed
        effects', plus its random effects' conditional covariance), and the ends are
        quantiles over 4096 quasi-random draws of the two (``kind="mean"``: of the
        response mean; ``"prediction"``: of a response drawn at each).

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
        new_levels, include_random, re_form
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
        X_fixed, offset, terms = self._design_for(X, new_levels, include_random, re_form)
        eta = self._internal_linear_predictor(X_fixed, offset, terms)
        variance = results.linear_predictor_variance(self, X_fixed, terms, include_random=bool(terms))
        family_params = self._family_params_for(terms)
        z = stats.norm.ppf(1.0 - alpha / 2.0)
        rows = self._prediction_rows(self._input_frame(X))
        fit = self.family_.response_mean(eta, family_params, rows=rows)
        keys = [key for key in dict.fromkeys(t.predictor for t in self.random_design_.terms) if key != "cond"]
        if keys and terms:  # random terms in the family's own linear predictors (glmmTMB's zi)
            lower, upper = self._drawn_interval(X, X_fixed, eta, terms, keys, rows, alpha=alpha, kind=kind)
        elif self.family_.conjugate_gaussian:
            if kind == "prediction":
                variance = variance + self.family_.residual_sd(family_params) ** 2
            lower, upper = fit - z * np.sqrt(variance), fit + z * np.sqrt(variance)
        else:
            ends = [eta + sign * z * np.sqrt(variance) for sign in (-1.0, 1.0)]
            if kind == "prediction":  # the response's quantiles at the ends of the linear predictor's interval
                lower = self._response_quantiles(ends[0], alpha / 2.0, rows, family_params)
                upper = self._response_quantiles(ends[1], 1.0 - alpha / 2.0, rows, family_params)
            else:
                means = [self.family_.response_mean(end, family_params, rows=rows) for end in ends]
                lower, upper = np.minimum(*means), np.maximum(*means)
        return pd.DataFrame({"fit": fit, "lower": lower, "upper": upper}, index=self._input_frame(X).index)

    def _drawn_interval(self, X, X_fixed, eta, terms, keys, rows, *, alpha, kind):
        """:meth:`predict_interval`'s ends with random terms in the family's own linear
        predictors ``keys``: the ``alpha/2`` and ``1-alpha/2`` quantiles over
        :data:`INTERVAL_DRAWS` quasi-random (scrambled Sobol) normal draws of the
        linear predictors jointly (:func:`~mixedfx.results.predictor_covariance`: the
        conditional and the zero part's, each with its random effects' conditional
        covariance) of the response mean (``kind="mean"``), or of a response drawn at
        each (``"prediction"``: by the family's quantile function at one more
        quasi-random uniform)."""
        design = self._family_design(self._input_frame(X))
        cov = results.predictor_covariance(self, X_fixed, design, terms, keys=keys)
        values, vectors = np.linalg.eigh(cov)  # a square root that a singular covariance (an sd of 0) has too
        scale = vectors * np.sqrt(np.clip(values, 0.0, None))[:, None, :]
        sobol = stats.qmc.Sobol(len(keys) + 2, seed=0).random(INTERVAL_DRAWS)
        normal = stats.norm.ppf(np.clip(sobol[:, :-1], 1e-12, 1 - 1e-12))
        shifts = np.einsum("nab,sb->san", scale, normal)  # [draws, predictor, row]
        effects = self._term_effects()
        offsets = {key: numpy_random_part(effects, terms, predictor=key, n_rows=len(eta)) + shifts[:, 1 + a]
                   for a, key in enumerate(keys)}
        params = self.family_.with_predictor_offsets(dict(self.model_parameters_.family_params), offsets)
        etas = eta + shifts[:, 0]
        if kind == "mean":
            drawn = self.family_.response_mean(etas, params, rows=rows)
        else:
            drawn = self._response_quantiles(etas, sobol[:, -1:], rows, params)
        method = "linear" if kind == "mean" else "inverted_cdf"
        return (np.quantile(drawn, q, axis=0, method=method) for q in (alpha / 2.0, 1.0 - alpha / 2.0))

    def _response_quantiles(self, eta, q, rows, family_params):
        """Quantile ``q`` of the response at linear predictor ``eta`` (the family's; scipy's
        discrete quantiles)."""
        try:
            return self.family_.response_quantile_at(eta, q, family_params, rows=rows)
        except NotImplementedError:
            raise ParameterError(
                f"kind='prediction' is not available for family {self.family_.name!r} (it depends on each row's "
                "trials); use kind='mean', or simulate()"
            ) from None

    def score(self, X, y=None, sample_weight=None):
        """Coefficient of determination R^2 of :meth:`predict` on ``X``.

        When ``y`` is omitted, the response is the formula's left-hand side evaluated
        on ``X`` (a proportion for ``cbind`` responses).
        """
        check_is_fitted(self, "fixed_effects_")
        data = self._input_frame(X)
        truth = np.asarray(self._response_for(data, y), dtype=np.float64)
        return r2_score(truth, self.predict(data), sample_weight=sample_weight)
