"""Prometheus metrics of a dfsd, in the text format `/metrics` serves.

Gauges are read from the daemon's own state at scrape time (so `dfs_files` is exactly what
`status` says at that moment); requests are counted and timed by the protocol server's
`observe` hook, one cached child per (op, result), so the cost on the hot path is a dict
lookup, an increment and a histogram bucket. Label values are bounded: ops are the
service's handler names, results the error codes of dfs/errors.py, states a fixed list;
never a path, a block id or a peer address.

Counters of the daemon's own work (journal records, replication copies, bytes read, written and
scrubbed, checksum failures) are plain ints the core modules bump themselves; MetaCounters and
ChunkCounters turn them into counter families at scrape time, so the core never imports
prometheus and a daemon without --http-port pays one integer add per event. Durations (a
journal group commit, a block stream) reach a `Durations` accumulator through a hook the
collector installs (`on_sync`, `on_pipeline`: None without --http-port).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from ..chunk.blockstore import BlockStore
    from ..chunk.scrubber import Scrubber
    from ..chunk.service import ChunkService
    from ..meta.journal import FileJournal
    from ..meta.replication import Replicator
    from ..meta.service import MetaService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("live", "dead", "decommissioning", "decommissioned")
# Requests: a stat answered from memory takes ~20 us, a commit waits for an fsync (~ms).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0, 10.0)
# A block stream: a small block over loopback takes ms, a 1 GiB block from a slow client minutes.
PIPELINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0)


class RequestMetrics:
    """`<prefix>_requests_total{op,result}` and `<prefix>_request_duration_seconds{op}`;
    `observe` is what Server.observe calls."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.total = Counter(f"{prefix}_requests", "Requests answered, by op and result "
                             "(ok or the error code)", ["op", "result"], registry=registry)
        self.duration = Histogram(f"{prefix}_request_duration_seconds",
                                  "Time from a request's arrival to its reply, by op", ["op"],
                                  buckets=BUCKETS, registry=registry)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, op: str, result: str, seconds: float) -> None:
        child = self._children.get((op, result))
        if child is None:
            child = self._children[(op, result)] = (self.total.labels(op, result),
                                                    self.duration.labels(op))
        child[0].inc()
        child[1].observe(seconds)


class Durations:
    """A histogram with fixed buckets kept as plain numbers: `observe` is a bisect and two
    adds (no lock: it is only called on the event loop), `family` makes the exposition."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last: +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le: bound >= value
        self.sum += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets, total = [], 0
        for le, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += n
            buckets.append((floatToGoString(le), total))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class MetaCounters(Collector):
    """The journal's and the replicator's counters; installs the journal's `on_sync`."""

    def __init__(self, journal: "FileJournal", replicator: "Replicator") -> None:
        self.journal = journal
        self.replicator = replicator
        self.syncs = Durations(BUCKETS)
        journal.on_sync = self.syncs.observe

    def collect(self) -> Iterator[Metric]:
        yield counter("dfs_journal_records", "Journal records appended since meta started",
                      self.journal.appended)
        yield self.syncs.family("dfs_journal_sync_duration_seconds",
                                "Time of each journal group commit: one write and one "
                                "fdatasync for every record queued meanwhile")
        copies = CounterMetricFamily("dfs_replication_copies", "Re-replication copies "
                                     "ended, by result (ok, timeout, lost: a server left)",
                                     labels=["result"])
        for result, n in self.replicator.outcomes.items():
            copies.add_metric([result], n)
        yield copies
        yield counter("dfs_replication_bytes", "Bytes of re-replication copies that arrived",
                      self.replicator.copied_bytes)


