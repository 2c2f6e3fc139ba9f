"""Shared fixtures: lme4 reference fits and fitted models, built once per session."""

from __future__ import annotations

import ctypes
import gc
import json
import os
from pathlib import Path

#: XLA's CPU backend maps each separately compiled object of a program (code, read-only
#: data, data) and keeps the maps until the process ends; a pytest-xdist worker that
#: compiles a hundred model structures nears ``vm.max_map_count`` (65,530).  Without the
#: fusion emitters the fusions join the program's main LLVM module instead of one module
#: each, and one codegen part compiles that module as one object: 6 small structures took
#: 213-273 maps each instead of 585-789 (2.6x fewer), with bit-identical estimates and no
#: slower compilation on 2 cores.  Set before TensorFlow compiles anything (XLA reads its
#: flags once); flags given in the environment are kept and win.
_XLA_TEST_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in _XLA_TEST_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
    + [os.environ.get("XLA_FLAGS", "")]).strip()

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedfx
from mixedfx._tf import tf
from mixedfx.model.joint import family_inputs

FIXTURES = Path(__file__).parent / "fixtures"
collect_ignore = ["fixtures"]
#: the doctests' shared names (data, model, mixedfx): see tests/doctest_setup.py
pytest_plugins = ["doctest_setup"]


def pytest_report_header(config):
    """Say which mixedfx the run imports: the installed package under CI (site-packages), or a source tree."""
    return f"mixedfx {mixedfx.__version__}: {Path(mixedfx.__file__).parent}"


#: Seconds each heavy test file took, summed over its tests (the run of 2026-12-06, two
#: pytest-xdist workers on a loaded 2-core machine: relative figures).  The README's
#: command runs files whole (``--dist loadfile``) in two workers, in collection order
#: (``--no-loadscope-reorder``): the heaviest files go first so that the light ones fill
#: the gaps at the end, instead of one worker running test_results.py alone while the
#: other idles (test_results, test_sklearn and test_weights sort last by name).
FILE_SECONDS = {
    "test_results.py": 887, "test_families.py": 643, "test_sklearn.py": 595, "test_marginal_means.py": 407,
    "test_docs.py": 445, "test_reform.py": 360, "test_grammar.py": 352, "test_memory.py": 293,
    "test_battery.py": 288, "test_fuzz.py": 246, "test_persistence.py": 238, "test_lmertest.py": 235,
    "test_weights.py": 231, "test_insteval.py": 225, "test_inference.py": 203, "test_recovery.py": 134,
    "test_profile.py": 116, "test_distributed.py": 106, "test_estimator_statistics.py": 88,
    "test_glmmtmb_families.py": 254,  # alone on a loaded machine: 4 min 14 s
    "test_covariance_structures.py": 250,  # alone on a loaded machine: 3.5 to 4.7 min
    "test_zero_inflation.py": 77,  # alone on a shared machine: 74-81 s, + 3 s (the sliced information)
    "test_hurdle.py": 40,  # alone on a shared machine: 37 s (two hurdle fits at default settings)
    "test_quadrature.py": 60, "test_profile_rr.py": 30,
    "test_hurdle2.py": 95,  # 95 CPU seconds (user + sys); 252 s wall at load average 15 (three hurdle fits)
    "test_dispformula.py": 35,
    "test_dispformula2.py": 90,  # alone on a shared machine: 77-91 s
    "test_spatial_structures.py": 91,  # alone on a shared machine: 90.5 s
    "test_reduced_rank.py": 65,  # alone on a shared machine: 65 s, and 96 s more for the slow d = 2 fit
    "test_glmm_structures.py": 130,  # alone on a shared machine: 127 s with the slow spatial fit
    "test_glmm_structures2.py": 400,  # load average 11: 371 s in pytest (196 CPU s), 23 s without slow
    # test_docs.py: + about 40 s of CPU in a clean clone, the zero-inflation example's two Salamanders fits
    "test_matern.py": 57,  # alone on a shared machine: 47 s in pytest, 57 s wall (one fit, 37 s)
    "test_mcse.py": 100,  # loaded machine: 100-190 s (20 + 1 grouseticks fits 70-123 s, 20 + 1 Gaussian 26-58 s)
    "test_inverse_gaussian.py": 100,  # two fits; load average 15: 100 s in pytest (38 s CPU), 53 s without slow
    "test_zi_random.py": 280,  # 123 s in pytest on a shared machine (load 8 on 2 cores): the estimator's fit 80 s, the grid fit 22 s;
    # + the issue-17 tools: 2-27 s unmarked (shared fit), slow: anova's m0 fit 66-158 s, the sharded subprocess 59-61 s, the bootstrap's 2 refits 10+ s
    "test_zi_random2.py": 160,  # 156 CPU s; load 10-12: 514 s in pytest (fits 244, 113, 84 s), 35 s not slow
    "test_rr_glmm.py": 300,  # CPU s not measured; load average 12: 749 s in pytest; 115 s without slow (the Poisson rr fit 113 s), the slow
    # REML fit 103 s and the slow sharded check (4 fits in a subprocess on 3 logical CPU devices) 521 s
    "test_polya_gamma.py": 180,  # load 13 + a benchmark: 179 s (85 CPU s), 82 s not slow; load 1.5: 41 s, 17 s
    "test_gibbs.py": 94,  # load average 10: 94 s in pytest (57 s without the slow pastes fit), 127 s wall
}


