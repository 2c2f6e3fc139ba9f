"""The benchmark suite: one command, one table of time, memory, ratios and accuracy, against lme4 and the Python peers.

Cases (``--cases``; each fit runs in a fresh process, so that its time and peak memory are its own):

* ``sleepstudy``: ``Reaction ~ Days + (Days | Subject)``, ML, 180 rows (``tests/fixtures/sleepstudy.csv``);
* ``verbagg``: lme4's VerbAgg, bernoulli ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``,
  7,584 rows (``benchmarks/data/verbagg.csv.gz``, written by ``benchmarks/data/make_verbagg.R``);
* ``gaussian``: InstEval ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, ML, 73,421 rows; also
  against the TFP tutorial's algorithm (``tfp_tutorial.py``);
* ``bernoulli``: binarized InstEval (``y >= 4``), same random terms;
* ``ordinal``: InstEval ratings as ordered categories, students 1-1000 (24,687 rows);
* ``bernoulli_1m``: synthetic bernoulli, ``y ~ x + (1 | g1) + (1 | g2) + (1 | g3)``, three crossed
  factors whose levels grow with the rows as in ``scale.py``, ``--bernoulli-rows`` rows (a million);
* ``scale``: the Gaussian scale curve of ``scale.py`` at ``--scale-sizes``.

Baselines: lme4 (``lmer(REML = FALSE)``, ``glmer(nAGQ = 1)``, ``ordinal::clmm``) through ``Rscript``
when R is installed (skipped with a note otherwise, and above ``--scale-r-max`` rows for the synthetic
cases), and the Python peers glmm, gpboost and mixedlm (``--peers``), which ``peers.py`` fits, each in a
fresh process of a virtual environment of their own: ``--peers-venv`` or ``$MIXEDFX_PEERS_VENV``,
by default ``~/.cache/mixedfx-bench/peers-venv``, made and pip-installed on first use, reused
afterwards.  They are never dependencies of mixedfx.  A peer that does not install, cannot fit a model
(gpboost has no correlated slopes; none has an ordinal family) or fails is a row with the reason.

Columns, per case:

* ``import s``: importing the library in its fresh process (mixedfx: ``import mixedfx`` with TensorFlow);
* ``fit s``: the fit call alone, wall-clock (no import, no data reading).  mixedfx fits twice in its
  process: ``mixedfx, first fit`` traces and compiles, ``mixedfx, compiled refit`` (another seed, same
  shapes) reuses the compiled program.  Both run on an empty compilation cache of the case's own
  (``MIXEDFX_CACHE_DIR``, :mod:`mixedfx.compile_cache`); a second fresh process then fits again on
  that cache: ``mixedfx, first fit, warm cache`` traces but loads the compiled programs;
* ``peak GB``: the process's own peak resident memory (``VmHWM``), import and data included;
* ``vs fastest peer``: the fastest Python peer that fitted the case, its seconds over this row's (above
  1x: this row is faster); ``vs lme4``: the same for the R reference fit (glmer, clmm for those cases);
* ``error vs reference``: against lme4's estimates (the committed fixtures: ``tests/fixtures/``,
  ``benchmarks/data/``; the live lme4 fit for ``bernoulli_1m``; the simulated truth where lme4 did not
  run and for ``scale``): the largest relative error of an sd (``sd``), the largest fixed-effect error
  in lme4's standard errors (``FE .. SE``; in absolute units against a truth), and the logLik difference
  (``dlogLik``; mixedfx's GLMM logLik is its Laplace approximation at its estimates, like glmer's).

    python benchmarks/run.py                          # everything (long: the million-row fits take minutes each)
    python benchmarks/run.py --cases sleepstudy verbagg              # the small cases, with peers and lme4
    python benchmarks/run.py --cases gaussian --skip-tutorial --peers glmm
    python benchmarks/run.py --cases scale --scale-sizes 10000 100000 1000000 10000000 --skip-peers
    python benchmarks/run.py --cases gaussian --skip-r --skip-peers --e-step hmc   # HMC, not blocked Gibbs
    python benchmarks/run.py --cases gaussian --skip-r --skip-peers --e-step hmc --float64   # HMC in float64

``--insteval-rows N`` fits the InstEval cases on the rows of the first students that make up about
``N`` rows (for a quick check; the references are then not comparable and errors are not printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from report import failed_row, format_table, make_row, reference_from_fixture, score_rows  # noqa: E402

DATA = ROOT / "mixedfx" / "datasets" / "data" / "insteval.csv.gz"
FIXTURES = ROOT / "tests" / "fixtures"
CASES = ("sleepstudy", "verbagg", "gaussian", "bernoulli", "ordinal", "bernoulli_1m", "scale")
INSTEVAL_CASES = ("gaussian", "bernoulli", "ordinal")
RANDOM = "(1 | s) + (1 | d) + (1 | dept)"
BERNOULLI_TRUTH = {"Intercept": -0.5, "x": 0.5, "sd(g1)": 0.6, "sd(g2)": 0.4, "sd(g3)": 0.3}
REFERENCES = {"gaussian": FIXTURES / "lme4_insteval_ml.json", "bernoulli": FIXTURES / "glmm_insteval_bernoulli.json",
              "ordinal": FIXTURES / "glmm_insteval_ordinal.json",
              "sleepstudy": FIXTURES / "lme4_sleepstudy_slopes_ml.json",
              "verbagg": HERE / "data" / "lme4_verbagg_bernoulli.json"}


def _intercepts(*groups):
    return [{"group": g, "slopes": [], "correlated": True} for g in groups]


# -- the cases ------------------------------------------------------------------------------------------
def case_frame(case: str, *, insteval_rows=None, bernoulli_rows=1_000_000, seed=0):
    """The rows of a case and its spec (formula, family, response, fixed columns, random terms).

    The spec is what ``peers.py`` reads (with ``data``, the path of the rows, added).
    """
    import pandas as pd

    if case == "sleepstudy":
        data = pd.read_csv(FIXTURES / "sleepstudy.csv", dtype={"Subject": str})
        return data, {"formula": "Reaction ~ Days + (Days | Subject)", "family": "gaussian", "response": "Reaction",
                      "fixed": ["Days"], "categorical": [],
                      "random": [{"group": "Subject", "slopes": ["Days"], "correlated": True}]}
    if case == "verbagg":
        data = pd.read_csv(HERE / "data" / "verbagg.csv.gz", dtype={"id": str, "item": str})
        return data, {"formula": "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", "family": "bernoulli",
                      "response": "r2", "fixed": ["Anger", "Gender", "btype", "situ"],
                      "categorical": ["Gender", "btype", "situ"], "random": _intercepts("id", "item")}
    if case == "bernoulli_1m":
        import mixedfx
        from scale import levels_for

        groups = levels_for(bernoulli_rows)
        data = mixedfx.datasets.make_mixed_data(
            bernoulli_rows, groups=groups, family="bernoulli",
            fixed_effects={k: BERNOULLI_TRUTH[k] for k in ("Intercept", "x")},
            random_sd={g: BERNOULLI_TRUTH[f"sd({g})"] for g in groups}, random_state=seed)
        return data, {"formula": "y ~ x + (1 | g1) + (1 | g2) + (1 | g3)", "family": "bernoulli", "response": "y",
                      "fixed": ["x"], "categorical": [], "random": _intercepts("g1", "g2", "g3")}
    import mixedfx

    data = mixedfx.datasets.load_insteval()
    if case == "ordinal":
        data = data[data["s"].astype(int) <= 1000]
    if insteval_rows:
        counts = data["s"].astype(int).value_counts().sort_index().cumsum()
        data = data[data["s"].astype(int) <= counts.index[min(counts.searchsorted(insteval_rows), len(counts) - 1)]]
    data = data[["y", "service", "s", "d", "dept"]].copy()
    for column in ("s", "d", "dept"):
        data[column] = data[column].astype(str)
    spec = {"formula": f"y ~ service + {RANDOM}", "family": case, "response": "y", "fixed": ["service"],
            "categorical": [], "random": _intercepts("s", "d", "dept")}
    if case == "bernoulli":
        data = data.assign(good=(data["y"] >= 4).astype(int)).drop(columns="y")
        spec.update(formula=f"good ~ service + {RANDOM}", response="good")
    return data, spec


def reference(case: str) -> dict | None:
    """lme4's estimates, SEs and logLik of a case, from its committed fixture (None for a synthetic case)."""
    if case not in REFERENCES:
        return None
    with open(REFERENCES[case]) as handle:
        return reference_from_fixture(json.load(handle))


