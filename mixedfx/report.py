"""Text reports of fitted models, in the layout of lme4's ``summary(merMod)``."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["format_summary"]


def format_summary(model) -> str:
    """lme4-style summary text of a fitted mixedfx estimator."""
    from scipy import stats

    fit = model.fit_summary_
    spec = model.formula_spec_
    family = model.family_
    gaussian = family.name == "gaussian"
    kind = "Linear" if gaussian else "Generalized linear"
    lines = [
        f"{kind} mixed model fit by maximum likelihood (Monte Carlo EM) [{type(model).__name__}]",
        f" Family: {family}",
        f"Formula: {spec.text}",
        "",
    ]
    cutpoints = getattr(model, "cutpoints_", None)
    n_params = (len(model.fixed_effects_) + len(model.variance_components_)  # lme4's df: every VarCorr row
                + (0 if cutpoints is None else len(cutpoints)) + (1 if hasattr(model, "dispersion_") else 0))
    if model.log_likelihood_ is not None:
        loglik = model.log_likelihood_
        aic = -2 * loglik + 2 * n_params
        bic = -2 * loglik + np.log(model.n_obs_) * n_params
        table = pd.DataFrame(
            [[aic, bic, loglik, -2 * loglik, model.n_obs_ - n_params]],
            columns=["AIC", "BIC", "logLik", "deviance", "df.resid"],
        )
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        if model.log_likelihood_se_:
            lines.append(f"logLik by {model.log_likelihood_method_}; Monte Carlo standard error "
                         f"{model.log_likelihood_se_:.3f}")
        lines.append("")
    if model.residual_quantiles_ is not None:
        lines += [
            "Scaled residuals:" if gaussian else "Scaled (Pearson) residuals:",
            model.residual_quantiles_.to_frame().T.to_string(index=False, float_format=lambda v: f"{v:.4f}"),
            "",
        ]
    lines.append("Random effects:")
    rows = [("Groups", "Name", "Variance", "Std.Dev.", "Corr")]
    for term, cov in zip(model.random_design_.terms, model.random_cov_):
        matrix = cov.to_numpy()
        sds = np.sqrt(np.diag(matrix))
        for c, name in enumerate(term.coef_names):
            corr = " ".join(f"{matrix[c, b] / (sds[c] * sds[b]):.2f}" for b in range(c))
            rows.append((term.name if c == 0 else "", name, f"{matrix[c, c]:.6g}", f"{sds[c]:.5g}", corr))
    if gaussian:
        sigma = float(model.variance_components_["sdcor"].iloc[-1])
        rows.append(("Residual", "", f"{sigma**2:.6g}", f"{sigma:.5g}", ""))
    lines += _columns(rows, align="<<>><")
    groups = "; ".join(
        f"{name}, {factor.num_levels}" for name, factor in model.random_design_.factors.items()
    )
    lines += [f"Number of obs: {model.n_obs_}, groups:  {groups}"]
    if hasattr(model, "dispersion_"):
        lines.append(f"Dispersion parameter (nbinom2): {model.dispersion_:.4g}")
    lines += ["", "Fixed effects:"]
    estimate = model.fixed_effects_.to_numpy()
    se = np.sqrt(np.diag(model.fixed_effects_cov_.to_numpy()))
    statistic = estimate / se
    if gaussian:
        rows = [("", "Estimate", "Std. Error", "t value")]
        for name, b, s, t in zip(model.fixed_effects_.index, estimate, se, statistic):
            rows.append((str(name), f"{b:.6g}", f"{s:.4g}", f"{t:.3f}"))
        lines += _columns(rows, align="<>>>")
    else:
        rows = [("", "Estimate", "Std. Error", "z value", "Pr(>|z|)")]
        for name, b, s, t in zip(model.fixed_effects_.index, estimate, se, statistic):
            rows.append((str(name), f"{b:.6g}", f"{s:.4g}", f"{t:.3f}", f"{2 * stats.norm.sf(abs(t)):.3g}"))
        lines += _columns(rows, align="<>>>>")
    if cutpoints is not None:
        lines += ["", "Threshold coefficients:"]
        lines += _columns([("", "Estimate")] + [(str(k), f"{v:.6g}") for k, v in cutpoints.items()], align="<>")
    if model.fixed_design_.dropped_columns:
        lines.append(
            "fixed-effect model matrix is rank deficient; dropped: " + ", ".join(model.fixed_design_.dropped_columns)
        )
    lines.append("")
    status = "converged" if fit.converged else "did NOT converge"
    ratio = np.nanmax(fit.mcse / fit.tolerance) if np.isfinite(fit.tolerance).any() else np.nan
    lines.append(
        f"MCEM {status} after {fit.n_iter} iterations ({fit.n_averaged} averaged, "
        f"{fit.n_draws_averaged} draws); HMC acceptance {fit.acceptance_rate:.2f}; "
        f"largest Monte Carlo error {ratio:.2f} x tolerance; {fit.elapsed_seconds:.1f} s"
    )
    if fit.at_boundary:
        lines.append("boundary (singular) fit: " + ", ".join(fit.at_boundary) + " estimated at zero")
    return "\n".join(lines)


def _columns(rows, *, align: str) -> list[str]:
    """Lay out rows of strings in columns; ``align`` has one '<' or '>' per column."""
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.ljust(w) if a == "<" else cell.rjust(w) for cell, w, a in zip(row, widths, align)]
        out.append(" " + " ".join(cells).rstrip())
    return out
