"""Profile intervals of reduced-rank terms, ``rr(x | g, d = k)``.

``rr`` is profiled on the sds of its coefficients, ``sd(g, coef)`` (glmmTMB's ``VarCorr``
sds), each row of the loadings being its sd times a unit direction, the directions nuisance
coordinates optimized at each point
(:meth:`~mixedfx.model.reduced_rank.ReducedRank.natural_coordinates`).  Checked here: the
coordinates' round trip, ``rr(0 + f | g, d = p)`` against the same model in lme4's spelling
``(0 + f | g)`` (the ``us`` path, which matches lme4's profile: tests/test_profile.py), and a
``d = 1`` profile's ends against a deviance evaluated independently (numpy, the loadings
optimized by scipy from several starts).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from mixedfx.design import RandomTermData
from mixedfx.exceptions import ParameterError
from mixedfx.model import Gaussian, MixedModel, ModelParameters
from mixedfx.model.covariance import structure_for
from mixedfx.model.reduced_rank import ReducedRank
from mixedfx.profile import profile_intervals_at


@pytest.mark.parametrize("dim, rank", [(3, 2), (3, 1), (4, 2)])
def test_rr_natural_coordinates_round_trip(dim, rank):
    """``natural_covariance(natural_values(cov))`` is ``cov`` to 1e-10 for a random rank-``d``
    covariance (with its floor), the values are the sds then each later row's unit direction,
    and :meth:`natural_coordinates` reports the sds only."""
    rr = structure_for("rr", arguments=(("d", str(rank)),))
    rng = np.random.default_rng(dim * 10 + rank)
    rows, cols = rr._slots(dim).T
    cov = rr.covariance(rng.normal(size=len(rows)), dim).numpy()
    values = rr.natural_values(cov)
    coords = rr.natural_coordinates([f"c{k}" for k in range(dim)])
    assert len(values) == len(coords) == dim + sum(min(i + 1, rank) for i in range(1, dim))
    assert [c[:2] for c in coords if len(c) < 4 or c[3]] == [("sd", f"c{k}") for k in range(dim)]
    np.testing.assert_allclose(rr.natural_covariance(values, dim), cov, rtol=0, atol=1e-10 * np.abs(cov).max())
    low_rank = cov - rr.floor * np.trace(cov) / (dim * (1 + rr.floor)) * np.eye(dim)
    np.testing.assert_allclose(values[:dim], np.sqrt(np.diag(low_rank)), rtol=1e-12)
    start = dim
    for i in range(1, dim):  # unit directions, the diagonal of a row above the rank non-negative
        k = min(i + 1, rank)
        direction, start = values[start:start + k], start + k
        assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-12)
        assert i >= rank or direction[-1] >= 0.0


def _simulated(dim: int, rank: int, seed: int = 5, n_groups: int = 40, rows: int = 12):
    """Gaussian data, ``y ~ f + x + rr(0 + f | g, d = rank)`` with ``f`` a factor of ``dim``
    levels and rank-``rank`` effects, every loading on or below the diagonal 0.5 to 1.2 in
    size (no sd near 0, where a rank-1 profile could need another sign); the ``rr`` model, the same
    model in lme4's spelling (``us``) and the simulated values (where a fit starts the
    profile: a rank-1 profile keeps its start's signs)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rows).astype(np.int32)
    f = np.tile(np.arange(rows) % dim, n_groups)
    z = np.eye(dim)[f]
    x = rng.normal(size=g.size)
    X = np.column_stack([np.ones(g.size)] + [f == k for k in range(1, dim)] + [x]).astype(np.float64)
    names = ("Intercept",) + tuple(f"f{k}" for k in range(1, dim)) + ("x",)
    signs = np.where(np.arange(dim)[:, None] == np.arange(rank), 1.0, rng.choice([-1.0, 1.0], size=(dim, rank)))
    loadings = np.tril(rng.uniform(0.5, 1.2, size=(dim, rank)) * signs)
    b = rng.normal(size=(n_groups, rank)) @ loadings.T
    beta = np.r_[1.0, np.linspace(0.3, -0.3, dim - 1), 0.5]
    y = X @ beta + np.sum(z * b[g], axis=1) + 0.7 * rng.normal(size=g.size)
    coefs = tuple(f"c{k}" for k in range(dim))
    rr = MixedModel(Gaussian(), X, y, (RandomTermData("g", g, z, n_groups, coefs, covariance="rr",
                                                      covariance_args=(("d", str(rank)),)),), names)
    us = MixedModel(Gaussian(), X, y, (RandomTermData("g", g, z, n_groups, coefs),), names)
    square = np.column_stack([loadings, np.zeros((dim, dim - rank))])
    start = ModelParameters(beta, (square,), {"sigma": 0.7})
    return rr, us, start


def test_full_rank_rr_profiles_as_its_lme4_spelling():
    """``rr(0 + f | g, d = 3)`` is ``(0 + f | g)``: its sds (profiled on rr's sds and
    directions) have the intervals of the lme4 spelling's (lme4's sds and correlations, its
    fixed effects on lme4's theta), and so do the fixed effects and ``sigma``, to 1e-3 of
    each interval's width (measured: 3e-8 at most)."""
    rr, us, start = _simulated(3, 3)
    which = ["sd(g, c0)", "sd(g, c1)", "sd(g, c2)", "f1", "x", "sigma"]
    got = profile_intervals_at(rr, start, which=which)
    expected = profile_intervals_at(us, start, which=which)
    assert sorted(got.index) == sorted(which)  # the directions are not rows
    for name in which:
        width = np.ptp(expected.loc[name].to_numpy())
        assert width > 0.1
        np.testing.assert_allclose(got.loc[name].to_numpy(), expected.loc[name].to_numpy(), atol=1e-3 * width,
                                   rtol=0, err_msg=name)


