"""The benchmark's measuring helpers, and the blocking client's close, without a cluster."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

import dfs
from dfs.bench.cli import _nest_latency
from dfs.bench.measure import latency_ms, peak_rss_mib, percentile, reset_peak_rss, run_timed


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert latency_ms([0.001, 0.002, 0.003]) == {"p50_ms": 2.0, "p99_ms": 3.0}


def current_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def test_peak_rss_is_the_kernel_high_water_mark() -> None:
    """Measured against the current RSS: in a full run earlier tests leave a higher peak
    behind, which the ballast alone need not exceed."""
    pid = os.getpid()
    assert reset_peak_rss(pid), "this test needs /proc/PID/clear_refs"
    before = current_rss_mib(pid)
    ballast = bytearray(64 << 20)
    for i in range(0, len(ballast), 4096):  # touch every page so it is resident
        ballast[i] = 1
    assert peak_rss_mib(pid) >= before + 60
    del ballast
    reset_peak_rss(pid)  # back down to about the current RSS
    assert peak_rss_mib(pid) < current_rss_mib(pid) + 30


def test_run_timed_reports_the_child_peak_and_fails_loudly() -> None:
    grow = "b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); print('done')"
    seconds, rss, out = run_timed([sys.executable, "-c", grow])
    assert out == "done\n" and seconds > 0 and rss >= 80
    with pytest.raises(RuntimeError, match="boom"):
        run_timed([sys.executable, "-c", "import sys; sys.exit('boom')"])


def test_peer_latencies_are_nested_like_ours() -> None:
    flat = {"put_ops": 10.0, "put_p50_ms": 1.0, "put_p99_ms": 2.0, "get_p50_ms": 3.0}
    assert _nest_latency(flat) == {"put_ops": 10.0, "latency": {
        "put": {"p50_ms": 1.0, "p99_ms": 2.0}, "get": {"p50_ms": 3.0}}}


def test_blocking_client_closes_twice_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = dfs.Client("127.0.0.1:1")
        c.close()
        c.close()

