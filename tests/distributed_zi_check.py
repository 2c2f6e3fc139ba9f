"""The sharded sums of a model with a random term in the zero part, on three logical CPU
devices: run by tests/test_zi_random.py in a subprocess (logical devices must be set
before TensorFlow starts; see tests/distributed_check.py), printing one JSON object.

The data of tests/fixtures/zi_random.csv less its last row (599 rows: the three shards
of 200 rows are padded with one row of zero weight), glmmTMB's estimates and the
conditional modes of both site effects (tests/fixtures/glmmtmb_zi_random.json): the
response's log-likelihood and its gradient in the random effects, which every E-step
leapfrog step and every M-step sums over the rows, summed over the shards
(:class:`mixedfx.inference.distributed.ShardedRows`) and on all rows at once; and the
sharded sum with the terms' linear predictors dropped (every term in the conditional
one), which must differ.

    MIXEDFX_CPU_DEVICES=3 python tests/distributed_zi_check.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def main() -> dict:
    import pandas as pd

    from mixedfx._tf import tf
    from mixedfx.design import RandomTermData
    from mixedfx.inference import distributed
    from mixedfx.model import MixedModel, Poisson
    from mixedfx.model.joint import response_log_prob

    reference = json.loads((FIXTURES / "glmmtmb_zi_random.json").read_text())
    data = pd.read_csv(FIXTURES / reference["data"]).iloc[:-1]
    site = pd.factorize(data["site"], sort=True)[0].astype(np.int32)
    X = np.column_stack([np.ones(len(data)), (data["mined"] == "yes").to_numpy(float)])
    terms = (RandomTermData("site", site, None, 30), RandomTermData("zi~site", site, None, 30, predictor="zi"))
    model = MixedModel(Poisson().zero_inflated(("Intercept", "minedyes")), X, data["count"].to_numpy(float), terms,
                       ("Intercept", "minedyes"), family_design={"zi": X})
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    rows = distributed.ShardedRows(model, tf.distribute.MirroredStrategy(devices))
    effects = [tf.constant(np.array(reference[key])[:, None]) for key in ("ranef_cond", "ranef_zi")]
    beta = tf.constant(np.array(list(reference["fixed_effects"].values())))
    family = model.family
    params = {"zi": tf.constant(np.array(list(reference["zi_fixed_effects"].values())))}
    shape = ([30, 30], model.keys, [1, 1])

    def summed(predictors):
        def local(shard, effects):
            tensors = distributed.ShardedRows.tensors(shard, *shape, predictors=predictors)
            return response_log_prob(tensors, effects, fixed_effects=beta, family=family, family_params=params)

        @tf.function(autograph=False)
        def run():
            with tf.GradientTape() as tape:
                tape.watch(effects)
                value = rows.sum_with_gradient(local, effects)
            return value, tape.gradient(value, effects)

        value, gradient = run()
        return float(value), [g.numpy().ravel().tolist() for g in gradient]

    with tf.GradientTape() as tape:
        tape.watch(effects)
        value = response_log_prob(model.tensors(), effects, fixed_effects=beta, family=family, family_params=params)
    gradient = [g.numpy().ravel().tolist() for g in tape.gradient(value, effects)]
    sharded, sharded_gradient = summed(model.predictors)
    return {"devices": devices, "replicas": rows.strategy.num_replicas_in_sync, "n_rows": rows.n_rows,
            "rows_per_replica": rows.rows_per_replica, "predictors": list(model.predictors),
            "local": float(value), "local_gradient": gradient, "sharded": sharded,
            "sharded_gradient": sharded_gradient, "sharded_without_predictors": summed(None)[0]}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main()) + "\n")
