"""lme4's inference toolkit: REML, standard errors, ranef(condVar), anova, confint,
simulate, prediction intervals, the E-step draws and their diagnostics.

References: tests/fixtures/lme4_results.json, written by
tests/fixtures/make_results_fixtures.R (lme4 1.1-31).
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import (FIXTURES, correlation_tolerance, fitted_sds, load_house, lme4_fixed_effects,
                      lme4_fixed_effects_se, lme4_sds)
from scipy import stats

import mixedfx
from mixedfx.inference.mcem import sampler_diagnostics

SLOPES = "Reaction ~ Days + (Days | Subject)"
INSTEVAL = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURES / "lme4_results.json") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def sleepstudy():
    return pd.read_csv(FIXTURES / "sleepstudy.csv")


@pytest.fixture(scope="module")
def slopes(sleepstudy):
    """The sleepstudy slopes model by ML and by REML (tol=0.02, as the grammar fixtures)."""
    return {
        method: mixedfx.MixedEffectsRegressor(SLOPES, method=method, tol=0.02, max_iter=5000, random_state=0,
                                              verbose=0).fit(sleepstudy)
        for method in ("ml", "reml")
    }


def _components(model):
    frame = model.variance_components_
    sds = frame[frame["var2"].isna()]["sdcor"].to_numpy()
    cor = frame[frame["var2"].notna()]["sdcor"].to_numpy()
    return sds, cor


def _lme4_components(fixture):
    sds = np.array([row["sdcor"] for row in fixture["varcorr"] if row["var2"] is None])
    cor = np.array([row["sdcor"] for row in fixture["varcorr"] if row["var2"] is not None])
    return sds, cor


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_sleepstudy_matches_lme4(slopes, reference, method):
    model, fixture = slopes[method], reference[f"sleepstudy_slopes_{method}"]
    assert fixture["method"] == method.upper()
    sds, cor = _components(model)
    ref_sds, ref_cor = _lme4_components(fixture)
    np.testing.assert_allclose(sds, ref_sds, rtol=0.03)
    # the correlation (0.081 ML, 0.066 REML) within a quarter of its standard error on 18 subjects
    np.testing.assert_allclose(cor, ref_cor, atol=correlation_tolerance(ref_cor[0], fixture["n_levels"]["Subject"]))
    distance = (model.fixed_effects_ - lme4_fixed_effects(fixture)) / lme4_fixed_effects_se(fixture)
    assert np.all(np.abs(distance) < 0.25), distance
    se = np.sqrt(np.diag(model.fixed_effects_cov_))
    np.testing.assert_allclose(se, lme4_fixed_effects_se(fixture).to_numpy(), rtol=0.05)
    # The REML criterion (lme4's logLik of a REML fit) or the ML log-likelihood.
    assert model.log_likelihood_ == pytest.approx(fixture["logLik"], abs=0.05)
    assert model.aic_ == pytest.approx(fixture["AIC"], abs=0.1)
    assert model.bic_ == pytest.approx(fixture["BIC"], abs=0.1)
    assert model.fit_summary_.method == method
    assert model.fit_summary_.e_step == "gibbs"  # the Gaussian default kernel (e_step="auto"), recorded


def test_reml_and_ml_differ_as_lme4s_do(slopes, reference):
    """REML's variance estimates are larger than ML's by about lme4's ratio."""
    ml, reml = (_components(slopes[m])[0] for m in ("ml", "reml"))
    ref_ml = _lme4_components(reference["sleepstudy_slopes_ml"])[0]
    ref_reml = _lme4_components(reference["sleepstudy_slopes_reml"])[0]
    np.testing.assert_allclose(reml / ml, ref_reml / ref_ml, rtol=0.02)
    assert "fit by REML" in _summary(slopes["reml"]) and "REML criterion at convergence" in _summary(slopes["reml"])


