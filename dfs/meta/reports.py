"""Messages from chunkservers: registration, block reports and heartbeats.

Owns how meta learns where replicas are and what it tells chunkservers to do; the block map
itself is cluster.py's and repair decisions are replication.py's. Kept apart from the client
requests in service.py: these handlers change no namespace and journal nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .. import config
from ..errors import BadRequest
from ..net import ServerConnection
from ..protocol.fields import rows, text, uint
from .cluster import Cluster
from .replication import Replicator
from .uploads import EPOCH_BITS, BlockIds

log = logging.getLogger(__name__)

REPORT_ROW = ("id", "gen", "size", "digest")
Reply = dict[str, Any]


class ChunkserverReports:
    def __init__(self, cluster: Cluster, replicator: Replicator, ids: BlockIds,
                 cluster_id: str, heartbeat_interval: float,
                 roll_epoch: Callable[[], None]) -> None:
        self.cluster = cluster
        self.replicator = replicator
        self.ids = ids
        self.cluster_id = cluster_id
        self.heartbeat_interval = heartbeat_interval
        self.roll_epoch = roll_epoch  # journal a newer block id epoch, in the background

    def handle_register(self, h: dict[str, Any], payload: memoryview,
                        conn: ServerConnection) -> Reply:
        """A chunkserver (re)joins with its stats and the first page of its block report
        (the rest follow as `block_report` requests)."""
        sid, addr = text(h, "chunk_id"), text(h, "addr")
        cid = h.get("cluster_id") or ""
        if cid and self.cluster_id and cid != self.cluster_id:
            raise BadRequest(f"chunkserver belongs to cluster {cid}, this meta is "
                             f"{self.cluster_id}")
        try:
            config.parse_addr(addr)
            if not addr.isprintable() or " " in addr:
                raise ValueError(addr)
        except ValueError:
            raise BadRequest(f"chunkserver address {addr!r} is not HOST:PORT") from None
        stats = self._stats(h)
        report = rows(h, "blocks", REPORT_ROW)
        # Everything is valid: only now does the chunkserver exist for placement.
        cs = self.cluster.register(sid, addr, time.monotonic())
        self.cluster.heartbeat(cs, *stats, time.monotonic())
        self._reported(cs.id, report)
        log.info("chunkserver %s registered (%s): %d blocks reported, %d kept",
                 addr, sid, len(report), len(cs.blocks))
        return {"cluster_id": self.cluster_id, "heartbeat_interval": self.heartbeat_interval}

    def _reported(self, server_id: str, report: list[list[int]]) -> None:
        cs = self.cluster.servers[server_id]
        self.cluster.block_report(cs, report)
        newest = max((e[0] >> EPOCH_BITS for e in report), default=0)
        if self.ids.seen(newest):  # a clock set back, and a lost journal
            log.warning("%s holds block ids of epoch %d, newer than this meta's %d: "
                        "moving to a newer epoch", cs.addr, newest, self.ids.epoch)
            if self.ids.epoch:  # (a read-only meta takes it when it journals its first epoch)
                self.roll_epoch()

    def handle_block_report(self, h: dict[str, Any], payload: memoryview,
                            conn: ServerConnection) -> Reply:
        """One page of a block report. Pages after a registration add replicas; pages of a
        periodic full report (`full`, from `first` to `last`) also let meta find replicas the
        server no longer has."""
        cs = self.cluster.servers.get(text(h, "chunk_id"))
        if cs is None or cs.addr != h.get("addr"):
            return {"reregister": True}
        report = rows(h, "blocks", REPORT_ROW)
        full = bool(h.get("full"))
        if full and h.get("first"):
            self.cluster.begin_full_report(cs)
        self._reported(cs.id, report)
        if full:
            self.cluster.note_full_report(cs, report)
            if h.get("last"):
                self.replicator.check_all(self.cluster.end_full_report(cs))
        return {}

    @staticmethod
    def _stats(h: dict[str, Any]) -> tuple[int, int, int, int, int]:
        """capacity, used, free, load, writing from a register or heartbeat."""
        c, u, f, lo, w = (uint(h, k, 0) for k in ("capacity", "used", "free", "load", "writing"))
        return c, u, f, lo, w

    def handle_heartbeat(self, h: dict[str, Any], payload: memoryview,
                         conn: ServerConnection) -> Reply:
        cs = self.cluster.servers.get(text(h, "chunk_id"))
        if cs is None or cs.addr != h.get("addr"):
            return {"reregister": True}
        stats = self._stats(h)
        received = rows(h, "received", REPORT_ROW)
        corrupt = rows(h, "corrupt", ("id", "gen"))
        self.cluster.heartbeat(cs, *stats, time.monotonic())
        for block_id, _gen in corrupt:  # found by the chunkserver's scrubber
            if self.cluster.bad_replica(block_id, cs.addr):
                self.replicator.check(block_id)
        if received:
            self._reported(cs.id, received)
            for entry in received:
                self.replicator.arrived(entry[0], cs.id)
        return {"commands": self.cluster.take_commands(cs)}

