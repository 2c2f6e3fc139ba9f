"""The parameters and fitted attributes both estimators share, as numpydoc text that
their class docstrings take in (``%(parameters)s``, ``%(attributes)s``)."""

__all__ = ["PARAMETERS_DOC", "ATTRIBUTES_DOC", "fill_docstring"]

PARAMETERS_DOC = """
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
    options : MCEMOptions, optional
        Settings of the Monte Carlo EM loop and its tuning knobs
        (:class:`~mixedfx.inference.MCEMOptions`: burn-in, step-size adaptation,
        chunk sizes, ``max_dense_entries``, ``rhat_warning``, ...).  Its
        ``n_chains``, ``n_draws``, ``n_leapfrog_steps`` and ``max_iter`` are replaced
        by the estimator's parameters of those names.  ``None`` (the default) means
        ``MCEMOptions()``.
    distribute : tf.distribute.Strategy, optional
        Fit on several devices: a :class:`tf.distribute.MirroredStrategy` (the GPUs of
        one host) or a :class:`tf.distribute.MultiWorkerMirroredStrategy` (several
        hosts).  The rows are sharded across the replicas, each computes its shard's
        log-likelihood, gradient and M-step sums, and the sums are all-reduced; the
        parameters and random effects are replicated (see :doc:`/scaling`).  ``None``
        (the default) fits on one device.  A strategy is not pickled with the
        estimator.
"""

ATTRIBUTES_DOC = """
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
        Marginal log-likelihood at the estimates: exact for the Gaussian family; by
        adaptive Gauss-Hermite quadrature (25 nodes, glmer's ``nAGQ = 25``: exact to
        many digits) for the others with one scalar random term (``(1 | g)``);
        estimated by importance sampling (Laplace proposal) otherwise; ``None`` if the
        computation would not fit in memory.
    log_likelihood_se_ : float or None
        Its Monte Carlo standard error (0 when exact).
    log_likelihood_method_ : str or None
        How ``log_likelihood_`` was computed; :attr:`aic_`, :attr:`bic_` and
        :meth:`summary` use ``log_likelihood_``.
    log_likelihood_laplace_ : float or None
        The Laplace approximation of the marginal log-likelihood at the estimates,
        the number glmer's ``logLik`` reports (clmm's for ordinal fits); it differs
        from the importance-sampled ``log_likelihood_`` by a few units on crossed
        binary data.  Equal to ``log_likelihood_`` for the Gaussian family.
    training_data_ : pandas.DataFrame
        The rows ``fit`` was given (its formula's columns), kept so that
        :meth:`update` and :func:`~mixedfx.drop1` can refit; a reference to, or a
        cleaned copy of, the data, so it costs up to the data's memory once more.
    training_y_, training_sample_weight_, training_trials_ : array-like or None
        ``y``, ``sample_weight`` and ``trials`` as given to ``fit``.
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
    method_ : str
        The estimation method used, ``"ml"`` or ``"reml"``.
    model_ : MixedModel
        The family bound to the training rows.
    model_parameters_ : ModelParameters
        The estimates in the model layer's form (Cholesky factors, the family's
        parameters; for an ordinal model the internal intercept and cutpoints), as
        :meth:`joint_distribution` uses them.
"""


def fill_docstring(cls: type) -> type:
    """Put the shared parameters and attributes into ``cls``'s docstring; returns ``cls``."""
    cls.__doc__ = cls.__doc__.replace("%(parameters)s", PARAMETERS_DOC.strip()).replace(
        "%(attributes)s", ATTRIBUTES_DOC.strip())
    return cls
