"""dfs.web.metrics' own arithmetic: the fixed-bucket Durations histogram, and the collectors
that export the plain counters of the journal, the replicator, the chunk service and the
scrubber, as the Prometheus text a scrape returns (parsed back with prometheus_client)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dfs.meta.cluster import BlockInfo, Cluster
from dfs.meta.journal import FileJournal
from dfs.meta.replication import Replicator
from dfs.web.metrics import ChunkCounters, Durations, MetaCounters

MiB = 1 << 20


def scrape(*collectors: Collector) -> dict[str, float]:
    """`name{label="v",...}` -> value, as a real /metrics page would give them."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class One(Collector):
    def __init__(self, durations: Durations) -> None:
        self.durations = durations

    def collect(self) -> Any:
        yield self.durations.family("t_seconds", "test")


def test_durations_buckets_are_cumulative_with_le_inclusive() -> None:
    d = Durations([1.0, 0.1])  # unsorted on purpose
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        d.observe(v)
    got = scrape(One(d))
    assert got['t_seconds_bucket{le="0.1"}'] == 2  # 0.1 itself is in le=0.1
    assert got['t_seconds_bucket{le="1.0"}'] == 4
    assert got['t_seconds_bucket{le="+Inf"}'] == 5
    assert got["t_seconds_count"] == 5
    assert abs(got["t_seconds_sum"] - 8.65) < 1e-9


def test_empty_durations_export_zeros() -> None:
    got = scrape(One(Durations([0.5])))
    assert got['t_seconds_bucket{le="+Inf"}'] == 0 and got["t_seconds_sum"] == 0


def make_cluster(n: int) -> Cluster:
    cluster = Cluster(dead_timeout=30.0)
    for i in range(n):
        cs = cluster.register(f"s{i}", f"127.0.0.1:{6000 + i}", now=0.0)
        cluster.heartbeat(cs, 100 * MiB * 1024, 0, 100 * MiB * 1024, 0, 0, now=0.0)
    return cluster


def add(cluster: Cluster, block_id: int, holders: list[str], size: int = MiB) -> None:
    cluster.add_block(block_id, BlockInfo(1, size, 2))
    for sid in holders:
        cluster.block_report(cluster.servers[sid], [[block_id, 1, size]])


def test_every_copy_ends_counted_once_by_result(tmp_path: Path) -> None:
    cluster = make_cluster(4)
    add(cluster, 1, ["s0"], size=3 * MiB)
    add(cluster, 2, ["s1"])
    rep = Replicator(cluster, copy_timeout=10.0)
    rep.check_all([1, 2])
    copies = {c.block: c for c in rep.schedule(now=0.0)}
    cluster.block_report(cluster.servers[copies[1].target], [[1, 1, 3 * MiB]])
    rep.arrived(1, copies[1].target)  # ok: its bytes count
    rep.arrived(1, copies[1].target)  # reported again: no copy in flight, nothing counted
    (retry,) = rep.schedule(now=11.0)  # block 2's copy timed out and is started again
    rep.server_lost(retry.target)  # and that one is lost with its target
    journal = FileJournal(str(tmp_path / "journal"))
    got = scrape(MetaCounters(journal, rep))
    assert got['dfs_replication_copies_total{result="ok"}'] == 1
    assert got['dfs_replication_copies_total{result="timeout"}'] == 1
    assert got['dfs_replication_copies_total{result="lost"}'] == 1
    assert got["dfs_replication_bytes_total"] == 3 * MiB


def test_journal_records_and_group_commits(tmp_path: Path) -> None:
    async def run() -> tuple[dict[str, float], FileJournal]:
        journal = FileJournal(str(tmp_path / "journal"))
        journal.load()
        counters = MetaCounters(journal, Replicator(make_cluster(0)))
        before = scrape(counters)
        await asyncio.gather(*(journal.append(["mkdir", f"/d{i}", False, 1.0])
                               for i in range(5)))
        await journal.append(["mkdir", "/last", False, 1.0])
        after = scrape(counters)
        await journal.close()
        assert before["dfs_journal_records_total"] == 0
        assert before["dfs_journal_sync_duration_seconds_count"] == 0
        return after, journal
    after, journal = asyncio.run(run())
    assert after["dfs_journal_records_total"] == 6
    # One observation per group commit: as many as fdatasyncs, fewer than records.
    assert after["dfs_journal_sync_duration_seconds_count"] == journal.syncs
    assert 1 <= journal.syncs <= 6
    assert after["dfs_journal_sync_duration_seconds_sum"] > 0


def test_chunk_counters_add_up_every_checksum_failure() -> None:
    service = SimpleNamespace(read_bytes=10, written_bytes=20, checksum_failures=1,
                              copier=SimpleNamespace(checksum_failures=2), on_pipeline=None)
    scrubber: Any = None
    counters = ChunkCounters(service, lambda: scrubber)  # type: ignore[arg-type]
    got = scrape(counters)
    assert got["dfs_chunk_checksum_failures_total"] == 3  # no scrubber yet: counts 0
    assert got["dfs_chunk_scrubbed_bytes_total"] == 0
    scrubber = SimpleNamespace(scrubbed_bytes=4096, checksum_failures=4)
    service.on_pipeline(0.2)  # the hook the collector installed
    got = scrape(counters)
    assert got["dfs_chunk_read_bytes_total"] == 10
    assert got["dfs_chunk_written_bytes_total"] == 20
    assert got["dfs_chunk_checksum_failures_total"] == 7
    assert got["dfs_chunk_scrubbed_bytes_total"] == 4096
    assert got['dfs_chunk_pipeline_duration_seconds_bucket{le="0.25"}'] == 1
    assert got['dfs_chunk_pipeline_duration_seconds_bucket{le="0.1"}'] == 0
