"""Sharded fits on logical CPU devices, run by tests/test_distributed.py in a subprocess.

Logical devices must be configured before TensorFlow starts, and importing mixedfx
starts it, so this script runs in its own process with ``MIXEDFX_CPU_DEVICES`` set
(see mixedfx/_tf.py) and prints one JSON object.  The test makes the assertions.

    MIXEDFX_CPU_DEVICES=4 python tests/distributed_check.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORMULA = "y ~ x + (1 | g) + (1 | h)"
TRUTH = {"Intercept": 1.0, "x": 0.5, "g": 0.8, "h": 0.5}


def main() -> dict:
    import mixedfx
    from mixedfx._tf import tf
    from mixedfx.inference import distributed
    from mixedfx.model import ModelParameters, gaussian_marginal

    # a single-worker MultiWorkerMirroredStrategy sets up collective ops: first
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices)

    replicas_used = []
    call = distributed.ShardedIterations.__call__

    def counting_call(self, *args):  # records that the sharded loop ran, and on how many replicas
        replicas_used.append(self.rows.strategy.num_replicas_in_sync)
        return call(self, *args)

    distributed.ShardedIterations.__call__ = counting_call

    data = mixedfx.datasets.make_mixed_data(
        2001, groups={"g": 30, "h": 8}, fixed_effects={"Intercept": TRUTH["Intercept"], "x": TRUTH["x"]},
        random_sd={"g": TRUTH["g"], "h": TRUTH["h"]}, random_state=7)
    out = {"devices": devices, "mirrored_replicas": mirrored.num_replicas_in_sync,
           "multi_worker_replicas": multi_worker.num_replicas_in_sync}

    def summary(fit):
        return {"names": list(fit.fit_summary_.parameter_names), "estimate": fit.fit_summary_.estimate.tolist(),
                "mcse": fit.fit_summary_.mcse.tolist(), "n_iter": int(fit.fit_summary_.n_iter),
                "converged": bool(fit.fit_summary_.converged), "log_likelihood": float(fit.log_likelihood_),
                "ranef_g_index": [str(v) for v in fit.random_effects_["g"].index[:5]],
                "ranef_g": fit.random_effects_["g"].iloc[:, 0].tolist()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test reads convergence from the summaries
        single = mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0).fit(data)
        out["single"] = summary(single)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.parquet"
            data.assign(unused=0.0).to_parquet(path)
            sharded = mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0, distribute=mirrored).fit(path)
        out["sharded"] = summary(sharded)
        out["sharded_calls"] = list(replicas_used)
        replicas_used.clear()
        worker = mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0, distribute=multi_worker).fit(data)
        out["multi_worker"] = summary(worker)
        out["multi_worker_calls"] = list(replicas_used)

    # The exact log-likelihood at given parameters: the fitted ones, and others away from them.
    model = single.model_
    fitted = single.model_parameters_
    away = ModelParameters(fitted.fixed_effects + np.array([0.3, -0.2]),
                           tuple(L * f for L, f in zip(fitted.random_scale_tril, (1.7, 0.4))),
                           {"sigma": fitted.family_params["sigma"] * 1.3})
    out["exact"] = []
    for params in (fitted, away):
        one = gaussian_marginal(model, params, profile_fixed_effects=False)
        row = {"single": [one.log_likelihood, one.profiled_log_likelihood, one.reml_log_likelihood]}
        for name, strategy in (("mirrored", mirrored), ("multi_worker", multi_worker)):
            many = distributed.sharded_gaussian_marginal(model, params, strategy=strategy)
            row[name] = [many.log_likelihood, many.profiled_log_likelihood, many.reml_log_likelihood]
            row[f"{name}_means_max_diff"] = float(max(np.max(np.abs(a - b)) for a, b in
                                                       zip(one.conditional_means, many.conditional_means)))
        out["exact"].append(row)
    return out


if __name__ == "__main__":
    result = main()
    sys.stdout.write(json.dumps(result) + "\n")
