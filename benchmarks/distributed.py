"""Benchmark: sharded fits on 1, 2 and 4 logical CPU devices, and peak memory per row from Parquet.

Throughput: one synthetic data set, ``y ~ x + (1 | g1) + (1 | g2)`` on ``make_mixed_data``
rows, fitted by a fixed number of EM iterations on one device (the single-device XLA
program, ``distribute=None``) and on a ``MirroredStrategy`` over 1, 2 and 4 logical CPU
devices (``MIXEDFX_CPU_DEVICES``), each in its own process; on a machine with GPUs, over
its first 1, 2 and 4 GPUs instead (the table names the card).  After a first fit that
compiles, the EM loop alone (:func:`~mixedfx.inference.fit_mcem`) is timed; throughput
is rows x iterations / seconds, the rows each EM iteration processes per second (every
iteration evaluates the log-likelihood and its gradient on every row about 140 times:
2 chains x 8 transitions x ~8 leapfrog steps, plus the M-step sums).

Logical CPU devices share the machine's cores, so this measures the overhead of
sharding (one ``strategy.run`` and one all-reduce per evaluation), not a speed-up; on
several GPUs or hosts each shard has its own processor.

Memory: a Parquet file of ``n`` rows (with two unused columns) is read and then fitted
in a fresh process, after mixedfx is imported (importing TensorFlow has a peak of its
own); the process's peak resident memory (``VmHWM``, reset before each step) above what
it held before, at two sizes, gives the memory per row as the slope between them.

    python benchmarks/distributed.py                     # 200k rows; memory at 200k and 1M rows
    python benchmarks/distributed.py --rows 50000 --memory-sizes 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

FORMULA = "y ~ x + (1 | g1) + (1 | g2)"


def make_data(n_rows: int, seed: int = 0):
    import mixedfx

    groups = {"g1": max(10, n_rows // 100), "g2": max(10, n_rows // 1000)}
    return mixedfx.datasets.make_mixed_data(n_rows, groups=groups, fixed_effects={"Intercept": 1.0, "x": 0.5},
                                            random_sd={"g1": 0.6, "g2": 0.4}, random_state=seed), groups


def throughput_child(n_rows: int, devices: int, sharded: bool, n_iter: int) -> dict:
    import warnings

    import mixedfx
    from mixedfx._tf import tf
    from mixedfx.inference import FixedIterations, MCEMOptions, fit_mcem

    data, groups = make_data(n_rows)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # the first `devices` GPUs; otherwise the logical CPU devices
        kind = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        names = [d.name for d in tf.config.list_logical_devices("GPU")][:devices]
    else:
        kind, names = "logical CPU", [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(names) if sharded else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        model = mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0, distribute=strategy,
                                              stopping_rule=FixedIterations(5, 5)).fit(data)
        first_fit = time.perf_counter() - started
    options = MCEMOptions()
    rule = FixedIterations(n_iter, n_iter)
    seconds = []
    for repeat in range(2):
        result = fit_mcem(model.model_, options=options, stopping_rule=rule, seed=[repeat, 1], distribute=strategy)
        seconds.append(result.summary.elapsed_seconds)
    best = min(seconds)
    return {"rows": n_rows, "levels": groups, "devices": devices, "sharded": sharded, "kind": kind,
            "replicas": 1 if strategy is None else strategy.num_replicas_in_sync, "iterations": n_iter,
            "seconds": best, "seconds_per_iteration": best / n_iter,
            "row_iterations_per_second": n_rows * n_iter / best,
            "first_fit_seconds": first_fit, "estimate": result.summary.estimate.tolist()}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    """Start a new peak-memory (VmHWM) measurement (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def memory_child(path: str) -> dict:
    import warnings

    import mixedfx
    from mixedfx.design import read_arrow
    from mixedfx.inference import FixedIterations

    # importing TensorFlow and its first compile have a peak of their own: measure from here
    before_read = _status_mb("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    frame = read_arrow(path, formula=FORMULA, grouping=["g1", "g2"])
    read_seconds = time.perf_counter() - started
    read_peak, read_held = _status_mb("VmHWM"), _status_mb("VmRSS")
    n_rows = len(frame)
    del frame
    before_fit = _status_mb("VmRSS")
    _reset_peak()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0,
                                      stopping_rule=FixedIterations(5, 5)).fit(path)
    return {"rows": n_rows, "read_seconds": read_seconds, "read_peak_mb": read_peak - before_read,
            "read_held_mb": read_held - before_read, "fit_peak_mb": _status_mb("VmHWM") - before_fit}


def run_child(arguments: list[str], env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4],
                        help="logical CPU device counts (none: skip the throughput part)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[200_000, 1_000_000],
                        help="Parquet sizes for the memory slope (0 to skip)")
    parser.add_argument("--child", choices=["throughput", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--sharded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.child == "throughput":
        devices = int(os.environ.get("MIXEDFX_CPU_DEVICES", "1"))
        print(json.dumps(throughput_child(args.rows, devices, args.sharded, args.iterations)))
        return
    if args.child == "memory":
        print(json.dumps(memory_child(args.path)))
        return

    results = {"throughput": [], "memory": []}
    if args.devices:
        print(f"sharded fits: {FORMULA}, {args.rows:,} rows, levels g1 {max(10, args.rows // 100):,} / "
              f"g2 {max(10, args.rows // 1000):,}; {args.iterations} EM iterations timed after a compiling fit; "
              f"{os.cpu_count()} CPUs shared by the logical devices")
        print(f"{'path':<38} {'replicas':>8} {'s/iteration':>12} {'rows/s/iteration':>17} {'vs one device':>14}")
    runs = ([(1, False)] + [(k, True) for k in args.devices]) if args.devices else []
    baseline = None
    for devices, sharded in runs:
        child = ["--child", "throughput", "--rows", str(args.rows), "--iterations", str(args.iterations)]
        result = run_child(child + (["--sharded"] if sharded else []), env={"MIXEDFX_CPU_DEVICES": str(devices)})
        results["throughput"].append(result)
        kind = result.get("kind", "logical CPU")
        name = f"MirroredStrategy, {devices} {kind}" if sharded else "one device (XLA program, no strategy)"
        if "error" in result:
            print(f"{name:<38} {result['error']}")
            continue
        baseline = baseline or result["row_iterations_per_second"]
        print(f"{name:<38} {result['replicas']:>8} {result['seconds_per_iteration']:>12.3f} "
              f"{result['row_iterations_per_second']:>17,.0f} {result['row_iterations_per_second'] / baseline:>13.2f}x")

    sizes = [n for n in args.memory_sizes if n > 0]
    if sizes:
        print(f"\nmemory, fit from Parquet ({FORMULA} plus 2 unused columns), one process per size, "
              "above what the process held before (MB):")
        print(f"{'rows':>10} {'read s':>7} {'read peak':>10} {'frame held':>11} {'fit peak':>9}")
        with tempfile.TemporaryDirectory() as tmp:
            for n_rows in sizes:
                data, _ = make_data(n_rows)
                path = os.path.join(tmp, f"data_{n_rows}.parquet")
                data.assign(unused_a=1.0, unused_b="text").to_parquet(path)
                del data
                result = run_child(["--child", "memory", "--path", path])
                results["memory"].append(result)
                if "error" in result:
                    print(f"{n_rows:>10} {result['error']}")
                    continue
                print(f"{n_rows:>10} {result['read_seconds']:>7.2f} {result['read_peak_mb']:>10.0f} "
                      f"{result['read_held_mb']:>11.0f} {result['fit_peak_mb']:>9.0f}")
        good = [r for r in results["memory"] if "error" not in r]
        if len(good) >= 2:
            small, large = good[0], good[-1]
            rows = large["rows"] - small["rows"]
            slope = {name: (large[name] - small[name]) * 2**20 / rows
                     for name in ("read_peak_mb", "read_held_mb", "fit_peak_mb")}
            print(f"per row, the slope between {small['rows']:,} and {large['rows']:,} rows: reading peaks at "
                  f"{slope['read_peak_mb']:.0f} bytes and holds {slope['read_held_mb']:.0f}; "
                  f"the whole fit peaks at {slope['fit_peak_mb']:.0f} bytes")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