# -- mixedfx, in a child process -------------------------------------------------------------------------
def _mixedfx_name(name: str) -> str:
    """formulaic's ``Gender[T.M]`` as R names it, ``GenderM``."""
    if "[T." in name and name.endswith("]"):
        column, level = name[:-1].split("[T.", 1)
        return column + level
    return name


def _estimates(model) -> dict:
    out = {_mixedfx_name(k): float(v) for k, v in model.fixed_effects_.items()}
    for _, row in model.variance_components_.iterrows():
        if row["group"] == "Residual":
            out["sigma"] = float(row["sdcor"])
        elif row.get("var2") is not None and isinstance(row.get("var2"), str):
            out[f"cor({row['group']}:{row['var1']},{row['var2']})"] = float(row["sdcor"])
        else:
            term = row.get("var1")
            out[f"sd({row['group']})" if term in (None, "(Intercept)") else f"sd({row['group']}:{term})"] = \
                float(row["sdcor"])
    if hasattr(model, "cutpoints_"):
        out.update({f"cutpoint {k}": float(v) for k, v in model.cutpoints_.items()})
    return out


def _loglik(model) -> float | None:
    """The logLik comparable to lme4's: exact for a Gaussian fit, the Laplace approximation for a GLMM."""
    laplace = getattr(model, "log_likelihood_laplace_", None)
    value = laplace if laplace is not None and model.family_ != "gaussian" else model.log_likelihood_
    return None if value is None else float(value)


