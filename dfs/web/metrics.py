"""Prometheus metrics of a dfsd, in the text format `/metrics` serves.

Gauges are read from the daemon's own state at scrape time (so `dfs_files` is exactly what
`status` says at that moment); requests are counted and timed by the protocol server's
`observe` hook, one cached child per (op, result), so the cost on the hot path is a dict
lookup, an increment and a histogram bucket. Label values are bounded: ops are the
service's handler names, results the error codes of dfs/errors.py, states a fixed list;
never a path, a block id or a peer address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..chunk.blockstore import BlockStore
    from ..meta.service import MetaService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("live", "dead", "decommissioning", "decommissioned")
# Requests: a stat answered from memory takes ~20 us, a commit waits for an fsync (~ms).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5, 5.0, 10.0)


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
                    count_dirs(svc.ns.root))
        yield gauge("dfs_blocks", "Blocks of committed files", svc.ns.blocks)
        health = block_health(svc.cluster)
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


def block_health(cluster: Any) -> dict[str, int]:
    """Committed blocks by health state: one pass over the block map, no sorting."""
    counts = {"healthy": 0, "under_replicated": 0, "missing": 0, "corrupt": 0}
    for block_id, info in cluster.blocks.items():
        if not info.upload:
            counts[cluster.health(block_id)[0]] += 1
    return counts


def count_dirs(root: Any) -> int:
    """Directories under root, root included: a walk of the tree, the same cost as `du /`."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(c for c in node.children.values() if hasattr(c, "children"))
    return count


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
