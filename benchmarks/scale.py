"""Benchmark: the scale curve, a synthetic Gaussian model with three crossed factors.

``y ~ x + (1 | g1) + (1 | g2) + (1 | g3)`` on ``make_mixed_data`` rows, with the level
counts growing with the rows (``g1``: n / 50, ``g2``: n / 500, ``g3``: sqrt(n) / 10, at
least 10 each), from 10 thousand rows up.  Each size runs in its own process, so that
its peak memory (the process's own peak resident set size, ``VmHWM``) is its
own; the fit time excludes generating the data.  Every fit is compared with the truth
it was simulated from.

    python benchmarks/scale.py                       # 10k, 100k, 1M rows
    python benchmarks/scale.py --sizes 10000 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TRUTH = {"Intercept": 1.0, "x": 0.5, "g1": 0.6, "g2": 0.4, "g3": 0.3, "sigma": 1.0}


def levels_for(n_rows: int) -> dict:
    return {"g1": max(10, n_rows // 50), "g2": max(10, n_rows // 500), "g3": max(10, int(n_rows**0.5 / 10))}


def simulate(n_rows: int, seed: int):
    """The data of one size: ``make_mixed_data`` with the truth above."""
    import mixedfx

    groups = levels_for(n_rows)
    return mixedfx.datasets.make_mixed_data(
        n_rows, groups=groups, fixed_effects={"Intercept": TRUTH["Intercept"], "x": TRUTH["x"]},
        random_sd={g: TRUTH[g] for g in groups}, noise_sd=TRUTH["sigma"], random_state=seed,
    )


def write_csv(n_rows: int, seed: int) -> str:
    """Write the data of one size to a temporary CSV file (for the lme4 baseline); returns its path."""
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    with handle:
        simulate(n_rows, seed).to_csv(handle, index=False)
    return handle.name


def fit_one(n_rows: int, seed: int, float64: bool = False, e_step: str = "auto") -> dict:
    """Simulate and fit one size (runs in the child process); ``float64``: an HMC E-step in float64, not
    float32; ``e_step``: ``MCEMOptions(e_step=)`` (``"auto"``: blocked Gibbs, float64)."""
    started = time.perf_counter()
    import mixedfx
    from mixedfx.inference import MCEMOptions

    import_seconds = time.perf_counter() - started  # the first import in the process (TensorFlow's included)

    groups = levels_for(n_rows)
    data = simulate(n_rows, seed)
    started = time.perf_counter()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = MCEMOptions(e_step=e_step, float32_e_step=not float64)
        model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g1) + (1 | g2) + (1 | g3)", random_state=seed,
                                              verbose=0, options=options).fit(data)
    seconds = time.perf_counter() - started
    sds = model.variance_components_.set_index("group")["sdcor"]
    summary = model.fit_summary_
    return {
        "rows": n_rows, "levels": groups, "import_seconds": import_seconds, "seconds": seconds,
        "first_call_seconds": summary.first_call_seconds,
        "iterations": summary.n_iter, "converged": summary.converged, "e_step": summary.e_step,
        "estimates": {"Intercept": float(model.fixed_effects_["Intercept"]), "x": float(model.fixed_effects_["x"]),
                      **{g: float(sds[g]) for g in groups}, "sigma": float(sds["Residual"])},
        "warnings": sorted({str(w.message).split(":")[0][:80] for w in caught}),
    }


def own_peak_memory_gb() -> float:
    """This process's peak resident set size (``VmHWM``).  Its parent's ``wait4`` would
    report at least the parent's resident size at the fork (Linux carries the high-water
    mark across ``exec``), so a child reports its own."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20  # kB


def run_child(n_rows: int, seed: int, float64: bool = False, *, e_step: str = "auto") -> dict:
    """Fit one size in a fresh process; returns its result with the peak resident memory."""
    command = [sys.executable, __file__, "--child", str(n_rows), "--seed", str(seed), "--e-step", e_step]
    command += ["--float64"] if float64 else []
    return {"rows": n_rows, **run_child_command(command)}


def run_child_command(command: list) -> dict:
    """Run a benchmark's child process; the JSON object it prints last, with ``process_seconds``
    (or ``error``, its exit status)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, _ = os.wait4(process.pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        return {"error": f"exit status {returncode}"}
    result = json.loads(output.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--float64", action="store_true", help="an HMC E-step in float64, not float32")
    parser.add_argument("--e-step", default="auto", choices=["auto", "hmc", "gibbs"], help="MCEMOptions(e_step=)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.child:
        result = fit_one(args.child, args.seed, args.float64, args.e_step)
        print(json.dumps({**result, "peak_memory_gb": own_peak_memory_gb()}))
        return
    print(f"scale curve: y ~ x + (1 | g1) + (1 | g2) + (1 | g3), {os.cpu_count()} CPUs; truth {TRUTH}")
    print(f"{'rows':>10} {'levels g1/g2/g3':>22} {'fit s':>8} {'s/M rows':>9} {'peak GB':>8} {'GB/M rows':>9} "
          f"{'iters':>5}  largest error vs truth")
    results = []
    for n_rows in args.sizes:
        result = run_child(n_rows, args.seed, args.float64, e_step=args.e_step)
        results.append(result)
        if "error" in result:
            print(f"{n_rows:>10} {result['error']}")
            continue
        levels = "/".join(str(v) for v in result["levels"].values())
        errors = {k: result["estimates"][k] - TRUTH[k] for k in TRUTH}
        worst = max(errors, key=lambda k: abs(errors[k]))
        print(f"{n_rows:>10} {levels:>22} {result['seconds']:8.1f} {result['seconds'] / n_rows * 1e6:9.1f} "
              f"{result['peak_memory_gb']:8.2f} {result['peak_memory_gb'] / n_rows * 1e6:9.2f} "
              f"{result['iterations']:>5}  {worst} {errors[worst]:+.4f}"
              + ("" if result["converged"] else "  (not converged)"))
        for message in result["warnings"]:
            print(f"{'':>10} warning: {message}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
