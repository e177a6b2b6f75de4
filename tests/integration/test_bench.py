"""`dfs-bench` in smoke mode (tiny sizes, no peer), so the tool cannot rot. These tests check the
tool works and reports what INTERFACE.md names; they never judge a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster

import dfs
from dfs.bench import meta_ha

BENCH = [sys.executable, "-m", "dfs.bench.cli"]
ROLES = {"client", "meta", "chunk1", "chunk2"}


def bench(*args: str, tmp: Path) -> dict[str, Any]:
    proc = subprocess.run(BENCH + list(args) + ["--json", "--dir", str(tmp)],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    result: dict[str, Any] = json.loads(proc.stdout)
    assert os.listdir(tmp) == [], "dfs-bench left its data dir behind"
    return result


def no_dfsd_under(tmp: Path) -> bool:
    """No process is still running with a data dir under tmp (bench stops what it starts)."""
    out = subprocess.run(["pgrep", "-af", "dfs.daemon"], capture_output=True, text=True).stdout
    return str(tmp) not in out


def positive(result: dict[str, Any], *keys: str) -> None:
    for k in keys:
        assert isinstance(result[k], (int, float)) and result[k] > 0, (k, result)


def latencies(result: dict[str, Any], *kinds: str) -> None:
    for kind in kinds:
        q = result["latency"][kind]
        assert 0 < q["p50_ms"] <= q["p99_ms"], (kind, q)


def test_large_smoke(tmp_path: Path) -> None:
    r = bench("large", "--size", "3MiB", tmp=tmp_path)
    assert r["workload"] == "large" and r["size"] == 3 * 2**20 and r["replication"] == 2
    positive(r, "put_MBps", "get_first_MBps", "get_MBps", "get_warm_MBps", "get_warm_net_MBps")
    positive(r["limits"], "loopback_MBps", "fsync_write_MBps", "cached_read_MBps")
    assert set(r["rss_mib"]) == ROLES and all(v > 0 for v in r["rss_mib"].values()), r
    assert no_dfsd_under(tmp_path)


def test_small_smoke(tmp_path: Path) -> None:
    r = bench("small", "--files", "40", "--size", "1KiB", "--concurrency", "4", tmp=tmp_path)
    assert (r["files"], r["size"], r["concurrency"]) == (40, 1024, 4)
    positive(r, "put_ops", "get_ops")
    latencies(r, "put", "get")
    assert set(r["rss_mib"]) == ROLES, r
    assert no_dfsd_under(tmp_path)


def test_meta_smoke(tmp_path: Path) -> None:
    r = bench("meta", "--ops", "60", "--ls-entries", "100", "--concurrency", "3", tmp=tmp_path)
    positive(r, "create_ops", "stat_ops", "rm_ops")
    assert r["ls_entries"] == 100 and r["ls_s"] > 0
    latencies(r, "create", "stat", "rm")
    assert no_dfsd_under(tmp_path)


def no_etcd_under(tmp: Path) -> bool:
    out = subprocess.run(["pgrep", "-af", "etcd"], capture_output=True, text=True).stdout
    return str(tmp) not in out


def test_meta_ha_smoke(tmp_path: Path) -> None:
    """`meta --ha`: a local-journal cluster against an HA pair with its own etcd; both
    figures and the ratio of every rate."""
    r = bench("meta", "--ha", "--ops", "30", "--ls-entries", "40", "--concurrency", "2",
              "--runs", "1", tmp=tmp_path)
    assert (r["workload"], r["ha"], r["ops"], r["runs"]) == ("meta", True, 30, 1), r
    assert r["order"] == [["local", "ha"]]
    assert r["ls_entries"] == 40 and "fsync" in r["durability"]
    for name in ("create_ops", "stat_ops", "rm_ops", "ls_s", "create_p50_ms", "cpu_s"):
        f = r["figures"][name]
        positive(f, "local", "ha", "ratio")
        assert len(f["local_runs"]) == len(f["ha_runs"]) == len(f["run_ratios"]) == 1, f
    assert set(r["rss_mib"]["local"]) == ROLES, r["rss_mib"]
    assert set(r["rss_mib"]["ha"]) == ROLES | {"standby", "etcd"}, r["rss_mib"]
    assert set(r["cpu_s"]["ha"]) == ROLES - {"client"} | {"standby", "etcd"}, r["cpu_s"]
    assert no_dfsd_under(tmp_path) and no_etcd_under(tmp_path)
    proc = subprocess.run(BENCH + ["meta", "--runs", "2", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--runs goes with --ha" in proc.stderr, proc.stderr


def test_meta_ha_rounds_alternate_and_take_medians() -> None:
    """The A/B bookkeeping of `meta --ha` alone, on made-up measurements."""
    calls: list[tuple[str, int]] = []

    def once(mode: str, i: int) -> dict[str, Any]:
        calls.append((mode, i))
        rate = (100.0 if mode == "local" else 50.0) * (i + 1)
        q = {"p50_ms": 1.0, "p99_ms": 2.0}
        return {"create_ops": rate, "stat_ops": rate, "rm_ops": rate, "ls_s": 0.5,
                "ls_entries": 9, "latency": {"create": q, "stat": q, "rm": q},
                "cpu_total_s": 1.0, "cpu_s": {"meta": 1.0}, "rss_mib": {"meta": 30.0 + i}}

    r = meta_ha.run(3, once, lambda text: None)
    assert r["order"] == [["local", "ha"], ["ha", "local"], ["local", "ha"]]
    assert calls == [("local", 0), ("ha", 0), ("ha", 1), ("local", 1), ("local", 2), ("ha", 2)]
    f = r["figures"]["create_ops"]
    assert (f["local"], f["ha"], f["ratio"], f["run_ratios"]) == (200, 100, 0.5, [0.5] * 3)
    assert r["rss_mib"]["ha"] == {"meta": 32.0} and r["ls_entries"] == 9


def test_tree_smoke(tmp_path: Path) -> None:
    r = bench("tree", "--files", "24", "--size", "1KiB", "--large-files", "2", "--large-size",
              "2MiB", "--parallel", "4", tmp=tmp_path)
    assert (r["files"], r["size"], r["large_files"], r["parallel"]) == (24, 1024, 2, 4)
    for tree in ("small", "large"):  # 24 KiB moves at well under 0.1 MB/s: no MB/s there
        positive(r[tree], "put_ops", "get_ops", "put_s", "get_s")
        positive(r[tree]["client_rss_mib"], "put", "get")
    positive(r["large"], "put_MBps", "get_MBps")
    assert r["order"] == {"small": ["dfs"], "large": ["dfs"]}
    assert set(r["rss_mib"]) == ROLES, r
    assert no_dfsd_under(tmp_path)


def test_fsspec_smoke(tmp_path: Path) -> None:
    r = bench("fsspec", "--size", "3MiB", "--parquet-size", "2MB", "--ranges", "50",
              "--runs", "2", tmp=tmp_path)
    assert (r["workload"], r["size"], r["runs"], r["replication"]) == ("fsspec", 3 * 2**20, 2, 2)
    for kind in ("put", "read", "get"):
        ab = r["whole"][kind]
        positive(ab, "reference_MBps", "fsspec_MBps", "ratio")
        assert len(ab["reference_s"]) == len(ab["fsspec_s"]) == 2, ab
    positive(r["whole"], "cli_startup_s")
    pq = r["parquet"]  # pyarrow is a test dependency: the part runs here
    assert pq["column"] == "c3" and pq["columns"] == 10, pq
    positive(pq, "file_bytes", "rows", "row_groups", "column_bytes", "bytes_moved",
             "moved_ratio", "read_s", "local_read_s")
    rg = r["ranges"]
    assert (rg["count"], rg["size"]) == (50, 4096)
    assert 0 < rg["cat_file"]["p50_ms"] <= rg["cat_file"]["p99_ms"], rg
    positive(rg, "cat_file_total_s", "cat_ranges_s")
    positive(rg["bytes_moved"], "cat_file", "cat_ranges")
    assert no_dfsd_under(tmp_path)


def test_metrics_smoke(tmp_path: Path) -> None:
    r = bench("metrics", "--size", "3MiB", "--files", "40", "--small-size", "1KiB",
              "--concurrency", "4", "--runs", "2", tmp=tmp_path)
    assert (r["workload"], r["size"], r["files"], r["small_size"], r["concurrency"],
            r["runs"], r["replication"]) == ("metrics", 3 * 2**20, 40, 1024, 4, 2, 2)
    assert r["order"] == [["off", "on"], ["on", "off"]]
    for name in ("large_put_MBps", "large_get_MBps", "large_get_warm_MBps", "small_put_ops",
                 "small_get_ops", "small_put_p99_ms", "small_get_p50_ms", "cpu_small_s"):
        f = r["figures"][name]
        positive(f, "off", "on")
        assert isinstance(f["cost_pct"], float) and len(f["run_cost_pct"]) == 2, (name, f)
        assert len(f["off_runs"]) == len(f["on_runs"]) == 2, (name, f)
    positive(r["requests"], "large", "small")  # metrics on really counted the workload
    assert set(r["cpu_us_per_request"]) == {"large", "small"}, r
    positive(r["hot_path"], "observe_us", "large_pct", "small_pct")
    assert r["scrapes"]["failed"] == 0 and r["scrapes"]["count"] >= 2 * 3 * 3, r["scrapes"]
    positive(r["scrapes"]["bytes"], "meta", "chunk1", "chunk2")
    for mode in ("off", "on"):
        assert set(r["rss_mib"][mode]) == ROLES, r["rss_mib"]
    assert no_dfsd_under(tmp_path)


def test_against_a_running_cluster_leaves_nothing_behind(shared_cluster: Cluster,
                                                         tmp_path: Path) -> None:
    """--meta uses the given cluster: only the client's RSS is known, and the workload's
    files are removed afterwards."""
    r = bench("small", "--files", "10", "--concurrency", "2", "--meta",
              shared_cluster.meta_addr, tmp=tmp_path)
    assert set(r["rss_mib"]) == {"client"}, r
    with shared_cluster.client() as c:
        with pytest.raises(dfs.NotFound):
            c.stat("/bench/small")


def test_human_report_and_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(BENCH + ["meta", "--ops", "20", "--ls-entries", "20", "--dir",
                                   str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "create" in proc.stdout and "ops/s" in proc.stdout and "peak RSS" in proc.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)
    bad = subprocess.run(BENCH + ["large", "--size", "lots"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "dfs-bench: error:" in \
        bad.stderr, bad.stderr
    unknown = subprocess.run(BENCH + ["nope"], capture_output=True, text=True)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr


def test_mount_smoke(tmp_path: Path) -> None:
    pytest.importorskip("pyfuse3", reason="the [mount] extra (pyfuse3) is not installed")
    # --keep-page-cache: emptying the machine's page cache would slow the tests after this.
    r = bench("mount", "--size", "4MiB", "--files", "30", "--runs", "2", "--keep-page-cache",
              tmp=tmp_path)
    assert (r["workload"], r["size"], r["files"], r["runs"]) == ("mount", 4 * 2**20, 30, 2)
    positive(r, "put_cli_MBps", "put_mount_MBps", "get_cli_MBps", "get_mount_MBps",
             "tar_mount_files_s", "tar_local_files_s", "tar_local_sync_files_s", "put_ratio",
             "get_ratio")
    assert all(len(v) == 2 for v in r["times_s"].values()), r["times_s"]
    assert r["page_cache_dropped"] is False
    assert no_dfsd_under(tmp_path)
    assert not any(os.path.ismount(p) for p in tmp_path.rglob("mnt"))


def test_repair_smoke(tmp_path: Path) -> None:
    r = bench("repair", "--size", "6MiB", "--foreground-size", "2MiB", "--dead-timeout", "3.5",
              "--runs", "1", tmp=tmp_path)
    assert r["workload"] == "repair" and r["victim_bytes"] >= 6 * 2**20, r
    assert r["copied_bytes"] >= r["victim_bytes"] - 2**20 and r["copies"]["ok"] > 0, r
    assert 0 < r["dead_after_kill_s"] and 0 <= r["start_after_dead_s"] < r["repair_s"] + 1, r
    positive(r, "repair_MBps")
    positive(r["foreground"], "before_MBps", "after_MBps")
    assert set(r["rss_mib"]) == {"meta", "chunk0", "chunk1", "chunk2"} - {r["victim"]}, r
    assert no_dfsd_under(tmp_path)