@pytest.fixture(autouse=True, scope="module")
def _return_freed_memory():
    """After each test file, hand the heap memory Python and TensorFlow freed back to the
    operating system (glibc's ``malloc_trim``: about a quarter of what a fit leaves behind,
    1,477 -> 1,286 MB after six sleepstudy structures).  The rest stays: TensorFlow keeps
    every compiled program for the life of the process (see ``--part``)."""
    yield
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


def pytest_addoption(parser):
    parser.addoption(
        "--part", metavar="K/N", default=None,
        help="run the K-th of N parts of the test files (and doctest modules), dealt in turn heaviest first: "
             "the README's command runs the suite as two pytest sessions (--part 1/2, then --part 2/2) because "
             "TensorFlow keeps every compiled program for the life of a process")


def _part_of_files(items, part: str) -> dict:
    """``{file: True}`` for the files in part ``K/N``: the files sorted heaviest first
    (:data:`FILE_SECONDS`, then by name) and dealt to the parts in turn."""
    k, n = (int(v) for v in part.split("/"))
    if not 1 <= k <= n:
        raise pytest.UsageError(f"--part must be K/N with 1 <= K <= N, got {part!r}")
    files = sorted({str(item.fspath) for item in items},
                   key=lambda f: (-FILE_SECONDS.get(Path(f).name, 0), Path(f).name, f))
    return {f: i % n == k - 1 for i, f in enumerate(files)}


def pytest_collection_modifyitems(config, items):
    """Heaviest test files first (:data:`FILE_SECONDS`), the rest in their usual order;
    with ``--part K/N`` only that part's files."""
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-FILE_SECONDS.get(Path(str(item.fspath)).name, 0), position[id(item)]))
    if config.getoption("--part"):
        chosen = _part_of_files(items, config.getoption("--part"))
        config.hook.pytest_deselected(items=[item for item in items if not chosen[str(item.fspath)]])
        items[:] = [item for item in items if chosen[str(item.fspath)]]


def subprocess_env() -> dict:
    """The environment for a child Python that must import the same mixedfx as this run
    (the installed package under CI, the source tree in a developer's run)."""
    root = str(Path(mixedfx.__file__).resolve().parent.parent)
    path = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def caret_column(error) -> int:
    """The column a FormulaError's caret points at, in the formula its message repeats."""
    return str(error).splitlines()[-1].index("^") - 4


def objective_and_record(model, joint, effects, beta, sds, family_params) -> tuple[float, float]:
    """The fit's objective (``joint_log_prob``) and the JointDistribution's ``log_prob`` at
    the same random effects and response, for one-coefficient terms of sds ``sds``."""
    from mixedfx.model import RESPONSE, joint_log_prob

    objective = joint_log_prob(model.tensors(), effects, fixed_effects=beta,
                               random_scale_tril=[np.array([[s]]) for s in sds], family=model.family,
                               family_params=family_params)
    record = joint.log_prob({**{f"g{k}": b for k, b in enumerate(effects)}, RESPONSE: model.response})
    return float(objective), float(record)


