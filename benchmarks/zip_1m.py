"""Benchmark: a million-row zero-inflated Poisson GLMM with two crossed factors (issue #17).

``y ~ x + (1 | A) + (1 | B)``, family Poisson, ``ziformula = "~ z"``: the count part
``log mu = 0.5 + 0.3 x + a_A + b_B`` (``sd(A) = 0.5``, ``sd(B) = 0.3``), the zero
inflation ``logit pi = -1 + 0.5 z``; ``A`` has 1000 levels and ``B`` 100, crossed
(each row draws both at random).  The fit runs in a fresh process, so that its peak
memory (the process's own peak resident set size, ``VmHWM``, import and data
included) is its own; the fit time excludes the import and the simulation.  The
estimates are compared with the truth the rows were simulated from.  glmmTMB (through
``Rscript``) fits the same rows with ``--glmmtmb``.

    python benchmarks/zip_1m.py                         # a million rows
    python benchmarks/zip_1m.py --rows 100000 --glmmtmb # with glmmTMB on the same rows
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FORMULA = "y ~ x + (1 | A) + (1 | B)"
ZIFORMULA = "~ z"
LEVELS = {"A": 1000, "B": 100}
TRUTH = {"Intercept": 0.5, "x": 0.3, "sd(A)": 0.5, "sd(B)": 0.3, "zi Intercept": -1.0, "zi z": 0.5}


def simulate(n_rows: int, seed: int = 0, levels: dict | None = None):
    """The rows: ``x``, ``z`` standard normal, ``A`` and ``B`` crossed factors (levels drawn
    uniformly per row, as strings ``A0001``...), ``y`` the zero-inflated Poisson count."""
    import numpy as np
    import pandas as pd

    levels = levels or LEVELS
    rng = np.random.default_rng(seed)
    x, z = rng.normal(size=n_rows), rng.normal(size=n_rows)
    codes = {g: rng.integers(0, q, n_rows) for g, q in levels.items()}
    effects = {g: TRUTH[f"sd({g})"] * rng.normal(size=q) for g, q in levels.items()}
    eta = TRUTH["Intercept"] + TRUTH["x"] * x + sum(effects[g][codes[g]] for g in levels)
    pi = 1.0 / (1.0 + np.exp(-(TRUTH["zi Intercept"] + TRUTH["zi z"] * z)))
    y = np.where(rng.uniform(size=n_rows) < pi, 0, rng.poisson(np.exp(eta)))
    frame = pd.DataFrame({"y": y, "x": x, "z": z})
    for g, q in levels.items():
        names = np.array([f"{g}{k:04d}" for k in range(q)])
        frame[g] = pd.Categorical(names[codes[g]], categories=names)
    return frame


def estimates(model) -> dict:
    """The fit in TRUTH's names."""
    sds = model.variance_components_.set_index("group")["sdcor"]
    zi = model.zi_fixed_effects_["Estimate"]
    return {"Intercept": float(model.fixed_effects_["Intercept"]), "x": float(model.fixed_effects_["x"]),
            "sd(A)": float(sds["A"]), "sd(B)": float(sds["B"]),
            "zi Intercept": float(zi["Intercept"]), "zi z": float(zi["z"])}


def fit_one(n_rows: int, seed: int) -> dict:
    """Import mixedfx (timed), simulate, fit once (timed); runs in the child process."""
    import warnings

    started = time.perf_counter()
    import mixedfx

    import_seconds = time.perf_counter() - started
    data = simulate(n_rows, seed)
    zero_share = float((data["y"] == 0).mean())
    started, cpu_started = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mixedfx.MixedEffectsRegressor(FORMULA, family="poisson", ziformula=ZIFORMULA, random_state=seed,
                                              verbose=0).fit(data)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    summary = model.fit_summary_
    return {"rows": n_rows, "zero_share": zero_share, "import_seconds": import_seconds, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "first_call_seconds": summary.first_call_seconds, "iterations": summary.n_iter,
            "converged": bool(summary.converged), "estimates": estimates(model),
            "warnings": sorted({str(w.message).split(":")[0][:80] for w in caught})}


R_SCRIPT = r"""
args <- commandArgs(TRUE)
t0 <- proc.time()[["elapsed"]]
suppressPackageStartupMessages({library(glmmTMB); library(jsonlite)})
import_seconds <- proc.time()[["elapsed"]] - t0
d <- read.csv(args[1]); d$A <- factor(d$A); d$B <- factor(d$B)
t0 <- proc.time()[["elapsed"]]; c0 <- proc.time()
m <- glmmTMB(y ~ x + (1 | A) + (1 | B), ziformula = ~ z, family = poisson, data = d)
seconds <- proc.time()[["elapsed"]] - t0; cpu <- proc.time() - c0
vc <- VarCorr(m)$cond
e <- list(Intercept = fixef(m)$cond[[1]], x = fixef(m)$cond[["x"]],
          "sd(A)" = as.numeric(attr(vc$A, "stddev")), "sd(B)" = as.numeric(attr(vc$B, "stddev")),
          "zi Intercept" = fixef(m)$zi[[1]], "zi z" = fixef(m)$zi[["z"]])
cat(toJSON(list(seconds = seconds, cpu_seconds = cpu[["user.self"]] + cpu[["sys.self"]], import_seconds = import_seconds, estimates = e,
                loglik = as.numeric(logLik(m))), auto_unbox = TRUE, digits = NA), "\n")
"""


def run_glmmtmb(n_rows: int, seed: int):
    """glmmTMB on the same rows: ``(result, None)`` or ``(None, why not)``."""
    from rscript import run_rscript

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "zip.csv")
        simulate(n_rows, seed).to_csv(path, index=False)
        return run_rscript(R_SCRIPT, path, packages="r-cran-glmmtmb r-cran-jsonlite")


def show(label: str, result: dict) -> None:
    """One line: seconds, peak memory, each estimate with its error against the truth."""
    parts = ", ".join(f"{k} {v:+.4f} ({v - TRUTH[k]:+.4f})" for k, v in result["estimates"].items())
    cpu = f" (CPU {result['cpu_seconds']:.1f} s)" if "cpu_seconds" in result else ""
    print(f"{label:10s} fit {result['seconds']:8.1f} s{cpu}  import {result['import_seconds']:5.1f} s  "
          f"peak {result['peak_memory_gb']:5.2f} GB  {parts}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--glmmtmb", action="store_true", help="also fit glmmTMB through Rscript")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.child:
        from scale import own_peak_memory_gb

        print(json.dumps({**fit_one(args.rows, args.seed), "peak_memory_gb": own_peak_memory_gb()}))
        return
    from scale import run_child_command

    print(f"zero-inflated Poisson, {FORMULA}, ziformula {ZIFORMULA}, {args.rows:,} rows, levels {LEVELS}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; truth {TRUTH}")
    ours = run_child_command([sys.executable, __file__, "--child", "--rows", str(args.rows), "--seed", str(args.seed)])
    results = {"mixedfx": ours}
    if "error" in ours:
        print("mixedfx", ours["error"])
    else:
        show("mixedfx", ours)
        print(f"{'':10s} {ours['iterations']} EM iterations, converged {ours['converged']}, zero share "
              f"{ours['zero_share']:.3f}, warnings {ours['warnings']}")
    if args.glmmtmb:
        result, note = run_glmmtmb(args.rows, args.seed)
        results["glmmTMB"] = result or {"error": note}
        show("glmmTMB", result) if result else print("glmmTMB", note)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