def child_mixedfx(case: str, args) -> dict:
    """Import mixedfx (timed), then fit one case twice in this process: the first compiles, the second reuses."""
    started = time.perf_counter()
    import mixedfx  # imports TensorFlow (and TensorFlow Probability): counted here

    import_seconds = time.perf_counter() - started
    data, spec = case_frame(case, insteval_rows=args.insteval_rows, bernoulli_rows=args.bernoulli_rows,
                            seed=args.seed)
    from mixedfx.inference import MCEMOptions

    options = MCEMOptions(e_step=args.e_step, float32_e_step=not args.float64)
    fits = []
    for seed in (args.seed, args.seed + 1):
        started = time.perf_counter()
        model = mixedfx.glmer(spec["formula"], data, family=spec["family"], random_state=seed, verbose=0,
                              options=options)
        seconds = time.perf_counter() - started
        fits.append({"seconds": seconds, "estimates": _estimates(model), "loglik": _loglik(model),
                     "iterations": model.fit_summary_.n_iter, "converged": bool(model.fit_summary_.converged)})
    return {"rows": len(data), "import_seconds": import_seconds, "fits": fits}


def child_tutorial(case: str, args) -> dict:
    """The TFP tutorial's algorithm on all of InstEval, as published (1,000 + 1,500 iterations)."""
    from tfp_tutorial import fit_tutorial

    import mixedfx

    data = mixedfx.datasets.load_insteval()
    codes = {c: data[c].cat.codes.to_numpy() for c in ("s", "d", "dept")}
    result = fit_tutorial(codes["s"], codes["d"], codes["dept"], data["service"].to_numpy(),
                          data["y"].to_numpy(dtype=float))
    estimates = {k: float(result[k]) for k in ("Intercept", "service", "sd(s)", "sd(d)", "sd(dept)", "sigma")}
    return {"seconds": float(result["seconds"]), "estimates": estimates}


