"""The repair hold: when most chunkservers fall silent at once, meta is likelier the one cut
off than they all died together, so it orders no copies until they come back.

Owns only the hold's state, and never does I/O: the service calls `update()` every liveness
tick, right after the dead timeout has been applied, and orders copies only while `held` is
empty. Without the hold, meta cut off from its chunkservers (a switch port, a firewall rule on
meta's host) declares them dead one tick apart; in that tick the last ones still count as live,
so copies are ordered between them and carried out as soon as the link heals, and when every
server is back each such block has a replica too many, trimmed at once: a storm of copies
and deletes of good replicas for servers that never lost a byte.

Rules (docs/OPERATIONS.md, "Meta cut off from its chunkservers"):
- a server is *quiet* when it is live but has not been heard from for `stale_after` (a few
  heartbeats), or when it was declared dead in this very tick;
- the hold starts when at least two servers, and at least half of those live before, are
  quiet at once: meta logs it and orders no copies (nor deletes orphans) while it lasts;
- it ends when every held server is heard from again; or a dead timeout after the first of
  them came back (the others are really gone); or, when none came back, after `hold_max`
  provided some server is live to repair from and to (the mass death was real). With no live
  server there is nothing to repair, and ending the hold then would only bring the storm
  back when they return one by one.
"""

from __future__ import annotations

import logging
from typing import Iterable

from .cluster import ChunkServer, Cluster

log = logging.getLogger(__name__)


def quiet_after(dead_timeout: float, heartbeat_interval: float) -> float:
    """How long a live server may go unheard before it counts as quiet: half the dead
    timeout, but never less than two heartbeat intervals (a server that beats every 3 s is
    unheard for up to 3 s in the normal course; with a 3.5 s dead timeout, half of it would
    call every healthy server quiet between two beats and hold repair whenever one died),
    and never more than the dead timeout."""
    return min(dead_timeout, max(dead_timeout / 2, 2 * heartbeat_interval))


class RepairHold:
    def __init__(self, cluster: Cluster, stale_after: float, hold_max: float) -> None:
        self.cluster = cluster
        self.stale_after = stale_after
        self.hold_max = hold_max
        self.held: set[str] = set()  # ids of the servers that fell silent together
        self.since = 0.0
        self.first_back: float | None = None
        self.holds = 0  # holds started since meta started (status, tests)

    def update(self, now: float, died: Iterable[ChunkServer] = ()) -> bool:
        """Start or end the hold; True when repair may go on (no hold)."""
        died = list(died)
        if not self.held:
            self._maybe_start(now, died)
        else:
            self._maybe_end(now)
        return not self.held

    def _heard(self, cs: ChunkServer, now: float) -> bool:
        return cs.state == "live" and now - cs.last_heartbeat <= self.stale_after

    def _maybe_start(self, now: float, died: list[ChunkServer]) -> None:
        live = [cs for cs in self.cluster.servers.values() if cs.state == "live"]
        quiet = [cs for cs in live if not self._heard(cs, now)] + died
        if len(quiet) < 2 or 2 * len(quiet) < len(live) + len(died):
            return
        self.held = {cs.id for cs in quiet}
        self.since, self.first_back = now, None
        self.holds += 1
        log.warning("%d of %d chunkservers fell silent at once (%s): meta is likelier cut "
                    "off from them than they all died; no re-replication until they are "
                    "heard from again", len(quiet), len(live) + len(died),
                    ", ".join(sorted(cs.addr for cs in quiet)))

    def _maybe_end(self, now: float) -> None:
        servers = self.cluster.servers
        back = [sid for sid in self.held if sid in servers and self._heard(servers[sid], now)]
        if len(back) == len(self.held):
            self._end(now, "every one of them is heard from again")
        elif back:
            if self.first_back is None:
                self.first_back = now
            elif now - self.first_back >= self.cluster.dead_timeout:
                self._end(now, f"{len(self.held) - len(back)} of them stayed silent for a "
                               "dead timeout after the first came back")
        elif now - self.since >= self.hold_max and self.cluster.live():
            self._end(now, f"none came back in {self.hold_max:g}s")

    def _end(self, now: float, why: str) -> None:
        log.warning("repair hold over after %.1fs: %s; re-replicating what lacks replicas",
                    now - self.since, why)
        self.held = set()
        self.first_back = None
