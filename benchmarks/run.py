"""The benchmark suite: one command, one table of time, memory, ratios and accuracy.

Cases (each fit in its own process, so that its peak memory is its own):

* ``gaussian``: InstEval ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, ML; against
  lme4's ``lmer(REML = FALSE)`` and the TFP tutorial's algorithm (``tfp_tutorial.py``);
* ``bernoulli``: binarized InstEval (``y >= 4``), same random terms; against
  ``glmer(nAGQ = 1)`` (Laplace);
* ``ordinal``: InstEval ratings as ordered categories, students 1-1000 (24,687 rows;
  ``clmm`` on all of InstEval takes far longer); against ``ordinal::clmm``;
* ``scale``: the synthetic scale curve of ``scale.py`` (three crossed factors whose
  levels grow with the rows), against the simulated truth, and against lme4 up to
  ``--scale-r-max`` rows.

The R baselines run through ``Rscript`` when R is installed, and are skipped with a
note otherwise.  A mixedfx process fits twice: the first fit pays for tracing and XLA
compilation, the second (another seed, same shapes) reuses the compiled program.  Times
are wall-clock seconds of the fit alone (no imports, no data loading); peak memory is
the process's maximum resident set size, imports and data included.  Errors are against
the reference estimates: lme4's (glmer's, clmm's) committed fixtures for InstEval, the
simulated truth for the scale curve: the largest relative error of a standard deviation
and the largest error of a fixed effect in units of its standard error.

    python benchmarks/run.py                              # everything
    python benchmarks/run.py --cases gaussian --skip-tutorial
    python benchmarks/run.py --cases scale --scale-sizes 10000 100000 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DATA = ROOT / "mixedfx" / "datasets" / "data" / "insteval.csv.gz"
FIXTURES = ROOT / "tests" / "fixtures"
CASES = ("gaussian", "bernoulli", "ordinal", "scale")
RANDOM = "(1 | s) + (1 | d) + (1 | dept)"


# -- references -------------------------------------------------------------------------------
def _fixture(name: str) -> dict:
    with open(FIXTURES / name) as handle:
        return json.load(handle)


def reference(case: str) -> dict:
    """Reference estimates and standard errors of an InstEval case, from the committed fixtures."""
    fixture = _fixture({"gaussian": "lme4_insteval_ml.json", "bernoulli": "glmm_insteval_bernoulli.json",
                        "ordinal": "glmm_insteval_ordinal.json"}[case])
    estimates, se = {}, {}
    for name, value in fixture["fixed_effects"].items():
        key = "Intercept" if name == "(Intercept)" else name
        estimates[key], se[key] = value, fixture["fixed_effects_se"][name]
    for name, value in fixture.get("cutpoints", {}).items():
        estimates[f"cutpoint {name}"], se[f"cutpoint {name}"] = value, fixture["cutpoints_se"][name]
    for row in fixture["varcorr"]:
        estimates["sigma" if row["grp"] == "Residual" else f"sd({row['grp']})"] = row["sdcor"]
    return {"estimates": estimates, "se": se}


def errors(estimates: dict, ref: dict) -> dict:
    """Largest relative error of an sd, and of a fixed effect in reference SEs."""
    sd_error, fe_error = 0.0, 0.0
    for name, value in ref["estimates"].items():
        if name not in estimates:
            continue
        if name in ref["se"]:
            fe_error = max(fe_error, abs(estimates[name] - value) / ref["se"][name])
        else:
            sd_error = max(sd_error, abs(estimates[name] / value - 1.0))
    return {"sd_error": sd_error, "fe_error_se": fe_error}


# -- the fits, run in child processes ------------------------------------------------------------
def _insteval(case: str):
    import mixedfx

    data = mixedfx.datasets.load_insteval()
    if case == "bernoulli":
        return data.assign(good=(data["y"] >= 4).astype(int)), f"good ~ service + {RANDOM}", "bernoulli"
    if case == "ordinal":
        return data[data["s"].astype(int) <= 1000], f"y ~ service + {RANDOM}", "ordinal"
    return data, f"y ~ service + {RANDOM}", "gaussian"


def _estimates(model) -> dict:
    out = {k: float(v) for k, v in model.fixed_effects_.items()}
    for _, row in model.variance_components_.iterrows():
        out["sigma" if row["group"] == "Residual" else f"sd({row['group']})"] = float(row["sdcor"])
    if hasattr(model, "cutpoints_"):
        out.update({f"cutpoint {k}": float(v) for k, v in model.cutpoints_.items()})
    return out


def child_mixedfx(case: str) -> dict:
    """Two fits of one InstEval case in this process: the first compiles, the second reuses."""
    import mixedfx

    data, formula, family = _insteval(case)
    fits = []
    for seed in (0, 1):
        started = time.perf_counter()
        model = mixedfx.glmer(formula, data, family=family, random_state=seed, verbose=0)
        seconds = time.perf_counter() - started
        fits.append({"seconds": seconds, "estimates": _estimates(model), "iterations": model.fit_summary_.n_iter,
                     "first_call_seconds": model.fit_summary_.first_call_seconds})
    return {"rows": len(data), "fits": fits}


def child_tutorial(case: str) -> dict:
    """The TFP tutorial's algorithm on all of InstEval, as published (1,000 + 1,500 iterations)."""
    from tfp_tutorial import fit_tutorial

    import mixedfx

    data = mixedfx.datasets.load_insteval()
    codes = {c: data[c].cat.codes.to_numpy() for c in ("s", "d", "dept")}
    result = fit_tutorial(codes["s"], codes["d"], codes["dept"], data["service"].to_numpy(),
                          data["y"].to_numpy(dtype=float))
    estimates = {k: float(result[k]) for k in ("Intercept", "service", "sd(s)", "sd(d)", "sd(dept)", "sigma")}
    return {"seconds": float(result["seconds"]), "estimates": estimates}


