"""Messages from chunkservers: registration, block reports and heartbeats.

Owns how meta learns where replicas are and what it tells chunkservers to do; the block map
itself is cluster.py's and repair decisions are replication.py's. Kept apart from the client
requests in service.py: these handlers change no namespace and journal nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable

from .. import config
from ..errors import BadRequest
from ..net import ServerConnection
from ..protocol.fields import rows, text, uint
from .cluster import ChunkServer, Cluster
from .replication import Replicator
from .uploads import EPOCH_BITS, BlockIds

log = logging.getLogger(__name__)

REPORT_ROW = ("id", "gen", "size", "digest")
Reply = dict[str, Any]
MAX_POLL_WAIT = 30.0  # the longest a poll_commands request is held open
COPIES_PER_REPLY = 10_000  # copy orders per reply, so it fits in a frame


def stale(cs: ChunkServer, conn: ServerConnection) -> bool:
    """A message from a chunkserver over a connection older than its latest registration
    (see ChunkServer.link): believed in nothing."""
    if cs.link is not None and conn is not cs.link:
        log.warning("%s: ignoring a message over a connection older than its latest "
                    "registration (held up in a link that was cut)", cs.addr)
        return True
    return False


def registering(h: dict[str, Any], cluster_id: str) -> tuple[str, str]:
    """The (id, address) a `register` names, once it may join: of this cluster, at an
    address clients can use. Shared by the active's handler and an HA standby's."""
    sid, addr = text(h, "chunk_id"), text(h, "addr")
    cid = h.get("cluster_id") or ""
    if cid and cluster_id and cid != cluster_id:
        raise BadRequest(f"chunkserver belongs to cluster {cid}, this meta is {cluster_id}")
    try:
        config.parse_addr(addr)
        if not addr.isprintable() or " " in addr:
            raise ValueError(addr)
    except ValueError:
        raise BadRequest(f"chunkserver address {addr!r} is not HOST:PORT") from None
    return sid, addr


DIR_FIELDS = ("blocks", "used", "capacity", "free", "lost")
MAX_DIRS = 256


def dirs_of(h: dict[str, Any]) -> list[dict[str, Any]]:
    """The data dirs a register or heartbeat describes (chunk/blockstore.py `dirs`), kept
    only as far as they are well formed: they are shown to operators, never acted on (the
    full block report that follows a dir's failure is what tells meta what was lost)."""
    raw = h.get("dirs")
    out: list[dict[str, Any]] = []
    if not isinstance(raw, list):
        return out
    for d in raw[:MAX_DIRS]:
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or \
                d.get("state") not in ("ok", "failed"):
            continue
        error = d.get("error")
        row: dict[str, Any] = {"path": d["path"][:4096], "state": d["state"],
                               "error": error[:1000] if isinstance(error, str) else ""}
        for key in DIR_FIELDS:
            value = d.get(key)
            row[key] = value if isinstance(value, int) and not isinstance(value, bool) \
                and value >= 0 else 0
        out.append(row)
    return out


class ChunkserverReports:
    def __init__(self, cluster: Cluster, replicator: Replicator, ids: BlockIds,
                 cluster_id: str, heartbeat_interval: float,
                 roll_epoch: Callable[[], None],
                 copies_arrived: Callable[[], None] = lambda: None) -> None:
        self.cluster = cluster
        self.replicator = replicator
        self.ids = ids
        self.cluster_id = cluster_id
        self.heartbeat_interval = heartbeat_interval
        self.roll_epoch = roll_epoch  # journal a newer block id epoch, in the background
        # Called when copies arrived: repair orders the next ones at once, not at the next
        # sweep, so a copy slot freed is a copy slot used.
        self.copies_arrived = copies_arrived
        self._polls: dict[str, asyncio.Future[None]] = {}  # chunkserver id -> held poll
        # False while commands must wait (an HA meta unsure of its lease, or just taken
        # over): they stay queued for a later reply.
        self.may_command: Callable[[], bool] = lambda: True

    def handle_register(self, h: dict[str, Any], payload: memoryview,
                        conn: ServerConnection) -> Reply:
        """A chunkserver (re)joins with its stats and the first page of its block report
        (the rest follow as `block_report` requests)."""
        sid, addr = registering(h, self.cluster_id)
        stats = self._stats(h)
        report = rows(h, "blocks", REPORT_ROW)
        # Registering forgets what meta believed the server (or one at its address before)
        # held; the report puts back what it still has. What it no longer has (deleted on an
        # order meta believed lost, say) is short of a replica now: look at it again. (A
        # report of many pages brings the rest after this one: a block of theirs may be
        # copied once needlessly, and trimmed.)
        known = self.cluster.servers.get(sid)
        before = set(known.blocks) if known is not None else set()
        taken = self.cluster.by_addr.get(addr)
        if taken is not None and taken is not known:
            before |= taken.blocks
        # Everything is valid: only now does the chunkserver exist for placement.
        cs = self.cluster.register(sid, addr, time.monotonic())
        cs.link = conn
        self.cluster.heartbeat(cs, *stats, time.monotonic())
        self._dirs(cs, dirs_of(h))
        self._reported(cs.id, report)
        self.replicator.reregistered(cs.id)
        self.replicator.check_all(before - cs.blocks)
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
        if cs is None or cs.addr != h.get("addr") or stale(cs, conn):
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
    def _dirs(cs: Any, dirs: list[dict[str, Any]]) -> None:
        """Keep the server's data dirs for status; log each one newly failed."""
        was = {d["path"] for d in cs.dirs if d["state"] == "failed"}
        for d in dirs:
            if d["state"] == "failed" and d["path"] not in was:
                log.warning("chunkserver %s: data dir %s has failed (%s); %d replicas lost "
                            "there will be re-replicated", cs.addr, d["path"], d["error"],
                            d["lost"])
        cs.dirs = dirs

    @staticmethod
    def _stats(h: dict[str, Any]) -> tuple[int, int, int, int, int]:
        """capacity, used, free, load, writing from a register or heartbeat."""
        c, u, f, lo, w = (uint(h, k, 0) for k in ("capacity", "used", "free", "load", "writing"))
        return c, u, f, lo, w

    def handle_heartbeat(self, h: dict[str, Any], payload: memoryview,
                         conn: ServerConnection) -> Reply:
        cs = self.cluster.servers.get(text(h, "chunk_id"))
        if cs is None or cs.addr != h.get("addr") or stale(cs, conn):
            return {"reregister": True}
        stats = self._stats(h)
        received = rows(h, "received", REPORT_ROW)
        corrupt = rows(h, "corrupt", ("id", "gen"))
        self.cluster.heartbeat(cs, *stats, time.monotonic())
        self._dirs(cs, dirs_of(h))
        for block_id, _gen in corrupt:  # found by the chunkserver's scrubber
            if self.cluster.bad_replica(block_id, cs.addr):
                self.replicator.check(block_id)
        if received:
            self._reported(cs.id, received)
            copies = [entry[0] for entry in received if self.replicator.arrived(entry[0], cs.id)]
            if copies:
                # Only for ordered copies: a block just written is reported by its replicas
                # one by one, and a schedule between two reports would copy it needlessly.
                self.copies_arrived()
        if not self.may_command():
            return {"commands": []}
        return {"commands": self.cluster.take_commands(cs)}

    # copy orders, pushed ----------------------------------------------------------------
    def handle_poll_commands(self, h: dict[str, Any], payload: memoryview,
                             conn: ServerConnection) -> Reply | Awaitable[Reply]:
        """A chunkserver's long poll for copy orders: answered as soon as repair orders a
        copy from it (see `wake`), or after `wait` seconds with none. Heartbeat replies carry
        orders too, but only every heartbeat interval: a copy would wait up to that long to
        start, and the next one as long again after it. Deletes stay with heartbeats, whose
        count tells when a delete has surely been carried out (cluster.bad_copy_gone)."""
        cs = self.cluster.servers.get(text(h, "chunk_id"))
        if cs is None or cs.addr != h.get("addr") or stale(cs, conn):
            return {"reregister": True}
        raw_wait = h.get("wait", 0)
        if not isinstance(raw_wait, (int, float)) or isinstance(raw_wait, bool) or \
                not 0 <= raw_wait <= MAX_POLL_WAIT:
            raise BadRequest(f"wait must be a number of seconds in 0..{MAX_POLL_WAIT:g}")
        if (cs.copies and self.may_command()) or not raw_wait:
            return {"commands": self._take_copies(cs.id)}
        return self._held(cs.id, float(raw_wait), conn)

    async def _held(self, server_id: str, wait: float, conn: ServerConnection) -> Reply:
        old = self._polls.pop(server_id, None)
        if old is not None and not old.done():
            old.set_result(None)  # one poll per server: the newer one takes over
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._polls[server_id] = fut
        try:
            await asyncio.wait_for(fut, wait)
        except asyncio.TimeoutError:
            pass
        finally:
            if self._polls.get(server_id) is fut:
                del self._polls[server_id]
        if conn.closed:  # nobody to hand orders to: they wait for the next poll or beat
            return {}
        if server_id not in self.cluster.servers:
            return {"reregister": True}
        return {"commands": self._take_copies(server_id)}

    def _take_copies(self, server_id: str) -> list[dict[str, Any]]:
        cs = self.cluster.servers[server_id]
        if not cs.copies or not self.may_command():
            return []
        orders = cs.copies[:COPIES_PER_REPLY]
        del cs.copies[:COPIES_PER_REPLY]
        return [{"op": "replicate", "blocks": orders}]

    def release_polls(self) -> None:
        """Answer every held poll now: meta is stopping, and it waits for the requests in
        flight before it hangs up."""
        self.wake(list(self._polls))

    def wake(self, server_ids: Iterable[str]) -> None:
        """Copies were ordered from these servers: answer their held polls now."""
        for sid in server_ids:
            fut = self._polls.get(sid)
            if fut is not None and not fut.done():
                fut.set_result(None)