def _independent_deviance(model: MixedModel, loadings: np.ndarray, sigma: float) -> float:
    """The ML deviance of ``y ~ X + (0 + f | g)`` with covariance ``loadings loadings'``,
    the fixed effects by GLS, by dense per-group algebra (no mixedfx code)."""
    term = model.random_terms[0]
    X, y, z, g = model.fixed_design, model.response, term.z, term.group_index
    cov = loadings @ loadings.T
    logdet, XVX, XVy, blocks = 0.0, 0.0, 0.0, []
    for level in range(term.num_levels):
        rows = g == level
        V = z[rows] @ cov @ z[rows].T + sigma ** 2 * np.eye(rows.sum())
        chol = np.linalg.cholesky(V)
        wx, wy = np.linalg.solve(chol, X[rows]), np.linalg.solve(chol, y[rows])
        logdet += 2.0 * np.sum(np.log(np.diag(chol)))
        XVX, XVy = XVX + wx.T @ wx, XVy + wx.T @ wy
        blocks.append((wx, wy))
    beta = np.linalg.solve(XVX, XVy)
    quadratic = sum(np.sum((wy - wx @ beta) ** 2) for wx, wy in blocks)
    return float(logdet + quadratic + len(y) * np.log(2.0 * np.pi))


def _independent_minimum(model: MixedModel, held: tuple | None, starts) -> float:
    """The minimum of :func:`_independent_deviance` over rank-1 loadings (glmmTMB's signed
    ``theta``) and ``log sigma`` by BFGS from several starts, loading ``held = (i, value)``
    held at ``value`` in size (its sd), with its sign in each start."""
    best = np.inf
    for start in starts:
        free = [j for j in range(len(start) - 1) if held is None or j != held[0]]

        def objective(u):
            loadings = np.array(start[:-1], dtype=np.float64)
            loadings[free] = u[:-1]
            if held is not None:  # with the start's sign: the starts have every sign pattern
                loadings[held[0]] = held[1] * np.sign(start[held[0]])
            return _independent_deviance(model, loadings[:, None], float(np.exp(u[-1])))

        u0 = np.r_[np.asarray(start[:-1])[free], np.log(start[-1])]
        result = optimize.minimize(objective, u0, method="BFGS", options={"gtol": 1e-7})
        best = min(best, float(result.fun))
    return best


def test_rank_one_rr_profile_ends_are_where_the_deviance_rises_by_chi2():
    """``rr(0 + f | g, d = 1)`` with 3 coefficients: the sds are rows, the directions are
    not; each sd's interval holds its estimate,
    and at each end the deviance evaluated independently (numpy, every other parameter
    re-optimized by BFGS over signed loadings from starts of every sign pattern) is the
    independent minimum plus ``chi2(0.95, 1)``, to 1e-3 (measured: 8e-5 at most)."""
    rr, _, start = _simulated(3, 1, seed=11)
    sds = ["sd(g, c0)", "sd(g, c1)", "sd(g, c2)"]
    table = profile_intervals_at(rr, start, which=sds)
    assert table.index.tolist() == sds
    with pytest.raises(ParameterError, match=r"unknown parameter 'direction1\(g, c1\)'"):
        profile_intervals_at(rr, start, which=["direction1(g, c1)"])  # the directions are not rows
    estimate = np.array([table.attrs["estimate"][name] for name in sds])
    sigma = table.attrs["estimate"]["sigma"]
    starts = [np.r_[estimate * np.r_[1.0, s1, s2], sigma] for s1 in (1.0, -1.0) for s2 in (1.0, -1.0)]
    minimum = _independent_minimum(rr, None, starts)
    signs = np.sign([1.0] + [table.attrs["estimate"][f"direction1(g, c{k})"] for k in (1, 2)])
    at_estimate = _independent_deviance(rr, (signs * estimate)[:, None], sigma)
    assert at_estimate == pytest.approx(minimum, abs=1e-4)  # the profile's optimum is the optimum
    target = stats.chi2.ppf(0.95, 1)
    for i, name in enumerate(sds):
        lower, upper = table.loc[name]
        assert 0.0 < lower < estimate[i] < upper
        for end in (lower, upper):
            rise = _independent_minimum(rr, (i, end), starts) - minimum
            assert rise == pytest.approx(target, abs=1e-3), (name, end, rise)


def test_a_structure_without_natural_coordinates_is_refused():
    """A structure that does not say how its parameters are reported (here ``rr`` with
    :meth:`natural_coordinates` returning ``None``) is refused, naming the term and
    structure and offering the other methods."""

    class Unreported(ReducedRank):
        def natural_coordinates(self, coef_names):
            return None

    g = np.repeat(np.arange(6), 4).astype(np.int32)
    term = RandomTermData("g", g, np.tile(np.eye(2), (12, 1)), 6, ("a", "b"), covariance=Unreported(1))
    model = MixedModel(Gaussian(), np.ones((24, 1)), np.arange(24.0), (term,), ("Intercept",))
    with pytest.raises(ParameterError, match=r"not available for rr\(\.\.\. \| g\): its parameters are not each "
                                             r"one reported sd or correlation; use method='bootstrap' or 'wald'"):
        profile_intervals_at(model, ModelParameters(np.zeros(1), (np.eye(2),), {"sigma": 1.0}))
