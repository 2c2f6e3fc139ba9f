"""The TFP "Linear Mixed Effects Models" tutorial's algorithm, reimplemented faithfully.

This is the baseline mixedfx is measured against: what a user gets by following the
tutorial.  Kept as published, including its faults:

* the residual sd is fixed at 1 instead of estimated;
* the E-step is one HMC step (step size 0.015, 3 leapfrog steps, no adaptation) per
  call of a ``tf.function`` from a Python loop;
* the M-step is one Adam step (learning rate 0.01) on ``-log p(y, b | theta)`` after
  every 5 HMC steps;
* 1,000 warm-up HMC steps, then 1,500 EM iterations, in float32;
* standard deviations as ``tfp.util.TransformedVariable`` with an ``Exp`` bijector,
  started at 1; intercept and service effect started at 0.

Only the data differ: the whole of InstEval instead of an 80% split, so that the
estimates can be compared with lme4's on the same rows.
"""

from __future__ import annotations

import time

import numpy as np


def fit_tutorial(students, instructors, departments, service, ratings, *, num_warmup_iters=1000,
                 num_iters=1500, seed=42, log_every=0):
    """Run the tutorial's MCEM; returns estimates, timings and the loss history.

    Parameters
    ----------
    students, instructors, departments : array of int
        Zero-based codes.
    service : array of 0/1
    ratings : array of float
    num_warmup_iters, num_iters : int
        The tutorial's 1,000 and 1,500.
    """
    from mixedfx._tf import tf, tfb, tfd, tfp

    tf.random.set_seed(seed)
    features = {
        "students": tf.constant(students, tf.int32),
        "instructors": tf.constant(instructors, tf.int32),
        "departments": tf.constant(departments, tf.int32),
        "service": tf.constant(service, tf.float32),
    }
    labels = tf.constant(ratings, tf.float32)
    num_students = int(np.max(students)) + 1
    num_instructors = int(np.max(instructors)) + 1
    num_departments = int(np.max(departments)) + 1

    class LinearMixedEffectModel(tf.Module):
        def __init__(self):
            self._intercept = tf.Variable(0.0, name="intercept")
            self._effect_service = tf.Variable(0.0, name="effect_service")
            self._stddev_students = tfp.util.TransformedVariable(1.0, bijector=tfb.Exp(), name="stddev_students")
            self._stddev_instructors = tfp.util.TransformedVariable(1.0, bijector=tfb.Exp(), name="stddev_instructors")
            self._stddev_departments = tfp.util.TransformedVariable(1.0, bijector=tfb.Exp(), name="stddev_departments")

        def __call__(self, features):
            # The tutorial's MultivariateNormalDiag(scale_identity_multiplier=sd) is gone
            # from TFP 0.25; Independent(Normal(0, sd)) is the same distribution and, like
            # the original, keeps the TransformedVariable deferred so gradients reach it.
            model = tfd.JointDistributionSequential([
                tfd.Independent(tfd.Normal(loc=tf.zeros(num_students), scale=self._stddev_students), 1),
                tfd.Independent(tfd.Normal(loc=tf.zeros(num_instructors), scale=self._stddev_instructors), 1),
                tfd.Independent(tfd.Normal(loc=tf.zeros(num_departments), scale=self._stddev_departments), 1),
                lambda effect_departments, effect_instructors, effect_students: tfd.Independent(
                    tfd.Normal(
                        loc=(self._effect_service * features["service"]
                             + tf.gather(effect_students, features["students"], axis=-1)
                             + tf.gather(effect_instructors, features["instructors"], axis=-1)
                             + tf.gather(effect_departments, features["departments"], axis=-1)
                             + self._intercept),
                        scale=1.0),
                    reinterpreted_batch_ndims=1),
            ])
            model._to_track = self
            return model

    lmm = LinearMixedEffectModel()
    lmm_train = lmm(features)
    trainable_variables = lmm_train.trainable_variables

    def target_log_prob_fn(*x):
        return lmm_train.log_prob(x + (labels,))

    current_state = lmm_train.sample(seed=seed)[:-1]
    hmc = tfp.mcmc.HamiltonianMonteCarlo(target_log_prob_fn=target_log_prob_fn, step_size=0.015,
                                         num_leapfrog_steps=3)
    kernel_results = hmc.bootstrap_results(current_state)

    @tf.function(autograph=False, jit_compile=False)
    def one_e_step(current_state, kernel_results):
        return hmc.one_step(current_state=current_state, previous_kernel_results=kernel_results)

    optimizer = tf.optimizers.Adam(learning_rate=0.01)

    @tf.function(autograph=False, jit_compile=False)
    def one_m_step(current_state):
        with tf.GradientTape() as tape:
            loss = -target_log_prob_fn(*current_state)
        grads = tape.gradient(loss, trainable_variables)
        optimizer.apply_gradients(zip(grads, trainable_variables))
        return loss

    started = time.perf_counter()
    num_accepted = 0
    for t in range(num_warmup_iters):
        current_state, kernel_results = one_e_step(current_state, kernel_results)
        num_accepted += int(kernel_results.is_accepted.numpy())
    warmup_acceptance = num_accepted / max(num_warmup_iters, 1)
    loss_history = np.zeros(num_iters)
    num_accepted = 0
    for t in range(num_iters):
        for _ in range(5):
            current_state, kernel_results = one_e_step(current_state, kernel_results)
        loss_history[t] = one_m_step(current_state).numpy()
        num_accepted += int(kernel_results.is_accepted.numpy())
        if log_every and (t % log_every == 0 or t == num_iters - 1):
            print(f"tutorial iteration {t:4d}  loss {loss_history[t]:.1f}")
    elapsed = time.perf_counter() - started
    return {
        "Intercept": float(lmm._intercept.numpy()),
        "service": float(lmm._effect_service.numpy()),
        "sd(s)": float(lmm._stddev_students.numpy()),
        "sd(d)": float(lmm._stddev_instructors.numpy()),
        "sd(dept)": float(lmm._stddev_departments.numpy()),
        "sigma": 1.0,
        "seconds": elapsed,
        "hmc_steps": num_warmup_iters + 5 * num_iters,
        "warmup_acceptance": warmup_acceptance,
        "acceptance": num_accepted / max(num_iters, 1),
        "loss_history": loss_history,
    }
