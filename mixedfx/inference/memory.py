"""Memory you can predict: a fit's peak estimated before it allocates.

:func:`estimate_peak_bytes` adds up, from the rows, the levels, the terms' dimensions,
the chains, the E-step's precision and the row chunks, what a Monte Carlo EM fit and
the exact computations that finish it hold at their peak; its constants were measured
as the process's resident-memory high-water mark of fits in fresh processes (see
``docs/scaling.md``, "Predicting the peak").  :func:`check_memory` compares the
estimate with the memory the fit may use and raises :class:`~mixedfx.MemoryEstimateError`, with
the figures and what to change, instead of letting the operating system kill the
process.  :func:`check_memory_maps` does the same for the memory maps that XLA's
compiled programs hold: Linux ends a process that runs past ``vm.max_map_count`` with a
segmentation fault.
"""

from __future__ import annotations

import os
import resource
import sys

from mixedfx.exceptions import MemoryEstimateError
from mixedfx.inference.buckets import ShapeBuckets
from mixedfx.inference.rows import chunk_rows_for

__all__ = ["available_memory_bytes", "check_memory", "check_memory_maps", "estimate_peak_bytes",
           "memory_maps", "peak_memory_bytes"]

#: TensorFlow's runtime, the compiled programs and Python's own (measured at 20,000 rows).
BASE_BYTES = 1_250_000_000
#: Resident bytes per stored number of a row: the DataFrame, the design, the model's
#: arrays, the padded tensors and the exact step's per-row sums hold several copies.
BYTES_PER_ROW_NUMBER = 70
#: Bytes per row of a chunk, per chain and per random coefficient or fixed column: the
#: compiled E- and M-steps' per-row temporaries (float64; half of it in float32).
CHUNK_BYTES_PER_ROW_COLUMN = 64
#: Bytes per level coefficient per chain: the chains, HMC's momentum, gradient and
#: proposal, the preconditioner and the M-step's sums (float64).
BYTES_PER_LEVEL_COEFFICIENT = 96
#: Memory maps that the compiled programs of one new model structure may add: measured
#: on XLA's CPU backend (TensorFlow 2.21) from 290 (a random-intercept Gaussian model)
#: to 980 (a Bernoulli model with a correlated slope, its first fit in the process),
#: doubled for larger ones.  XLA keeps them until the process ends.
MAPS_PER_MODEL = 2_000


def estimate_peak_bytes(model, options, *, n_devices: int = 1) -> int:
    """The estimated peak resident memory of a fit of ``model`` with ``options``.

    ``BASE_BYTES`` (TensorFlow and the compiled programs), plus per padded row
    ``BYTES_PER_ROW_NUMBER`` for each number it stores (fixed columns, response,
    weights, offset, trials, group indices, slopes), plus for one chunk of rows
    ``CHUNK_BYTES_PER_ROW_COLUMN`` per chain and per fixed column or random
    coefficient (half with ``float32_e_step``), plus ``BYTES_PER_LEVEL_COEFFICIENT``
    per chain and level coefficient, plus the kept draws (at most ``max_kept_draws`` per
    chain, ``n_draws`` an iteration for ``max_iter`` iterations, within
    ``draws_memory_bytes``) and the exact step's dense block (eight bytes an entry,
    within ``max_dense_entries``).

    Parameters
    ----------
    model : MixedModel
    options : MCEMOptions
    n_devices : int, default 1
        Replicas the rows are sharded over: each holds its share of the rows' work.

    Returns
    -------
    int

    Examples
    --------
    >>> from mixedfx.inference import MCEMOptions
    >>> from mixedfx.inference.memory import estimate_peak_bytes
    >>> two, eight = (estimate_peak_bytes(model.model_, MCEMOptions(n_chains=c)) for c in (2, 8))
    >>> round(two / 1e9, 2), eight > two
    (1.25, True)
    """
    num_levels = tuple(t.num_levels for t in model.random_terms)
    dims = tuple(t.dim for t in model.random_terms)
    buckets = ShapeBuckets.for_sizes(model.n_obs, num_levels)
    rows = buckets.padded_rows
    z_columns = sum(d for t, d in zip(model.random_terms, dims) if t.z is not None)
    numbers_per_row = (model.fixed_design.shape[1] + 3 + (model.offset is not None) + (model.trials is not None)
                       + 0.5 * len(dims) + z_columns)
    chunk = -(-chunk_rows_for(rows, max_rows=options.max_rows_per_chunk) // n_devices)
    chunk_bytes = CHUNK_BYTES_PER_ROW_COLUMN * (0.5 if options.float32_e_step else 1.0)
    chunk_work = chunk * options.n_chains * (model.fixed_design.shape[1] + sum(dims)) * chunk_bytes
    coefficients = sum(q * d for q, d in zip(buckets.padded_levels, dims))
    kept = min(options.max_kept_draws, options.n_draws * options.max_iter)
    draws = min(8 * options.n_chains * kept * coefficients, options.draws_memory_bytes)
    per_call_draws = 8 * options.n_chains * options.n_draws * options.iterations_per_call * coefficients
    level_work = BYTES_PER_LEVEL_COEFFICIENT * options.n_chains * coefficients + draws + min(per_call_draws, 2**24)
    # The exact step's dense block: the columns of every term but the largest, squared.
    columns = sorted(q * d for q, d in zip(num_levels, dims))
    dense = 8 * min(sum(columns[:-1]) ** 2, options.max_dense_entries)
    return int(BASE_BYTES + BYTES_PER_ROW_NUMBER * numbers_per_row * rows / n_devices + chunk_work + level_work
               + dense)


def available_memory_bytes() -> int | None:
    """The memory available to a new allocation: ``MemAvailable`` of ``/proc/meminfo``
    on Linux, else free pages times the page size where ``os.sysconf`` knows them,
    else None.

    Examples
    --------
    >>> from mixedfx.inference.memory import available_memory_bytes
    >>> available = available_memory_bytes()
    >>> available is None or available > 0
    True
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def peak_memory_bytes() -> int | None:
    """The process's resident-memory high-water mark so far, in bytes: ``VmHWM`` of
    ``/proc/self/status`` on Linux, else ``getrusage``'s ``ru_maxrss`` (which, on Linux,
    carries a parent's resident memory at the fork over ``exec``: a Python started by
    a large process would report the parent's peak).

    Examples
    --------
    >>> from mixedfx.inference.memory import peak_memory_bytes
    >>> peak_memory_bytes() > 10**8  # TensorFlow is loaded
    True
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024) if peak else None


