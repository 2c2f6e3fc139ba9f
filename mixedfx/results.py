"""After the fit: lme4's inference toolkit on a fitted mixedfx estimator.

Tables (``coef(summary(m))``, ``as.data.frame(ranef(m, condVar = TRUE))``), intervals
(``confint`` by Wald or parametric bootstrap), likelihood-ratio tests (``anova``),
simulation (``simulate``, from the prior of the random effects or from the E-step's
draws), prediction uncertainty, and the E-step draws as ArviZ ``InferenceData``.

The functions take a fitted estimator; the estimators' methods of the same names call
them.  Nothing here imports the estimator module (it sits above this one): what they
need of an estimator is its fitted attributes (``method_`` among them) and its public
:meth:`~mixedfx.MixedEffectsRegressor.refitted`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from mixedfx import lmertest
from mixedfx._tf import tf
from mixedfx.exceptions import ConvergenceWarning, DataError, DataWarning, ParameterError, SamplerWarning
from mixedfx.model import MixedModel, numpy_linear_predictor
from mixedfx.model.covariance import term_structure
from mixedfx.model.joint import numpy_family_params
from mixedfx.model.gaussian import term_z
from mixedfx.profile import profile_intervals

__all__ = [
    "anova",
    "count_parameters",
    "model_ddf",
    "fixed_effects_table",
    "ranef_frame",
    "parameter_vector",
    "confidence_intervals",
    "simulate_responses",
    "linear_predictor_variance",
    "to_arviz",
]


def count_parameters(model) -> int:
    """Parameters counted as lme4 counts them for AIC, BIC and ``anova``'s ``npar``:
    fixed effects, every variance-covariance entry of the random effects, and the
    family's own parameters (a residual sd, cutpoints, a dispersion, a t's df).

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.results import count_parameters
    >>> count_parameters(model)  # Intercept, x, sd(g), sigma
    4
    """
    components = model.variance_components_
    residual = (components["group"] == "Residual") & components["var1"].isna()  # the family's sigma, counted below
    derived = 0  # rows of variance_components_ that are no parameter (rr's correlations, glmmTMB's df)
    design = getattr(model, "random_design_", None)
    for term, cov in zip(design.terms if design is not None else (), getattr(model, "random_cov_", ())):
        structure = term_structure(term)
        derived += len(structure.components(term.coef_names, np.asarray(cov))) - structure.n_params(term.dim)
    return len(model.fixed_effects_) + int((~residual).sum()) - derived + len(model.family_.parameter_labels())


def model_ddf(model) -> str:
    """The denominator-df method a fitted model's tables follow: its ``ddf`` parameter
    (:class:`~mixedfx.MixedEffectsRegressor`), else ``"satterthwaite"`` (lmerTest's
    default; a non-Gaussian family gives Wald z whatever it is).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> model_ddf(SimpleNamespace(ddf="kenward-roger")), model_ddf(SimpleNamespace())
    ('kenward-roger', 'satterthwaite')
    """
    ddf = getattr(model, "ddf", None)
    return "satterthwaite" if ddf is None else ddf


def fixed_effects_table(model, *, ddf=None) -> pd.DataFrame:
    """lmerTest's ``coef(summary(m))``: estimate, standard error, df, t and p per fixed effect.

    One implementation: :func:`mixedfx.lmertest.fixed_effects_table`, with the model's
    ``ddf`` (see :func:`model_ddf`) unless ``ddf`` is given.  For a Gaussian fit the
    default is Satterthwaite's df, as lmerTest's ``summary``; ``ddf="asymptotic"``
    gives the Wald z table (``z value``, normal ``Pr(>|z|)``).  Without ``ddf=``, a
    model too large for the exact df (:mod:`mixedfx.model.ddf`'s dense limits) gets the
    Wald z table with a :class:`~mixedfx.DataWarning` naming the cause, so that
    ``summary()`` always prints; an explicit ``ddf`` raises instead.  A GLMM's table holds
    Wald z statistics whatever ``ddf`` asks (``df = inf``), as lme4's ``glmer``, and
    says so in ``attrs["note"]``.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.results import fixed_effects_table
    >>> table = fixed_effects_table(model)
    >>> table.columns.tolist(), table.attrs["ddf"]
    (['Estimate', 'Std. Error', 'df', 't value', 'Pr(>|t|)'], 'satterthwaite')
    >>> table["Estimate"].round(1).tolist(), bool((table["Pr(>|t|)"] < 1e-6).all())
    ([1.0, 0.5], True)
    >>> fixed_effects_table(model, ddf="asymptotic").columns.tolist()
    ['Estimate', 'Std. Error', 'df', 'z value', 'Pr(>|z|)']
    """
    if ddf is not None:
        return lmertest.fixed_effects_table(model, ddf=ddf)
    try:
        return lmertest.fixed_effects_table(model, ddf=model_ddf(model))
    except DataError as error:  # too large for the exact df: the default table (summary's) falls back to z
        warnings.warn(f"{error}; the fixed-effects table falls back to Wald z tests (ddf='asymptotic')",
                      DataWarning, stacklevel=3)
        return lmertest.fixed_effects_table(model, ddf="asymptotic")


def ranef_frame(model) -> pd.DataFrame:
    """``as.data.frame(ranef(m, condVar = TRUE))``: one row per (group, term, level).

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.results import ranef_frame
    >>> frame = ranef_frame(model)
    >>> frame.columns.tolist(), len(frame)  # 30 levels of g, one coefficient each
    (['group', 'term', 'level', 'condval', 'condsd'], 30)
    >>> frame.loc[0, ["group", "term", "level"]].tolist()
    ['g', '(Intercept)', 'g00']
    """
    frames = []
    for group, means in model.random_effects_.items():
        covs = model.random_effects_cov_[group]
        for c, coef in enumerate(means.columns):
            frames.append(pd.DataFrame({
                "group": group,
                "term": coef,
                "level": means.index.to_numpy(dtype=object),
                "condval": means[coef].to_numpy(),
                "condsd": np.sqrt(np.clip(covs[:, c, c], 0.0, None)),
            }))
    return pd.concat(frames, ignore_index=True)


def parameter_vector(model) -> pd.Series:
    """Every estimated parameter, named as in :attr:`FitSummary.parameter_names`:
    fixed effects (internal: an ordinal model's intercept included), sds,
    correlations, then the family's parameters.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.results import parameter_vector
    >>> parameter_vector(model).round(1).to_dict()
    {'Intercept': 1.0, 'x': 0.5, 'sd(g)': 0.8, 'sigma': 1.0}
    """
    summary = model.fit_summary_
    values = pd.Series(np.asarray(summary.estimate, dtype=float), index=list(summary.parameter_names))
    fixed = np.asarray(model.model_parameters_.fixed_effects, dtype=float)
    values.iloc[: len(fixed)] = fixed
    return values


def confidence_intervals(model, *, method="wald", level=0.95, n_boot=200, random_state=None,
                         which=None) -> pd.DataFrame:
    """Confidence intervals for every parameter: see :meth:`MixedEffectsRegressor.confint`.

    Examples
    --------
    Wald intervals cover the fixed effects only (lme4's ``confint(m, method =
    "Wald")`` too); ``method="bootstrap"`` covers every parameter:

    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.results import confidence_intervals
    >>> intervals = confidence_intervals(model, level=0.9)
    >>> intervals.columns.tolist()
    ['5 %', '95 %']
    >>> intervals.index.tolist()
    ['Intercept', 'x', 'sd(g)', 'sigma']
    >>> bool((intervals.loc[["Intercept", "x"], "5 %"] < [1.0, 0.5]).all())  # the simulated truth is inside
    True
    >>> bool((intervals.loc[["Intercept", "x"], "95 %"] > [1.0, 0.5]).all())
    True
    >>> bool(intervals.loc[["sd(g)", "sigma"]].isna().all().all())  # Wald: fixed effects only, as lme4
    True
    """
    if not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ParameterError(f"level must be a number between 0 and 1, got {level!r}")
    if which is not None and method != "profile":
        raise ParameterError(f"which= chooses the parameters to profile: it is for method='profile', not {method!r}")
    tail = (1.0 - level) / 2.0
    columns = [f"{100 * tail:.3g} %", f"{100 * (1 - tail):.3g} %"]
    estimates = parameter_vector(model)
    if method == "wald":
        out = pd.DataFrame(np.nan, index=estimates.index, columns=columns)
        table = fixed_effects_table(model, ddf="asymptotic")
        z = stats.norm.ppf(1.0 - tail)
        for name, row in table.iterrows():
            if name in out.index:
                out.loc[name] = [row["Estimate"] - z * row["Std. Error"], row["Estimate"] + z * row["Std. Error"]]
        for name, estimate, se in _family_coefficients(model):  # glmmTMB's zi and disp coefficients too
            out.loc[name] = [estimate - z * se, estimate + z * se]
        return out
    if method == "bootstrap":
        if not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
            raise ParameterError(f"n_boot must be an integer >= 2, got {n_boot!r}")
        rng = np.random.default_rng(random_state)
        replicates, failed = [], 0
        for _ in range(int(n_boot)):
            response = simulate_responses(model, model.model_, n=1, rng=rng)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", SamplerWarning)
                refit = model.refitted(response=response, random_state=int(rng.integers(2**31 - 1)))
            if not refit.fit_summary_.converged:
                failed += 1
            replicates.append(parameter_vector(refit).to_numpy())
        draws = np.asarray(replicates)
        out = pd.DataFrame(np.quantile(draws, [tail, 1.0 - tail], axis=0).T, index=estimates.index, columns=columns)
        out.attrs["n_boot"] = int(n_boot)
        out.attrs["n_not_converged"] = failed
        return out
    if method == "profile":
        return profile_intervals(model, level=level, which=which)
    raise ParameterError(f"method must be 'wald', 'bootstrap' or 'profile', got {method!r}")


def _family_coefficients(model) -> list:
    """``(name, estimate, standard error)`` of the family's own coefficients (a
    ``ziformula``'s, a ``dispformula``'s), named as in ``fit_summary_.parameter_names``."""
    if getattr(model, "wald_cov_", None) is None:
        return []
    out = []
    for key, _ in model.family_.coefficient_blocks():
        table = getattr(model, f"{key}_fixed_effects_")
        names = model.wald_cov_.index[coefficient_rows(model, key)]
        out += list(zip(names, table["Estimate"], table["Std. Error"]))
    return out


def _random_effect_values(model, *, n, rng, posterior, held=None):
    """Per simulation and term, the random effects: ``(n, num_levels, dim)`` arrays;
    a term flagged in ``held`` keeps its conditional means."""
    terms = model.random_design_.terms
    params = model.model_parameters_
    held = (False,) * len(terms) if held is None else held
    out = []
    for term, L, keep in zip(terms, params.random_scale_tril, held):
        if keep:
            means = model.random_effects_[term.name][list(term.coef_names)].to_numpy()
            out.append(np.broadcast_to(means, (n,) + means.shape))
        elif posterior:
            draws = model.random_effect_draws_[term.name]
            columns = list(model.random_effects_[term.name].columns)
            draws = draws[..., [columns.index(c) for c in term.coef_names]]
            flat = draws.reshape((-1,) + draws.shape[2:])
            out.append(flat[rng.integers(flat.shape[0], size=n)])
        else:
            num_levels = model.random_design_.factors[term.factor].num_levels
            out.append(rng.standard_normal((n, num_levels, L.shape[0])) @ L.T)
    return out


def simulate_responses(model, bound: MixedModel, *, n, rng, posterior=False, held=None) -> np.ndarray:
    """``n`` new responses for the rows of ``bound``, in the family's internal coding
    (success counts, category codes), shape ``(n, n_rows)``.

    Random effects come from their fitted distribution ``N(0, Sigma)`` (lme4's
    ``simulate``), or, with ``posterior=True``, from the E-step's kept draws (the
    posterior predictive distribution given the fitted parameters).  The terms
    flagged in ``held`` (a bool per term) stay at their conditional means instead
    (lme4's ``simulate(re.form=)``).

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> import numpy as np
    >>> from mixedfx.results import simulate_responses
    >>> y = simulate_responses(model, model.model_, n=200, rng=np.random.default_rng(0))
    >>> y.shape  # 200 simulations of the 600 training rows
    (200, 600)
    >>> bool(abs(y.mean() - data["y"].mean()) < 0.2)
    True
    """
    params = model.model_parameters_
    effects = _random_effect_values(model, n=n, rng=rng, posterior=posterior, held=held)
    eta = np.stack([numpy_linear_predictor(bound.fixed_design, params.fixed_effects, [values[s] for values in effects],
                                           bound.random_terms, offset=bound.offset) for s in range(n)])
    # with each simulation's random parts of the family's own linear predictors (ziformula terms)
    own = numpy_family_params(model.family_, params.family_params, [np.asarray(values) for values in effects],
                              bound.random_terms, n_rows=bound.n_obs)
    family_params = {k: tf.constant(np.asarray(v, dtype=np.float64)) for k, v in own.items()}
    trials = None if bound.family_rows is None else tf.constant(bound.family_rows, tf.float64)
    distribution = model.family_.distribution(tf.constant(eta), family_params, trials=trials)
    seed = tf.constant(rng.integers(0, 2**31 - 1, size=2), tf.int32)
    return distribution.sample(seed=seed).numpy()


def linear_predictor_variance(model, X_fixed, terms, *, include_random) -> np.ndarray:
    """Variance of the linear predictor's estimate for rows: the fixed effects'
    covariance, plus each row's random effects' conditional covariance (their prior
    covariance for a level not seen in fit).  The covariance between the fixed and the
    random effects' estimates is left out, as in lme4-based prediction intervals
    (merTools' ``predictInterval``).

    Examples
    --------
    A row of a group seen in the fit, and one of a new group (whose random effect is
    only known to follow its prior):

    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> import numpy as np
    >>> import pandas as pd
    >>> from mixedfx.results import linear_predictor_variance
    >>> new = pd.DataFrame({"x": [0.0, 0.0], "g": ["g01", "a new group"]})
    >>> X_new, terms = model.fixed_design_.transform(new), model.random_design_.materialize(new)
    >>> fixed_only = linear_predictor_variance(model, X_new, terms, include_random=False)
    >>> total = linear_predictor_variance(model, X_new, terms, include_random=True)
    >>> bool(np.allclose(fixed_only, model.fixed_effects_cov_.iloc[0, 0]))  # at x = 0: Var(Intercept)
    True
    >>> sd_g = model.variance_components_["sdcor"].iloc[0]
    >>> bool(np.isclose(total[1], fixed_only[1] + sd_g**2)), bool(fixed_only[0] < total[0] < total[1])
    (True, True)
    """
    cov = model.fixed_effects_cov_.to_numpy()
    names = list(model.fixed_effects_.index)
    internal = list(model.model_.fixed_names)
    keep = [internal.index(name) for name in names]
    variance = np.einsum("np,pq,nq->n", X_fixed[:, keep], np.nan_to_num(cov), X_fixed[:, keep])
    if include_random:
        variance = variance + _random_variance(model, terms, predictor="cond", n_rows=X_fixed.shape[0])
    return variance


def _random_variance(model, terms, *, predictor: str, n_rows: int) -> np.ndarray:
    """Per row, the variance of the random part of linear predictor ``predictor``: its
    terms' conditional covariances (the prior's for a level not seen in fit)."""
    variance = np.zeros(n_rows)
    for term, data, prior in zip(model.random_design_.terms, terms, model.model_parameters_.random_cov):
        if term.predictor != predictor:  # a term of another linear predictor
            continue
        columns = list(model.random_effects_[term.name].columns)
        pick = [columns.index(c) for c in term.coef_names]
        conditional = model.random_effects_cov_[term.name][:, pick][:, :, pick]
        z = term_z(data, n_rows)
        index = data.group_index
        per_row = np.where(index[:, None, None] >= 0, conditional[np.maximum(index, 0)], prior)
        variance = variance + np.einsum("na,nab,nb->n", z, per_row, z)
    return variance


def coefficient_rows(model, key: str) -> np.ndarray:
    """Positions in ``wald_cov_`` of the family's own coefficients ``key`` (``"zi"``):
    the blocks sit at its end, in the family's order."""
    blocks, size = model.family_.coefficient_blocks(), len(model.wald_cov_)
    start = size - sum(len(names) for _, names in blocks)
    for name, names in blocks:
        if name == key:
            return np.arange(start, start + len(names))
        start += len(names)
    raise ParameterError(f"the {model.family_} family has no '{key}' coefficients")


def predictor_covariance(model, X_fixed, family_design, terms, *, keys) -> np.ndarray:
    """Per row, the covariance of the estimates of the conditional linear predictor and
    the family's own ones ``keys`` (glmmTMB's ``zi``), ``(n, 1 + len(keys))`` square:
    the coefficients' joint Wald covariance (``wald_cov_``: the cross-covariance of
    the conditional and the zero part's fixed effects included) plus each linear
    predictor's random terms' conditional covariances (those of different terms, and
    of the fixed and the random effects, left out as in
    :func:`linear_predictor_variance`).

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from mixedfx.model import Poisson
    >>> from mixedfx.results import predictor_covariance
    >>> model = SimpleNamespace(family_=Poisson().zero_inflated(("Intercept",)), model_=SimpleNamespace(
    ...     fixed_names=("Intercept",)), wald_cov_=np.array([[0.04, 0.01], [0.01, 0.09]]), random_design_=
    ...     SimpleNamespace(terms=()), model_parameters_=SimpleNamespace(random_cov=()))
    >>> predictor_covariance(model, np.ones((1, 1)), {"zi": np.ones((1, 1))}, (), keys=["zi"])[0].tolist()
    [[0.04, 0.01], [0.01, 0.09]]
    """
    if getattr(model, "wald_cov_", None) is None:
        raise ParameterError("this fit has no wald_cov_ (it was saved by an older mixedfx): refit it for intervals "
                             "with the random terms of the zero part")
    joint = np.nan_to_num(np.asarray(model.wald_cov_, dtype=np.float64))
    p, n = len(model.model_.fixed_names), X_fixed.shape[0]
    positions = [np.arange(p)] + [coefficient_rows(model, key) for key in keys]
    designs = [X_fixed] + [np.asarray(family_design[key], dtype=np.float64) for key in keys]
    cov = np.empty((n, len(designs), len(designs)))
    for a, (rows_a, design_a) in enumerate(zip(positions, designs)):
        for b, (rows_b, design_b) in enumerate(zip(positions, designs)):
            cov[:, a, b] = np.einsum("np,pq,nq->n", design_a, joint[np.ix_(rows_a, rows_b)], design_b)
    for a, key in enumerate(["cond", *keys]):
        if terms:
            cov[:, a, a] += _random_variance(model, terms, predictor=key, n_rows=n)
    return cov


def anova(*models, refit=True, names=None, ddf=None) -> pd.DataFrame:
    """One model: lmerTest's type III F table.  Several: likelihood-ratio tests between
    nested models fitted to the same rows, as lme4's ``anova``.

    Parameters
    ----------
    *models : fitted MixedEffectsRegressor or MixedEffectsClassifier
        One model: its type III table (:func:`mixedfx.lmertest.anova_type3`, lmerTest's
        ``anova(m)``): one F test per fixed-effect term with the model's ``ddf``
        (Satterthwaite by default, or Kenward-Roger; a GLMM gets Wald chi-square over
        ``NumDF``, ``DenDF = inf``, said in ``attrs["note"]``).  Two or more: models of
        the same response on the same rows, nested in each other; they are ordered by
        their number of parameters.
    refit : bool, default True
        Refit REML fits by ML first (with the same random_state), since REML
        likelihoods of models with different fixed effects are not comparable; lme4
        does the same.  ``False`` compares the likelihoods as fitted.
    names : sequence of str, optional
        Row labels; by default each model's formula.
    ddf : {"satterthwaite", "kenward-roger", "residual", "asymptotic"}, optional
        One model only: the denominator df of the F tests; by default the model's
        ``ddf`` parameter.

    Returns
    -------
    pandas.DataFrame
        One model: indexed by term, columns ``Sum Sq``, ``Mean Sq``, ``NumDF``,
        ``DenDF``, ``F value``, ``Pr(>F)``.  Several: columns ``npar``, ``AIC``, ``BIC``, ``logLik``, ``deviance``, ``Chisq``,
        ``Df`` and ``Pr(>Chisq)`` (each test against the row above), one row per
        model.  For non-Gaussian families the log-likelihoods are importance-sampling
        estimates; their Monte Carlo standard errors are in ``attrs["logLik_se"]``.
        A test of a random term (a ziformula's too) reports the naive chi-square
        p-value, as lme4 and glmmTMB do; ``attrs["note"]`` names the terms and says
        that at the boundary it is conservative (twice the mixture's).

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> small = mixedfx.lmer("y ~ 1 + (1 | g)", data, random_state=0, verbose=0)
    >>> large = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> table = mixedfx.anova(small, large)
    >>> table["npar"].tolist(), table["Df"].tolist()[1], bool(table["Pr(>Chisq)"].iloc[1] < 1e-6)
    ([3, 4], 1.0, True)
    >>> type3 = mixedfx.anova(large)  # one model: lmerTest's type III table
    >>> type3.index.tolist(), type3.attrs["ddf"], int(type3.loc["x", "NumDF"])
    (['x'], 'satterthwaite', 1)
    """
    if not models:
        raise ParameterError("anova needs a fitted model (its type III table) or several (likelihood-ratio tests)")
    for k, model in enumerate(models):
        if not hasattr(model, "fit_summary_"):
            raise ParameterError(f"model {k + 1} of anova is not fitted")
    if len(models) == 1:
        if names is not None:
            raise ParameterError("names= labels the models of a likelihood-ratio comparison; one model was given")
        return lmertest.anova_type3(models[0], ddf=model_ddf(models[0]) if ddf is None else ddf)
    if ddf is not None:
        raise ParameterError("ddf= is for the type III table of one model; likelihood-ratio tests have no df choice")
    first = models[0]
    for k, model in enumerate(models[1:], start=2):
        if model.n_obs_ != first.n_obs_ or not np.array_equal(model.model_.response, first.model_.response):
            raise DataError(
                f"model {k} of anova was fitted to other rows or another response than model 1 "
                f"({model.n_obs_} vs {first.n_obs_} rows); likelihood-ratio tests need the same data"
            )
        if model.family_.name != first.family_.name:
            raise ParameterError(f"model {k} of anova has family {model.family_.name!r}, model 1 {first.family_.name!r}")
    labels = list(names) if names is not None else [m.formula_spec_.text for m in models]
    if len(labels) != len(models):
        raise ParameterError(f"names has {len(labels)} entries for {len(models)} models")
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{k + 1}]" for k, label in enumerate(labels)]
    rows = []
    for label, model in zip(labels, models):
        refitted = False
        if refit and model.method_ == "reml":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SamplerWarning)
                model = model.refitted(method="ml", random_state=model.random_state)
            refitted = True
        if model.log_likelihood_ is None:
            raise DataError(f"the log-likelihood of {label!r} was not computed (the model is too large)")
        npar = count_parameters(model)
        loglik = model.log_likelihood_
        rows.append({"model": label, "npar": npar, "AIC": -2 * loglik + 2 * npar,
                     "BIC": -2 * loglik + np.log(model.n_obs_) * npar, "logLik": loglik, "deviance": -2 * loglik,
                     "se": model.log_likelihood_se_ or 0.0, "refitted": refitted})
    table = pd.DataFrame(rows).sort_values("npar", kind="stable").set_index("model")
    chisq = 2.0 * table["logLik"].diff()
    df = table["npar"].diff()
    table["Chisq"] = chisq.clip(lower=0.0)
    table["Df"] = df
    table["Pr(>Chisq)"] = np.where(df > 0, stats.chi2.sf(table["Chisq"], df.where(df > 0, 1.0)), np.nan)
    table.loc[table.index[0], ["Chisq", "Df", "Pr(>Chisq)"]] = np.nan
    table.attrs["logLik_se"] = table.pop("se").to_dict()
    table.attrs["refitted_with_ML"] = [k for k, v in table.pop("refitted").items() if v]
    table.index.name = None
    tested = _tested_terms([dict(zip(labels, models))[label] for label in table.index])
    if tested:
        table.attrs["note"] = (
            f"the random terms {', '.join(tested)} are tested at their sds' boundary (zero): the p-values are the "
            "naive chi-square's, as lme4's and glmmTMB's anova report them; the null distribution of one sd's "
            "statistic is the 50:50 mixture of chi-square(0) and chi-square(1), which halves that p-value")
    return table


