"""Re-replication: which blocks lack copies, and which copies to start now.

Owns the set of blocks that may be under-replicated and the copies in flight; it never does
I/O and never touches the namespace. The metadata service feeds it events (a chunkserver died,
a commit or a corrupt replica left a block short, a replica arrived) and asks `schedule()` for
copy commands at each liveness tick and whenever copies arrive, so a freed copy slot is used
again within milliseconds; the commands reach the sources through their held poll_commands
requests (reports.py), or else their next heartbeat reply.

Rules: blocks with the fewest live replicas go first; a copy goes from a live replica to a
live server that holds no copy and has room (placement's rules); each server takes part in at
most `max_copies` copies at once as a source and as many as a target, so repair never crowds
out client traffic; a copy that has not arrived by its deadline is forgotten and retried.

Cost: the needy blocks are sorted into a queue at most once every REBUILD_INTERVAL; between
rebuilds a schedule only pops the queue's front, so a server lost with a million blocks costs
one sort a second, not one per arrived copy.

Every copy ordered ends one way, counted in `outcomes` for /metrics (plain ints: the collector
in dfs/web/metrics.py reads them at scrape time): "ok" (the target reported it), "timeout" (its
deadline passed) or "lost" (its source or target left the cluster); `copied_bytes` adds up the
copies that arrived.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

from .. import config
from .cluster import Cluster
from .placement import choose_targets

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "timeout", "lost")  # how a copy ends: a fixed set, fit for a metric label
REBUILD_INTERVAL = 1.0  # seconds between sorts of the needy blocks into the queue
SCAN_LIMIT = 4096  # queued blocks looked at per schedule() when none of them can start


@dataclass
class Copy:
    block: int
    gen: int
    source: str  # chunkserver id
    target: str  # chunkserver id
    deadline: float


class Replicator:
    def __init__(self, cluster: Cluster, max_copies: int = config.MAX_COPIES,
                 copy_timeout: float = config.COPY_TIMEOUT) -> None:
        self.cluster = cluster
        self.max_copies = max_copies
        self.copy_timeout = copy_timeout
        self.needy: set[int] = set()
        self.inflight: dict[int, Copy] = {}
        self.sending: dict[str, int] = {}  # chunkserver id -> copies it is sending
        self.receiving: dict[str, int] = {}  # chunkserver id -> copies it is receiving
        self.outcomes = dict.fromkeys(OUTCOMES, 0)  # copies ended, by how (since start)
        self.copied_bytes = 0  # bytes of the copies that arrived (since start)
        self._queue: deque[int] = deque()  # needy blocks, most urgent first (see schedule)
        self._sorted_at = float("-inf")

    # events -----------------------------------------------------------------------------
    def check(self, block_id: int) -> None:
        """The block may have lost a replica: look at it at the next schedule."""
        self.needy.add(block_id)

    def check_all(self, block_ids: Iterable[int]) -> None:
        self.needy.update(block_ids)

    def server_lost(self, server_id: str) -> None:
        cs = self.cluster.servers.get(server_id)
        if cs is not None:
            self.needy.update(cs.blocks)
            self._sorted_at = float("-inf")  # sort them in at the next schedule
        self._lose_copies(server_id)

    def reregistered(self, server_id: str) -> None:
        """The server registered again: the copy orders queued for it were dropped, and any
        handed out on its old connection may have been lost with it. Its copies in flight
        end as "lost" and their blocks are looked at again, rather than waiting out the copy
        timeout short of a replica, with the copy slots taken. (A copy that did land is in
        the registration's report: the block is no longer short and starts nothing.)"""
        self._lose_copies(server_id)

    def _lose_copies(self, server_id: str) -> None:
        """End the copies in flight to or from this server as lost; look at their blocks."""
        for block_id, copy in list(self.inflight.items()):
            if server_id in (copy.source, copy.target):
                self._finish(block_id, "lost")
                self.needy.add(block_id)
                self._sorted_at = float("-inf")

    def arrived(self, block_id: int, server_id: str) -> bool:
        """A replica of the block was reported by `server_id`. True if it was the copy we
        ordered (its slots are free again)."""
        copy = self.inflight.get(block_id)
        if copy is None or copy.target != server_id:
            return False
        self._finish(block_id, "ok")
        info = self.cluster.blocks.get(block_id)
        self.copied_bytes += info.size if info is not None else 0
        self.needy.add(block_id)  # it may still need more copies
        return True

    def _finish(self, block_id: int, outcome: str) -> None:
        copy = self.inflight.pop(block_id)
        self.outcomes[outcome] += 1
        self.sending[copy.source] = self.sending.get(copy.source, 1) - 1
        self.receiving[copy.target] = self.receiving.get(copy.target, 1) - 1

    def progress(self) -> dict[str, Any]:
        """Repair as `status` shows it: blocks that may lack replicas (checked, not yet
        whole), copies in flight, and since start the bytes copied and how copies ended."""
        return {"needy": len(self.needy), "copying": len(self.inflight),
                "copied_bytes": self.copied_bytes, "copies": dict(self.outcomes)}

    # decisions --------------------------------------------------------------------------
    def live_count(self, block_id: int) -> int:
        return self.cluster.counted_replicas(block_id)

    def drained(self, server_id: str) -> bool:
        """Every block on a decommissioning server has R replicas elsewhere."""
        cs = self.cluster.servers[server_id]
        for block_id in cs.blocks:
            info = self.cluster.blocks.get(block_id)
            if info is not None and self.live_count(block_id) < info.replication:
                self.needy.add(block_id)
                return False
        return True

    def schedule(self, now: float) -> list[Copy]:
        """Copies to start now, most urgent first."""
        for block_id, copy in list(self.inflight.items()):
            if now > copy.deadline:
                log.warning("copy of block %d to %s did not arrive in time; will retry",
                            block_id, copy.target)
                self._finish(block_id, "timeout")
                self.needy.add(block_id)
        if self.needy and (not self._queue or now - self._sorted_at >= REBUILD_INTERVAL):
            self._sort(now)
        started: list[Copy] = []
        waiting: list[int] = []  # could not start now (no slot on its servers): stay queued
        scanned = 0
        while self._queue and scanned < SCAN_LIMIT and self._room():
            block_id = self._queue.popleft()
            if block_id in self.inflight or block_id not in self.needy or \
                    not self._still_short(block_id):
                continue
            planned = self._plan(block_id, now)
            if planned is not None:
                started.append(planned)
                scanned = 0
            else:
                waiting.append(block_id)
                scanned += 1
        self._queue.extendleft(reversed(waiting))
        return started

    def _sort(self, now: float) -> None:
        """Queue every needy block that can be copied now, fewest live replicas first."""
        work: list[tuple[int, int]] = []
        for block_id in list(self.needy):
            if not self._still_short(block_id):
                continue
            if block_id not in self.inflight and self.cluster.live_replicas(block_id):
                work.append((self.live_count(block_id), block_id))  # something live to copy
        work.sort()
        self._queue = deque(block_id for _, block_id in work)
        self._sorted_at = now

    def _still_short(self, block_id: int) -> bool:
        """Whether the block still lacks replicas; forgets it (and deletes the bad copies
        kept while it was short) when not."""
        info = self.cluster.blocks.get(block_id)
        if info is None or info.upload:
            self.needy.discard(block_id)  # deleted, or not committed yet
            return False
        if self.live_count(block_id) >= info.replication:
            self.needy.discard(block_id)
            self.cluster.delete_corrupt(block_id)  # whole again: bad copies can go
            return False
        return True

    def _room(self) -> bool:
        """Some live server could still send a copy and some could take one."""
        servers = [cs for cs in self.cluster.servers.values() if cs.state == "live"]
        return any(self.sending.get(cs.id, 0) < self.max_copies for cs in servers) and \
            any(self.receiving.get(cs.id, 0) < self.max_copies for cs in servers)

    def _plan(self, block_id: int, now: float) -> Copy | None:
        info = self.cluster.blocks[block_id]
        holders = [self.cluster.servers[sid] for sid in info.replicas
                   if sid in self.cluster.servers]
        sources = [cs for cs in holders if cs.state == "live"
                   and self.sending.get(cs.id, 0) < self.max_copies]
        if not sources:
            return None
        # Draining servers first: they have nothing else to do, the rest serve clients.
        source = min(sources, key=lambda cs: (not cs.decommission, self.sending.get(cs.id, 0)))
        held = {cs.addr for cs in holders}
        # A server whose corrupt copy is kept, or whose delete of it may not have run yet,
        # is no target for this block: that delete could remove the new copy.
        held.update(cs.addr for sid in info.corrupt or {}
                    if (cs := self.cluster.servers.get(sid)) is not None
                    and not self.cluster.bad_copy_gone(info, cs))
        # Nor is one told to delete its extra replica of it that may not have done so yet
        # (cluster.trim): the copy would land first and that delete remove it.
        candidates = [c for c in self.cluster.candidates()
                      if self.receiving.get((cs := self.cluster.by_addr[c.addr]).id, 0)
                      < self.max_copies and block_id not in cs.deleting]
        chosen = choose_targets(candidates, 1, max(info.size, 1), held)
        if not chosen:
            return None
        target = self.cluster.by_addr[chosen[0].addr]
        target.pending += info.size
        copy = Copy(block_id, info.gen, source.id, target.id, now + self.copy_timeout)
        self.inflight[block_id] = copy
        self.sending[source.id] = self.sending.get(source.id, 0) + 1
        self.receiving[target.id] = self.receiving.get(target.id, 0) + 1
        return copy
