"""Benchmark: a users x items bernoulli model, the recommender-style design (issue #15).

``y ~ x + (1 | user) + (1 | item)``, bernoulli (logit), with ``--rows`` rows, ``rows / 10``
users and ``rows / 100`` items (10 million rows, a million users and 100,000 items by
default, the issue's size), each row a user and an item drawn uniformly at random:
``logit p = -0.5 + 0.5 x + u_user + v_item``, ``sd(user) = 0.8``, ``sd(item) = 0.5``.
mixedfx and gpboost (the peer that fits large crossed designs; from the peers' virtual
environment of ``peers.py``) each fit the same rows once, in a fresh process, so that the
peak memory (the process's own ``VmHWM``, import and data included) is its own; the fit
time excludes the import and the simulation.  Both are compared with the truth the rows
were simulated from.  ``--max-minutes`` bounds each fit's wall time: a fit still running
then is stopped and reported as not done.

    python benchmarks/users_items.py                          # 10 million rows (hours on 2 CPU cores)
    python benchmarks/users_items.py --rows 100000 --peers gpboost
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FORMULA = "y ~ x + (1 | user) + (1 | item)"
TRUTH = {"Intercept": -0.5, "x": 0.5, "sd(user)": 0.8, "sd(item)": 0.5}


def levels_for(n_rows: int) -> dict:
    """Users and items of a size: a tenth and a hundredth of the rows (at least 10)."""
    return {"user": max(10, n_rows // 10), "item": max(10, n_rows // 100)}


def simulate(n_rows: int, seed: int = 0):
    """The rows: ``x`` standard normal, ``user`` and ``item`` integer codes drawn uniformly, ``y`` 0/1."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    levels = levels_for(n_rows)
    x = rng.normal(size=n_rows)
    codes = {g: rng.integers(0, q, n_rows) for g, q in levels.items()}
    eta = TRUTH["Intercept"] + TRUTH["x"] * x + sum(TRUTH[f"sd({g})"] * rng.normal(size=q)[codes[g]]
                                                    for g, q in levels.items())
    y = (rng.uniform(size=n_rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int8)
    return pd.DataFrame({"y": y, "x": x, **codes})


def fit_one(n_rows: int, seed: int) -> dict:
    """Import mixedfx (timed), simulate, fit once (timed); runs in the child process."""
    import warnings

    started = time.perf_counter()
    import mixedfx

    import_seconds = time.perf_counter() - started
    data = simulate(n_rows, seed)
    for g in ("user", "item"):
        data[g] = data[g].astype("category")
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mixedfx.glmer(FORMULA, data, family="bernoulli", random_state=seed, verbose=0)
    seconds = time.perf_counter() - started
    sds = model.variance_components_.set_index("group")["sdcor"]
    estimates = {"Intercept": float(model.fixed_effects_["Intercept"]), "x": float(model.fixed_effects_["x"]),
                 "sd(user)": float(sds["user"]), "sd(item)": float(sds["item"])}
    return {"import_seconds": import_seconds, "seconds": seconds, "iterations": model.fit_summary_.n_iter,
            "converged": bool(model.fit_summary_.converged), "estimates": estimates,
            "warnings": sorted({str(w.message).split(":")[0][:80] for w in caught})}


def run_gpboost(n_rows: int, seed: int, timeout: float) -> dict:
    """gpboost on the same rows, through ``peers.py`` (its venv made on first use)."""
    import peers

    venv = peers.peers_venv(None)
    installed = peers.ensure_peers(venv=venv, peers=["gpboost"])
    if installed["gpboost"].startswith("not installed"):
        return {"error": installed["gpboost"]}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "users_items.csv")
        simulate(n_rows, seed).to_csv(path, index=False)
        spec = {"formula": FORMULA, "family": "bernoulli", "response": "y", "fixed": ["x"], "categorical": [],
                "random": [{"group": g, "slopes": [], "correlated": True} for g in ("user", "item")], "data": path}
        spec_path = os.path.join(folder, "spec.json")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        result = peers.run_peer("gpboost", spec_path, venv=venv, timeout=timeout)
    if "error" not in result:
        result["seconds"] = result.pop("fit_seconds")
    return result


def show(label: str, result: dict) -> None:
    """One line: seconds, peak memory, each estimate with its error against the truth."""
    if "error" in result:
        print(f"{label:10s} {result['error']}")
        return
    parts = ", ".join(f"{k} {v:+.4f} ({v - TRUTH[k]:+.4f})" for k, v in result["estimates"].items() if k in TRUTH)
    print(f"{label:10s} fit {result['seconds']:8.1f} s  import {result['import_seconds']:5.1f} s  "
          f"peak {result['peak_memory_gb']:5.2f} GB  {parts}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", nargs="*", default=["gpboost"], choices=["gpboost"])
    parser.add_argument("--max-minutes", type=float, default=240.0, help="each fit's limit (wall clock)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.child:
        from scale import own_peak_memory_gb

        print(json.dumps({**fit_one(args.rows, args.seed), "peak_memory_gb": own_peak_memory_gb()}))
        return
    from scale import run_child_command

    print(f"users x items bernoulli, {FORMULA}, {args.rows:,} rows, levels {levels_for(args.rows)}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; truth {TRUTH}", flush=True)
    command = [sys.executable, __file__, "--child", "--rows", str(args.rows), "--seed", str(args.seed)]
    try:
        ours = run_child_command(["timeout", str(int(60 * args.max_minutes)), *command])
    except (json.JSONDecodeError, subprocess.SubprocessError) as error:
        ours = {"error": f"failed: {error}"}
    if ours.get("error") == "exit status 124":
        ours = {"error": f"not done after {args.max_minutes:g} minutes (stopped)"}
    results = {"mixedfx": ours}
    show("mixedfx", ours)
    if "error" not in ours:
        print(f"{'':10s} {ours['iterations']} EM iterations, converged {ours['converged']}, "
              f"warnings {ours['warnings']}", flush=True)
    if "gpboost" in args.peers:
        results["gpboost"] = run_gpboost(args.rows, args.seed, 60 * args.max_minutes)
        show("gpboost", results["gpboost"])
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