class ChunkCounters(Collector):
    """The chunkserver's counters (service, copier, scrubber); installs `on_pipeline`.
    `scrubber()`: the scrubber, or None before the daemon has made it (counts 0 until then)."""

    def __init__(self, service: "ChunkService",
                 scrubber: Callable[[], "Scrubber | None"]) -> None:
        self.service = service
        self.scrubber = scrubber
        self.pipelines = Durations(PIPELINE_BUCKETS)
        service.on_pipeline = self.pipelines.observe

    def collect(self) -> Iterator[Metric]:
        svc, scrub = self.service, self.scrubber()
        scrubbed, rotten = (scrub.scrubbed_bytes, scrub.checksum_failures) if scrub else (0, 0)
        yield counter("dfs_chunk_read_bytes", "Bytes served by read_block", svc.read_bytes)
        yield counter("dfs_chunk_written_bytes", "Bytes of replicas made durable here: "
                      "pipelines, small writes and copies received", svc.written_bytes)
        yield counter("dfs_chunk_checksum_failures", "Checksum mismatches this server found: "
                      "in packets received, in replicas read, copied or scrubbed",
                      svc.checksum_failures + svc.copier.checksum_failures + rotten)
        yield counter("dfs_chunk_scrubbed_bytes", "Bytes the scrubber read and checked",
                      scrubbed)
        yield self.pipelines.family("dfs_chunk_pipeline_duration_seconds",
                                    "Time from a block stream's open to its final ack")


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class MetaCollector(Collector):
    """The namespace and the cluster as meta sees them now."""

    def __init__(self, service: "MetaService") -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        svc = self.service
        yield gauge("dfs_files", "Files in the namespace", svc.ns.files)
        yield gauge("dfs_directories", "Directories in the namespace, / included",
                    svc.ns.dirs)
        yield gauge("dfs_blocks", "Blocks of committed files", svc.ns.blocks)
        health = block_health(svc)
        for key in ("under_replicated", "missing", "corrupt"):
            yield gauge(f"dfs_blocks_{key}", f"Committed blocks {key.replace('_', '-')} "
                        "(each block once, even when copies share it)", health[key])
        states = GaugeMetricFamily("dfs_chunkservers", "Chunkservers by state",
                                   labels=["state"])
        shown = [cs.shown_state for cs in svc.cluster.servers.values()]
        for state in STATES:
            states.add_metric([state], shown.count(state))
        yield states
        live = [cs for cs in svc.cluster.servers.values() if cs.shown_state == "live"]
        yield gauge("dfs_capacity_bytes", "Capacity of live chunkservers",
                    sum(cs.capacity for cs in live))
        yield gauge("dfs_used_bytes", "Bytes used on live chunkservers",
                    sum(cs.used for cs in live))
        yield gauge("dfs_safe_mode", "1 while meta is in safe mode", int(svc.safe_mode))
        yield gauge("dfs_chunkserver_failed_dirs", "Failed data dirs of live chunkservers",
                    sum(1 for cs in live for d in cs.dirs if d["state"] == "failed"))


class ChunkCollector(Collector):
    """This chunkserver's store."""

    def __init__(self, store: "BlockStore", writing: Callable[[], int]) -> None:
        self.store = store
        self.writing = writing

    def collect(self) -> Iterator[GaugeMetricFamily]:
        capacity, used, _free = self.store.stats()
        yield gauge("dfs_chunk_blocks", "Replicas stored here", len(self.store.index))
        yield gauge("dfs_chunk_used_bytes", "Bytes used by replicas", used)
        yield gauge("dfs_chunk_capacity_bytes", "Capacity offered to meta", capacity)
        yield gauge("dfs_chunk_pipelines", "Block streams being written now", self.writing())
        vols = self.store.volumes.all
        yield gauge("dfs_chunk_data_dirs", "Data dirs this chunkserver was started with",
                    len(vols))
        yield gauge("dfs_chunk_failed_dirs", "Data dirs that have failed (EIO, read-only) "
                    "since start", sum(1 for v in vols if v.failed))


class HaCollector(Collector):
    """An HA meta's role, term and takeovers, and the active's namespace gauges while it is
    the active one (a standby's namespace is the active's, a moment behind)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        yield gauge("dfs_ha_is_active", "1 on the active meta (its lease good by its own "
                    "clock), 0 on a standby", 1 if node.confident() else 0)
        yield gauge("dfs_ha_term", "The election term this meta knows of", node.term)
        yield counter("dfs_ha_failovers", "Times this meta took over as the active one",
                      node.failovers)
        service = node.service
        if service is not None:
            yield from MetaCollector(service).collect()
            yield counter("dfs_journal_records", "Journal records appended since this meta "
                          "became the active one", service.journal.appended)


def block_health(svc: "MetaService") -> dict[str, int]:
    """Committed blocks that need care, by state. Only the replicator's queue and the copies
    in flight are looked at: a block that may have lost a replica is queued (Replicator.check
    on a lost server, a bad report, a commit short of replicas, the end of safe mode) and
    stays queued until it is whole, which is also what repairs it. So a scrape costs what is
    wrong, not the size of the cluster (a pass over every block took ~1 us each)."""
    counts = {"under_replicated": 0, "missing": 0, "corrupt": 0}
    rep, blocks = svc.replicator, svc.cluster.blocks
    for block_id in rep.needy | rep.inflight.keys():
        info = blocks.get(block_id)
        if info is not None and not info.upload:
            state = svc.cluster.health(block_id)[0]
            if state != "healthy":
                counts[state] += 1
    return counts


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
