"""Sharded fits on logical CPU devices, run by tests/test_distributed.py in a subprocess.

Logical devices must be configured before TensorFlow starts, and importing mixedfx
starts it, so this script runs in its own process with ``MIXEDFX_CPU_DEVICES`` set
(see mixedfx/_tf.py) and prints one JSON object.  The test makes the assertions, and
compares with the single-device fit of the same data and random_state that the suite
shares (``crossed_small_fit``).

    MIXEDFX_CPU_DEVICES=3 python tests/distributed_check.py
    python tests/distributed_check.py --worker 0 PORT0,PORT1 & python tests/distributed_check.py --worker 1 PORT0,PORT1
    MIXEDFX_CPU_DEVICES=3 python tests/distributed_check.py --structures  (tests/test_rr_glmm.py)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORMULA = "y ~ x + (1 | g1) + (1 | g2)"
DATA = Path(__file__).parent / "fixtures" / "crossed_small.csv"  # lme4_crossed_small_ml.json is its lme4 fit
POISSON = Path(__file__).parent / "fixtures" / "poisson_crossed.csv"  # glmm_poisson_crossed.json: glmer's fit
SLEEPSTUDY = Path(__file__).parent / "fixtures" / "sleepstudy.csv"  # lme4_results.json: lmer's REML fit
AR1 = Path(__file__).parent / "fixtures" / "covariance_ar1.csv"  # covariance_structures.json: glmmTMB's, nlme's
RR = Path(__file__).parent / "fixtures" / "reduced_rank.csv"  # reduced_rank.json: glmmTMB's rr fits
#: structured terms fitted sharded and on one device (``--structures``): name, formula, data
STRUCTURED = (("ar1", "y ~ time + ar1(0 + timef | subject)", AR1),
              ("rr", "y1 ~ 0 + trait + rr(0 + trait | id, d = 1)", RR))


def summary(fit) -> dict:
    """What the test compares of a fit (tests/test_distributed.py calls it too)."""
    return {"names": list(fit.fit_summary_.parameter_names), "estimate": fit.fit_summary_.estimate.tolist(),
            "mcse": fit.fit_summary_.mcse.tolist(), "n_iter": int(fit.fit_summary_.n_iter),
            "converged": bool(fit.fit_summary_.converged), "log_likelihood": float(fit.log_likelihood_),
            "ranef_g1_index": [str(v) for v in fit.random_effects_["g1"].index] if "g1" in fit.random_effects_ else None,
            "fixed_effects": fit.fixed_effects_.to_dict(),
            "sds": fit.variance_components_.groupby("group")["sdcor"].first().to_dict()}


def main() -> dict:
    import pandas as pd

    import mixedfx
    from mixedfx._tf import tf
    from mixedfx.inference import distributed
    from mixedfx.inference.mstep import gaussian_row_statistics
    from mixedfx.model import ModelParameters, gaussian_marginal
    from mixedfx.model.joint import response_log_prob

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices)

    replicas_used = []
    sum_over_shards = distributed.ShardedRows.sum

    def counting_sum(self, *args, **kwargs):  # records that the loop summed over shards, and over how many replicas
        replicas_used.append(self.strategy.num_replicas_in_sync)
        return sum_over_shards(self, *args, **kwargs)

    distributed.ShardedRows.sum = counting_sum

    data = pd.read_csv(DATA)
    out = {"devices": devices, "mirrored_replicas": mirrored.num_replicas_in_sync}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test reads convergence from the summaries
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.parquet"
            data.assign(unused=0.0).to_parquet(path)
            sharded = mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0, distribute=mirrored).fit(path)
        out["sharded"] = summary(sharded)
        out["sharded_calls"] = list(replicas_used)
        # a GLM with an offset, on 2,000 rows: on three replicas the last shard is padded
        replicas_used.clear()
        counts = pd.read_csv(POISSON)
        poisson = mixedfx.glmer("y ~ x + offset(np.log(exposure)) + (1 | g1) + (1 | g2)", counts, family="poisson",
                                tol=0.05, random_state=0, verbose=0, distribute=mirrored)
        out["poisson"] = {"fixed_effects": poisson.fixed_effects_.to_dict(),
                          "fixed_effects_se": np.sqrt(np.diag(poisson.fixed_effects_cov_)).tolist(),
                          "sds": poisson.variance_components_.set_index("group")["sdcor"].to_dict(),
                          "converged": bool(poisson.fit_summary_.converged),
                          "log_likelihood": float(poisson.log_likelihood_), "rows": len(counts)}
        out["poisson_calls"] = list(replicas_used)
        # REML, and a term with a random slope (two correlated coefficients per level)
        replicas_used.clear()
        sleepstudy = pd.read_csv(SLEEPSTUDY)
        slopes = mixedfx.MixedEffectsRegressor("Reaction ~ Days + (Days | Subject)", method="reml", random_state=0,
                                               verbose=0, distribute=mirrored).fit(sleepstudy)
        frame = slopes.variance_components_
        out["reml_slopes"] = {"fixed_effects": slopes.fixed_effects_.to_dict(),
                              "fixed_effects_se": np.sqrt(np.diag(slopes.fixed_effects_cov_)).tolist(),
                              "sds": frame[frame["var2"].isna()]["sdcor"].tolist(),
                              "cor": frame[frame["var2"].notna()]["sdcor"].tolist(),
                              "converged": bool(slopes.fit_summary_.converged),
                              "log_likelihood": float(slopes.log_likelihood_), "method": slopes.fit_summary_.method}
        out["reml_slopes_calls"] = list(replicas_used)
        # a covariance structure (ar1 over six times): its M-step's projection on sharded sums
        replicas_used.clear()
        ar1 = mixedfx.MixedEffectsRegressor("y ~ time + ar1(0 + timef | subject)", random_state=0, verbose=0,
                                            distribute=mirrored).fit(pd.read_csv(AR1))
        rows = ar1.variance_components_.set_index(["var1", "var2"])
        out["ar1"] = {"fixed_effects": ar1.fixed_effects_.tolist(), "log_likelihood": float(ar1.log_likelihood_),
                      "sd": float(rows.loc[("timef[t1]", None), "sdcor"]), "rho": float(rows.loc[("ar1", "rho"), "sdcor"]),
                      "sigma": float(ar1.variance_components_.set_index("group").loc["Residual", "sdcor"]),
                      "converged": bool(ar1.fit_summary_.converged)}
        out["ar1_calls"] = list(replicas_used)

    # The exact log-likelihood at given parameters: the fitted ones, and others away from
    # them; on all rows, and without the last (rows padded to a multiple of the replicas).
    model = sharded.model_
    fitted = sharded.model_parameters_
    away = ModelParameters(fitted.fixed_effects + np.array([0.3, -0.2]),
                           tuple(L * f for L, f in zip(fitted.random_scale_tril, (1.7, 0.4))),
                           {"sigma": fitted.family_params["sigma"] * 1.3})
    short = dataclasses.replace(
        model, fixed_design=model.fixed_design[:-1], response=model.response[:-1],
        random_terms=tuple(dataclasses.replace(t, group_index=t.group_index[:-1]) for t in model.random_terms))
    out["exact"] = []
    for model, params in ((model, fitted), (model, away), (short, away)):
        one = gaussian_marginal(model, params, profile_fixed_effects=False)
        row = {"single": [one.log_likelihood, one.profiled_log_likelihood, one.reml_log_likelihood]}
        many = gaussian_marginal(model, params, row_sums=distributed.sharded_cross_products(mirrored))
        row["mirrored"] = [many.log_likelihood, many.profiled_log_likelihood, many.reml_log_likelihood]
        row["means_max_diff"] = float(max(np.max(np.abs(a - b)) for a, b in
                                          zip(one.conditional_means, many.conditional_means)))
        out["exact"].append(row)

    # The E-step's and M-step's sums on padded shards, against the same sums on all rows.
    rows = distributed.ShardedRows(short, mirrored)
    tensors = short.tensors()
    effects = [tf.random.stateless_normal([2, t.num_levels, 1], [4, k], dtype=tf.float64) for k, t in
               enumerate(short.random_terms)]
    beta, free = tf.constant(fitted.fixed_effects), tf.constant([np.log(fitted.family_params["sigma"])])
    family = short.family

    def local(shard, effects, beta, free):
        shard_tensors = distributed.ShardedRows.tensors(shard, [t.num_levels for t in short.random_terms],
                                                        short.keys, [1, 1])
        return response_log_prob(shard_tensors, effects, fixed_effects=beta, family=family,
                                 family_params=family.constrain(free))

    @tf.function(autograph=False)
    def sharded_sums():
        with tf.GradientTape() as tape:
            tape.watch(effects)
            value = rows.sum_with_gradient(local, effects, beta, free)
        statistics = rows.sum(lambda shard, effects: gaussian_row_statistics(
            effects, fixed_design=shard["fixed_design"], response=shard["regression_response"],
            group_index=(shard["group_index_0"], shard["group_index_1"]), z=(None, None),
            row_weight=shard["row_weight"]), effects)
        return value, tape.gradient(value, effects), statistics

    with tf.GradientTape() as tape:
        tape.watch(effects)
        value = response_log_prob(tensors, effects, fixed_effects=beta, family=family,
                                  family_params=family.constrain(free))
    gradient = tape.gradient(value, effects)
    statistics = gaussian_row_statistics(effects, fixed_design=tensors.fixed_design, response=tensors.response,
                                         group_index=tensors.group_index, z=tensors.z)
    many_value, many_gradient, many_statistics = sharded_sums()

    def relative(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))

    out["padded"] = {
        "rows_per_replica": rows.rows_per_replica, "n_rows": rows.n_rows,
        "log_likelihood": relative(value, many_value),
        "gradient": max(relative(a, b) for a, b in zip(gradient, many_gradient)),
        "statistics": max(relative(statistics[k], many_statistics[k]) for k in statistics),
    }
    return out


def structures() -> dict:
    """Each of :data:`STRUCTURED` fitted twice with the same random_state: on a
    MirroredStrategy over the logical devices, and on one device (no ``distribute``); the
    sharded fit's summed calls and replicas recorded, and the fitted covariance of each."""
    import pandas as pd

    import mixedfx
    from mixedfx._tf import tf
    from mixedfx.inference import MCEMOptions, distributed

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices)
    replicas_used = []
    sum_over_shards = distributed.ShardedRows.sum

    def counting_sum(self, *args, **kwargs):
        replicas_used.append(self.strategy.num_replicas_in_sync)
        return sum_over_shards(self, *args, **kwargs)

    distributed.ShardedRows.sum = counting_sum
    out = {"devices": devices}
    for name, formula, path in STRUCTURED:
        data = pd.read_csv(path)
        for key, strategy in ((f"{name}_sharded", mirrored), (f"{name}_single", None)):
            replicas_used.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the test reads convergence from the summaries
                # a sharded fit runs HMC; the one-device fit runs it too (e_step="auto" would pick
                # Gibbs for these Gaussian models), so that the two differ by the sharding alone
                fit = mixedfx.MixedEffectsRegressor(formula, random_state=0, verbose=0, distribute=strategy,
                                                    options=MCEMOptions(e_step="hmc")).fit(data)
            out[key] = {**summary(fit), "fixed_effects": fit.fixed_effects_.tolist(), "calls": list(replicas_used),
                        "covariance": fit.random_cov_[0].to_numpy().tolist()}
    return out


def worker(index: int, ports: list[str]) -> dict:
    """One worker of a two-worker MultiWorkerMirroredStrategy on this machine's loopback
    (one CPU replica each): crossed_small sharded across the two processes."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                                          "task": {"type": "worker", "index": index}})
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before mixedfx starts TensorFlow's context

    import pandas as pd

    import mixedfx
    from mixedfx.inference import distributed
    from mixedfx.model import gaussian_marginal

    data = pd.read_csv(DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mixedfx.MixedEffectsRegressor(FORMULA, random_state=0, verbose=0, distribute=strategy).fit(data)
    one = gaussian_marginal(fit.model_, fit.model_parameters_)
    many = gaussian_marginal(fit.model_, fit.model_parameters_,
                             row_sums=distributed.sharded_cross_products(strategy))
    return {"replicas": strategy.num_replicas_in_sync, "devices": list(strategy.extended.worker_devices),
            "fit": summary(fit), "exact": [one.log_likelihood, many.log_likelihood]}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        result = worker(int(sys.argv[2]), sys.argv[3].split(","))
    elif len(sys.argv) > 1 and sys.argv[1] == "--structures":
        result = structures()
    else:
        result = main()
    sys.stdout.write(json.dumps(result) + "\n")
