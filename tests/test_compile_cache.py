"""The persistent cache of compiled XLA programs (mixedfx/compile_cache.py).

The end-to-end test runs three fresh processes on one cache directory: the first
compiles and publishes, the second loads (nothing compiled again, nothing printed, the
same estimates to the last digit), the third finds an entry truncated and rebuilds it
without an error.  The rest test the directory logic without TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixedfx import compile_cache
from mixedfx.compile_cache import CompileCache, cache_root, configure

FIXTURES = Path(__file__).parent / "fixtures"

SCRIPT = textwrap.dedent("""
    import json, sys
    import pandas as pd
    import mixedfx
    data = pd.read_csv(sys.argv[1])
    model = mixedfx.MixedEffectsRegressor("Reaction ~ Days + (Days | Subject)", random_state=3, max_iter=60, verbose=0)
    model.fit(data)
    print(json.dumps([float(v) for v in model.fixed_effects_] + model.variance_components_["sdcor"].astype(float).tolist()))
""")


def _fit_in_fresh_process(cache_dir: Path) -> tuple[list[float], str]:
    """A sleepstudy fit in a new Python process on ``cache_dir``: its estimates and its stderr."""
    env = {key: value for key, value in os.environ.items() if key not in ("TF_XLA_FLAGS", "MIXEDFX_TF_LOGS")}
    env["MIXEDFX_CACHE_DIR"] = str(cache_dir)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(FIXTURES / "sleepstudy.csv")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _shared(cache_dir: Path) -> Path:
    (shared,) = (cache_dir / "xla").iterdir()
    return shared


def test_a_later_process_loads_the_programs_and_a_damaged_entry_is_rebuilt(tmp_path):
    first, _ = _fit_in_fresh_process(tmp_path)
    shared = _shared(tmp_path)
    manifest = json.loads((shared / "manifest.json").read_text())
    assert manifest and all((shared / name).stat().st_size == rec["size"] for name, rec in manifest.items())
    assert not list(shared.glob("run-*")), "the process's private directory outlived it"

    second, stderr = _fit_in_fresh_process(tmp_path)
    # Every program was loaded: none was compiled again and published.
    assert json.loads((shared / "manifest.json").read_text()) == manifest
    assert stderr.strip() == "", stderr[-2000:]  # TensorFlow 2.21 logs an error line per load unsilenced
    assert second == first  # the loaded programs compute exactly what the compiled ones did

    largest = max(manifest, key=lambda name: manifest[name]["size"])
    with open(shared / largest, "r+b") as handle:
        handle.truncate(1000)
    third, stderr = _fit_in_fresh_process(tmp_path)
    assert third == first and stderr.strip() == "", stderr[-2000:]
    rebuilt = json.loads((shared / "manifest.json").read_text())
    # Compiled again and published: whole, listed (XLA's output differs by a few bytes between compiles).
    assert rebuilt[largest]["size"] == (shared / largest).stat().st_size > 0.9 * manifest[largest]["size"]
    assert rebuilt[largest]["mtime_ns"] != manifest[largest]["mtime_ns"]


def _cache(root: Path, name: str, max_bytes: int = 10**9) -> CompileCache:
    return CompileCache(root / "shared", root / "shared" / f"run-host-{name}-abcd", max_bytes=max_bytes)


def test_only_entries_matching_the_manifest_are_linked(tmp_path):
    writer = _cache(tmp_path, "1")
    writer.refresh()
    (writer.private / "a.pb").write_bytes(b"aaaa")
    (writer.private / "b.pb").write_bytes(b"bbbb")
    assert writer.publish() == ["a.pb", "b.pb"]
    assert writer.publish() == []  # nothing new
    (writer.shared / "b.pb").write_bytes(b"bb")  # damaged in place
    (writer.shared / "c.pb").write_bytes(b"cccc")  # not listed: half published by a process that died
    reader = _cache(tmp_path, "2")
    assert reader.refresh() == ["a.pb"]
    assert sorted(p.name for p in reader.private.iterdir()) == ["a.pb"]


def test_the_oldest_entries_go_past_the_size_bound(tmp_path):
    cache = _cache(tmp_path, "1", max_bytes=10)
    cache.refresh()
    for name in ("old.pb", "mid.pb", "new.pb"):
        (cache.private / name).write_bytes(b"12345")
        cache.publish()
    listed = json.loads((cache.shared / "manifest.json").read_text())
    assert sorted(listed) == ["mid.pb", "new.pb"] and not (cache.shared / "old.pb").exists()


def test_ended_processes_private_directories_are_removed(tmp_path):
    import socket

    cache = _cache(tmp_path, "1")
    cache.refresh()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = cache.shared / f"run-{socket.gethostname()}-{ended.stdout.strip()}-ffff"
    alive = cache.shared / f"run-{socket.gethostname()}-{os.getpid()}-eeee"
    for path in (dead, alive):
        path.mkdir()
    cache.reap()
    assert not dead.exists() and alive.exists() and cache.private.exists()


def test_close_publishes_and_removes_the_private_directory(tmp_path):
    cache = _cache(tmp_path, "1")
    cache.refresh()
    (cache.private / "a.pb").write_bytes(b"aaaa")
    cache.close()
    assert not cache.private.exists() and (cache.shared / "a.pb").read_bytes() == b"aaaa"


@pytest.mark.parametrize("value", ["off", "0", "none", "OFF"])
def test_the_cache_can_be_switched_off(value):
    environ = {"MIXEDFX_CACHE_DIR": value}
    assert cache_root(environ) is None
    assert configure(environ) is None and "TF_XLA_FLAGS" not in environ


def test_a_user_cache_flag_is_left_alone(tmp_path):
    environ = {"MIXEDFX_CACHE_DIR": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_persistent_cache_directory=/elsewhere"}
    assert configure(environ) is None
    assert environ["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/elsewhere"


def test_a_child_process_gets_a_private_directory_of_its_own(tmp_path, monkeypatch):
    """A child inherits its parent's TF_XLA_FLAGS (pytest-xdist workers, joblib's processes):
    the parent's private directory is replaced by the child's, other flags kept."""
    monkeypatch.setattr(compile_cache, "_ACTIVE", None)
    parent = {"MIXEDFX_CACHE_DIR": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_cpu_global_jit"}
    first = configure(parent)
    child = dict(parent)
    second = configure(child)
    assert first.shared == second.shared and first.private != second.private
    assert child["TF_XLA_FLAGS"] == f"--tf_xla_cpu_global_jit --tf_xla_persistent_cache_directory={second.private}"


def test_a_child_with_the_cache_off_drops_its_parents_private_directory(tmp_path, monkeypatch):
    """``MIXEDFX_CACHE_DIR=off`` in a child of a caching process switches the cache off
    there too: the parent's private directory, inherited through TF_XLA_FLAGS, would
    otherwise serve the child the parent's programs.  Other flags, and a cache directory
    the user named, stay."""
    monkeypatch.setattr(compile_cache, "_ACTIVE", None)
    parent = {"MIXEDFX_CACHE_DIR": str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_cpu_global_jit"}
    first = configure(parent)
    child = {**parent, "MIXEDFX_CACHE_DIR": "off"}
    assert configure(child) is None
    assert child["TF_XLA_FLAGS"] == "--tf_xla_cpu_global_jit"
    named = {"MIXEDFX_CACHE_DIR": "off", "TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={tmp_path / 'run-mine'}"}
    assert configure(named) is None and named["TF_XLA_FLAGS"].endswith("run-mine")
    assert first.private.name.startswith("run-")


def test_the_default_root_is_the_user_cache_directory(monkeypatch):
    if sys.platform in ("win32", "darwin"):
        pytest.skip("the XDG rule is Linux's; macOS and Windows use their own cache folders")
    assert cache_root({"XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/mixedfx")
    assert cache_root({}) == Path.home() / ".cache" / "mixedfx"


def test_this_process_flags_name_its_private_directory():
    cache = compile_cache.active()
    if cache is None:
        pytest.skip("the suite runs with MIXEDFX_CACHE_DIR=off or its own TF_XLA_FLAGS cache")
    assert f"--tf_xla_persistent_cache_directory={cache.private}" in os.environ["TF_XLA_FLAGS"]
    assert cache.shared.name == compile_cache.machine_tag()
