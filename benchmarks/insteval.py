"""Benchmark: InstEval ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, ML, on this CPU.

Times, in one run on one machine:

* mixedfx: the first fit in the process (tracing and XLA compilation included) and a
  second fit with another seed (compiled code reused);
* the TFP tutorial's algorithm, reimplemented faithfully (``tfp_tutorial.py``);
* lme4's ``lmer(..., REML = FALSE)`` through ``Rscript``, when R and lme4 are
  installed (skipped with a note otherwise);

and prints each one's estimates next to lme4's reference values, and the time ratios.
Fit times exclude importing the libraries and reading the data.

    python benchmarks/insteval.py            # everything (about 2 minutes here)
    python benchmarks/insteval.py --skip-tutorial --skip-r
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"
PARAMS = ["Intercept", "service", "sd(s)", "sd(d)", "sd(dept)", "sigma"]

R_SCRIPT = r"""
suppressPackageStartupMessages(library(lme4))
d <- read.csv(gzfile(commandArgs(TRUE)[1]))
d$s <- factor(d$s); d$d <- factor(d$d); d$dept <- factor(d$dept)
t0 <- proc.time()[["elapsed"]]
m <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), data = d, REML = FALSE)
el <- proc.time()[["elapsed"]] - t0
vc <- as.data.frame(VarCorr(m))
sds <- setNames(vc$sdcor, ifelse(is.na(vc$var1), "sigma", paste0("sd(", vc$grp, ")")))
cat(sprintf('{"seconds": %.6f, "Intercept": %.10f, "service": %.10f, "sd(s)": %.10f, "sd(d)": %.10f, "sd(dept)": %.10f, "sigma": %.10f, "logLik": %.6f}\n',
    el, fixef(m)[1], fixef(m)[2], sds[["sd(s)"]], sds[["sd(d)"]], sds[["sd(dept)"]], sds[["sigma"]], as.numeric(logLik(m))))
"""


def reference():
    with open(ROOT / "tests" / "fixtures" / "lme4_insteval_ml.json") as handle:
        fixture = json.load(handle)
    sds = {("sigma" if r["grp"] == "Residual" else f"sd({r['grp']})"): r["sdcor"] for r in fixture["varcorr"]}
    values = {"Intercept": fixture["fixed_effects"]["(Intercept)"], "service": fixture["fixed_effects"]["service"], **sds}
    return values, fixture["fixed_effects_se"], fixture["logLik"]


def run_mixedfx(data, seed):
    import mixedfx

    started = time.perf_counter()
    model = mixedfx.MixedEffectsRegressor(FORMULA, random_state=seed, verbose=0).fit(data)
    seconds = time.perf_counter() - started
    sds = model.variance_components_.assign(
        name=lambda f: np.where(f["group"] == "Residual", "sigma", "sd(" + f["group"] + ")")
    ).set_index("name")["sdcor"]
    return {
        "seconds": seconds,
        "Intercept": model.fixed_effects_["Intercept"],
        "service": model.fixed_effects_["service"],
        **{k: float(v) for k, v in sds.items()},
        "logLik": model.log_likelihood_,
        "iterations": model.fit_summary_.n_iter,
    }


def run_lme4(data_path):
    from rscript import run_rscript

    return run_rscript(R_SCRIPT, data_path)


def run_tutorial(data, warmup, iters):
    from tfp_tutorial import fit_tutorial

    codes = {c: data[c].cat.codes.to_numpy() for c in ("s", "d", "dept")}
    return fit_tutorial(codes["s"], codes["d"], codes["dept"], data["service"].to_numpy(),
                        data["y"].to_numpy(dtype=float), num_warmup_iters=warmup, num_iters=iters)


def describe(name, result, ref, se):
    errors = []
    for p in PARAMS:
        value = result[p]
        if p in ("Intercept", "service"):
            errors.append(f"{p} {value:+.4f} ({(value - ref[p]) / se['(Intercept)' if p == 'Intercept' else p]:+.2f} SE)")
        else:
            errors.append(f"{p} {value:.4f} ({100 * (value - ref[p]) / ref[p]:+.1f}%)")
    return f"{name:34s} {result['seconds']:8.1f} s   " + ", ".join(errors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-r", action="store_true")
    parser.add_argument("--skip-tutorial", action="store_true")
    parser.add_argument("--tutorial-warmup", type=int, default=1000)
    parser.add_argument("--tutorial-iters", type=int, default=1500)
    args = parser.parse_args(argv)

    import mixedfx
    from mixedfx._tf import tf

    ref, se, ref_loglik = reference()
    data = mixedfx.datasets.load_insteval()
    data_path = ROOT / "mixedfx" / "datasets" / "data" / "insteval.csv.gz"
    print(f"InstEval, {len(data)} rows, {FORMULA}, ML; TensorFlow {tf.__version__}, "
          f"devices: {[d.device_type for d in tf.config.list_physical_devices()]}, {os.cpu_count()} CPUs")
    rows = {}
    rows["mixedfx (first fit, with compile)"] = run_mixedfx(data, seed=0)
    rows["mixedfx (second fit, compiled)"] = run_mixedfx(data, seed=1)
    notes = []
    if not args.skip_tutorial:
        rows["TFP tutorial algorithm"] = run_tutorial(data, args.tutorial_warmup, args.tutorial_iters)
    if not args.skip_r:
        lme4, note = run_lme4(data_path)
        if lme4 is not None:
            rows["lme4 lmer (REML = FALSE)"] = lme4
        else:
            notes.append(note)

    print()
    print(f"{'reference: lme4 1.1-31 fixture':34s} {'':10s}   " + ", ".join(f"{p} {ref[p]:.4f}" for p in PARAMS))
    for name, result in rows.items():
        print(describe(name, result, ref, se))
    for name in ("mixedfx (first fit, with compile)", "mixedfx (second fit, compiled)"):
        result = rows[name]
        print(f"{name}: logLik {result['logLik']:.3f} (lme4 {ref_loglik:.3f}), {result['iterations']} EM iterations")
    print()
    first = rows["mixedfx (first fit, with compile)"]["seconds"]
    warm = rows["mixedfx (second fit, compiled)"]["seconds"]
    for name, result in rows.items():
        if name.startswith("mixedfx"):
            continue
        print(f"{name}: {result['seconds']:.1f} s = {result['seconds'] / first:.1f}x the first mixedfx fit, "
              f"{result['seconds'] / warm:.1f}x the compiled one")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
