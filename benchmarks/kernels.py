"""Benchmark: the E-step kernels, HMC against blocked Gibbs (``MCEMOptions(e_step=...)``).

For sleepstudy (``Reaction ~ Days + (Days | Subject)``, 180 rows) and InstEval
(``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, 73,421 rows), Gaussian, blocked Gibbs;
for cbpp (``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial, 56
rows) and a VerbAgg subset (``r2 ~ Anger + btype + (1 | id) + (1 | item)``, 0/1 binomial,
1,920 rows, 80 people crossed with 24 items: tests/fixtures/reform_verbagg.csv),
Polya-Gamma augmented blocked Gibbs; ML, on this CPU:

* **ESS/s**: one long E-step at the fitted parameters, as the fit runs it (the compiled
  loop of :func:`mixedfx.inference.loop.compiled_iterations`, one iteration of
  ``--draws`` kept draws, 2 chains), timed on its second to fourth calls (compiled,
  chains already burnt in; the fastest of the three, the machine being shared); the
  effective sample size of every random-effect coefficient (``tfp.mcmc.effective_sample_size``,
  across chains, from the first of those calls) per second, the median and the
  smallest over coefficients;
* **fits**: ``MixedEffectsRegressor(..., options=MCEMOptions(e_step=kernel))`` with
  the default stopping rule, the first fit in the process (compilation included) and a
  refit with another seed (compiled code reused): wall seconds and EM iterations.

    python benchmarks/kernels.py                      # all data sets (about 15 minutes here)
    python benchmarks/kernels.py --data sleepstudy
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = {  # name: (formula, E-step draws, family)
    "sleepstudy": ("Reaction ~ Days + (Days | Subject)", 1000, "gaussian"),
    "insteval": ("y ~ service + (1 | s) + (1 | d) + (1 | dept)", 500, "gaussian"),
    # Polya-Gamma augmented Gibbs (mixedfx.inference.polya_gamma) for the logit link
    "cbpp": ("cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", 1000, "binomial"),
    "verbagg": ("r2 ~ Anger + btype + (1 | id) + (1 | item)", 1000, "binomial"),
}
#: Timed E-step calls per kernel (the fastest counts; ESS from the first).
REPEATS = 3
FILES = {"sleepstudy": "sleepstudy.csv", "cbpp": "cbpp.csv", "verbagg": "reform_verbagg.csv"}


def load(name):
    import mixedfx

    if name == "insteval":
        return mixedfx.datasets.load_insteval()
    return pd.read_csv(ROOT / "tests" / "fixtures" / FILES[name], dtype={"id": str, "herd": str})


def fit(name, data, kernel, seed):
    """``(seconds, EM iterations, estimator)`` of one fit."""
    import mixedfx
    from mixedfx.inference import MCEMOptions

    started = time.perf_counter()
    model = mixedfx.MixedEffectsRegressor(DATA[name][0], family=DATA[name][2], method="ml", random_state=seed,
                                          verbose=0, options=MCEMOptions(e_step=kernel)).fit(data)
    return time.perf_counter() - started, model.fit_summary_.n_iter, model


def e_step_ess(estimator, kernel, n_draws):
    """``(seconds, ESS per coefficient)`` of one compiled E-step of ``n_draws`` draws at
    the estimator's parameters (see the module's docstring)."""
    from mixedfx._tf import tf, tfp
    from mixedfx.inference import MCEMOptions, mcem
    from mixedfx.inference.buckets import ShapeBuckets
    from mixedfx.inference.loop import EMState, compiled_iterations
    from mixedfx.inference.structure import location_expansions, nested_centering

    model, _ = estimator.model_.row_scaled()
    params = estimator.model_parameters_
    options = MCEMOptions(e_step=kernel, n_draws=n_draws, iterations_per_call=1)
    expansions, centering = location_expansions(model), nested_centering(model)
    num_levels = tuple(t.num_levels for t in model.random_terms)
    centred = {k for k, p in enumerate(centering.parent) if p is not None} | set(centering.parent)
    buckets = ShapeBuckets.for_sizes(model.n_obs, num_levels, unpadded_terms=centred)
    config = mcem._loop_config(model, options, buckets=buckets, expansions=expansions, centering=centering,
                               reml=False)
    config = dataclasses.replace(config, e_step=kernel, keep_all_draws=True)
    run = compiled_iterations(config)
    rows = mcem._padded_rows(model, buckets)
    data = mcem._fit_tensors(model, buckets=buckets, expansions=expansions, centering=centering, reml=False)
    em = EMState(
        fixed_effects=tf.constant(params.fixed_effects, tf.float64),
        scale_tril=[tf.constant(L, tf.float64) for L in params.random_scale_tril],
        free=tf.constant(model.family.free_from_parameters(params.family_params), tf.float64),
        chains=[tf.zeros([2, q, d], tf.float64) for q, d in zip(config.num_levels, config.dims)],
        step_size=tf.constant(0.5, tf.float64), seed=tf.constant([7, 11], tf.int32))
    warm = run(em, tf.constant(200), data, rows)  # compiles; burns the chains in, adapts HMC's step size
    em = em._replace(chains=[d[0, -1] for d in warm.draws], step_size=warm.em.step_size)
    seconds, draws = [], None
    for repeat in range(REPEATS):  # the fastest of a few calls: the machine is shared
        started = time.perf_counter()
        out = run(em._replace(seed=tf.constant([13 + repeat, 17], tf.int32)), tf.constant(options.n_burnin), data,
                  rows)
        repeat_draws = [d.numpy()[0, :, :, :q] for d, q in zip(out.draws, num_levels)]  # (draw, chain, level, dim)
        seconds.append(time.perf_counter() - started)
        draws = repeat_draws if draws is None else draws
    seconds = min(seconds)
    flat = np.concatenate([d.reshape(d.shape[0], d.shape[1], -1) for d in draws], axis=-1)
    ess = tfp.mcmc.effective_sample_size(tf.constant(flat), cross_chain_dims=1).numpy()
    return seconds, ess


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), nargs="*", default=sorted(DATA))
    parser.add_argument("--draws", type=int, default=None, help="draws of the timed E-step (default per data set)")
    args = parser.parse_args()
    print("| data | kernel | E-step draws | E-step s | ESS median | ESS min | ESS/s median | ESS/s min "
          "| first fit s | refit s | EM iterations (fit, refit) | estimates (refit) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.data:
        data = load(name)
        n_draws = args.draws or DATA[name][1]
        for kernel in ("hmc", "gibbs"):
            first_s, first_iter, _ = fit(name, data, kernel, seed=0)
            refit_s, refit_iter, estimator = fit(name, data, kernel, seed=1)
            seconds, ess = e_step_ess(estimator, kernel, n_draws)
            sds = estimator.variance_components_["sdcor"].to_numpy()
            estimates = ", ".join(f"{v:.4g}" for v in [*estimator.fixed_effects_, *sds])
            print(f"| {name} | {kernel} | {n_draws} | {seconds:.2f} | {np.median(ess):.0f} | {ess.min():.0f} | "
                  f"{np.median(ess) / seconds:.0f} | {ess.min() / seconds:.1f} | {first_s:.1f} | {refit_s:.1f} | "
                  f"{first_iter}, {refit_iter} | {estimates} |", flush=True)


if __name__ == "__main__":
    main()