def _summary(model):
    import io

    buffer = io.StringIO()
    model.summary(file=buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_ranef_condvar_matches_lme4(slopes, reference, method):
    table = slopes[method].ranef(condvar=True)
    theirs = pd.DataFrame(reference[f"sleepstudy_slopes_{method}"]["ranef"])
    assert list(table.columns) == ["group", "term", "level", "condval", "condsd"]
    assert len(table) == len(theirs) == 36
    ours = table.assign(level=table["level"].astype(str)).set_index(["term", "level"])
    theirs = theirs.set_index(["term", "grp"])
    ours = ours.loc[theirs.index]
    np.testing.assert_allclose(ours["condsd"], theirs["condsd"], rtol=0.05)
    # conditional means within a fifth of their conditional sd
    assert np.all(np.abs(ours["condval"] - theirs["condval"]) < 0.2 * theirs["condsd"])
    per_level = slopes[method].random_effects_cov_["Subject"]
    assert per_level.shape == (18, 2, 2)
    np.testing.assert_allclose(np.sqrt(per_level[:, 1, 1]), ours.xs("Days")["condsd"].to_numpy())


def test_anova_refits_reml_with_ml_and_matches_lme4(sleepstudy, slopes, reference):
    small = mixedfx.MixedEffectsRegressor("Reaction ~ Days + (1 | Subject)", method="reml", tol=0.02,
                                          max_iter=5000, random_state=0, verbose=0).fit(sleepstudy)
    table = mixedfx.anova(slopes["reml"], small)  # any order: sorted by npar
    rows = reference["anova_sleepstudy"]["rows"]
    assert table["npar"].tolist() == [row["npar"] for row in rows] == [4, 6]
    assert table["Chisq"].iloc[1] == pytest.approx(rows[1]["Chisq"], abs=0.5)
    assert table["Df"].iloc[1] == 2
    np.testing.assert_allclose(table["logLik"], [row["logLik"] for row in rows], atol=0.05)
    np.testing.assert_allclose(table["AIC"], [row["AIC"] for row in rows], atol=0.1)
    assert table["Pr(>Chisq)"].iloc[1] == pytest.approx(rows[1]["p"], rel=0.5)
    assert np.isnan(table["Chisq"].iloc[0])
    assert len(table.attrs["refitted_with_ML"]) == 2


def test_anova_of_fixed_effects_between_ml_fits(sleepstudy, slopes, reference):
    # a random slope without its fixed mean: Monte Carlo EM needs about 800 iterations here
    intercept_only = mixedfx.MixedEffectsRegressor("Reaction ~ 1 + (Days | Subject)", max_iter=3000, random_state=0,
                                                   verbose=0).fit(sleepstudy)
    table = mixedfx.anova(intercept_only, slopes["ml"], refit=False)
    rows = reference["anova_sleepstudy_fixed"]["rows"]
    assert table["Chisq"].iloc[1] == pytest.approx(rows[1]["Chisq"], abs=0.5)
    assert table["Df"].iloc[1] == 1 and not table.attrs["refitted_with_ML"]


def test_anova_refuses_models_of_other_rows(sleepstudy, slopes):
    other = mixedfx.MixedEffectsRegressor(SLOPES, random_state=0, verbose=0).fit(sleepstudy.iloc[:170])
    with pytest.raises(mixedfx.DataError, match="other rows"):
        mixedfx.anova(slopes["ml"], other)
    with pytest.raises(mixedfx.ParameterError, match="type III table"):
        mixedfx.anova()
    with pytest.raises(mixedfx.ParameterError, match="ddf= is for the type III table of one model"):
        mixedfx.anova(slopes["ml"], other, ddf="satterthwaite")


def test_wald_intervals_match_lme4(slopes, reference):
    table = slopes["ml"].confint()
    assert list(table.columns) == ["2.5 %", "97.5 %"]
    for row in reference["confint_sleepstudy_ml"]["wald"]:
        name = row["parm"].replace("(Intercept)", "Intercept")
        np.testing.assert_allclose(table.loc[name].to_numpy(), [row["lower"], row["upper"]], rtol=0.01)
    assert table.loc["sigma"].isna().all()
    with pytest.raises(mixedfx.ParameterError, match="which= chooses the parameters to profile"):
        slopes["ml"].confint(which=["Days"])


@pytest.mark.slow
def test_bootstrap_intervals_match_lme4s_bootstrap(sleepstudy, reference):
    """Percentile intervals of a parametric bootstrap, against lme4's confint(method =
    "boot", nsim = 1000): endpoints within a quarter of the interval's width (60
    replicates here; the 2.5% quantile of 60 draws has a Monte Carlo sd of about 8% of
    the width)."""
    model = mixedfx.MixedEffectsRegressor(SLOPES, random_state=0, verbose=0).fit(sleepstudy)
    table = model.confint(method="bootstrap", n_boot=60, random_state=1)
    assert table.attrs["n_boot"] == 60 and table.attrs["n_not_converged"] <= 6  # measured: 4
    lme4 = {row["parm"]: (row["lower"], row["upper"])
            for row in reference["confint_sleepstudy_ml"]["bootstrap_percentile"]}
    names = {".sig01": "sd(Subject, (Intercept))", ".sig03": "sd(Subject, Days)", ".sigma": "sigma",
             "(Intercept)": "Intercept", "Days": "Days"}
    estimates = mixedfx.results.parameter_vector(model)
    for parm, name in names.items():
        lower, upper = lme4[parm]
        ours = table.loc[name].to_numpy()
        assert np.all(np.abs(ours - [lower, upper]) < 0.25 * (upper - lower)), (name, ours, (lower, upper))
        assert ours[0] < estimates[name] < ours[1]


def test_simulate_from_the_fitted_model(slopes, sleepstudy):
    model = slopes["ml"]
    simulated = model.simulate(400, random_state=0)
    assert simulated.shape == (180, 400) and list(simulated.columns[:2]) == ["sim_1", "sim_2"]
    # marginal variance of a row with Days = d: z' Sigma z + sigma^2
    cov = model.random_cov_[0].to_numpy()
    sigma = model.variance_components_["sdcor"].iloc[-1]
    for day in (0, 9):
        rows = (sleepstudy["Days"] == day).to_numpy()
        z = np.array([1.0, day])
        expected = np.sqrt(z @ cov @ z + sigma**2)
        assert simulated[rows].to_numpy().std() == pytest.approx(expected, rel=0.1)
        assert simulated[rows].to_numpy().mean() == pytest.approx(
            model.fixed_effects_["Intercept"] + day * model.fixed_effects_["Days"], abs=3.0)
    posterior = model.simulate(400, posterior=True, random_state=0)
    # the posterior predictive centres on each row's fitted value, with about the residual sd
    spread = (posterior.to_numpy() - model.predict(sleepstudy)[:, None]).std()
    assert spread == pytest.approx(np.sqrt(sigma**2 + 12.0**2 / 4), rel=0.25)
    np.testing.assert_allclose(posterior.mean(axis=1), model.predict(sleepstudy), atol=6.0)
    again = model.simulate(3, random_state=5)
    pd.testing.assert_frame_equal(again, model.simulate(3, random_state=5))


def test_simulate_a_classifier_gives_labels():
    data = mixedfx.datasets.make_mixed_data(800, groups={"g": 20}, fixed_effects={"Intercept": 0.2, "x": 1.0},
                                            random_sd={"g": 0.7}, family="bernoulli", random_state=3)
    data["label"] = np.where(data["y"] > 0, "yes", "no")
    model = mixedfx.MixedEffectsClassifier("label ~ x + (1 | g)", random_state=0, verbose=0).fit(data)
    simulated = model.simulate(50, random_state=0)
    assert set(np.unique(simulated.to_numpy())) == {"no", "yes"}
    share = (simulated.to_numpy() == "yes").mean()
    assert share == pytest.approx((data["label"] == "yes").mean(), abs=0.05)


def test_prediction_intervals_cover_new_observations():
    """95% prediction intervals on held-out rows of a known model: seen levels and
    levels never seen in fit (whose effects are unknown) both covered about 95%."""
    data = mixedfx.datasets.make_mixed_data(4000, groups={"g": 200}, fixed_effects={"Intercept": 1.0, "x": 0.5},
                                            random_sd={"g": 1.0}, random_state=11)
    seen = data["g"].isin(data["g"].unique()[:120])
    train = data[seen].sample(frac=0.7, random_state=0)
    test_seen = data[seen].drop(train.index)
    test_new = data[~seen]
    model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", random_state=0, verbose=0).fit(train)
    for rows in (test_seen, test_new):
        interval = model.predict_interval(rows, alpha=0.05)
        covered = ((rows["y"] >= interval["lower"]) & (rows["y"] <= interval["upper"])).mean()
        # rows of one level share its effect: about 80 independent levels per set
        assert 0.90 <= covered <= 0.99, covered
    mean, std = model.predict(test_new, return_std=True)
    # a new level's effect is unknown: its standard error includes sd(g) ~ 1
    assert np.all(std > 0.9) and np.all(std < 1.3)
    _, std_seen = model.predict(test_seen, return_std=True)
    assert np.all(std_seen < 0.5)
    narrow = model.predict_interval(test_seen, kind="mean")
    assert np.all(narrow["upper"] - narrow["lower"] < interval["upper"].iloc[0] - interval["lower"].iloc[0])


def test_poisson_intervals_and_std():
    data = mixedfx.datasets.make_mixed_data(1500, groups={"g": 30}, fixed_effects={"Intercept": 1.0, "x": 0.3},
                                            random_sd={"g": 0.5}, family="poisson", random_state=4)
    model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", family="poisson", random_state=0, verbose=0).fit(data)
    interval = model.predict_interval(data, alpha=0.1)
    # Both tails: the share of counts below the interval and the share above it, each against the
    # probability a Poisson count at the row's fitted mean has of falling there (discreteness makes
    # these smaller than alpha / 2: about 0.003 and 0.012), within 4 binomial standard errors.
    # Both ends: the alpha/2 and 1 - alpha/2 Poisson quantiles at the ends of the mean's interval.
    ends = model.predict_interval(data, alpha=0.1, kind="mean")
    np.testing.assert_array_equal(interval["lower"], stats.poisson.ppf(0.05, ends["lower"]))
    np.testing.assert_array_equal(interval["upper"], stats.poisson.ppf(0.95, ends["upper"]))
    mean, n = interval["fit"].to_numpy(), len(data)
    tails = [((data["y"] < interval["lower"]).mean(), stats.poisson.cdf(interval["lower"] - 1, mean).mean()),
             ((data["y"] > interval["upper"]).mean(), stats.poisson.sf(interval["upper"], mean).mean())]
    for observed, expected in tails:
        assert expected <= 0.05
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1 / n, (observed, expected)
    mean, std = model.predict(data, return_std=True)
    assert np.all(std > 0) and np.all(std < mean)
    with pytest.raises(mixedfx.ParameterError, match="kind"):
        model.predict_interval(data, kind="credible")


def test_draws_diagnostics_and_arviz_round_trip(slopes):
    model = slopes["ml"]
    draws = model.random_effect_draws_["Subject"]
    summary = model.fit_summary_
    assert draws.shape == (summary.n_chains, summary.n_kept_draws, 18, 2)
    assert summary.n_kept_draws >= 4 * summary.n_draws
    assert 0.99 <= summary.rhat < 1.05 + summary.rhat_noise and 0 < summary.rhat_noise < 0.1
    assert summary.ess_min > 20
    assert 0.4 < summary.final_acceptance_rate <= 1.0 and summary.final_step_size > 0
    # the draws centre on the conditional means and spread as the conditional sds
    np.testing.assert_allclose(draws.mean(axis=(0, 1)), model.random_effects_["Subject"], atol=4.0)
    condsd = model.ranef(condvar=True).set_index(["term", "level"])["condsd"]
    np.testing.assert_allclose(draws[..., 0].std(axis=(0, 1)), condsd.xs("(Intercept)").to_numpy(), rtol=0.3)

    import arviz as az

    idata = model.to_arviz()
    posterior = idata.posterior["Subject"]
    assert posterior.dims == ("chain", "draw", "Subject_level", "Subject_coef")
    assert list(posterior.coords["Subject_coef"].values) == ["(Intercept)", "Days"]
    assert list(posterior.coords["Subject_level"].values) == [str(v) for v in model.random_effects_["Subject"].index]
    np.testing.assert_array_equal(posterior.values, draws)
    table = az.summary(idata, kind="diagnostics")
    assert len(table) == 36 and table["r_hat"].max() < 1.2 and table["ess_bulk"].min() > 20


def test_sampler_diagnostics_flag_chains_that_disagree():
    rng = np.random.default_rng(0)
    mixed = rng.standard_normal((2, 200, 30, 1))
    agree = sampler_diagnostics([mixed])
    assert agree["rhat"] < 1.03 and agree["rhat"] < 1.05 + agree["rhat_noise"]
    # independent draws: the chance level of two chains' R-hat is sqrt(1 + 3.84 / 200) - 1
    assert agree["rhat_noise"] == pytest.approx(np.sqrt(1 + 3.841 / 200) - 1, rel=0.3)
    stuck = mixed.copy()
    stuck[1] *= 2.0  # the second chain explores twice the spread
    result = sampler_diagnostics([stuck])
    assert result["rhat"] > 1.1 and result["rhat"] > 1.05 + result["rhat_noise"]
    shifted = mixed.copy()
    shifted[1] += 1.0  # the second chain sits elsewhere
    assert sampler_diagnostics([shifted])["rhat_max"] > 1.5
    assert np.isnan(sampler_diagnostics([mixed[:, :3]])["rhat"])


def test_sampler_diagnostics_by_slices_of_levels_match_all_at_once(monkeypatch):
    """``diagnostic_entries`` bounds the draws per slice of level coefficients (every
    term's side by side, whole levels); the slices' results must be those of all levels
    at once, for the term alone and among others."""
    import mixedfx.inference.mcem as mcem

    rng = np.random.default_rng(1)
    draws = [rng.standard_normal((2, 40, 37, 2)) * np.linspace(0.5, 2.0, 37)[:, None],
             rng.standard_normal((2, 40, 5, 1)) + np.array([[[[0.0]]], [[[0.3]]]])]
    real_ess, calls = mcem.effective_sample_size, []

    def counted(samples, **kwargs):
        calls.append(samples.shape[-1])  # (draw, chain, entries): entries per slice
        return real_ess(samples, **kwargs)

    monkeypatch.setattr(mcem, "effective_sample_size", counted)
    for terms in (draws[:1], draws):
        whole = sampler_diagnostics(terms)
        calls.clear()
        sliced = sampler_diagnostics(terms, diagnostic_entries=2 * 40 * 2 * 4)  # 8 entries: 4 levels of term 0
        # term 0's 37 levels by fours, then its last level with term 1's five (the mean squares' call last)
        assert calls == [8] * 9 + ([2] if len(terms) == 1 else [7]) + [len(terms) + 1]
        assert sliced.keys() == whole.keys()
        for key, value in whole.items():
            assert sliced[key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.parametrize("n_chains", [1, 2, 3])
def test_numpy_diagnostics_are_tfps(n_chains):
    """The NumPy effective sample size and R-hat equal TFP's (``cross_chain_dims`` over the
    chains, not split) on autocorrelated chains that disagree, and on draws with a
    constant entry."""
    from mixedfx._tf import tf, tfp
    from mixedfx.inference.convergence import effective_sample_size, potential_scale_reduction

    rng = np.random.default_rng(7)
    draws = rng.standard_normal((60, n_chains, 4, 2))
    for t in range(1, 60):  # AR(1) chains with coefficient 0.6
        draws[t] += 0.6 * draws[t - 1]
    draws += rng.standard_normal((1, n_chains, 1, 1))  # the chains' means differ
    draws[:, :, 0, 0] = 1.5
    cross = n_chains > 1
    expected = tfp.mcmc.effective_sample_size(tf.constant(draws), cross_chain_dims=1 if cross else None).numpy()
    np.testing.assert_allclose(effective_sample_size(draws, cross_chain=cross), expected, rtol=1e-10)
    if cross:
        expected = tfp.mcmc.potential_scale_reduction(tf.constant(draws), independent_chain_ndims=1).numpy()
        np.testing.assert_allclose(potential_scale_reduction(draws), expected, rtol=1e-10)


def test_fit_warns_when_rhat_exceeds_the_threshold(sleepstudy):
    options = mixedfx.inference.MCEMOptions(rhat_warning=0.5)  # every fit exceeds it
    with pytest.warns(mixedfx.SamplerWarning, match="R-hat"):
        mixedfx.MixedEffectsRegressor(SLOPES, random_state=0, verbose=0, options=options).fit(sleepstudy)
    # and the threshold is the option's: no fit exceeds this one
    options = mixedfx.inference.MCEMOptions(rhat_warning=1e6)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*R-hat", category=mixedfx.SamplerWarning)
        mixedfx.MixedEffectsRegressor(SLOPES, random_state=0, verbose=0, options=options).fit(sleepstudy)


def test_reml_rejected_for_other_families():
    data = mixedfx.datasets.make_mixed_data(300, groups={"g": 10}, family="poisson", random_state=0)
    with pytest.raises(mixedfx.ParameterError, match="Gaussian family only"):
        mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", family="poisson", method="reml").fit(data)
    with pytest.raises(mixedfx.ParameterError, match="method must be"):
        mixedfx.MixedEffectsRegressor("y ~ x + (1 | g)", method="REM").fit(data)


def test_residuals(slopes, sleepstudy):
    model = slopes["reml"]
    residuals = model.residuals()
    np.testing.assert_allclose(residuals, sleepstudy["Reaction"] - model.predict(sleepstudy))
    np.testing.assert_allclose(model.residuals(sleepstudy.head(5)), residuals[:5])
    sigma = model.variance_components_["sdcor"].iloc[-1]
    np.testing.assert_allclose(model.residuals(scaled=True), residuals / sigma)
    quantiles = np.quantile(model.residuals(scaled=True), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(quantiles, model.residual_quantiles_.to_numpy())


def test_results_survive_pickling(slopes, sleepstudy):
    model = slopes["ml"]
    restored = pickle.loads(pickle.dumps(model))
    pd.testing.assert_frame_equal(restored.predict_interval(sleepstudy), model.predict_interval(sleepstudy))
    pd.testing.assert_frame_equal(restored.ranef(condvar=True), model.ranef(condvar=True))


def _crossed(noise_between_h: bool):
    """40 x 10 crossed levels of g and h (tests/fixtures/make_house_data.py); without noise
    between the levels of h, lme4 fits sd(h) = 0."""
    data = pd.read_csv(FIXTURES / "singular_crossed.csv")
    return data.assign(y=data["y_positive" if noise_between_h else "y_singular"])


def test_singular_fit_is_detected_and_reported():
    """Against lme4 (tests/fixtures/make_house_fixtures.R): sd(h) 0, isSingular TRUE."""
    reference = load_house("singular_crossed")
    assert reference["is_singular"]
    data = _crossed(False)
    model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g) + (1 | h)", random_state=0, verbose=0).fit(data)
    sds, ref_sds = fitted_sds(model), lme4_sds(reference)
    assert sds["h"] == 0.0 == ref_sds["h"]
    assert sds["g"] == pytest.approx(ref_sds["g"], rel=0.03)
    assert sds["Residual"] == pytest.approx(ref_sds["Residual"], rel=0.03)
    assert model.log_likelihood_ == pytest.approx(reference["logLik"], abs=0.05)
    assert model.fit_summary_.at_boundary == ("sd(h)",) and model.fit_summary_.is_singular
    assert "singular" in _summary(model)
    # Converged to the boundary and flagged, with every output finite (no 0/0 from the zero sd).
    assert model.fit_summary_.converged and model.fit_summary_.n_retries == 0
    assert np.all(np.isfinite(model.fixed_effects_)) and np.all(np.isfinite(model.fixed_effects_cov_.to_numpy()))
    assert np.all(model.random_effects_["h"].to_numpy() == 0.0)
    assert np.all(np.isfinite(model.predict(data))) and np.all(np.isfinite(model.ranef(condvar=True)["condsd"]))


def test_small_but_positive_variance_is_not_singular():
    """Against lme4 (tests/fixtures/make_house_fixtures.R): sd(h) 0.084, isSingular FALSE."""
    reference = load_house("positive_crossed")
    assert not reference["is_singular"]
    model = mixedfx.MixedEffectsRegressor("y ~ x + (1 | g) + (1 | h)", random_state=0, verbose=0).fit(_crossed(True))
    assert fitted_sds(model)["h"] == pytest.approx(lme4_sds(reference)["h"], abs=0.03)
    assert not model.fit_summary_.is_singular
    assert model.log_likelihood_ == pytest.approx(reference["logLik"], abs=0.05)


@pytest.mark.slow
def test_singular_bernoulli_fit_is_detected_as_glmer_does():
    """Against glmer (tests/fixtures/make_singular_glmm_fixtures.R): no variation between
    the levels of h; glmer ends singular with sd(h) = 0.  Monte Carlo EM leaves sd(h) at
    0.06, above the Gaussian family's candidate bound: the Laplace test moves it to zero."""
    reference = json.loads((FIXTURES / "glmm_singular_bernoulli.json").read_text())
    assert reference["is_singular"] and reference["sd"]["h"] == 0.0
    data = pd.read_csv(FIXTURES / "singular_bernoulli.csv")
    model = mixedfx.MixedEffectsClassifier(reference["formula"], random_state=0, verbose=0).fit(data)
    assert model.fit_summary_.at_boundary == ("sd(h)",) and model.fit_summary_.is_singular
    sds = fitted_sds(model)
    assert sds["h"] == 0.0 and sds["g"] == pytest.approx(reference["sd"]["g"], rel=0.03)
    assert model.fixed_effects_["x"] == pytest.approx(reference["fixed_effects"]["x"], rel=0.03)
    assert model.log_likelihood_laplace_ == pytest.approx(reference["logLik"], abs=0.01)


@pytest.mark.slow
def test_insteval_reml_matches_lme4(insteval, reference):
    fixture = reference["insteval_reml"]
    model = mixedfx.MixedEffectsRegressor(INSTEVAL, method="reml", random_state=0, verbose=0).fit(insteval)
    sds, ref = fitted_sds(model), lme4_sds(fixture)
    assert ref["dept"] == pytest.approx(0.083138, abs=1e-6) and ref["Residual"] == pytest.approx(1.177498, abs=1e-6)
    for group, tolerance in (("s", 0.02), ("d", 0.02), ("Residual", 0.02), ("dept", 0.10)):
        assert sds[group] == pytest.approx(ref[group], rel=tolerance), (group, sds[group], ref[group])
    distance = (model.fixed_effects_ - lme4_fixed_effects(fixture)) / lme4_fixed_effects_se(fixture)
    assert np.all(np.abs(distance) < 0.25), distance
    np.testing.assert_allclose(np.sqrt(np.diag(model.fixed_effects_cov_)), lme4_fixed_effects_se(fixture), rtol=0.05)
    assert model.log_likelihood_ == pytest.approx(fixture["logLik"], abs=1.0)


@pytest.mark.slow
def test_insteval_ml_standard_errors_match_lme4(insteval_fit):
    from conftest import load_lme4

    fixture = load_lme4("insteval_ml")
    np.testing.assert_allclose(np.sqrt(np.diag(insteval_fit.fixed_effects_cov_)), lme4_fixed_effects_se(fixture),
                               rtol=0.05)


def test_profiled_gaussian_quantities_match_a_direct_evaluation_at_gls(slopes):
    """gaussian_marginal(profile_fixed_effects=True) from any fixed effects equals the
    plain evaluation at the GLS estimate (what the REML fit reports)."""
    import dataclasses

    from mixedfx.model import gaussian_marginal

    model = slopes["reml"]
    params = model.model_parameters_
    moved = dataclasses.replace(params, fixed_effects=params.fixed_effects + np.array([3.0, -1.0]))
    profiled = gaussian_marginal(model.model_, moved, profile_fixed_effects=True)
    direct = gaussian_marginal(model.model_, params)
    np.testing.assert_allclose(profiled.gls_fixed_effects, params.fixed_effects, atol=1e-9)
    assert profiled.log_likelihood == pytest.approx(direct.log_likelihood, abs=1e-9)
    assert profiled.reml_log_likelihood == pytest.approx(model.log_likelihood_, abs=1e-9)
    np.testing.assert_allclose(profiled.conditional_means[0], direct.conditional_means[0], atol=1e-9)
    np.testing.assert_allclose(profiled.conditional_means[0], model.random_effects_["Subject"].to_numpy(), atol=1e-9)
