"""Benchmark: GLMMs on InstEval against glmer and clmm, on this machine.

* binarized InstEval (``y >= 4``), ``good ~ service + (1 | s) + (1 | d) + (1 | dept)``,
  bernoulli: mixedfx against ``glmer(..., nAGQ = 1)`` (Laplace);
* InstEval ratings as ordered categories, students 1-1000 (24,687 rows):
  mixedfx against ``ordinal::clmm``.

R runs through ``Rscript`` when it is installed (skipped with a note otherwise).  Each
fit's time excludes imports and data loading; the first mixedfx fit of each model
includes tracing and XLA compilation.  The estimates are printed next to the
reference's.

    python benchmarks/glmm.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
FORMULA_BINARY = "good ~ service + (1 | s) + (1 | d) + (1 | dept)"
FORMULA_ORDINAL = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(ordinal)})
d <- read.csv(gzfile(commandArgs(TRUE)[1]))
d$s <- factor(d$s); d$d <- factor(d$d); d$dept <- factor(d$dept)
d$good <- as.integer(d$y >= 4)
which <- commandArgs(TRUE)[2]
if (which == "bernoulli") {
  t0 <- proc.time()[["elapsed"]]
  m <- glmer(good ~ service + (1 | s) + (1 | d) + (1 | dept), data = d, family = binomial, nAGQ = 1)
  el <- proc.time()[["elapsed"]] - t0
  vc <- as.data.frame(VarCorr(m))
  cat(sprintf('{"seconds": %.3f, "Intercept": %.8f, "service": %.8f, "sd(s)": %.8f, "sd(d)": %.8f, "sd(dept)": %.8f}\n',
      el, fixef(m)[1], fixef(m)[2], vc$sdcor[vc$grp == "s"], vc$sdcor[vc$grp == "d"], vc$sdcor[vc$grp == "dept"]))
} else {
  sub <- d[as.integer(as.character(d$s)) <= 1000, ]
  sub$rating <- factor(sub$y, ordered = TRUE)
  sub$s <- droplevels(sub$s); sub$d <- droplevels(sub$d); sub$dept <- droplevels(sub$dept)
  t0 <- proc.time()[["elapsed"]]
  m <- clmm(rating ~ service + (1 | s) + (1 | d) + (1 | dept), data = sub, link = "logit")
  el <- proc.time()[["elapsed"]] - t0
  cat(sprintf('{"seconds": %.3f, "service": %.8f, "sd(s)": %.8f, "sd(d)": %.8f, "sd(dept)": %.8f}\n',
      el, m$beta[1], m$ST$s[1, 1], m$ST$d[1, 1], m$ST$dept[1, 1]))
}
"""


def run_r(which):
    from rscript import run_rscript

    data = ROOT / "mixedfx" / "datasets" / "data" / "insteval.csv.gz"
    return run_rscript(R_SCRIPT, data, which, packages="r-cran-lme4 r-cran-ordinal")


def run_mixedfx(formula, data, family, seed):
    import mixedfx

    started = time.perf_counter()
    model = mixedfx.glmer(formula, data, family=family, random_state=seed, verbose=0)
    seconds = time.perf_counter() - started
    sds = model.variance_components_.set_index("group")["sdcor"]
    out = {"seconds": seconds, **{f"sd({g})": float(sds[g]) for g in ("s", "d", "dept")}}
    out.update({k: float(v) for k, v in model.fixed_effects_.items()})
    out["logLik"] = model.log_likelihood_
    out["logLik_se"] = model.log_likelihood_se_
    out["iterations"] = model.fit_summary_.n_iter
    return out


def show(name, result, reference):
    parts = []
    for key in ("Intercept", "service", "sd(s)", "sd(d)", "sd(dept)"):
        if key in result:
            text = f"{key} {result[key]:+.4f}"
            if reference and key in reference and key.startswith("sd"):
                text += f" ({100 * (result[key] / reference[key] - 1):+.1f}%)"
            parts.append(text)
    print(f"  {name:36s} {result['seconds']:7.1f} s   " + ", ".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-r", action="store_true")
    args = parser.parse_args(argv)

    import mixedfx

    insteval = mixedfx.datasets.load_insteval()
    binary = insteval.assign(good=(insteval["y"] >= 4).astype(int))
    ordinal = insteval[insteval["s"].astype(int) <= 1000]
    notes = []
    for label, formula, data, family, which in (
        ("binarized InstEval, bernoulli", FORMULA_BINARY, binary, "bernoulli", "bernoulli"),
        ("InstEval students 1-1000, ordinal", FORMULA_ORDINAL, ordinal, "ordinal", "ordinal"),
    ):
        print(f"{label}: {len(data)} rows")
        first = run_mixedfx(formula, data, family, seed=0)
        second = run_mixedfx(formula, data, family, seed=1)
        reference, note = (None, "R skipped (--skip-r)") if args.skip_r else run_r(which)
        if reference is not None:
            show("glmer nAGQ=1" if which == "bernoulli" else "clmm (Laplace)", reference, None)
        show("mixedfx, first fit (with compile)", first, reference)
        show("mixedfx, second fit (compiled)", second, reference)
        print(f"  mixedfx logLik {first['logLik']:.2f} +- {first['logLik_se']:.2f} (importance sampling), "
              f"{first['iterations']} EM iterations")
        if reference is not None:
            print(f"  ratio: reference / mixedfx = {reference['seconds'] / first['seconds']:.1f}x (first fit), "
                  f"{reference['seconds'] / second['seconds']:.1f}x (compiled)")
        else:
            notes.append(note)
        print()
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
