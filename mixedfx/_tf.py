"""TensorFlow and TensorFlow Probability, imported once and configured for mixedfx.

Importing TensorFlow prints a burst of C++ log lines (oneDNN notices, CUDA probing,
XLA service start-up) that are noise to a statistics user.  They are written straight
to file descriptor 2 before Python can filter them, so the import, device discovery
and a first tiny XLA compile run with that descriptor pointed at ``/dev/null``.  Set
``MIXEDFX_TF_LOGS=1`` to see them.

TensorFloat-32 is switched off: on Ampere and Hopper GPUs it silently rounds float32
matmuls to 10 mantissa bits, which breaks the exactness HMC's accept/reject step
relies on.

XLA's compiled programs are cached on disk (TensorFlow's
``--tf_xla_persistent_cache_directory``), so a fit in a new process skips the XLA
compilation of a model it has compiled before (about 8 s of a first InstEval fit on a
2-core CPU).  The directory is ``$MIXEDFX_XLA_CACHE``, or ``mixedfx/xla`` under
``$XDG_CACHE_HOME`` (``~/.cache``), with one subdirectory per TensorFlow version and
CPU, so that a shared home directory never serves code compiled for another
processor.  ``MIXEDFX_XLA_CACHE=0`` switches it off; it only takes effect when mixedfx
is imported before TensorFlow, and is left alone when ``TF_XLA_FLAGS`` already names
a cache directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import warnings

__all__ = ["tf", "tfp", "tfd", "tfb"]


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


def _xla_cache_directory() -> str | None:
    """Where compiled XLA programs persist across processes (see the module notes)."""
    setting = os.environ.get("MIXEDFX_XLA_CACHE", "")
    if setting == "0":
        return None
    try:
        from importlib.metadata import version

        tensorflow_version = version("tensorflow")
    except Exception:  # pragma: no cover - tensorflow installed under another name
        tensorflow_version = "unknown"
    processor = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            processor += next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    base = setting or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mixedfx", "xla")
    key = hashlib.sha256(processor.encode()).hexdigest()[:12]
    path = os.path.join(base, f"tf-{tensorflow_version}-{key}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # read-only home: compile every time, as TensorFlow does by default
        return None
    return path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "tensorflow" not in sys.modules and "tf_xla_persistent_cache_directory" not in os.environ.get("TF_XLA_FLAGS", ""):
    _cache = _xla_cache_directory()
    if _cache is not None:
        os.environ["TF_XLA_FLAGS"] = (
            os.environ.get("TF_XLA_FLAGS", "") + f" --tf_xla_persistent_cache_directory={_cache}"
        ).strip()

with _silenced_stderr_fd(), warnings.catch_warnings():
    # TFP 0.25 checks the TensorFlow version with distutils, which warns on import.
    warnings.filterwarnings("ignore", message="distutils Version classes", category=DeprecationWarning)
    import tensorflow as tf  # noqa: E402
    import tensorflow_probability as tfp  # noqa: E402

    tf.get_logger().setLevel("ERROR")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    tf.config.list_physical_devices()

    @tf.function(jit_compile=True)
    def _first_compile(x):
        return x + 1.0

    # The XLA service logs its start-up once per process, at the first compile.
    _first_compile(tf.constant(0.0))

tfd = tfp.distributions
tfb = tfp.bijectors