class GridMarginal:
    """The exact marginal log-likelihood of a zero-inflated model with one intercept term in
    each linear predictor on the same factor (test_zi_random*.py): the groups are
    independent and each has one effect per linear predictor, so it is a sum over groups
    of 2-D integrals, taken by the trapezoid rule on a grid of the standardized effects
    (81 x 41 points over +-6 sd; the trapezoid rule on a smooth peak converges
    geometrically: 121 x 61 and 241 x 121 points agree to 2e-7) of the density of record's
    rows (family_inputs, the family's log_prob), with its gradient by autodiff.  ``theta``
    is ``(beta (2), zi (2), log sd_cond, log sd_zi[, log dispersion])``."""

    def __init__(self, model, n_cond=81, n_zi=41):
        self.model, self.tensors = model, model.tensors()
        uc, uz = np.linspace(-6, 6, n_cond), np.linspace(-6, 6, n_zi)
        weights = np.outer(stats.norm.pdf(uc) * (uc[1] - uc[0]), stats.norm.pdf(uz) * (uz[1] - uz[0]))
        grid = np.meshgrid(uc, uz, indexing="ij")
        self.nodes = [tf.constant(g.reshape(-1, 1, 1)) for g in grid]
        self.log_weights = tf.constant(np.log(weights).reshape(-1, 1))
        self.group = tf.constant(model.random_terms[0].group_index)
        self.value = tf.function(self._value)

    def _value(self, theta):
        family, q = self.model.family, self.model.random_terms[0].num_levels
        level = tf.ones([1, q, 1], tf.float64)
        effects = [self.nodes[0] * tf.exp(theta[4]) * level, self.nodes[1] * tf.exp(theta[5]) * level]
        params = {"zi": theta[2:4], **({"dispersion": tf.exp(theta[6])} if theta.shape[0] > 6 else {})}
        eta, natural = family_inputs(self.tensors, effects, fixed_effects=theta[:2], family=family,
                                     family_params=params)
        rows = family.log_prob(eta, natural, self.tensors.response, trials=self.tensors.trials)  # [nodes, n]
        per_group = tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(rows), self.group, q))
        return tf.reduce_sum(tf.reduce_logsumexp(per_group + self.log_weights, axis=0))

    def __call__(self, theta):
        """``(minus the log-likelihood, its gradient)`` at ``theta``."""
        theta = tf.constant(theta, tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(theta)
            value = self.value(theta)
        return -float(value), -tape.gradient(value, theta).numpy()


def load_lme4(name: str) -> dict:
    """An lme4 reference fit written by tests/fixtures/make_lme4_fixtures.R."""
    with open(FIXTURES / f"lme4_{name}.json") as handle:
        return json.load(handle)


def lme4_fixed_effects(fixture: dict) -> pd.Series:
    """lme4's fixed effects under formulaic's names ("(Intercept)" -> "Intercept")."""
    return pd.Series({k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects"].items()})


def lme4_fixed_effects_se(fixture: dict) -> pd.Series:
    return pd.Series({k.replace("(Intercept)", "Intercept"): v for k, v in fixture["fixed_effects_se"].items()})


def lme4_sds(fixture: dict) -> pd.Series:
    """Standard deviations by group ("Residual" included)."""
    return pd.Series({row["grp"]: row["sdcor"] for row in fixture["varcorr"]})


def fitted_sds(model) -> pd.Series:
    return model.variance_components_.set_index("group")["sdcor"]


def load_house(name: str) -> dict:
    """An lme4 ML fit (conditional modes included) written by tests/fixtures/make_house_fixtures.R."""
    with open(FIXTURES / "lme4_house.json") as handle:
        return json.load(handle)[name]


def _ranef_key(group: str, level) -> tuple[str, str]:
    """A (grouping factor, level) key that lme4 and mixedfx spell alike: the factors of an
    interaction ("cask:batch" in lme4, "batch:cask" in mixedfx) sorted, the level's pieces with them."""
    factors, pieces = group.split(":"), str(level).split(":")
    order = sorted(range(len(factors)), key=factors.__getitem__)
    return ":".join(factors[i] for i in order), ":".join(pieces[i] for i in order)


def lme4_ranef(fixture: dict, terms: dict | None = None) -> pd.DataFrame:
    """lme4's ``as.data.frame(ranef(fit, condVar = TRUE))``, indexed by (group, term, level);
    ``terms`` renames lme4's coefficient names (``{"fhi": "C(f)[hi]"}``)."""
    rows = [(*_ranef_key(r["grpvar"], r["grp"]), (terms or {}).get(r["term"], r["term"]), r["condval"], r["condsd"])
            for r in fixture["ranef"]]
    frame = pd.DataFrame(rows, columns=["group", "level", "term", "condval", "condsd"])
    return frame.set_index(["group", "term", "level"]).sort_index()


def fitted_ranef(model) -> pd.DataFrame:
    """``model.ranef(condvar=True)`` in :func:`lme4_ranef`'s layout."""
    frame = model.ranef(condvar=True)
    keys = [_ranef_key(g, level) for g, level in zip(frame["group"], frame["level"])]
    frame = frame.assign(group=[k[0] for k in keys], level=[k[1] for k in keys])
    return frame.set_index(["group", "term", "level"])[["condval", "condsd"]].sort_index()


def assert_ranef_match_lme4(model, fixture: dict, *, terms: dict | None = None) -> None:
    """Conditional modes within 0.1 of their conditional sd of lme4's, conditional sds within 3%.

    The fits' sds are within 1-2% of lme4's and their fixed effects within 0.25 SE, so the
    conditional means differ from lme4's by a small fraction of their conditional sd; 0.1 sd
    is that fraction, and a 5% error in the conditional means breaks it.
    """
    ours, theirs = fitted_ranef(model), lme4_ranef(fixture, terms)
    assert list(ours.index) == list(theirs.index)
    distance = (ours["condval"] - theirs["condval"]) / theirs["condsd"]
    assert np.all(np.abs(distance) < 0.1), distance.abs().sort_values().tail()
    np.testing.assert_allclose(ours["condsd"], theirs["condsd"], rtol=0.03)


def assert_draws_centre_on_conditional_means(model, *, z: float = 4.5) -> None:
    """The E-step's draws (``random_effect_draws_``) average to the exact conditional means
    (``random_effects_``) within ``z`` Monte Carlo standard errors (sd / sqrt(ESS), ArviZ's
    ESS of each coefficient over chains and draws)."""
    import arviz

    for group, means in model.random_effects_.items():
        draws = np.asarray(model.random_effect_draws_[group], dtype=float)  # chain, draw, level, coef
        ess = arviz.ess(arviz.convert_to_dataset(draws))["x"].to_numpy()
        mcse = draws.std(axis=(0, 1)) / np.sqrt(ess)
        z_scores = (draws.mean(axis=(0, 1)) - means.to_numpy()) / mcse
        assert np.all(np.abs(z_scores) < z), (group, np.abs(z_scores).max())


def correlation_tolerance(r: float, n_levels: int) -> float:
    """A quarter of a correlation's standard error, (1 - r^2) / sqrt(n_levels): the fixed
    effects' 0.25 SE on the correlation's scale (0.059 for sleepstudy's 0.081 on 18 subjects)."""
    return 0.25 * (1.0 - r**2) / np.sqrt(n_levels)


@pytest.fixture(scope="session")
def crossed_small() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "crossed_small.csv")


@pytest.fixture(scope="session")
def crossed_small_fit(crossed_small):
    return mixedfx.MixedEffectsRegressor("y ~ x + (1 | g1) + (1 | g2)", random_state=0, verbose=0).fit(crossed_small)


@pytest.fixture(scope="session")
def insteval() -> pd.DataFrame:
    return mixedfx.datasets.load_insteval()


def fitted_once_per_run(tmp_path_factory, name: str, fit):
    """``fit()``'s estimator, fitted once per test run and shared by the pytest-xdist workers.

    Under xdist (``--dist loadfile``) the files that use one session fixture may run in
    different workers, and each worker would fit it again.  The first worker to ask fits
    and pickles the estimator (the format :mod:`mixedfx`'s pickling supports, everything
    fitted included) into the run's shared temporary directory; a worker that asks while
    it fits waits on the lock (it would have spent that time fitting the same model) and
    then reads the pickle.  Without xdist it simply fits.  The fits are deterministic
    (fixed ``random_state``), so every worker sees the estimates it would have fitted.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return fit()
    import fcntl
    import pickle

    root = tmp_path_factory.getbasetemp().parent  # shared by the run's workers
    path = root / f"{name}.pickle"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the worker dies)
        if path.exists():
            return pickle.loads(path.read_bytes())
        model = fit()
        partial = path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(model))
        partial.replace(path)
        return model


@pytest.fixture(scope="session")
def insteval_fit(insteval, tmp_path_factory):
    """InstEval, full data, ML, default settings (the acceptance fit): fitted once per run
    (:func:`fitted_once_per_run`; test_insteval, test_results and test_cli use it)."""
    return fitted_once_per_run(tmp_path_factory, "insteval_fit", lambda: mixedfx.MixedEffectsRegressor(
        "y ~ service + (1 | s) + (1 | d) + (1 | dept)", random_state=0).fit(insteval))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: The small Gaussian model the reliability tests share: 120 rows, 12 levels of g, and
#: a fixed design of 3 columns.  Every fit of these shapes reuses one compiled program.
SMALL_FORMULA = "y ~ x + f + (1 | g)"


def small_settings(**overrides) -> dict:
    """Estimator settings of the shared small fits: a fixed schedule of 30 iterations."""
    settings = {"random_state": 0, "verbose": 0,
                "stopping_rule": mixedfx.inference.FixedIterations(n_iter=30, n_average=15)}
    settings.update(overrides)
    return settings


def make_small_frame(seed: int = 0) -> pd.DataFrame:
    """120 rows: y = 1 + 0.5 x + 0.3 [f = b] + b_g + e (sd(g) 0.7, sd(e) 1), and a count."""
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{k:02d}" for k in range(12)], 10)
    x = rng.normal(size=120)
    f = np.where(rng.random(120) < 0.5, "a", "b")
    effects = np.repeat(rng.normal(0.0, 0.7, size=12), 10)
    y = 1.0 + 0.5 * x + 0.3 * (f == "b") + effects + rng.normal(size=120)
    count = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * effects))
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g, "count": count})


@pytest.fixture(scope="session")
def small_frame() -> pd.DataFrame:
    return make_small_frame()


@pytest.fixture(scope="session")
def small_fit(small_frame):
    return mixedfx.MixedEffectsRegressor(SMALL_FORMULA, **small_settings()).fit(small_frame)


# -- emmeans / performance references (tests/fixtures/make_emmeans_fixtures.R) ----------------
@pytest.fixture(scope="session")
def emmeans_reference() -> dict:
    with open(FIXTURES / "emmeans_fixtures.json") as handle:
        return json.load(handle)


#: The fits the emmeans / R² tests compare with R: name -> (data file, formula, family).
EMMEANS_FITS = {
    "cake": ("emmeans_cake.csv", "angle ~ recipe + temperature + (1 | rr)", "gaussian"),
    "cake_interaction": ("emmeans_cake.csv", "angle ~ recipe * temp + (1 | rr)", "gaussian"),
    "sleepstudy": ("sleepstudy.csv", "Reaction ~ Days + (Days | Subject)", "gaussian"),
    "crossed": ("emmeans_crossed.csv", "y ~ trt + x + (1 | g1) + (1 | g2)", "gaussian"),
    "cbpp01": ("emmeans_cbpp01.csv", "y ~ period + (1 | herd)", "bernoulli"),
    "poisson": ("poisson_crossed.csv", "y ~ x + (1 | g1) + (1 | g2)", "poisson"),
    "wine": ("emmeans_wine.csv", "rating ~ temp + contact + (1 | judge)", "ordinal"),
}


@pytest.fixture(scope="session")
def emmeans_fits():
    """Fitted estimators of EMMEANS_FITS, fitted on first use (ML, default settings)."""
    cache = {}

    def get(name):
        if name not in cache:
            path, formula, family = EMMEANS_FITS[name]
            cache[name] = mixedfx.glmer(formula, pd.read_csv(FIXTURES / path), family=family,
                                        random_state=0, verbose=0)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def sleepstudy() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "sleepstudy.csv")


@pytest.fixture(scope="session")
def sleepstudy_reml_fit(sleepstudy):
    """sleepstudy, ``Reaction ~ Days + (Days | Subject)``, REML, default settings."""
    return mixedfx.MixedEffectsRegressor("Reaction ~ Days + (Days | Subject)", method="reml", random_state=0,
                                         verbose=0).fit(sleepstudy)


@pytest.fixture(scope="session")
def cake() -> pd.DataFrame:
    """lme4's cake, unbalanced (written by tests/fixtures/make_lmertest_fixtures.R)."""
    return pd.read_csv(FIXTURES / "cake.csv")


@pytest.fixture(scope="session")
def cake_heat_reml_fit(cake):
    """cake, ``angle ~ recipe * heat + (1 | batch)``, REML, default settings."""
    return mixedfx.MixedEffectsRegressor("angle ~ recipe * heat + (1 | batch)", method="reml", random_state=0,
                                         verbose=0).fit(cake)
