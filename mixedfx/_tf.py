"""TensorFlow and TensorFlow Probability, imported once and configured for mixedfx.

Importing TensorFlow prints a burst of C++ log lines (oneDNN notices, CUDA probing,
XLA service start-up) that are noise to a statistics user.  They are written straight
to file descriptor 2 before Python can filter them, so the import and device discovery
run with that descriptor pointed at ``/dev/null``; so does the XLA service's start-up,
by a tiny compile that :func:`start_xla` runs once, at the first fit (importing
mixedfx compiles nothing).  Set ``MIXEDFX_TF_LOGS=1`` to see them.

``MIXEDFX_CPU_DEVICES=N`` splits the CPU into ``N`` logical devices before
TensorFlow starts (``tf.config.set_logical_device_configuration``, which must run
before TensorFlow's first operation, and importing mixedfx runs one): enough to try a
sharded fit (``distribute=tf.distribute.MirroredStrategy()``) on one machine.  The
logical devices share the processor's cores, so this tests sharding, it does not speed
anything up.

TensorFloat-32 is switched off: on Ampere and Hopper GPUs it silently rounds float32
matmuls to 10 mantissa bits, which breaks the exactness HMC's accept/reject step
relies on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

from mixedfx import compile_cache

__all__ = ["tf", "tfp", "tfd", "tfb", "start_xla", "native_logs_silenced"]


def _cpu_devices() -> int | None:
    """The value of ``MIXEDFX_CPU_DEVICES``: a count of logical CPU devices, or None."""
    value = os.environ.get("MIXEDFX_CPU_DEVICES", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"MIXEDFX_CPU_DEVICES must be a positive integer (logical CPU devices), got {value!r}")
    return int(value)


@contextlib.contextmanager
def _silenced_stderr_fd():
    """Point file descriptor 2 at /dev/null for the duration of the block."""
    if os.environ.get("MIXEDFX_TF_LOGS") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
compile_cache.configure()  # TF_XLA_FLAGS must name the cache before TensorFlow reads them

with _silenced_stderr_fd(), warnings.catch_warnings():
    # TFP 0.25 checks the TensorFlow version with distutils, which warns on import.
    warnings.filterwarnings("ignore", message="distutils Version classes", category=DeprecationWarning)
    import tensorflow as tf  # noqa: E402
    import tensorflow_probability as tfp  # noqa: E402

    tf.get_logger().setLevel("ERROR")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    if _cpu_devices() is not None:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * _cpu_devices())
    tf.config.list_physical_devices()

tfd = tfp.distributions
tfb = tfp.bijectors


@tf.function(jit_compile=True)
def _first_compile(x):
    """A trivial XLA program: compiling it starts the XLA service."""
    return x + 1.0


def start_xla() -> None:
    """Start the XLA service quietly, once per process.

    The service logs its start-up (on a GPU, its platform and devices) at the first
    compile; this runs that compile, a third of a second on a CPU, with file descriptor
    2 pointed at ``/dev/null``.  The first fit calls it, not the import, so that
    importing mixedfx compiles nothing.  Later calls return at once.

    Examples
    --------
    >>> from mixedfx._tf import start_xla
    >>> start_xla()
    >>> start_xla()  # a second call compiles nothing
    """
    if _first_compile.experimental_get_tracing_count():
        return
    with _silenced_stderr_fd():
        _first_compile(tf.constant(0.0))


@contextlib.contextmanager
def native_logs_silenced():
    """Point file descriptor 2 at ``/dev/null`` for native code, while Python's
    ``sys.stderr`` (warnings, tracebacks, progress bars) still reaches the terminal.

    The fitting loop's first call of a compiled program runs under it: loading a program
    from the persistent cache (:mod:`mixedfx.compile_cache`) logs a spurious error line
    per program in TensorFlow 2.21.  ``MIXEDFX_TF_LOGS=1`` shows them.

    Examples
    --------
    >>> import sys
    >>> from mixedfx._tf import native_logs_silenced
    >>> with native_logs_silenced():
    ...     print("still printed", file=sys.stdout)
    still printed
    """
    if os.environ.get("MIXEDFX_TF_LOGS") == "1":
        yield
        return
    try:
        python_on_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # notebooks: sys.stderr is not fd 2
        python_on_fd2 = False
    with contextlib.ExitStack() as stack:
        if python_on_fd2:
            sys.stderr.flush()
            terminal = stack.enter_context(os.fdopen(os.dup(2), "w", buffering=1,
                                                     encoding=sys.stderr.encoding, errors="backslashreplace"))
            stack.enter_context(contextlib.redirect_stderr(terminal))
        stack.enter_context(_silenced_stderr_fd())
        yield
