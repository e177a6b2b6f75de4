"""Small measuring tools for the benchmark: latency percentiles, peak RSS of a process, and
whole-process timing of a command.

Peak RSS is the kernel's own high-water mark (VmHWM in /proc/PID/status), not a sampled
guess; writing "5" to /proc/PID/clear_refs resets it, so each phase of a run reports its own
peak. A command run as a child is measured with wait4(), whose rusage carries its peak RSS.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n*q/100), at least 1
    return float(sorted_values[int(rank) - 1])


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p99 in milliseconds of a list of per-operation durations in seconds."""
    values = sorted(seconds)
    return {"p50_ms": round(percentile(values, 50) * 1000, 3),
            "p99_ms": round(percentile(values, 99) * 1000, 3)}


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of `pid` to its current RSS. False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size of a running process since start (or the last reset)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for pid {pid}")


@contextmanager
def peaks(pids: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """Record each process's peak RSS over the block (keeping the larger of repeated phases)."""
    for pid in pids.values():
        reset_peak_rss(pid)
    yield
    for name, pid in pids.items():
        into[name] = max(into.get(name, 0.0), peak_rss_mib(pid))


def run_timed(cmd: list[str], *, cwd: str | None = None,
              env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command to completion: (wall seconds, its peak RSS in MiB, its stdout).

    The child is reaped with wait4() so its own rusage (ru_maxrss, KiB on Linux) is read.
    Raises RuntimeError with the command's last stderr line if it fails, so a broken run is
    never reported as a figure."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        last = stderr.strip().splitlines()
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): "
                           f"{last[-1] if last else 'no output'}")
    return elapsed, round(usage.ru_maxrss / 1024, 1), stdout


def same_file(a: str, b: str) -> bool:
    """Whether two local files hold the same bytes: a figure counts only if the data came
    back whole (used for dfs and for the peer alike)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(4 << 20), fb.read(4 << 20)
            if x != y:
                return False
            if not x:
                return True


def random_file(path: str, size: int) -> None:
    """`size` random bytes at `path`, written 1 MiB at a time (the benchmarks' inputs)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
