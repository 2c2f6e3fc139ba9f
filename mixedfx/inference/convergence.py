"""Effective sample size and R-hat of kept draws, in NumPy.

The same estimators as :func:`tfp.mcmc.effective_sample_size` (``cross_chain_dims``
over the chains, truncated at the first negative autocorrelation, TFP's default
``filter_threshold=0``) and :func:`tfp.mcmc.potential_scale_reduction` (chains not
split), to float rounding; ``tests/test_results.py`` holds them to TFP's.  They run once
per fit on arrays already in NumPy, where TensorFlow's eager execution cost a fresh
process 0.8 s on InstEval (the first call of each eager kernel) and 0.1 s thereafter.
"""

from __future__ import annotations

import numpy as np

__all__ = ["effective_sample_size", "potential_scale_reduction"]


def effective_sample_size(states: np.ndarray, *, cross_chain: bool = True) -> np.ndarray:
    """Effective sample size of draws ``(draw, chain, ...)``, all chains together.

    With ``cross_chain`` the chains' autocorrelations are combined as Vehtari et al.
    (2021, eq. 10) do, so that chains that disagree count for less; without it each
    chain's ESS is returned, shape ``(chain, ...)``.  The autocorrelation sum stops at
    the first negative lag.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference.convergence import effective_sample_size
    >>> draws = np.random.default_rng(0).standard_normal((400, 2, 3))  # independent draws
    >>> bool(np.all(np.abs(effective_sample_size(draws) / 800 - 1) < 0.25))
    True
    """
    states = np.asarray(states, dtype=np.float64)
    n = states.shape[0]
    centred = states - states.mean(axis=0)
    size = int(2 ** np.ceil(np.log2(2 * n)))  # zero padding: no wrap-around
    spectrum = np.fft.rfft(centred, n=size, axis=0)
    lags = np.arange(n, dtype=np.float64).reshape((-1,) + (1,) * (states.ndim - 1))
    auto_cov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:n] / (n - lags)
    with np.errstate(invalid="ignore", divide="ignore"):
        if cross_chain:
            between = np.var(states.mean(axis=0), axis=0, ddof=1)  # B / N
            within = auto_cov[0].mean(axis=0)  # W (N - 1) / N
            auto_corr = 1.0 - (within - auto_cov.mean(axis=1)) / (within + between)
            n_chains = states.shape[1]
        else:
            auto_corr = auto_cov / auto_cov[:1]
            n_chains = 1
        weighted = (n - lags.reshape((-1,) + (1,) * (auto_corr.ndim - 1))) / n * auto_corr
        mask = np.maximum(1.0 - np.cumsum(auto_corr < 0.0, axis=0), 0.0)
        return n_chains * n / (-1.0 + 2.0 * np.sum(weighted * mask, axis=0))


def potential_scale_reduction(states: np.ndarray) -> np.ndarray:
    """Gelman and Rubin's R-hat of draws ``(draw, chain, ...)``, the chains compared
    whole (not split in halves): about 1 when they agree.

    Examples
    --------
    >>> import numpy as np
    >>> from mixedfx.inference.convergence import potential_scale_reduction
    >>> draws = np.random.default_rng(0).standard_normal((400, 2, 1))
    >>> shifted = draws + np.array([0.0, 3.0])[:, None]  # the second chain elsewhere
    >>> bool(potential_scale_reduction(draws)[0] < 1.01), bool(potential_scale_reduction(shifted)[0] > 2)
    (True, True)
    """
    states = np.asarray(states, dtype=np.float64)
    n, m = states.shape[:2]
    between = np.var(states.mean(axis=0), axis=0, ddof=1)  # B / N
    within = np.var(states, axis=0, ddof=1).mean(axis=0)  # W
    with np.errstate(invalid="ignore", divide="ignore"):
        return (m + 1.0) / m * ((n - 1.0) / n * within + between) / within - (n - 1.0) / (m * n)
