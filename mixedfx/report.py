"""Text reports of fitted models, in the layout of lme4's ``summary(merMod)``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mixedfx.model.covariance import term_structure
from mixedfx.results import count_parameters, fixed_effects_table

__all__ = ["format_summary", "write_report"]


def format_summary(model) -> str:
    """lme4-style summary text of a fitted mixedfx estimator."""
    fit = model.fit_summary_
    spec = model.formula_spec_
    family = model.family_
    gaussian = family.conjugate_gaussian  # lmer's layout: a residual row, t statistics
    kind = "Linear" if gaussian else "Generalized linear"
    reml = fit.method == "reml"
    criterion = "REML" if reml else "maximum likelihood"
    lines = [
        f"{kind} mixed model fit by {criterion} (Monte Carlo EM) [{type(model).__name__}]",
        f" Family: {family}",
        f"Formula: {spec.text}",
        "",
    ]
    cutpoints = getattr(model, "cutpoints_", None)
    n_params = count_parameters(model)
    if model.log_likelihood_ is not None:
        if reml:
            lines.append(f"REML criterion at convergence: {-2 * model.log_likelihood_:.4f}")
        loglik = model.log_likelihood_
        aic = -2 * loglik + 2 * n_params
        bic = -2 * loglik + np.log(model.n_obs_) * n_params
        table = pd.DataFrame(
            [[aic, bic, loglik, -2 * loglik, model.n_obs_ - n_params]],
            columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
        )
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        if model.log_likelihood_se_:
            lines.append(f"AIC, BIC and logLik use the log-likelihood by {model.log_likelihood_method_}; Monte "
                         f"Carlo standard error {model.log_likelihood_se_:.3f}")
        else:
            lines.append(f"AIC, BIC and logLik use the {model.log_likelihood_method_} log-likelihood"
                         if model.log_likelihood_method_.startswith("exact") else  # Gaussian
                         f"AIC, BIC and logLik use the log-likelihood by {model.log_likelihood_method_}")
        laplace = getattr(model, "log_likelihood_laplace_", None)
        if laplace is not None and laplace != loglik:  # a GLMM's: glmer's own logLik beside ours
            lines.append(f"logLik by the Laplace approximation (glmer's): {laplace:.1f}")
        lines.append("")
    if model.residual_quantiles_ is not None:
        lines += [
            "Scaled residuals:" if gaussian else "Scaled (Pearson) residuals:",
            model.residual_quantiles_.to_frame().T.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
            "",
        ]
    lines.append("Random effects:")
    terms = list(zip(model.random_design_.terms, model.random_cov_))
    predictors = list(dict.fromkeys(term.predictor for term, _ in terms))
    for predictor in predictors:  # glmmTMB's blocks when the ziformula has random terms
        chosen = [(term, cov) for term, cov in terms if term.predictor == predictor]
        if len(predictors) > 1:
            lines += ["", _PREDICTOR_TITLES.get(predictor, f"{predictor} model:")]
        lines += _random_effects_lines(model, chosen, residual=gaussian and predictor == "cond")
    lines += model.family_.parameter_lines(model.model_parameters_.family_params)
    lines += ["", "Fixed effects:"]
    lines += _fixed_effects_lines(fixed_effects_table(model))
    for key, title in (("zi", "Zero-inflation model:"), ("disp", "Dispersion model:")):
        block = getattr(model, f"{key}_fixed_effects_", None)
        if block is not None:
            lines += ["", title]
            rows = [("",) + tuple(block.columns)] + [(str(name), f"{b:.6g}", f"{se:.4g}", f"{z:.3f}", f"{p:.3g}")
                                                     for name, (b, se, z, p) in zip(block.index, block.to_numpy())]
            lines += _columns(rows, align="<>>>>")
    if cutpoints is not None:
        lines += ["", "Threshold coefficients:"]
        lines += _columns([("", "Estimate")] + [(str(k), f"{v:.6g}") for k, v in cutpoints.items()], align="<>")
    if model.fixed_design_.dropped_columns:
        lines.append(
            "fixed-effect model matrix is rank deficient; dropped: " + ", ".join(model.fixed_design_.dropped_columns)
        )
    lines.append("")
    lines += _fit_lines(fit)
    return "\n".join(lines)


_PREDICTOR_TITLES = {"cond": "Conditional model:", "zi": "Zero-inflation model:"}


def _random_effects_lines(model, terms, *, residual: bool) -> list[str]:
    """The variance components of ``terms`` (``(term, covariance frame)`` pairs of one
    linear predictor) and their groups' sizes, as lme4 and glmmTMB print them."""
    rows = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
    for term, cov in terms:
        matrix = cov.to_numpy()
        sds = np.sqrt(np.diag(matrix))
        label = term_structure(term).label(matrix)  # "(ar1)", as glmmTMB prints it
        for c, name in enumerate(term.coef_names):
            corr = " ".join(f"{matrix[c, b] / (sds[c] * sds[b]):.2f}" for b in range(c))
            corr = f"{corr} {label}".strip() if c == term.dim - 1 else corr
            rows.append((term.factor if c == 0 else "", name, f"{matrix[c, c]:.6g}", f"{sds[c]:.5g}", corr))
    if residual:
        sigma = float(model.variance_components_["sdcor"].iloc[-1])
        rows.append(("Residual", "", f"{sigma**2:.6g}", f"{sigma:.5g}", ""))
    factors = dict.fromkeys(term.factor for term, _ in terms)
    groups = "; ".join(f"{name}, {model.random_design_.factors[name].num_levels}" for name in factors)
    return _columns(rows, align="<<>><") + [f"Number of obs: {model.n_obs_}, groups:  {groups}"]


