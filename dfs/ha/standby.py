"""What a standby meta keeps of the chunkservers' messages: who is alive, their stats, and
every replica each one reported, as reported. Chunkservers heartbeat to every meta, so when
a standby takes over it already knows where every block is and can serve locations as soon as
its block map is built (`hand_over`), instead of waiting for a round of full reports.

A standby orders nothing: its replies carry no commands (the node adds the `ha` field that
tells chunkservers whom to obey), and a held poll_commands request is simply answered empty
when it times out or when this meta takes over.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable

from ..errors import BadRequest
from ..meta.cluster import Cluster
from ..meta.reports import MAX_POLL_WAIT, REPORT_ROW, dirs_of, registering
from ..net import ServerConnection
from ..protocol.fields import rows, text, uint

Reply = dict[str, Any]


class Seen:
    """One chunkserver as a standby knows it."""

    __slots__ = ("id", "addr", "stats", "last", "blocks", "reporting", "dirs")

    def __init__(self, sid: str, addr: str) -> None:
        self.id, self.addr = sid, addr
        self.stats = (0, 0, 0, 0, 0)
        self.last = 0.0
        self.blocks: dict[int, list[int]] = {}  # block id -> [id, gen, size, digest]
        self.reporting: dict[int, list[int]] | None = None  # a full report in progress
        self.dirs: list[dict[str, Any]] = []  # its data dirs, as the active keeps them


class StandbyReports:
    def __init__(self, cluster_id: str, heartbeat_interval: float) -> None:
        self.cluster_id = cluster_id
        self.heartbeat_interval = heartbeat_interval
        self.servers: dict[str, Seen] = {}
        self._release = asyncio.Event()

    @staticmethod
    def _stats(h: dict[str, Any]) -> tuple[int, int, int, int, int]:
        c, u, f, lo, w = (uint(h, k, 0) for k in ("capacity", "used", "free", "load", "writing"))
        return c, u, f, lo, w

    def _known(self, h: dict[str, Any]) -> Seen | None:
        s = self.servers.get(text(h, "chunk_id"))
        return s if s is not None and s.addr == h.get("addr") else None

    def handle_register(self, h: dict[str, Any], payload: memoryview,
                        conn: ServerConnection) -> Reply:
        sid, addr = registering(h, self.cluster_id)
        s = self.servers[sid] = Seen(sid, addr)
        s.stats, s.last, s.dirs = self._stats(h), time.monotonic(), dirs_of(h)
        for e in rows(h, "blocks", REPORT_ROW):
            s.blocks[e[0]] = e
        return {"cluster_id": self.cluster_id, "heartbeat_interval": self.heartbeat_interval}

    def handle_block_report(self, h: dict[str, Any], payload: memoryview,
                            conn: ServerConnection) -> Reply:
        s = self._known(h)
        if s is None:
            return {"reregister": True}
        report = rows(h, "blocks", REPORT_ROW)
        if h.get("full"):
            if h.get("first") or s.reporting is None:
                s.reporting = {}
            for e in report:
                s.reporting[e[0]] = e
            if h.get("last"):
                s.blocks, s.reporting = s.reporting, None
        else:
            for e in report:
                s.blocks[e[0]] = e
        return {}

    def handle_heartbeat(self, h: dict[str, Any], payload: memoryview,
                         conn: ServerConnection) -> Reply:
        s = self._known(h)
        if s is None:
            return {"reregister": True}
        s.stats, s.last, s.dirs = self._stats(h), time.monotonic(), dirs_of(h)
        for e in rows(h, "received", REPORT_ROW):
            s.blocks[e[0]] = e
        for block_id, _gen in rows(h, "corrupt", ("id", "gen")):
            s.blocks.pop(block_id, None)
        return {"commands": []}

    def handle_poll_commands(self, h: dict[str, Any], payload: memoryview,
                             conn: ServerConnection) -> Reply | Awaitable[Reply]:
        if self._known(h) is None:
            return {"reregister": True}
        wait = h.get("wait", 0)
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or \
                not 0 <= wait <= MAX_POLL_WAIT:
            raise BadRequest(f"wait must be a number of seconds in 0..{MAX_POLL_WAIT:g}")
        return self._hold(float(wait))

    async def _hold(self, wait: float) -> Reply:
        try:
            await asyncio.wait_for(self._release.wait(), wait)
        except asyncio.TimeoutError:
            pass
        return {"commands": []}

    def release_polls(self) -> None:
        """Answer every held poll (this meta takes over or stops)."""
        self._release.set()

    def hand_over(self, cluster: Cluster, dead_timeout: float) -> int:
        """Enter every chunkserver heard from within the dead timeout, and what it reported,
        into the new active's cluster (whose block map is already built from the namespace).
        Returns the number of servers."""
        now = time.monotonic()
        n = 0
        for s in self.servers.values():
            if now - s.last > dead_timeout:
                continue
            cs = cluster.register(s.id, s.addr, s.last)
            cluster.heartbeat(cs, *s.stats, s.last)
            cs.dirs = s.dirs
            cluster.block_report(cs, list(s.blocks.values()))
            n += 1
        return n

    def chunkservers(self, dead_timeout: float) -> list[dict[str, Any]]:
        """What `status` shows of the chunkservers on a standby (the active's row shape)."""
        now = time.monotonic()
        return [{"id": s.id, "addr": s.addr,
                 "state": "live" if now - s.last <= dead_timeout else "dead",
                 "blocks": len(s.blocks), "used": s.stats[1], "capacity": s.stats[0],
                 "free": s.stats[2], "last_heartbeat_s": round(now - s.last, 3),
                 "dirs": s.dirs, "failed_dirs": sum(1 for d in s.dirs if d["state"] == "failed")}
                for s in sorted(self.servers.values(), key=lambda s: s.addr)]