def run_child(*args: str, env: dict | None = None) -> dict:
    """Run ``run.py ARGS`` in a fresh process (``env`` added to the environment); its JSON
    result (with its own peak memory)."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    output = process.stdout.read()
    _, status, _ = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": f"failed, exit status {os.waitstatus_to_exitcode(status)} (its traceback is above)"}
    return json.loads(output.strip().splitlines()[-1])


def _child_options(args) -> list[str]:
    out = ["--seed", str(args.seed), "--bernoulli-rows", str(args.bernoulli_rows)]
    if args.insteval_rows:
        out += ["--insteval-rows", str(args.insteval_rows)]
    return out + ["--e-step", args.e_step] + (["--float64"] if args.float64 else [])


# -- R baselines -----------------------------------------------------------------------------------------
#: lmer(REML = FALSE), glmer(nAGQ = 1) or clmm on a CSV file; prints one JSON line: import and fit
#: seconds, estimates in the benchmark's names, fixed-effect SEs, logLik.
#: Arguments: path, formula, family (gaussian, bernoulli, ordinal), grouping columns (comma-separated).
R_FIT = r"""
args <- commandArgs(TRUE)
form <- as.formula(args[2]); family <- args[3]
t0 <- proc.time()[["elapsed"]]
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
if (family == "ordinal") suppressPackageStartupMessages(library(ordinal))
import_seconds <- proc.time()[["elapsed"]] - t0
d <- read.csv(args[1])
for (g in strsplit(args[4], ",")[[1]]) d[[g]] <- factor(d[[g]])
for (n in names(d)) if (is.character(d[[n]])) d[[n]] <- factor(d[[n]])
if (family == "ordinal") d[[all.vars(form)[1]]] <- factor(d[[all.vars(form)[1]]], ordered = TRUE)
t0 <- proc.time()[["elapsed"]]
if (family == "gaussian") {
  m <- lmer(form, data = d, REML = FALSE)
} else if (family == "bernoulli") {
  m <- glmer(form, data = d, family = binomial, nAGQ = 1)
} else {
  m <- clmm(form, data = d, link = "logit")
}
seconds <- proc.time()[["elapsed"]] - t0
if (family == "ordinal") {
  e <- m$beta; se <- sqrt(diag(vcov(m)))[names(m$beta)]
  cuts <- m$alpha; cut_se <- sqrt(diag(vcov(m)))[names(m$alpha)]
  names(cuts) <- names(cut_se) <- paste("cutpoint", names(m$alpha))
  sds <- sapply(m$ST, function(s) s[1, 1]); names(sds) <- paste0("sd(", names(m$ST), ")")
  e <- c(e, cuts, sds); se <- c(se, cut_se)
} else {
  e <- fixef(m); se <- sqrt(diag(as.matrix(vcov(m)))); names(se) <- names(e)
  vc <- as.data.frame(VarCorr(m))
  sds <- vc$sdcor
  names(sds) <- ifelse(vc$grp == "Residual", "sigma",
                ifelse(!is.na(vc$var2), paste0("cor(", vc$grp, ":", vc$var1, ",", vc$var2, ")"),
                ifelse(vc$var1 == "(Intercept)", paste0("sd(", vc$grp, ")"), paste0("sd(", vc$grp, ":", vc$var1, ")"))))
  e <- c(e, sds)
}
names(e)[names(e) == "(Intercept)"] <- "Intercept"; names(se)[names(se) == "(Intercept)"] <- "Intercept"
cat(toJSON(list(seconds = seconds, import_seconds = import_seconds, estimates = as.list(e), se = as.list(se),
                loglik = as.numeric(logLik(m))), auto_unbox = TRUE, digits = NA), "\n")