def _kernel_text(fit) -> str:
    """The E-step kernel as the summary names it: HMC with its acceptance rate, or blocked
    Gibbs (exact draws, nothing to accept)."""
    if getattr(fit, "e_step", "hmc") == "gibbs":
        return "blocked Gibbs E-step"
    return f"HMC acceptance {fit.acceptance_rate:.2f}"


def _fit_lines(fit) -> list[str]:
    """The summary's lines on the Monte Carlo EM fit (only the reason, for an exact fit
    of no iterations), its data warnings and its boundary estimates."""
    lines = []
    if fit.n_iter == 0:
        lines.append(f"no Monte Carlo EM: {fit.message}")
    else:
        status = "converged" if fit.converged else "did NOT converge"
        ratio = np.nanmax(fit.mcse / fit.tolerance) if np.isfinite(fit.tolerance).any() else np.nan
        lines.append(
            f"MCEM {status} after {fit.n_iter} iterations ({fit.n_averaged} averaged, "
            f"{fit.n_draws_averaged} draws); {_kernel_text(fit)}; "
            f"largest Monte Carlo error {ratio:.2f} x tolerance; {fit.elapsed_seconds:.1f} s"
        )
        lines.append(
            f"E-step draws: {fit.n_kept_draws} kept per chain x {fit.n_chains} chains; R-hat {fit.rhat:.3f} "
            f"(mean squares; chance level +{fit.rhat_noise:.3f}), {fit.rhat_max:.3f} (largest over levels); "
            f"smallest ESS {fit.ess_min:.0f}"
            + ("" if getattr(fit, "e_step", "hmc") == "gibbs" else f"; final step size {fit.final_step_size:.3g}")
        )
        if getattr(fit, "n_divergent", 0) or getattr(fit, "n_retries", 0):
            lines.append(f"HMC: {fit.n_divergent} divergent transitions; {fit.n_retries} iteration blocks retried with "
                         "smaller step sizes" + ("".join(f"\n  {line}" for line in fit.recoveries)))
    lines.extend(f"warning: {text}" for text in getattr(fit, "data_warnings", ()) if text != fit.message)
    if fit.at_boundary:
        lines.append("boundary (singular) fit: " + ", ".join(fit.at_boundary)
                     + " estimated at the boundary (an sd at zero or a correlation at +-1); see lme4's ?isSingular")
    if getattr(fit, "by_quadrature", ()):
        lines.append(", ".join(fit.by_quadrature) + " small: finished on the adaptive Gauss-Hermite likelihood "
                     "(25 nodes, as glmer's nAGQ = 25), with the family's own parameters")
    return lines


