"""Data sets: InstEval, shipped inside the package, and a simulator.

Nothing is downloaded.

>>> import mixedfx
>>> mixedfx.datasets.load_insteval().columns.tolist()
['s', 'd', 'studage', 'lectage', 'service', 'dept', 'y']
>>> mixedfx.datasets.make_mixed_data(50, groups={"g": 5}, random_state=0).columns.tolist()
['y', 'g']
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pandas as pd

from mixedfx.exceptions import ParameterError

__all__ = ["load_insteval", "make_mixed_data"]


def load_insteval() -> pd.DataFrame:
    """University lecture evaluations by students at ETH Zurich (lme4's ``InstEval``).

    73,421 ratings of 1,128 lecturers (``d``) by 2,972 students (``s``), from
    lme4's copy of the data, shipped compressed inside mixedfx.

    Returns
    -------
    pandas.DataFrame
        A new frame on every call, with columns

        * ``s``: student, categorical;
        * ``d``: lecturer, categorical;
        * ``studage``: student's semester of study (2, 4, 6, 8), ordered categorical;
        * ``lectage``: years since the lecture was first given (1-6), ordered
          categorical;
        * ``service``: 1 if the lecture is taught for another department, int;
        * ``dept``: department of the lecture, categorical (14 levels);
        * ``y``: rating from 1 (poor) to 5 (very good), int.

    Examples
    --------
    >>> from mixedfx.datasets import load_insteval
    >>> data = load_insteval()
    >>> data.shape
    (73421, 7)
    >>> int(data["s"].cat.categories.size), int(data["d"].cat.categories.size), int(data["dept"].nunique())
    (2972, 1128, 14)
    """
    path = resources.files("mixedfx.datasets").joinpath("data/insteval.csv.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        frame = pd.read_csv(text)
    for column in ("s", "d", "dept"):
        frame[column] = pd.Categorical(frame[column], categories=np.sort(frame[column].unique()))
    for column in ("studage", "lectage"):
        frame[column] = pd.Categorical(frame[column], categories=np.sort(frame[column].unique()), ordered=True)
    frame["service"] = frame["service"].astype(np.int64)
    frame["y"] = frame["y"].astype(np.int64)
    return frame


def make_mixed_data(
    n_rows: int,
    *,
    groups: dict[str, int],
    fixed_effects: dict[str, float] | None = None,
    random_sd: dict[str, float] | None = None,
    noise_sd: float = 1.0,
    family: str = "gaussian",
    trials: int = 10,
    dispersion: float = 2.0,
    cutpoints=(-1.0, 0.0, 1.0),
    return_effects: bool = False,
    random_state=None,
):
    """Simulate data from a mixed model with crossed random intercepts.

    Rows are assigned to the levels of each grouping factor independently and
    uniformly, so the factors are crossed.  Numeric covariates named in
    ``fixed_effects`` (other than ``"Intercept"``) are standard normal.  The linear
    predictor ``eta`` is the fixed part plus the random intercepts; the response is

    * ``"gaussian"``: ``eta`` plus Normal noise of sd ``noise_sd``;
    * ``"bernoulli"``: 0/1 with probability ``logistic(eta)``;
    * ``"binomial"``: columns ``successes`` and ``failures`` out of ``trials`` per row
      (uniform between 1 and ``trials``), probability ``logistic(eta)``;
    * ``"poisson"``: counts with mean ``exp(eta)``;
    * ``"negative_binomial"``: counts with mean ``exp(eta)`` and variance
      ``mu + mu^2 / dispersion``;
    * ``"ordinal"``: categories ``0..K-1`` with ``P(y <= k) = logistic(cutpoints[k] - eta)``
      (the fixed effects should then have no intercept).

    Parameters
    ----------
    n_rows : int
    groups : dict of str to int
        Grouping factor names and their numbers of levels.
    fixed_effects : dict of str to float, optional
        True coefficients; default ``{"Intercept": 0.0}``.
    random_sd : dict of str to float, optional
        True random-intercept sds per factor; default 1.0 for each.
    noise_sd : float, default 1.0
        Residual sd (gaussian).
    family : {"gaussian", "bernoulli", "binomial", "poisson", "negative_binomial", "ordinal"}
    trials : int, default 10
        Largest number of trials per row (binomial).
    dispersion : float, default 2.0
        Negative binomial dispersion.
    cutpoints : sequence of float, default (-1, 0, 1)
        Ordinal cutpoints (``K - 1`` of them).
    return_effects : bool, default False
        Also return the true random effects.
    random_state : int or None

    Returns
    -------
    data : pandas.DataFrame
        Columns ``y`` (or ``successes`` and ``failures``), the covariates, and one
        categorical column per factor with levels ``"<factor><number>"``.
    effects : dict of str to pandas.Series
        The true random effects by level (only with ``return_effects=True``).

    Examples
    --------
    >>> from mixedfx.datasets import make_mixed_data
    >>> data = make_mixed_data(100, groups={"a": 5, "b": 4}, fixed_effects={"Intercept": 1.0, "x": 2.0},
    ...                        random_state=0)
    >>> sorted(data.columns)
    ['a', 'b', 'x', 'y']
    >>> counts = make_mixed_data(50, groups={"a": 5}, family="poisson", random_state=0)
    >>> bool((counts["y"] >= 0).all()), counts["y"].dtype.kind
    (True, 'i')
    """
    families = ("gaussian", "bernoulli", "binomial", "poisson", "negative_binomial", "ordinal")
    if family not in families:
        raise ParameterError(f"family must be one of {families}, got {family!r}")
    if not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise ParameterError(f"n_rows must be a positive integer, got {n_rows!r}")
    rng = np.random.default_rng(random_state)
    fixed_effects = {"Intercept": 0.0} if fixed_effects is None else dict(fixed_effects)
    random_sd = {name: 1.0 for name in groups} if random_sd is None else dict(random_sd)
    columns: dict[str, object] = {}
    eta = np.full(n_rows, float(fixed_effects.pop("Intercept", 0.0)))
    for name, coefficient in fixed_effects.items():
        values = rng.standard_normal(n_rows)
        columns[name] = values
        eta += coefficient * values
    effects = {}
    for name, num_levels in groups.items():
        if num_levels < 2:
            raise ParameterError(f"factor {name!r} needs at least 2 levels, got {num_levels}")
        width = len(str(num_levels - 1))
        labels = [f"{name}{i:0{width}d}" for i in range(num_levels)]
        index = rng.integers(0, num_levels, size=n_rows)
        level_effects = rng.normal(scale=random_sd.get(name, 1.0), size=num_levels)
        eta += level_effects[index]
        columns[name] = pd.Categorical.from_codes(index, categories=labels)
        effects[name] = pd.Series(level_effects, index=pd.Index(labels, name=name))
    probability = 1.0 / (1.0 + np.exp(-eta))
    if family == "gaussian":
        response = {"y": eta + rng.normal(scale=noise_sd, size=n_rows)}
    elif family == "bernoulli":
        response = {"y": (rng.uniform(size=n_rows) < probability).astype(np.int64)}
    elif family == "binomial":
        n_trials = rng.integers(1, trials + 1, size=n_rows)
        successes = rng.binomial(n_trials, probability)
        response = {"successes": successes, "failures": n_trials - successes}
    elif family == "poisson":
        response = {"y": rng.poisson(np.exp(eta))}
    elif family == "negative_binomial":
        mean = np.exp(eta)
        response = {"y": rng.negative_binomial(dispersion, dispersion / (dispersion + mean))}
    else:
        cuts = np.asarray(cutpoints, dtype=np.float64)
        latent = eta + rng.logistic(size=n_rows)
        response = {"y": np.searchsorted(cuts, latent).astype(np.int64)}
    data = pd.DataFrame({**response, **columns})
    return (data, effects) if return_effects else data
