"""A persistent cache of compiled XLA programs, shared by the processes of one machine.

The first fit of a model structure in a process traces the TensorFlow Probability graph
and compiles it with XLA.  TensorFlow can keep the compiled programs on disk
(``--tf_xla_persistent_cache_directory``), so that a later process loads them instead of
running XLA's compiler.  Used directly, that cache has three faults this module covers:

* **A corrupt entry is an error, for the rest of the process.**  TensorFlow writes each
  entry in place, not atomically, and a truncated or damaged file makes the program's
  every call fail.  So TensorFlow reads and writes a *private* directory per process;
  this module fills it with hard links to entries of the shared directory whose size
  and modification time match the manifest, and publishes the entries TensorFlow wrote
  by copying them into the shared directory under a temporary name and renaming them
  (atomic).  A damaged, half-written or unlisted entry is never linked: its program is
  compiled again and the entry replaced.
* **Another machine's programs can crash this one.**  A compiled CPU program uses the
  instruction set of the machine that compiled it (a home directory shared over a
  network can hold another machine's).  The shared directory is one per TensorFlow
  version, processor model and flags, and GPU models.
* **Each hit logs an error line** (``cpu_aot_loader.cc``, TensorFlow 2.21, about tuning
  flags, not instruction sets).  The fitting loop runs its first call with native
  logging silenced (:func:`mixedfx._tf.native_logs_silenced`).

The cache lives under the user's cache directory (``~/.cache/mixedfx`` on Linux,
``~/Library/Caches/mixedfx`` on macOS, ``%LOCALAPPDATA%\\mixedfx`` on Windows).
``MIXEDFX_CACHE_DIR`` moves it; ``MIXEDFX_CACHE_DIR=off`` switches it off.  Both are
read when mixedfx is imported, before TensorFlow starts.  It holds at most
``MIXEDFX_CACHE_MAX_MB`` megabytes (default 2,000); the oldest entries go first.  A
``TF_XLA_FLAGS`` that already names a persistent cache directory of the user's is left
alone; the private directory a parent process named (a child inherits its environment)
is replaced by the child's own.  No failure of the cache is an error: the program is
compiled as without it.

Examples
--------
>>> from mixedfx import compile_cache
>>> compile_cache.active() is None or compile_cache.active().shared.name == compile_cache.machine_tag()
True
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

__all__ = ["CompileCache", "cache_root", "machine_tag", "configure", "active"]

_OFF = {"off", "0", "none", "false", "no"}
_MANIFEST = "manifest.json"
_ORPHAN_SECONDS = 24 * 3600  # an unlisted file this old is removed
_PRIVATE_PREFIX = "run-"


def cache_root(environ=os.environ) -> Path | None:
    """The cache's root directory from ``environ``; None when it is switched off.

    ``MIXEDFX_CACHE_DIR`` names it (``off``, ``0``, ``none``, ``false`` or ``no``
    switch the cache off; empty means unset); otherwise the platform's user cache
    directory, ``mixedfx`` under it.

    Examples
    --------
    >>> from mixedfx.compile_cache import cache_root
    >>> cache_root({"MIXEDFX_CACHE_DIR": "off"}) is None
    True
    >>> str(cache_root({"MIXEDFX_CACHE_DIR": "/tmp/mfx"}))
    '/tmp/mfx'
    """
    value = environ.get("MIXEDFX_CACHE_DIR", "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    if sys.platform == "win32":
        base = Path(environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mixedfx"


def _read(path: str) -> str:
    """A text file's contents, or "" when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _processor_identity() -> str:
    """The processor's model and instruction-set flags (Linux), or what the platform says."""
    lines = _read("/proc/cpuinfo").splitlines()
    wanted = ("model name", "flags", "features", "cpu model", "isa")
    picked = []
    for key in wanted:  # the first processor's line for each key
        picked += [line for line in lines if line.lower().startswith(key)][:1]
    gpus = sorted(_read(str(info)) for info in Path("/proc/driver/nvidia/gpus").glob("*/information"))
    return "\n".join([platform.machine(), platform.processor(), *picked, *gpus])