#: The line under the fixed-effects table, per ``attrs["ddf"]`` of a Gaussian fit's table.
_DDF_LINES = {
    "satterthwaite": "t-tests use Satterthwaite's method for the denominator df (lmerTest)",
    "kenward-roger": "t-tests use the Kenward-Roger method (pbkrtest): adjusted standard errors and df",
    "residual": "t-tests use the residual df, n - p",
    "asymptotic": "Wald z tests (ddf='asymptotic'): p-values from the normal distribution",
}


def _fixed_effects_lines(table: pd.DataFrame) -> list[str]:
    """The fixed-effects table of lmerTest's summary (a df column unless every df is
    infinite: Wald z), and the line that says how it was tested."""
    wald = bool(np.isinf(table["df"]).all())
    shown = table.drop(columns="df") if wald else table
    rows = [("",) + tuple(shown.columns)]
    for name, values in zip(shown.index, shown.to_numpy()):
        b, se, *df, t, p = values
        rows.append((str(name), f"{b:.6g}", f"{se:.4g}", *(f"{v:.4g}" for v in df), f"{t:.3f}", f"{p:.3g}"))
    lines = _columns(rows, align="<" + ">" * (len(rows[0]) - 1))
    if "note" in table.attrs and table.attrs["ddf"] == "asymptotic":
        lines.append("Wald z tests (GLMM): no denominator df, p-values from the normal distribution")
    elif "note" in table.attrs:
        lines.append(f"t-tests: {table.attrs['note']}")
    else:
        lines.append(_DDF_LINES[table.attrs["ddf"]])
    return lines


def _columns(rows, *, align: str) -> list[str]:
    """Lay out rows of strings in columns; ``align`` has one '<' or '>' per column."""
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.ljust(w) if a == "<" else cell.rjust(w) for cell, w, a in zip(row, widths, align)]
        out.append(" " + " ".join(cells).rstrip())
    return out