def _tested_terms(models) -> list[str]:
    """The random terms (``variance_components_`` groups, ``zi~site`` for a ziformula's)
    that a model has and the model before it (ordered by parameters) has not."""
    groups = [set(m.variance_components_["group"]) - {"Residual"} for m in models]
    return sorted(set().union(*(later - earlier for earlier, later in zip(groups, groups[1:]))))


def to_arviz(model):
    """The E-step's kept draws of the random effects as ArviZ ``InferenceData``: see
    :meth:`MixedEffectsRegressor.to_arviz`.

    Examples
    --------
    >>> import mixedfx
    >>> data = mixedfx.datasets.make_mixed_data(
    ...     600, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.5},
    ...     random_sd={"g": 0.8}, random_state=2)
    >>> model = mixedfx.lmer("y ~ x + (1 | g)", data, random_state=0, verbose=0)
    >>> from mixedfx.results import to_arviz
    >>> posterior = to_arviz(model).posterior
    >>> posterior["g"].dims
    ('chain', 'draw', 'g_level', 'g_coef')
    >>> posterior.sizes["chain"], posterior.sizes["g_level"]
    (2, 30)
    """
    try:
        import arviz as az
    except ImportError as exc:  # pragma: no cover - arviz is a dependency
        raise ImportError("to_arviz needs ArviZ: pip install arviz") from exc
    posterior, coords, dims = {}, {}, {}
    for group, draws in model.random_effect_draws_.items():
        frame = model.random_effects_[group]
        level_dim, coef_dim = f"{group}_level", f"{group}_coef"
        posterior[group] = draws
        coords[level_dim] = frame.index.to_numpy(dtype=object).astype(str)
        coords[coef_dim] = list(frame.columns)
        dims[group] = [level_dim, coef_dim]
    summary = model.fit_summary_
    return az.from_dict(
        posterior=posterior, coords=coords, dims=dims,
        attrs={"formula": model.formula_spec_.text, "family": model.family_.name, "method": summary.method,
               "n_em_iterations": summary.n_iter, "inference_library": "mixedfx"},
    )


def check_family_for_residuals(family) -> None:
    """Refuse residuals of a family that has none (an ordinal response)."""
    if not family.has_residuals:
        hint = ("; use predict_proba" if family.is_classification
                else " yet (with a dispformula: use predict(type=...) and compare)")
        raise ParameterError(f"residuals are not defined for the {family} family{hint}")