def _tensorflow_version() -> str:
    """The installed TensorFlow's version, read without importing it."""
    from importlib import metadata

    for name in ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-macos"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def machine_tag() -> str:
    """The shared directory's name: TensorFlow's version and a hash of the processor
    (model, instruction-set flags) and GPU models, so that no machine loads programs
    compiled for another.

    Examples
    --------
    >>> from mixedfx.compile_cache import machine_tag
    >>> machine_tag().startswith("tf")
    True
    """
    digest = hashlib.sha256(_processor_identity().encode()).hexdigest()[:16]
    return f"tf{_tensorflow_version()}-{digest}"


def _max_bytes(environ=os.environ) -> int:
    """The cache's size bound, from ``MIXEDFX_CACHE_MAX_MB`` (default 2,000 MB)."""
    value = environ.get("MIXEDFX_CACHE_MAX_MB", "").strip()
    megabytes = float(value) if value.replace(".", "", 1).isdigit() else 2000.0
    return int(megabytes * 1e6)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (POSIX ``flock``; no lock elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: the manifest's atomic replace still keeps it whole
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CompileCache:
    """The shared directory of compiled programs and this process's private one.

    Parameters
    ----------
    shared : pathlib.Path
        The directory every process of this machine reads (its entries and
        ``manifest.json``, which lists each entry's size and modification time).
    private : pathlib.Path
        This process's directory: TensorFlow reads and writes it.
    max_bytes : int
        The shared directory's size bound; the oldest published entries go first.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from mixedfx.compile_cache import CompileCache
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> cache = CompileCache(root / "shared", root / "shared" / "run-a", max_bytes=10**9)
    >>> _ = (cache.refresh(), (cache.private / "p.pb").write_bytes(b"program"))
    >>> cache.publish()
    ['p.pb']
    >>> other = CompileCache(root / "shared", root / "shared" / "run-b", max_bytes=10**9)
    >>> other.refresh()
    ['p.pb']
    >>> (other.private / "p.pb").read_bytes()
    b'program'
    """

    def __init__(self, shared: Path, private: Path, *, max_bytes: int):
        self.shared, self.private, self.max_bytes = Path(shared), Path(private), max_bytes
        self._known: set[str] = set()  # private entries linked from, or published to, shared
        self._owner = os.getpid()  # a forked child leaves the parent's directory alone

    def _manifest(self) -> dict:
        """The shared directory's manifest: ``{name: {"size", "mtime_ns", "published"}}``."""
        try:
            data = json.loads((self.shared / _MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_manifest(self, manifest: dict) -> None:
        """Replace the manifest atomically."""
        temp = self.shared / f".{_MANIFEST}.{secrets.token_hex(6)}"
        temp.write_text(json.dumps(manifest))
        os.replace(temp, self.shared / _MANIFEST)

    def refresh(self) -> list[str]:
        """Link into the private directory each listed entry whose size and modification
        time match the manifest and that is not there yet; returns their names."""
        self.private.mkdir(parents=True, exist_ok=True)
        linked = []
        for name, record in sorted(self._manifest().items()):
            if name in self._known or not isinstance(record, dict):
                continue
            source = self.shared / name
            if (self.private / name).exists():  # compiled here before another process published it
                self._known.add(name)
                continue
            try:
                stat = source.stat()
                if (stat.st_size, stat.st_mtime_ns) != (record.get("size"), record.get("mtime_ns")):
                    continue  # damaged or replaced outside mixedfx: compiled again
                try:
                    os.link(source, self.private / name)
                except OSError:
                    shutil.copy2(source, self.private / name)
            except OSError:
                continue
            self._known.add(name)
            linked.append(name)
        return linked

    def publish(self) -> list[str]:
        """Copy the entries TensorFlow wrote since the last call into the shared directory
        (temporary name, then an atomic rename), list them in the manifest, and keep the
        directory under its size bound; returns the names published."""
        if not self.private.is_dir():
            return []
        new = sorted(path.name for path in self.private.glob("*.pb") if path.name not in self._known)
        if not new:
            return []
        with _locked(self.shared / ".lock"):
            manifest = self._manifest()
            for name in new:
                temp = self.shared / f".{name}.{secrets.token_hex(6)}"
                try:
                    shutil.copyfile(self.private / name, temp)
                    os.replace(temp, self.shared / name)
                except OSError:  # a full disk: nothing half-written is left behind
                    with contextlib.suppress(OSError):
                        temp.unlink()
                    raise
                stat = (self.shared / name).stat()
                manifest[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "published": time.time()}
                self._known.add(name)
            self._evict(manifest)
            self._write_manifest(manifest)
        return new

    def _evict(self, manifest: dict) -> None:
        """Drop the oldest published entries until the listed ones fit the size bound, and
        unlisted files older than a day (left by a process that died while publishing)."""
        oldest_first = sorted(manifest, key=lambda name: manifest[name].get("published", 0.0))
        total = sum(record.get("size", 0) for record in manifest.values())
        for name in oldest_first:
            if total <= self.max_bytes:
                break
            total -= manifest.pop(name).get("size", 0)
            with contextlib.suppress(OSError):
                (self.shared / name).unlink()
        now = time.time()
        for path in [*self.shared.glob("*.pb"), *self.shared.glob(".*.pb.*")]:  # entries, temporary copies
            with contextlib.suppress(OSError):
                if path.name not in manifest and now - path.stat().st_mtime > _ORPHAN_SECONDS:
                    path.unlink()

    def reap(self) -> None:
        """Remove the private directories of this host's processes that have ended, and
        any private directory a week old."""
        host = socket.gethostname()
        for path in self.shared.glob(f"{_PRIVATE_PREFIX}*"):
            if path == self.private or not path.is_dir():
                continue
            _, _, rest = path.name.partition(_PRIVATE_PREFIX)
            owner_host, _, pid = rest.rpartition("-")[0].rpartition("-")
            with contextlib.suppress(OSError):
                stale = time.time() - path.stat().st_mtime > 7 * 24 * 3600
                if stale or (owner_host == host and pid.isdigit() and not _alive(int(pid))):
                    shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Publish what is left and remove the private directory (at the process's exit)."""
        if os.getpid() != self._owner:
            return
        with contextlib.suppress(OSError):
            self.publish()
        shutil.rmtree(self.private, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (POSIX)."""
    if sys.platform == "win32":
        return True  # left to the week-old rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_ACTIVE: CompileCache | None = None


def active() -> CompileCache | None:
    """This process's cache, or None when it is off or TensorFlow's flags name another."""
    return _ACTIVE


def configure(environ=os.environ) -> CompileCache | None:
    """Point TensorFlow's persistent XLA cache at this process's private directory.

    Runs once, before TensorFlow is imported (``mixedfx._tf`` calls it): it only sets
    ``TF_XLA_FLAGS`` and registers :meth:`CompileCache.close` at exit; the directories
    are made at the first fit (:func:`refresh`).
    """
    global _ACTIVE
    # A child process inherits its parent's TF_XLA_FLAGS: the parent's private directory
    # is dropped (each process gets its own, or none with the cache off); a cache the
    # user named is left alone.
    flag = "--tf_xla_persistent_cache_directory="
    inherited = environ.get("TF_XLA_FLAGS", "").split()
    private = re.compile(rf"{re.escape(_PRIVATE_PREFIX)}.+-\d+-[0-9a-f]{{8}}")  # the token below
    flags = [token for token in inherited
             if not (token.startswith(flag) and private.fullmatch(Path(token[len(flag):]).name))]
    try:
        root = cache_root(environ)
    except RuntimeError:  # no home directory to find the user's cache directory in
        root = None
    if root is None or any(token.startswith(flag) for token in flags):
        if len(flags) != len(inherited):
            environ["TF_XLA_FLAGS"] = " ".join(flags)
        return None
    shared = root / "xla" / machine_tag()
    token = f"{_PRIVATE_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    _ACTIVE = CompileCache(shared, shared / token, max_bytes=_max_bytes(environ))
    environ["TF_XLA_FLAGS"] = " ".join([*flags, f"{flag}{_ACTIVE.private}"])
    atexit.register(_ACTIVE.close)
    return _ACTIVE


def refresh() -> None:
    """Before a fit: link the entries other processes published (and, the first time,
    remove ended processes' private directories).  Never raises."""
    cache = _ACTIVE
    if cache is None:
        return
    with contextlib.suppress(OSError):
        if not cache.private.exists():
            cache.shared.mkdir(parents=True, exist_ok=True)
            cache.reap()
        cache.refresh()


def publish() -> None:
    """After a fit: publish the programs it compiled.  Never raises."""
    if _ACTIVE is not None:
        with contextlib.suppress(OSError):
            _ACTIVE.publish()
