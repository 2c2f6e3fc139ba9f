"""The benchmark's pure parts: references, errors against them, ratios and the table (no fitting here).

A *row* is one fit of one case by one method::

    {"case": "sleepstudy", "method": "glmm 0.6.2", "kind": "peer", "import_seconds": 0.02,
     "seconds": 0.03, "peak_memory_gb": 0.09, "estimates": {...}, "loglik": -875.97,
     "accuracy": {...} or None, "note": "..."}

``kind`` is ``"mixedfx"``, ``"peer"`` (a Python peer: glmm, gpboost, mixedlm), ``"lme4"``
(the R reference fit: lmer, glmer or clmm) or ``"other"`` (the TFP tutorial's algorithm).
A row whose ``seconds`` is None did not fit; its note says why.
"""

from __future__ import annotations

KINDS = ("mixedfx", "peer", "lme4", "other")


def make_row(case, method, kind, *, seconds=None, memory=None, estimates=None, loglik=None, note="",
             import_seconds=None) -> dict:
    """One row of the table (see the module docstring); ``accuracy`` is filled in by :func:`score_rows`."""
    assert kind in KINDS, kind
    return {"case": case, "method": method, "kind": kind, "import_seconds": import_seconds, "seconds": seconds,
            "peak_memory_gb": memory, "estimates": estimates, "loglik": loglik, "accuracy": None, "note": note}


def failed_row(case, method, kind, note) -> dict:
    """A row for a method that did not fit the case: no figures, the reason in the note."""
    return make_row(case, method, kind, note=note)


# -- references and errors ----------------------------------------------------------------------------
def sd_name(group: str, term) -> str:
    """The benchmark's name of a random-effect sd: ``sd(g)`` for an intercept, ``sd(g:x)`` for a slope."""
    return f"sd({group})" if term in (None, "(Intercept)", "Intercept") else f"sd({group}:{term})"


def reference_from_fixture(fixture: dict) -> dict:
    """Estimates, standard errors and logLik of an lme4 (glmer, clmm) fixture, in the benchmark's names.

    ``fixture`` has ``fixed_effects`` and ``fixed_effects_se`` (R's names), optionally
    ``cutpoints`` / ``cutpoints_se``, ``varcorr`` (rows of ``as.data.frame(VarCorr(m))``)
    and ``logLik``.  Correlations become ``cor(g:a,b)``; the residual sd ``sigma``.
    """
    estimates, se = {}, {}
    for name, value in fixture["fixed_effects"].items():
        key = "Intercept" if name == "(Intercept)" else name
        estimates[key], se[key] = value, fixture["fixed_effects_se"][name]
    for name, value in fixture.get("cutpoints", {}).items():
        estimates[f"cutpoint {name}"], se[f"cutpoint {name}"] = value, fixture["cutpoints_se"][name]
    for row in fixture.get("varcorr", []):
        if row["grp"] == "Residual":
            estimates["sigma"] = row["sdcor"]
        elif row.get("var2") is not None:
            estimates[f"cor({row['grp']}:{row['var1']},{row['var2']})"] = row["sdcor"]
        else:
            estimates[sd_name(row["grp"], row.get("var1"))] = row["sdcor"]
    return {"estimates": estimates, "se": se, "loglik": fixture.get("logLik")}


def is_sd(name: str) -> bool:
    """Whether an estimate is a standard deviation (compared relatively)."""
    return name == "sigma" or name.startswith("sd(")


def errors(estimates: dict, ref: dict, loglik: float | None = None) -> dict:
    """The error of one fit against a reference.

    ``sd_error``: the largest relative error of an sd (``sd(...)`` and ``sigma``);
    ``fe_error_se``: the largest error of a fixed effect (or cutpoint) in the reference's
    standard errors, or ``fe_abs_error``, its absolute error, where the reference has no
    standard errors (a simulated truth); ``loglik_diff``: this fit's logLik minus the
    reference's, where both are known.  Correlations are not scored.  Estimates the fit
    lacks are skipped (the ordinal fits have no intercept).

    Example: ``errors({"x": 1.1, "sd(g)": 0.5}, {"estimates": {"x": 1.0, "sd(g)": 0.4}, "se": {"x": 0.2}})``
    is ``{"sd_error": 0.25, "fe_error_se": 0.5}`` (up to rounding).
    """
    sd_error, fe_error = 0.0, 0.0
    se = ref.get("se") or {}
    for name, value in ref["estimates"].items():
        if name not in estimates or name.startswith("cor("):
            continue
        if is_sd(name):
            sd_error = max(sd_error, abs(estimates[name] / value - 1.0))
        elif name in se:
            fe_error = max(fe_error, abs(estimates[name] - value) / se[name])
        elif not se:
            fe_error = max(fe_error, abs(estimates[name] - value))
    out = {"sd_error": sd_error, ("fe_error_se" if se else "fe_abs_error"): fe_error}
    if loglik is not None and ref.get("loglik") is not None:
        out["loglik_diff"] = loglik - ref["loglik"]
    return out