"""


def run_r(*args) -> tuple[dict | None, str | None]:
    """Fit with R_FIT through Rscript: ``(result, None)`` or ``(None, why not)``."""
    from rscript import run_rscript

    return run_rscript(R_FIT, *args, packages="r-cran-lme4 r-cran-ordinal r-cran-jsonlite")


# -- the rows of one case ----------------------------------------------------------------------------------
def mixedfx_rows(case: str, args) -> list[dict]:
    """The first fit and the compiled refit of mixedfx in a fresh process on an empty
    compilation cache, then the first fit of another fresh process on the cache it left."""
    with tempfile.TemporaryDirectory(prefix="mixedfx-bench-cache-") as cache:
        env = {"MIXEDFX_CACHE_DIR": cache}
        ours = run_child("--child", "mixedfx", case, *_child_options(args), env=env)
        warm = run_child("--child", "mixedfx", case, *_child_options(args), env=env) if "error" not in ours else {}
    if "error" in ours:
        return [failed_row(case, "mixedfx", "mixedfx", ours["error"])]
    runs = [("mixedfx, first fit", ours["fits"][0], ours), ("mixedfx, compiled refit", ours["fits"][1], None)]
    if "error" in warm:
        return [*_mixedfx_rows(case, runs, args), failed_row(case, "mixedfx, first fit, warm cache", "mixedfx",
                                                             warm["error"])]
    return _mixedfx_rows(case, [*runs, ("mixedfx, first fit, warm cache", warm["fits"][0], warm)], args)


def _kernel_note(args) -> str:
    """What the rows' notes say of a non-default E-step: its kernel and precision."""
    return ("" if args.e_step == "auto" else f", e_step={args.e_step}") + (", float64 E-step" if args.float64 else "")


def _mixedfx_rows(case: str, runs, args) -> list[dict]:
    """One table row per ``(label, fit, process)``; ``process`` (None for a refit) gives the
    import time and peak memory."""
    rows = []
    precision = _kernel_note(args)
    for label, fit, process in runs:
        note = f"{fit['iterations']} EM iterations{precision}" + ("" if fit["converged"] else ", not converged")
        rows.append(make_row(case, label, "mixedfx", import_seconds=process and process["import_seconds"],
                             seconds=fit["seconds"], memory=(process or runs[0][2])["peak_memory_gb"],
                             estimates=fit["estimates"], loglik=fit["loglik"], note=note))
    return rows


def peer_rows(case: str, spec_path: str, args, installed: dict) -> list[dict]:
    """One row per Python peer: its fit in a fresh process of the peers' venv, or why there is none."""
    import peers

    rows = []
    for peer in args.peers:
        status = installed.get(peer) or "not installed"
        if status.startswith("not installed"):
            rows.append(failed_row(case, peer, "peer", status))
            continue
        result = peers.run_peer(peer, spec_path, venv=args.venv, timeout=args.peer_timeout)
        label = f"{peer} {result.get('version') or status}"
        if "error" in result:
            rows.append(failed_row(case, label, "peer", result["error"]))
            continue
        rows.append(make_row(case, label, "peer", import_seconds=result["import_seconds"],
                             seconds=result["fit_seconds"], memory=result["peak_memory_gb"],
                             estimates=result["estimates"], loglik=result.get("loglik"),
                             note="; ".join(result.get("warnings") or [])[:100]))
    return rows


