"""Data sets: InstEval, shipped inside the package, and a simulator.

Nothing is downloaded.
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
    return_effects: bool = False,
    random_state=None,
):
    """Simulate data from a mixed model with crossed random intercepts.

    Rows are assigned to the levels of each grouping factor independently and
    uniformly, so the factors are crossed.  Numeric covariates named in
    ``fixed_effects`` (other than ``"Intercept"``) are standard normal.

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
        Residual sd.
    family : {"gaussian"}, default "gaussian"
    return_effects : bool, default False
        Also return the true random effects.
    random_state : int or None

    Returns
    -------
    data : pandas.DataFrame
        Columns ``y``, the covariates, and one categorical column per factor with
        levels ``"<factor><number>"``.
    effects : dict of str to pandas.Series
        The true random effects by level (only with ``return_effects=True``).

    Examples
    --------
    >>> from mixedfx.datasets import make_mixed_data
    >>> data = make_mixed_data(100, groups={"a": 5, "b": 4}, fixed_effects={"Intercept": 1.0, "x": 2.0},
    ...                        random_state=0)
    >>> sorted(data.columns)
    ['a', 'b', 'x', 'y']
    """
    if family != "gaussian":
        raise ParameterError(f"make_mixed_data simulates family='gaussian' only, got {family!r}")
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
    y = eta + rng.normal(scale=noise_sd, size=n_rows)
    data = pd.DataFrame({"y": y, **columns})
    return (data, effects) if return_effects else data