def score_rows(rows: list[dict], ref: dict | None) -> list[dict]:
    """Fill in each fitted row's ``accuracy``: its :func:`errors` against ``ref`` (None without a reference)."""
    for row in rows:
        if row["estimates"] and ref is not None:
            row["accuracy"] = errors(row["estimates"], ref, row["loglik"])
    return rows


# -- ratios ------------------------------------------------------------------------------------------
def fastest_peer(case_rows: list[dict]) -> dict | None:
    """The fastest Python peer that fitted the case (None if none did)."""
    fitted = [r for r in case_rows if r["kind"] == "peer" and r["seconds"]]
    return min(fitted, key=lambda r: r["seconds"]) if fitted else None


def lme4_row(case_rows: list[dict]) -> dict | None:
    """The R reference fit (lmer, glmer, clmm) of the case, if it ran."""
    return next((r for r in case_rows if r["kind"] == "lme4" and r["seconds"]), None)


def speed_ratio(baseline: dict | None, row: dict) -> float | None:
    """``baseline seconds / row seconds``: above 1 when ``row`` is the faster (None if either did not fit)."""
    if baseline is None or not baseline["seconds"] or not row["seconds"]:
        return None
    return baseline["seconds"] / row["seconds"]


def format_ratio(value: float | None) -> str:
    """``2.0x``, ``0.45x``, ``0.0016x``; ``-`` for no ratio."""
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.1f}x"
    return f"{value:.2f}x" if value >= 0.01 else f"{value:.2g}x"


def format_seconds(value: float | None) -> str:
    """Seconds with three significant digits or so (``0.0331``, ``1.24``, ``61.3``, ``341``); ``-`` for none."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3g}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def format_accuracy(accuracy: dict | None) -> str:
    """``sd 0.3%, FE 0.02 SE, dlogLik -0.001``: the errors of :func:`errors`."""
    if not accuracy:
        return "-"
    parts = [f"sd {100 * accuracy['sd_error']:.1f}%"]
    if "fe_error_se" in accuracy:
        parts.append(f"FE {accuracy['fe_error_se']:.2f} SE")
    if "fe_abs_error" in accuracy:
        parts.append(f"FE {accuracy['fe_abs_error']:.4f}")
    if "loglik_diff" in accuracy:
        parts.append(f"dlogLik {accuracy['loglik_diff']:+.3g}")
    return ", ".join(parts)


COLUMNS = (("case", 30), ("method", 26), ("import s", 8), ("fit s", 8), ("peak GB", 7), ("vs fastest peer", 18),
           ("vs lme4", 7), ("error vs reference", 36))


def format_table(rows: list[dict]) -> str:
    """The table: one line per row, cases in their order, ratios as ``baseline / this``.

    ``vs fastest peer`` names the fastest Python peer that fitted the case and gives its
    time over this row's (above 1: this row is faster); ``vs lme4`` the same for the R
    reference fit.  Both are printed for the mixedfx rows and the peers.
    """
    header = " ".join(f"{name:{'>' if name.endswith(' s') or name == 'peak GB' else '<'}{width}s}"
                      for name, width in COLUMNS) + " note"
    lines = [header]
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    for case, case_rows in by_case.items():
        fastest, reference_fit = fastest_peer(case_rows), lme4_row(case_rows)
        for row in case_rows:
            versus_peer = versus_lme4 = ""
            if row["kind"] in ("mixedfx", "peer") and row["seconds"]:
                if row is fastest:
                    versus_peer = "(fastest peer)"
                elif fastest is not None:
                    versus_peer = f"{fastest['method'].split(' ')[0]} {format_ratio(speed_ratio(fastest, row))}"
                versus_lme4 = format_ratio(speed_ratio(reference_fit, row)) if reference_fit else ""
            memory = "-" if row["peak_memory_gb"] is None else f"{row['peak_memory_gb']:.2f}"
            cells = (case, row["method"], format_seconds(row["import_seconds"]), format_seconds(row["seconds"]),
                     memory, versus_peer, versus_lme4, format_accuracy(row["accuracy"]) if row["seconds"] else "")
            lines.append(" ".join(f"{cell:{'>' if name.endswith(' s') or name == 'peak GB' else '<'}{width}s}"
                                  for cell, (name, width) in zip(cells, COLUMNS)) + f" {row['note']}".rstrip())
    return "\n".join(lines)
