"""The fault-injection test hook (``MCEMOptions.fault_injection``, issue #20): a NaN or
inf put into the E-step's chains at a chosen iteration is recovered from as the
divergence recovery promises, or, when every retry is hit, ends in a FitError; never a
NaN estimate."""

from __future__ import annotations

import numpy as np
import pytest

import mixedfx
from mixedfx.inference import MCEMOptions
from mixedfx.inference.faults import FaultInjection

from conftest import SMALL_FORMULA, small_settings


def _fit(frame, **options):
    settings = small_settings(options=MCEMOptions(**options))
    return mixedfx.MixedEffectsRegressor(SMALL_FORMULA, **settings).fit(frame)


@pytest.mark.filterwarnings("ignore::mixedfx.SamplerWarning")
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_injected_fault_is_recovered(small_frame, small_fit, kind):
    clean = small_fit.fit_summary_
    assert clean.n_retries == 0
    summary = _fit(small_frame, fault_injection=(7, kind)).fit_summary_
    # The block holding iteration 7 (iterations 6-10) broke down once and ran again.
    assert summary.n_retries == 1
    assert summary.recoveries[0].startswith("iterations 6-10: non-finite")
    assert summary.n_iter == clean.n_iter == 30
    assert np.all(np.isfinite(summary.estimate)) and np.all(np.isfinite(summary.trace))
    # Same seed, a different path after the retry: the estimates agree within their
    # Monte Carlo error (4 combined standard errors).
    allowed = 4.0 * np.hypot(summary.mcse, clean.mcse)
    assert np.all(np.abs(summary.estimate - clean.estimate) <= allowed), (summary.estimate, clean.estimate, allowed)


def test_fault_hitting_every_retry_ends_in_fit_error(small_frame):
    with pytest.raises(mixedfx.FitError, match=r"iterations 6-10 \(non-finite values of .*2 retries"):
        _fit(small_frame, max_retries=2, fault_injection=(7, "inf", 3))


@pytest.mark.filterwarnings("ignore::mixedfx.SamplerWarning")
def test_fault_in_the_first_block_at_its_first_iteration(small_frame):
    # The very first E-step (chains at zero) poisoned: the first block is rerun.
    summary = _fit(small_frame, fault_injection=(1, "nan")).fit_summary_
    assert summary.n_retries == 1 and summary.recoveries[0].startswith("iterations 1-5:")
    assert np.all(np.isfinite(summary.estimate))


def test_fault_injection_counts_its_hits():
    fault = FaultInjection.from_option((12, "inf", 2))
    assert [fault.iteration_in_call(first=first, length=5) for first in (0, 5, 10, 10, 10, 15)] == [-1, -1, 1, 1, -1, -1]


@pytest.mark.parametrize("option", [(0, "nan"), (3, "zero"), (3, "nan", 0), "nan", (2.5, "inf")])
def test_bad_fault_injection_is_a_parameter_error(small_frame, option):
    with pytest.raises(mixedfx.ParameterError, match="fault_injection"):
        _fit(small_frame, fault_injection=option)
