"""Shape buckets: data of similar sizes share one compiled program.

XLA compiles a program for every distinct set of tensor shapes, and compiling the
Monte Carlo EM loop costs seconds, far more than fitting a small data set with it.
Cross-validation folds, bootstrap refits, grid searches and the data sets of a test
suite differ by a few rows or levels each, so :func:`fit_mcem` pads the rows and the
levels of each random term up to a *bucket* size, with a 0/1 weight per row and per
level that masks the padding out of every sum: padded rows have zero design and weight,
and the first row's response and trials; padded levels have no rows, and their effects, which the E-step draws
from the prior, are left out of the M-step's statistics and of every output.

Bucket sizes are powers of two up to a limit, then eighth-octave steps
(``8, 9, ..., 15`` times a power of two), so the padding costs at most 12.5 % of the
work where the work is large, and small problems, whose running time is negligible
next to their compile time, fall into few buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ShapeBuckets", "bucket_size"]

#: Rows: powers of two up to this many, eighth-octave steps above.
ROWS_COARSE_LIMIT = 16384
#: Fewest rows a fit is padded to.
ROWS_MINIMUM = 128
#: Levels of a random term: powers of two up to this many, eighth-octave steps above.
LEVELS_COARSE_LIMIT = 1024
#: Fewest levels a term is padded to.
LEVELS_MINIMUM = 8


def bucket_size(n: int, *, minimum: int = 1, coarse_limit: int = 0) -> int:
    """The bucket that ``n`` items are padded to.

    Parameters
    ----------
    n : int
        Number of items (rows or levels).
    minimum : int, default 1
        The smallest bucket.
    coarse_limit : int, default 0
        Up to this size buckets are powers of two; above it, eighth-octave steps
        ``m * 2**k`` with ``m`` in ``8..15`` (padding at most 12.5 %).

    Returns
    -------
    int
        The smallest bucket at least ``max(n, minimum)``.

    Examples
    --------
    >>> from mixedfx.inference.buckets import bucket_size
    >>> [bucket_size(n, minimum=8, coarse_limit=1024) for n in (3, 30, 1000, 1128, 2972, 73421)]
    [8, 32, 1024, 1152, 3072, 73728]
    """
    n = max(int(n), int(minimum), 1)
    power = 1 << (n - 1).bit_length()  # the smallest power of two >= n
    if power <= coarse_limit or power <= 16:
        return power
    step = power // 16  # eighth-octave steps between power/2 and power
    return -(-n // step) * step


@dataclass(frozen=True)
class ShapeBuckets:
    """The padded sizes of a fit.

    Attributes
    ----------
    n_rows : int
        Rows of the data.
    padded_rows : int
    num_levels : tuple of int
        Levels of each random term.
    padded_levels : tuple of int
        Per term; a term in a nested (centred) chain is not padded.

    Examples
    --------
    >>> from mixedfx.inference.buckets import ShapeBuckets
    >>> buckets = ShapeBuckets.for_sizes(600, (30, 5), unpadded_terms=(1,))
    >>> buckets.padded_rows, buckets.padded_levels
    (1024, (32, 5))
    >>> float(buckets.row_weight().sum()), buckets.level_weight(0)[28:].tolist()
    (600.0, [1.0, 1.0, 0.0, 0.0])
    """

    n_rows: int
    padded_rows: int
    num_levels: tuple[int, ...]
    padded_levels: tuple[int, ...]

    @classmethod
    def for_sizes(cls, n_rows: int, num_levels, *, unpadded_terms=()) -> ShapeBuckets:
        """Bucket ``n_rows`` rows and each term's levels (``unpadded_terms`` keep theirs)."""
        num_levels = tuple(int(q) for q in num_levels)
        padded = tuple(
            q if k in unpadded_terms else bucket_size(q, minimum=LEVELS_MINIMUM, coarse_limit=LEVELS_COARSE_LIMIT)
            for k, q in enumerate(num_levels)
        )
        rows = bucket_size(n_rows, minimum=ROWS_MINIMUM, coarse_limit=ROWS_COARSE_LIMIT)
        return cls(n_rows=int(n_rows), padded_rows=rows, num_levels=num_levels, padded_levels=padded)

    def pad_rows(self, values: np.ndarray | None, fill=0) -> np.ndarray | None:
        """``values`` (rows first) extended to ``padded_rows`` with ``fill``."""
        if values is None:
            return None
        values = np.asarray(values)
        extra = np.full((self.padded_rows - values.shape[0],) + values.shape[1:], fill, dtype=values.dtype)
        return np.concatenate([values, extra], axis=0)

    def pad_levels(self, term: int, values: np.ndarray | None) -> np.ndarray | None:
        """``values`` (levels first) of term ``term`` extended with zeros to its padded levels."""
        if values is None:
            return None
        values = np.asarray(values)
        extra = np.zeros((self.padded_levels[term] - values.shape[0],) + values.shape[1:], dtype=values.dtype)
        return np.concatenate([values, extra], axis=0)

    def row_weight(self) -> np.ndarray:
        """1 for each row of the data, 0 for each padded row."""
        return (np.arange(self.padded_rows) < self.n_rows).astype(np.float64)

    def level_weight(self, term: int) -> np.ndarray:
        """1 for each level of term ``term``, 0 for each padded level."""
        return (np.arange(self.padded_levels[term]) < self.num_levels[term]).astype(np.float64)