def _current_rss_bytes() -> int:
    """The process's resident memory now (Linux), else its high-water mark."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_memory_bytes() or 0


def check_memory(model, options, *, distribute=None) -> int:
    """The estimated peak (:func:`estimate_peak_bytes`), after checking that it fits.

    The fit may use ``options.memory_limit_bytes`` if set, else what the process holds
    now plus the available memory (:func:`available_memory_bytes`; no check where that
    is unknown).  Raises :class:`~mixedfx.MemoryEstimateError` naming both figures and what to
    change, and also (:func:`check_memory_maps`) where the process is near its limit on
    memory maps.

    Examples
    --------
    >>> from mixedfx.inference import MCEMOptions
    >>> from mixedfx.inference.memory import check_memory
    >>> check_memory(model.model_, MCEMOptions(memory_limit_bytes=2 * 10**9)) > 10**9
    True
    """
    check_memory_maps()
    n_devices = 1 if distribute is None else int(distribute.num_replicas_in_sync)
    estimate = estimate_peak_bytes(model, options, n_devices=n_devices)
    limit = options.memory_limit_bytes
    if limit is None:
        available = available_memory_bytes()
        if available is None:
            return estimate
        limit = _current_rss_bytes() + available
    if estimate > limit:
        raise MemoryEstimateError(
            f"the fit's peak memory is estimated at {estimate / 1e9:.2g} GB, more than the {limit / 1e9:.2g} GB it "
            f"may use ({'memory_limit_bytes' if options.memory_limit_bytes is not None else 'available memory'}); "
            f"to need less: fewer chains (n_chains={options.n_chains}), smaller row chunks "
            f"(max_rows_per_chunk={options.max_rows_per_chunk}), the float32 E-step (float32_e_step=True, "
            "Gaussian family), a smaller max_dense_entries, or shard the rows over several devices (distribute=)")
    return estimate


def memory_maps() -> tuple[int, int] | None:
    """``(held, limit)``: the memory maps this process holds (``/proc/self/maps``) and
    the kernel's limit per process (``vm.max_map_count``); None where either is unknown
    (not Linux).

    Examples
    --------
    >>> from mixedfx.inference.memory import memory_maps
    >>> maps = memory_maps()
    >>> maps is None or 0 < maps[0] < maps[1]
    True
    """
    try:
        with open("/proc/sys/vm/max_map_count") as handle:
            limit = int(handle.read())
        with open("/proc/self/maps", "rb") as handle:
            held = sum(1 for _ in handle)
    except (OSError, ValueError):
        return None
    return held, limit


def check_memory_maps() -> None:
    """Raise :class:`~mixedfx.MemoryEstimateError` where the compiled programs of one more
    model structure (:data:`MAPS_PER_MODEL` maps) could take the process past the kernel's
    limit on memory maps: there Linux would end it with a segmentation fault.

    Each new model structure (family, terms, shape bucket) compiles programs whose maps
    XLA keeps until the process ends, so a process that fits a few hundred different
    models reaches the default limit of 65,530.

    Examples
    --------
    >>> from mixedfx.inference.memory import check_memory_maps
    >>> check_memory_maps()  # a fresh process is far from the limit
    """
    maps = memory_maps()
    if maps is None or maps[0] + MAPS_PER_MODEL <= maps[1]:
        return
    held, limit = maps
    raise MemoryEstimateError(
        f"this process holds {held:,} memory maps of the {limit:,} the system allows one process "
        f"(vm.max_map_count), and the compiled programs of a new model structure may take up to {MAPS_PER_MODEL:,} "
        "more; XLA keeps them until the process ends, and past the limit the process would crash: fit the "
        "remaining models in a new process (one per model, or per batch of models, in a long loop), or raise "
        "the limit (sysctl -w vm.max_map_count=262144)")