def run_child(*args: str) -> dict:
    """Run ``run.py --child ARGS`` in a fresh process; its JSON result and peak memory."""
    process = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, _ = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": f"exit status {os.waitstatus_to_exitcode(status)}"}
    return json.loads(output.strip().splitlines()[-1])  # with the child's own peak memory


# -- R baselines ---------------------------------------------------------------------------------
#: Prints ``{"seconds": ..., "estimates": {...}}`` for a named numeric vector of estimates.
R_EMIT = r"""
emit <- function(seconds, e) {
  cat(paste0('{"seconds": ', sprintf("%.4f", seconds), ', "estimates": {',
             paste0('"', names(e), '": ', sprintf("%.10g", e), collapse = ", "), '}}'), "\n")
}
lme4_estimates <- function(m, group_names = function(g) paste0("sd(", g, ")")) {
  vc <- as.data.frame(VarCorr(m))
  e <- fixef(m); names(e)[names(e) == "(Intercept)"] <- "Intercept"
  sds <- vc$sdcor; names(sds) <- ifelse(vc$grp == "Residual", "sigma", group_names(vc$grp))
  c(e, sds)
}
"""

R_INSTEVAL = R_EMIT + r"""
suppressPackageStartupMessages({library(lme4); library(ordinal)})
d <- read.csv(gzfile(commandArgs(TRUE)[1]))
which <- commandArgs(TRUE)[2]
if (which == "clmm") d <- d[d$s <= 1000, ]
d$s <- factor(d$s); d$d <- factor(d$d); d$dept <- factor(d$dept)
t0 <- proc.time()[["elapsed"]]
if (which == "lme4") {
  m <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), data = d, REML = FALSE)
  e <- lme4_estimates(m)
} else if (which == "glmer") {
  d$good <- as.integer(d$y >= 4)
  m <- glmer(good ~ service + (1 | s) + (1 | d) + (1 | dept), data = d, family = binomial, nAGQ = 1)
  e <- lme4_estimates(m)
} else {
  d$rating <- factor(d$y, ordered = TRUE)
  m <- clmm(rating ~ service + (1 | s) + (1 | d) + (1 | dept), data = d, link = "logit")
  cuts <- m$alpha; names(cuts) <- paste("cutpoint", names(cuts))
  e <- c(service = m$beta[["service"]], "sd(s)" = m$ST$s[1, 1], "sd(d)" = m$ST$d[1, 1],
         "sd(dept)" = m$ST$dept[1, 1], cuts)
}
emit(proc.time()[["elapsed"]] - t0, e)
"""

R_SCALE = R_EMIT + r"""
suppressPackageStartupMessages({library(lme4)})
d <- read.csv(commandArgs(TRUE)[1])
d$g1 <- factor(d$g1); d$g2 <- factor(d$g2); d$g3 <- factor(d$g3)
t0 <- proc.time()[["elapsed"]]
m <- lmer(y ~ x + (1 | g1) + (1 | g2) + (1 | g3), data = d, REML = FALSE)
emit(proc.time()[["elapsed"]] - t0, lme4_estimates(m, function(g) g))
"""


def run_r(script: str, *args) -> tuple[dict | None, str | None]:
    from rscript import run_rscript

    return run_rscript(script, *args, packages="r-cran-lme4 r-cran-ordinal")


# -- the suite -------------------------------------------------------------------------------------
def _row(case, method, seconds, memory, error, note=""):
    return {"case": case, "method": method, "seconds": seconds, "peak_memory_gb": memory, "error": error,
            "note": note}