def lme4_row(case: str, csv_path: str, spec: dict, args) -> tuple[dict, dict | None]:
    """The R reference fit (lmer, glmer or clmm) on the case's rows, and its result (None if it did not run)."""
    name = {"gaussian": "lmer (lme4)", "bernoulli": "glmer (lme4)", "ordinal": "clmm (ordinal)"}[spec["family"]]
    if args.skip_r:
        return failed_row(case, name, "lme4", "skipped (--skip-r)"), None
    if case in SYNTHETIC and spec["rows"] > args.scale_r_max:
        return failed_row(case, name, "lme4", f"not run above --scale-r-max {args.scale_r_max:,} rows"), None
    result, note = run_r(csv_path, spec["formula"], spec["family"], ",".join(t["group"] for t in spec["random"]))
    if result is None:
        return failed_row(case, name, "lme4", note), None
    return make_row(case, name, "lme4", import_seconds=result["import_seconds"], seconds=result["seconds"],
                    memory=result["peak_memory_gb"], estimates=result["estimates"], loglik=result["loglik"],
                    note="the reference"), result


SYNTHETIC = ("bernoulli_1m",)


def case_reference(case: str, live: dict | None, args) -> tuple[dict | None, str]:
    """What a case is scored against: lme4's committed fixture, else the live lme4 fit, else the truth."""
    if args.insteval_rows and case in INSTEVAL_CASES:
        return None, "no reference: --insteval-rows fits a subset"
    fixture = reference(case)
    if fixture is not None:
        return fixture, "lme4's committed fit"
    if live is not None:
        return {"estimates": live["estimates"], "se": live["se"], "loglik": live["loglik"]}, "the live lme4 fit"
    return {"estimates": BERNOULLI_TRUTH, "se": {}, "loglik": None}, "the simulated truth (FE in absolute units)"


def run_case(case: str, args, installed: dict) -> tuple[list[dict], str]:
    """Every row of one case (not ``scale``), scored, and what they are scored against."""
    rows = mixedfx_rows(case, args)
    data, spec = case_frame(case, insteval_rows=args.insteval_rows, bernoulli_rows=args.bernoulli_rows,
                            seed=args.seed)
    spec["rows"] = len(data)
    with tempfile.TemporaryDirectory() as folder:
        csv_path = os.path.join(folder, f"{case}.csv")
        data.to_csv(csv_path, index=False)
        del data
        row, live = lme4_row(case, csv_path, spec, args)
        rows.append(row)
        if not args.skip_peers:
            spec_path = os.path.join(folder, "spec.json")
            with open(spec_path, "w") as handle:
                json.dump({**spec, "data": csv_path}, handle)
            rows.extend(peer_rows(case, spec_path, args, installed))
    ref, against = case_reference(case, live, args)
    if case == "gaussian" and not args.skip_tutorial and not args.insteval_rows:
        result = run_child("--child", "tutorial", case, *_child_options(args))
        if "error" in result:
            rows.append(failed_row(case, "TFP tutorial algorithm", "other", result["error"]))
        else:
            rows.append(make_row(case, "TFP tutorial algorithm", "other", seconds=result["seconds"],
                                 memory=result["peak_memory_gb"], estimates=result["estimates"],
                                 note="as published; does not converge"))
    return score_rows(rows, ref), against


def _scale_names(estimates: dict) -> dict:
    """scale.py's ``g1`` as the benchmark names it, ``sd(g1)``."""
    return {(f"sd({k})" if k.startswith("g") else k): v for k, v in estimates.items()}