def write_report(model, *, train, test=None, out_dir, progress=None) -> list:
    """Write a fitted model's report into a directory: summary, tables, plots and Markdown.

    Parameters
    ----------
    model : MixedEffectsRegressor
        A fitted estimator.
    train : pandas.DataFrame
        The rows it was fitted on (for the QQ plot of the scaled residuals).
    test : pandas.DataFrame, optional
        Held-out rows for the residual histogram; the training rows when omitted or
        empty.
    out_dir : str or os.PathLike
        The directory to write into; created if missing, existing files of the same
        names are replaced.
    progress : callable, optional
        Called with a one-line message at the start of each stage.

    Returns
    -------
    list of pathlib.Path
        The files written, in order:

        * ``summary.txt``: :func:`format_summary`'s text;
        * ``fixed_effects.csv``, ``variance_components.csv``, ``ranef.csv`` (with
          the conditional standard deviations) and ``fit_summary.csv``;
        * ``objective.png``, ``trace_<group>.png`` (the first grouping factor),
          ``residuals.png``, ``random_effects.png``, ``caterpillar_<group>.png``
          (one per grouping factor) and ``qq.png`` (see :mod:`mixedfx.plotting`);
        * ``report.md``: the fit's description, the tables and the plots.

    Examples
    --------
    >>> import tempfile
    >>> import mixedfx
    >>> from mixedfx.report import write_report
    >>> with tempfile.TemporaryDirectory() as out_dir:
    ...     files = write_report(model, train=data.head(500), test=data.tail(100), out_dir=out_dir)
    ...     sorted(path.name for path in files)[:4]
    ['caterpillar_g.png', 'fit_summary.csv', 'fixed_effects.csv', 'objective.png']
    """
    from pathlib import Path

    from sklearn.utils.validation import check_is_fitted

    from mixedfx import plotting

    check_is_fitted(model, "fixed_effects_")
    say = progress if progress is not None else (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    say("writing summary and tables")
    summary_text = format_summary(model)
    (out / "summary.txt").write_text(summary_text + "\n", encoding="utf-8")
    written.append(out / "summary.txt")
    fixed = model.fixed_effects_table()
    components = model.variance_components_
    ranef = model.ranef(condvar=True)
    fit_table = model.fit_summary_.table()
    for name, frame, keep_index in (("fixed_effects", fixed, True), ("variance_components", components, False),
                                    ("ranef", ranef, False), ("fit_summary", fit_table, True)):
        path = out / f"{name}.csv"
        frame.to_csv(path, index=keep_index, index_label=(frame.index.name or "term") if keep_index else None)
        written.append(path)

    groups = list(model.random_effects_)
    held_out = test is not None and len(test) > 0
    residual_rows = test if held_out else train
    figures = []  # (file name, heading, caption)

    def save(figure, name, heading, caption):
        figure.savefig(out / name, dpi=100)
        written.append(out / name)
        figures.append((name, heading, caption))

    say("plotting objective.png")
    figure = plotting._figure(figsize=(7.0, 4.0))
    plotting.plot_objective(model, ax=figure.add_subplot())
    save(figure, "objective.png", "Monte Carlo EM loss",
         "The negated mean complete-data log joint of each EM iteration; the estimates average the shaded "
         "iterations.")

    first = groups[0]
    trace_name = f"trace_{_file_stem(first)}.png"
    say(f"plotting {trace_name}")
    figure = plotting._figure(figsize=(8.5, 4.0))
    plotting.plot_trace(model, first, ax=figure.add_subplot())
    save(figure, trace_name, f"Trace of the E-step draws ({first})",
         f"The kept HMC draws of the first five levels of {first}, one line per chain.")

    say("plotting residuals.png")
    figure = plotting._figure(figsize=(7.0, 4.0))
    ax = plotting.plot_residuals(model, residual_rows, ax=figure.add_subplot())
    where = "held-out" if held_out else "training"
    ax.set_title(ax.get_title().replace("Residuals:", f"Residuals on the {where} rows:", 1))
    save(figure, "residuals.png", f"Residuals on the {where} rows",
         f"Response minus prediction (fixed part plus conditional means of the random effects) on the "
         f"{len(residual_rows)} {where} rows" + ("; levels not seen in fit contribute zero." if held_out else "."))

    say("plotting random_effects.png")
    n_panels = sum(frame.shape[1] for frame in model.random_effects_.values())
    n_rows, n_cols = plotting._grid_shape(n_panels)
    figure = plotting._figure(figsize=(4.2 * n_cols, 3.4 * n_rows))
    grid = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for extra in grid[n_panels:]:
        extra.set_visible(False)
    plotting.plot_random_effects(model, all_coefs=True, axes=grid[:n_panels])
    save(figure, "random_effects.png", "Random effects",
         "Histograms of the conditional means of the random effects, one panel per grouping factor and "
         "coefficient.")

    for group in groups:
        name = f"caterpillar_{_file_stem(group)}.png"
        say(f"plotting {name}")
        coefs = list(dict.fromkeys(ranef.loc[ranef["group"] == group, "term"]))
        n_levels = len(model.random_effects_[group])
        figure = plotting._figure(figsize=(5.5 * len(coefs), plotting._caterpillar_height(n_levels)))
        for ax, coef in zip(figure.subplots(1, len(coefs), squeeze=False).ravel(), coefs):
            plotting.plot_caterpillar(model, group, coef=coef, ax=ax)
        save(figure, name, f"Caterpillar plot of {group}",
             f"The {n_levels} levels of {group} sorted by conditional mean, with 95% intervals from the "
             "conditional standard deviations (lme4's dotplot of ranef with condVar).")

    say("plotting qq.png")
    figure = plotting._figure(figsize=(5.5, 5.0))
    plotting.plot_qq(model, train, ax=figure.add_subplot())
    save(figure, "qq.png", "Normal QQ plot of the scaled residuals",
         f"The scaled residuals of the {len(train)} training rows against standard normal quantiles.")

    say("writing report.md")
    path = out / "report.md"
    path.write_text(_markdown_report(model, summary_text=summary_text, fixed=fixed, components=components,
                                     ranef=ranef, fit_table=fit_table, figures=figures,
                                     n_test=len(test) if held_out else 0), encoding="utf-8")
    written.append(path)
    return written


#: ``ranef`` tables longer than this are summarised per factor and coefficient in report.md.
MAX_MARKDOWN_RANEF_ROWS = 60


def _markdown_report(model, *, summary_text, fixed, components, ranef, fit_table, figures, n_test) -> str:
    fit = model.fit_summary_
    levels = ", ".join(f"{name} ({factor.num_levels} levels)"
                       for name, factor in model.random_design_.factors.items())
    status = "converged" if fit.converged else "did NOT converge"
    lines = [
        "# mixedfx report",
        "",
        f"- **Formula:** `{model.formula_spec_.text}`",
        f"- **Family:** {model.family_}",
        f"- **Method:** {summary_text.splitlines()[0].split(' [')[0]}",
        f"- **Observations:** {model.n_obs_} fitted" + (f", {n_test} held out" if n_test else ""),
        f"- **Grouping factors:** {levels}",
        f"- **Monte Carlo EM:** {status} after {fit.n_iter} iterations ({fit.n_averaged} averaged), "
        f"{_kernel_text(fit)}, {fit.elapsed_seconds:.1f} s",
    ]
    if model.log_likelihood_ is not None:
        lines.append(f"- **Log-likelihood:** {model.log_likelihood_:.6g}")
    lines += ["", "## Fixed effects", "", _markdown_table(fixed, index=True),
              "", "## Variance components", "", _markdown_table(components, index=False),
              "", "## Random effects", ""]
    if len(ranef) <= MAX_MARKDOWN_RANEF_ROWS:
        lines += ["Conditional means and standard deviations (also in `ranef.csv`):", "",
                  _markdown_table(ranef, index=False)]
    else:
        summary = ranef.groupby(["group", "term"], sort=False).agg(
            levels=("condval", "size"), sd_condval=("condval", "std"), min_condval=("condval", "min"),
            max_condval=("condval", "max"), mean_condsd=("condsd", "mean"))
        lines += [f"{len(ranef)} conditional means, summarised per factor and coefficient "
                  "(every level is in `ranef.csv`):", "", _markdown_table(summary.reset_index(), index=False)]
    lines += ["", "## Monte Carlo EM", "", _markdown_table(fit_table, index=True), "", "## Plots", ""]
    for name, heading, caption in figures:
        lines += [f"### {heading}", "", caption, "", f"![{heading}]({name})", ""]
    lines += ["## Summary", "", "```text", summary_text, "```", ""]
    return "\n".join(lines)


def _markdown_table(frame, *, index: bool) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (without the tabulate package)."""
    if index:
        frame = frame.rename_axis(frame.index.name or "term").reset_index()
    numeric = [pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])
               for column in frame.columns]
    p_values = [str(column).startswith("Pr(") or "p-value" in str(column) for column in frame.columns]

    def text(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    def cell(value, is_p_value) -> str:
        if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
            return ""
        if isinstance(value, (float, np.floating)):
            return "< 2.2e-16" if is_p_value and value < 2.2e-16 else f"{value:.5g}"  # R's format.pval
        return text(value)

    rows = [[text(column) for column in frame.columns], [("---:" if is_number else ":---") for is_number in numeric]]
    rows += [[cell(value, is_p) for value, is_p in zip(record, p_values)]
             for record in frame.itertuples(index=False, name=None)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _file_stem(name: str) -> str:
    """A grouping factor's name made safe for a file name (``a:b`` -> ``a_b``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "group"