def run_insteval_case(case: str, args) -> list[dict]:
    ref = reference(case)
    rows = []
    ours = run_child("mixedfx", case)
    if "error" in ours:
        return [_row(case, "mixedfx", None, None, None, ours["error"])]
    for label, fit in zip(("mixedfx, first fit (compiles)", "mixedfx, second fit (compiled)"), ours["fits"]):
        rows.append(_row(case, label, fit["seconds"], ours["peak_memory_gb"], errors(fit["estimates"], ref),
                         f"{fit['iterations']} EM iterations"))
    baselines = {"gaussian": ["lme4"], "bernoulli": ["glmer"], "ordinal": ["clmm"]}[case]
    for name in baselines:
        if args.skip_r:
            rows.append(_row(case, name, None, None, None, "skipped (--skip-r)"))
            continue
        result, note = run_r(R_INSTEVAL, DATA, name)
        if result is None:
            rows.append(_row(case, name, None, None, None, note))
        else:
            rows.append(_row(case, name, result["seconds"], result["peak_memory_gb"],
                             errors(result["estimates"], ref), "baseline"))
    if case == "gaussian" and not args.skip_tutorial:
        result = run_child("tutorial", case)
        if "error" in result:
            rows.append(_row(case, "TFP tutorial algorithm", None, None, None, result["error"]))
        else:
            rows.append(_row(case, "TFP tutorial algorithm", result["seconds"], result["peak_memory_gb"],
                             errors(result["estimates"], ref), "baseline (as published; does not converge)"))
    return rows


def _truth_errors(estimates: dict, truth: dict) -> dict:
    """Largest relative error of an sd, and largest absolute error of a fixed effect."""
    fixed = ("Intercept", "x")
    return {"sd_error": max(abs(estimates[k] / v - 1.0) for k, v in truth.items() if k not in fixed),
            "fe_abs_error": max(abs(estimates[k] - truth[k]) for k in fixed)}


def run_scale_case(args) -> list[dict]:
    import scale

    rows = []
    for n_rows in args.scale_sizes:
        result = scale.run_child(n_rows, args.seed)
        label = f"scale {n_rows:,} rows"
        if "error" in result:
            rows.append(_row(label, "mixedfx", None, None, None, result["error"]))
            continue
        rows.append(_row(label, "mixedfx", result["seconds"], result["peak_memory_gb"],
                         _truth_errors(result["estimates"], scale.TRUTH),
                         f"{result['iterations']} EM iterations" + ("" if result["converged"] else ", not converged")))
        if n_rows > args.scale_r_max or args.skip_r:
            continue
        path = scale.write_csv(n_rows, args.seed)
        try:
            baseline, note = run_r(R_SCALE, path)
        finally:
            os.unlink(path)
        if baseline is None:
            rows.append(_row(label, "lme4", None, None, None, note))
        else:
            rows.append(_row(label, "lme4", baseline["seconds"], baseline["peak_memory_gb"],
                             _truth_errors(baseline["estimates"], scale.TRUTH), "baseline"))
    return rows


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value >= 1 else f"{value:.2f}x"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'case':24s} {'method':32s} {'wall s':>8s} {'peak GB':>8s} {'ratios (baseline / this)':28s} "
             f"{'error vs reference':30s} note"]
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    for case, case_rows in by_case.items():
        baselines = [r for r in case_rows if r["note"].startswith("baseline") and r["seconds"]]
        for row in case_rows:
            ratios = ""
            if row["method"].startswith("mixedfx") and row["seconds"]:
                ratios = ", ".join(f"{b['method'].split(' ')[0]} {_ratio(b['seconds'] / row['seconds'])}"
                                   for b in baselines)
            error = ""
            if row["error"]:
                parts = [f"sd {100 * row['error']['sd_error']:.1f}%"]
                if "fe_error_se" in row["error"]:
                    parts.append(f"FE {row['error']['fe_error_se']:.2f} SE")
                if "fe_abs_error" in row["error"]:
                    parts.append(f"FE {row['error']['fe_abs_error']:.4f}")
                error = ", ".join(parts)
            seconds = f"{row['seconds']:8.1f}" if row["seconds"] else f"{'-':>8s}"
            memory = f"{row['peak_memory_gb']:8.2f}" if row["peak_memory_gb"] else f"{'-':>8s}"
            lines.append(f"{case:24s} {row['method']:32s} {seconds} {memory} {ratios:28s} {error:30s} {row['note']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--skip-r", action="store_true", help="skip the R baselines")
    parser.add_argument("--skip-tutorial", action="store_true", help="skip the TFP tutorial baseline (about 100 s)")
    parser.add_argument("--scale-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--scale-r-max", type=int, default=100_000, help="largest scale size lme4 also fits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, case = args.child
        from scale import own_peak_memory_gb

        result = child_mixedfx(case) if kind == "mixedfx" else child_tutorial(case)
        print(json.dumps({**result, "peak_memory_gb": own_peak_memory_gb()}))
        return
    from mixedfx._tf import tf  # quiet start-up (mixedfx silences TensorFlow's C++ logs)

    print(f"mixedfx benchmark suite: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TensorFlow {tf.__version__}, devices {[d.device_type for d in tf.config.list_physical_devices()]}")
    rows = []
    for case in args.cases:
        case_rows = run_scale_case(args) if case == "scale" else run_insteval_case(case, args)
        rows.extend(case_rows)
        print(format_table(case_rows), flush=True)
        print()
    print("all cases:")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