def run_scale_case(args, installed: dict) -> list[dict]:
    """The Gaussian scale curve: mixedfx, lme4 up to ``--scale-r-max`` rows, the peers up to ``--peer-max-rows``."""
    import scale

    truth = {"estimates": _scale_names(scale.TRUTH), "se": {}, "loglik": None}
    spec = {"formula": "y ~ x + (1 | g1) + (1 | g2) + (1 | g3)", "family": "gaussian", "response": "y",
            "fixed": ["x"], "categorical": [], "random": _intercepts("g1", "g2", "g3")}
    rows = []
    for n_rows in args.scale_sizes:
        label, case_rows = f"scale {n_rows:,} rows", []
        result = scale.run_child(n_rows, args.seed, args.float64, e_step=args.e_step)
        if "error" in result:
            case_rows.append(failed_row(label, "mixedfx", "mixedfx", result["error"]))
        else:
            case_rows.append(make_row(
                label, "mixedfx, first fit", "mixedfx", import_seconds=result.get("import_seconds"),
                seconds=result["seconds"], memory=result["peak_memory_gb"],
                estimates=_scale_names(result["estimates"]),
                note=f"{result['iterations']} EM iterations" + _kernel_note(args)
                + ("" if result["converged"] else ", not converged")))
        run_r_here = not args.skip_r and n_rows <= args.scale_r_max
        run_peers_here = not args.skip_peers and n_rows <= args.peer_max_rows
        if run_r_here or run_peers_here:
            path = scale.write_csv(n_rows, args.seed)
            try:
                if run_r_here:
                    case_rows.append(lme4_row(label, path, {**spec, "rows": n_rows}, args)[0])
                if run_peers_here:
                    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
                        json.dump({**spec, "data": path}, handle)
                    try:
                        case_rows.extend(peer_rows(label, handle.name, args, installed))
                    finally:
                        os.unlink(handle.name)
            finally:
                os.unlink(path)
        rows.extend(score_rows(case_rows, truth))
    return rows


# -- the suite -------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    """The command line (see the module docstring)."""
    import peers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--skip-r", action="store_true", help="skip the R (lme4, glmer, clmm) fits")
    parser.add_argument("--skip-peers", action="store_true", help="skip the Python peers")
    parser.add_argument("--peers", nargs="+", choices=list(peers.PEERS), default=list(peers.PEERS))
    parser.add_argument("--peers-venv", help=f"the peers' virtual environment (default ${peers.VENV_VARIABLE}, "
                                             "else ~/.cache/mixedfx-bench/peers-venv); made on first use")
    parser.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds before a peer's fit is abandoned")
    parser.add_argument("--peer-max-rows", type=int, default=1_000_000, help="largest scale size the peers fit")
    parser.add_argument("--skip-tutorial", action="store_true", help="skip the TFP tutorial baseline (about 100 s)")
    parser.add_argument("--scale-sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--scale-r-max", type=int, default=100_000,
                        help="largest synthetic case (scale, bernoulli_1m) that lme4 also fits")
    parser.add_argument("--bernoulli-rows", type=int, default=1_000_000, help="rows of the bernoulli_1m case")
    parser.add_argument("--insteval-rows", type=int, help="fit the InstEval cases on about this many rows (a check)")
    parser.add_argument("--float64", action="store_true", help="mixedfx's Gaussian HMC E-step in float64, not float32")
    parser.add_argument("--e-step", default="auto", choices=["auto", "hmc", "gibbs"],
                        help="MCEMOptions(e_step=): auto (the default: blocked Gibbs for the Gaussian cases), "
                             "hmc, gibbs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.venv = peers.peers_venv(args.peers_venv)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        kind, case = args.child
        from scale import own_peak_memory_gb

        result = child_mixedfx(case, args) if kind == "mixedfx" else child_tutorial(case, args)
        print(json.dumps({**result, "peak_memory_gb": own_peak_memory_gb()}))
        return
    from mixedfx._tf import tf  # quiet start-up (mixedfx silences TensorFlow's C++ logs)

    print(f"mixedfx benchmark suite: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TensorFlow {tf.__version__}, devices {[d.device_type for d in tf.config.list_physical_devices()]}")
    installed = {}
    if not args.skip_peers:
        import peers

        installed = peers.ensure_peers(venv=args.venv, peers=args.peers)
        print("peers (" + str(args.venv) + "): " + ", ".join(f"{k} {v}" for k, v in installed.items()))
    rows = []
    for case in args.cases:
        if case == "scale":
            case_rows, against = run_scale_case(args, installed), "the simulated truth (FE in absolute units)"
        else:
            case_rows, against = run_case(case, args, installed)
        rows.extend(case_rows)
        print(format_table(case_rows))
        print(f"  errors against {against}\n", flush=True)
    print("all cases:")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
