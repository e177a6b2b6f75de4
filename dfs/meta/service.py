"""The metadata service: one `handle_<op>` per request, over the namespace, journal and block map.

Owns the rules that tie the pieces together: a change is applied in memory, appended to the
journal in the same order, and acknowledged only once the journal has fsynced it (group commit).
Uploads are invisible until `commit` publishes them. It never carries file bytes.

Journal records (see meta.journal for the framing):
    ["epoch", n]                                         a meta start; block ids are (n << 32) | k
    ["mkdir", path, parents, mtime]
    ["publish", path, [[id, gen, size], ...], replication, block_size, mtime]
    ["rm", path, recursive, mtime]
    ["mv", src, dst, mtime]
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import time
from typing import Any, Awaitable

from .. import config
from ..errors import BadRequest, DFSError, NoSpace, NotFound, Unavailable
from ..net import NO_SECURITY, Security, ServerConnection
from . import checkpoint
from .cluster import BlockInfo, Cluster
from .journal import JournalCorrupt, JournalStore
from .namespace import Block, Dir, File, Namespace, Node, normalise, walk
from .placement import choose_targets
from .replication import Replicator

log = logging.getLogger(__name__)


class Upload:
    __slots__ = ("id", "path", "replication", "block_size", "blocks", "touched")

    def __init__(self, uid: int, path: str, replication: int, block_size: int, now: float):
        self.id, self.path = uid, path
        self.replication, self.block_size = replication, block_size
        self.blocks: list[int] = []
        self.touched = now


def _int(header: dict[str, Any], key: str, default: int | None = None) -> int:
    v = header.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(f"field {key!r} must be an integer")
    return v


def _addrs(header: dict[str, Any], key: str) -> list[str]:
    v = header.get(key) or []
    if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
        raise BadRequest(f"field {key!r} must be a list of addresses")
    return v


def _report(header: dict[str, Any], key: str,
            fields: tuple[str, ...] = ("id", "gen", "size")) -> list[list[int]]:
    """A block report: a list of integer lists shaped like `fields` ([id, gen, size])."""
    v = header.get(key) or []
    if not isinstance(v, list) or not all(
            isinstance(e, list) and len(e) == len(fields) and all(isinstance(x, int) for x in e)
            for e in v):
        raise BadRequest(f"field {key!r} must be a list of [{', '.join(fields)}]")
    return v


def _str(header: dict[str, Any], key: str) -> str:
    v = header.get(key)
    if not isinstance(v, str):
        raise BadRequest(f"field {key!r} must be a string")
    return v



def _is_int(v: Any) -> bool:
    """An integer on the wire: not a bool, not a float that compares equal to one."""
    return type(v) is int

class MetaService:
    def __init__(self, journal: JournalStore, addr: str, *, cluster_id: str = "",
                 dead_timeout: float = config.DEFAULT_DEAD_TIMEOUT,
                 heartbeat_interval: float = config.DEFAULT_HEARTBEAT_INTERVAL,
                 upload_lease: float = config.UPLOAD_LEASE,
                 checkpoint_path: str | None = None, checkpoint_interval: float = 3600.0,
                 checkpoint_records: int = 100_000,
                 orphan_grace: float = config.UPLOAD_LEASE,
                 delete_grace: float = config.DELETE_GRACE,
                 security: Security = NO_SECURITY) -> None:
        self.journal = journal
        self.addr = addr
        self.cluster_id = cluster_id
        self.heartbeat_interval = heartbeat_interval
        self.upload_lease = upload_lease
        self.ns = Namespace(time.time())
        self.cluster = Cluster(dead_timeout)
        self.replicator = Replicator(self.cluster)
        self.uploads: dict[int, Upload] = {}
        self.epoch = 0
        self._next_block = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.safe_mode = False
        self.safe_until = 0.0
        self.checkpoint_path = checkpoint_path
        self.orphan_grace = orphan_grace
        self.delete_grace = delete_grace
        self.security = security  # signs the block tokens chunkservers check
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_records = checkpoint_records
        self._last_checkpoint = time.monotonic()
        self._checkpointing = False

    # start-up -------------------------------------------------------------------------
    async def start(self) -> None:
        """Replay the journal, then journal a new epoch so block ids never repeat."""
        # Millions of long-lived objects are about to be made: the cyclic GC would rescan
        # them over and over while they are created, so it waits until they exist.
        gc.disable()
        try:
            records = self._load()
        finally:
            gc.enable()
            gc.freeze()  # what was loaded lives as long as the process: stop rescanning it
        self.epoch += 1
        await self.journal.append(["epoch", self.epoch])
        log.info("meta loaded %d journal records after its checkpoint: %d files, %d blocks; "
                 "epoch %d", len(records), self.ns.files, self.ns.blocks, self.epoch)
        # Safe mode: locations are rebuilt from chunkservers' reports, so nothing is
        # declared missing or copied until each block has been reported or the wait is over.
        self.cluster.now = time.monotonic()
        self.safe_until = self.cluster.now + self.cluster.dead_timeout
        self.safe_mode = True
        self._sweeper = asyncio.ensure_future(self._sweep())

    def _load(self) -> list[list[Any]]:
        """Checkpoint, then the journal since; returns the journal records replayed."""
        cp = checkpoint.read(self.checkpoint_path) if self.checkpoint_path else None
        if cp is not None:
            checkpoint.load(cp, self.ns)
            self.epoch = cp.epoch
        records = self.journal.load()
        if cp is not None:
            if self.journal.gen == cp.gen:  # crashed before the journal was rotated
                records = records[cp.count:]
            elif self.journal.gen != cp.gen + 1:
                raise JournalCorrupt(getattr(self.journal, "path", "journal"), 0,
                                     f"journal generation {self.journal.gen} does not follow "
                                     f"checkpoint generation {cp.gen}")
        for rec in records:
            self._replay(rec)
        for _path, f in self._all_files():
            for b in f.blocks:
                self.cluster.add_block(b.id, BlockInfo(b.gen, b.size, f.replication))
        return records

    def _check_safe_mode(self, now: float) -> None:
        if not self.safe_mode:
            return
        complete = self.cluster.every_block_reported()
        if complete or now >= self.safe_until:
            self.safe_mode = False
            for block_id in self.cluster.blocks:
                self.replicator.check(block_id)
            log.info("leaving safe mode: %s; checking every block's replication",
                     "every block reported" if complete else "the wait for reports is over")

    async def checkpoint(self) -> None:
        """Write the namespace to the checkpoint file, then start a new journal generation
        holding only what came after it, so restart time follows the namespace's size, not
        its history. The snapshot is taken in one step of the event loop: one moment."""
        if self.checkpoint_path is None or self._checkpointing:
            return
        self._checkpointing = True
        try:
            gen, count = self.journal.mark()
            data = checkpoint.snapshot(self.ns, gen, count, self.epoch)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, checkpoint.write, self.checkpoint_path, data)
            except OSError as exc:
                self.journal.unmark()
                log.error("checkpoint failed (the journal keeps everything): %s", exc)
                return
            await self.journal.rotate()
            self._last_checkpoint = time.monotonic()
            log.info("checkpoint written: %d files, %d bytes; journal generation %d starts",
                     self.ns.files, len(data), gen + 1)
        finally:
            self._checkpointing = False

    def _checkpoint_due(self, now: float) -> bool:
        count = self.journal.count
        return self.checkpoint_path is not None and not self._checkpointing and (
            count >= self.checkpoint_records
            or (count > 1 and now - self._last_checkpoint >= self.checkpoint_interval))

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.checkpoint()
        await self.journal.close()

    def _replay(self, rec: list[Any]) -> None:
        op = rec[0]
        if op == "epoch":
            self.epoch = max(self.epoch, rec[1])
        elif op == "mkdir":
            self.ns.mkdir(rec[1], rec[2], rec[3])
        elif op == "publish":
            blocks = [Block(*b) for b in rec[2]]
            self.ns.publish(rec[1], File(blocks, rec[3], rec[4], rec[5]))
        elif op == "rm":
            self.ns.remove(rec[1], rec[2], rec[3])
        elif op == "mv":
            self.ns.rename(rec[1], rec[2], rec[3])
        else:
            raise ValueError(f"unknown journal record {op!r}")

    def _all_files(self, root: Dir | None = None, prefix: str = "") -> list[tuple[str, File]]:
        return [(path, node) for path, node in walk(root or self.ns.root, prefix)
                if isinstance(node, File)]

    async def _sweep(self) -> None:
        """Liveness and upload leases, once a second."""
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat_interval))
            now = time.monotonic()
            self.cluster.now = now
            self.cluster.sweep_doomed(now)
            if not self.safe_mode:
                self.cluster.sweep_orphans(now, self.orphan_grace)
            for cs in self.cluster.expire(now):
                self.replicator.server_lost(cs.id)
            self._check_safe_mode(now)
            if not self.safe_mode:
                self._schedule_copies(now)
            if self._checkpoint_due(now):
                asyncio.ensure_future(self.checkpoint())
            for cs in self.cluster.live():
                if cs.decommission == "decommissioning" and self.replicator.drained(cs.id):
                    cs.decommission = "decommissioned"
                    log.info("chunkserver %s is decommissioned: every block it holds has "
                             "its replicas elsewhere; it can be taken away", cs.addr)
            for up in list(self.uploads.values()):
                if now - up.touched > self.upload_lease:
                    log.info("upload of %s expired after %.0fs without renewal; aborting",
                             up.path, self.upload_lease)
                    self._abort(up)

    def _schedule_copies(self, now: float) -> None:
        """Hand each new copy to its source chunkserver, to go out with its next heartbeat."""
        for copy in self.replicator.schedule(now):
            source = self.cluster.servers[copy.source]
            target = self.cluster.servers[copy.target]
            source.copies.append([copy.block, copy.gen, target.addr,
                                  self.security.issue(copy.block, copy.gen, "w")])
            log.info("re-replicating block %d: %s -> %s", copy.block, source.addr, target.addr)

    def _durable(self, record: list[Any], reply: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        fut = self.journal.append(record)

        async def wait() -> dict[str, Any]:
            try:
                await fut
            except OSError as exc:
                raise DFSError(f"metadata journal failed: {exc}") from None
            return reply
        return wait()

    # chunkservers ---------------------------------------------------------------------
    def handle_register(self, h: dict[str, Any], payload: memoryview,
                        conn: ServerConnection) -> dict[str, Any]:
        sid, addr = _str(h, "chunk_id"), _str(h, "addr")
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
        report = _report(h, "blocks")
        # Everything is valid: only now does the chunkserver exist for placement.
        cs = self.cluster.register(sid, addr, time.monotonic())
        self.cluster.heartbeat(cs, *stats, time.monotonic())
        self.cluster.block_report(cs, report)
        log.info("chunkserver %s registered (%s): %d blocks reported, %d kept",
                 addr, sid, len(report), len(cs.blocks))
        return {"cluster_id": self.cluster_id, "heartbeat_interval": self.heartbeat_interval}

    @staticmethod
    def _stats(h: dict[str, Any]) -> tuple[int, int, int, int, int]:
        """capacity, used, free, load, writing from a register or heartbeat."""
        stats = tuple(_int(h, k, 0) for k in ("capacity", "used", "free", "load", "writing"))
        if any(v < 0 for v in stats):
            raise BadRequest("chunkserver statistics must not be negative")
        return stats  # type: ignore[return-value]

    def handle_heartbeat(self, h: dict[str, Any], payload: memoryview,
                         conn: ServerConnection) -> dict[str, Any]:
        cs = self.cluster.servers.get(_str(h, "chunk_id"))
        if cs is None or cs.addr != h.get("addr"):
            return {"reregister": True}
        stats = self._stats(h)
        received = _report(h, "received")
        corrupt = _report(h, "corrupt", ("id", "gen"))
        self.cluster.heartbeat(cs, *stats, time.monotonic())
        for block_id, _gen in corrupt:  # found by the chunkserver's scrubber
            if self.cluster.bad_replica(block_id, cs.addr):
                self.replicator.check(block_id)
        if received:
            self.cluster.block_report(cs, received)
            for entry in received:
                self.replicator.arrived(entry[0], cs.id)
        if "full_report" in h:
            for block_id in self.cluster.full_report(cs, _report(h, "full_report")):
                self.replicator.check(block_id)
        commands: list[dict[str, Any]] = []
        if cs.deletes:
            commands.append({"op": "delete", "blocks": cs.deletes})
            cs.deletes = []
        if cs.copies:
            commands.append({"op": "replicate", "blocks": cs.copies})
            cs.copies = []
        return {"commands": commands}

    # uploads --------------------------------------------------------------------------
    def handle_create(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> dict[str, Any]:
        path = normalise(h.get("path"))
        replication = _int(h, "replication", config.DEFAULT_REPLICATION)
        block_size = _int(h, "block_size", config.DEFAULT_BLOCK_SIZE)
        if not 1 <= replication <= config.MAX_REPLICATION:
            raise BadRequest(f"replication must be 1..{config.MAX_REPLICATION}")
        if not config.MIN_BLOCK_SIZE <= block_size <= config.MAX_BLOCK_SIZE or \
                block_size % config.CHECKSUM_CHUNK:
            raise BadRequest(f"block size must be a multiple of {config.CHECKSUM_CHUNK} "
                             f"between {config.MIN_BLOCK_SIZE} and {config.MAX_BLOCK_SIZE}")
        self.ns.check_file_path(path)
        uid = secrets.randbits(63) or 1
        up = self.uploads[uid] = Upload(uid, path, replication, block_size, time.monotonic())
        reply: dict[str, Any] = {"upload": uid, "path": path}
        if h.get("first_block"):  # saves a small file's writer a round trip to add_block
            try:
                reply["first"] = self._allocate(up, set())
            except DFSError:
                pass  # no room or no server now: the writer's add_block reports it, if needed
        return reply

    def _upload(self, h: dict[str, Any]) -> Upload:
        up = self.uploads.get(_int(h, "upload"))
        if up is None:
            # Not NotFound: that word is kept for paths. The upload must start again.
            raise Unavailable("the upload is no longer known to meta (its lease expired, it "
                              "was aborted, or meta restarted); upload the file again")
        up.touched = time.monotonic()
        return up

    def _place(self, up: Upload, count: int, exclude: set[str]) -> list[str]:
        chosen = choose_targets(self.cluster.candidates(), count, up.block_size, exclude)
        for c in chosen:
            cs = self.cluster.by_addr[c.addr]
            cs.pending += up.block_size
        return [c.addr for c in chosen]

    def _no_targets(self) -> DFSError:
        live = self.cluster.live()
        if not live:
            return Unavailable("no live chunkservers")
        if all(cs.decommission for cs in live):
            return Unavailable("every live chunkserver is decommissioned or being drained")
        return NoSpace("no live chunkserver has room for another block")

    def handle_add_block(self, h: dict[str, Any], payload: memoryview,
                         conn: ServerConnection) -> dict[str, Any]:
        return self._allocate(self._upload(h), set(_addrs(h, "exclude")))

    def _allocate(self, up: Upload, exclude: set[str]) -> dict[str, Any]:
        """A new block for the upload and the chain of servers to write it to."""
        targets = self._place(up, up.replication, exclude)
        if not targets:
            raise self._no_targets()
        if self._next_block >= 1 << 32:
            raise Unavailable("block ids of this meta epoch are exhausted; restart meta")
        block_id = (self.epoch << 32) | self._next_block
        self._next_block += 1
        self.cluster.add_block(block_id, BlockInfo(1, 0, up.replication, up.id))
        up.blocks.append(block_id)
        return {"block": block_id, "gen": 1, "targets": targets,
                "token": self.security.issue(block_id, 1, "w")}

    def handle_recover_block(self, h: dict[str, Any], payload: memoryview,
                             conn: ServerConnection) -> dict[str, Any]:
        """A pipeline failed: new generation, survivors kept, dead ones replaced if we can."""
        up = self._upload(h)
        block_id = _int(h, "block")
        if block_id not in up.blocks:
            raise BadRequest(f"block {block_id} is not part of this upload")
        exclude = set(_addrs(h, "exclude"))
        live = {cs.addr for cs in self.cluster.live()}
        keep = [a for a in _addrs(h, "keep") if a in live and a not in exclude]
        extra = self._place(up, up.replication - len(keep), exclude | set(keep))
        targets = keep + extra
        if not targets:
            if self.cluster.live() and not extra:
                raise Unavailable(f"no chunkserver left to write block {block_id} to "
                                  f"(excluded {', '.join(sorted(exclude))})")
            raise self._no_targets()
        gen = self.cluster.bump_generation(block_id)
        log.info("pipeline recovery of block %d: gen %d, targets %s (excluded %s)",
                 block_id, gen, targets, sorted(exclude))
        return {"block": block_id, "gen": gen, "targets": targets,
                "token": self.security.issue(block_id, gen, "w")}

    def handle_renew(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> dict[str, Any]:
        self._upload(h)
        return {}

    def handle_commit(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> Awaitable[dict[str, Any]]:
        up = self._upload(h)
        entries = h.get("blocks")
        if not isinstance(entries, list) or len(entries) > len(up.blocks):
            raise BadRequest("commit needs the list of written blocks")
        blocks: list[Block] = []
        acked: list[list[str]] = []
        seen: set[int] = set()
        for i, e in enumerate(entries):
            if not isinstance(e, list) or len(e) != 4:
                raise BadRequest("each committed block is [id, gen, size, replicas]")
            block_id, gen, size, replicas = e
            if not isinstance(replicas, list) or not all(isinstance(a, str) for a in replicas):
                raise BadRequest("a block's replicas must be a list of addresses")
            info = self.cluster.blocks.get(block_id) if _is_int(block_id) else None
            if info is None or info.upload != up.id or not _is_int(gen) or info.gen != gen:
                raise BadRequest(f"block {block_id} gen {gen} is not the upload's current block")
            if not _is_int(size) or not 0 < size <= up.block_size or \
                    (i < len(entries) - 1 and size != up.block_size):
                raise BadRequest(f"block {block_id} has a bad size {size!r}")
            if block_id in seen:
                raise BadRequest(f"block {block_id} is listed twice")
            seen.add(block_id)
            blocks.append(Block(block_id, gen, size))
            acked.append(replicas)
        # Publish first: if the path cannot take the file (a directory appeared there since
        # create), nothing has changed yet and the client's abort reclaims the blocks.
        now = time.time()
        old = self.ns.publish(up.path, File(blocks, up.replication, up.block_size, now))
        del self.uploads[up.id]
        for b, replicas in zip(blocks, acked, strict=True):
            info = self.cluster.blocks[b.id]
            info.size, info.upload = b.size, 0
            for addr in replicas:
                self.cluster.add_replica(b.id, b.gen, addr)
                cs = self.cluster.by_addr.get(addr)
                if cs is not None:  # a whole block was promised; only `size` was used
                    cs.pending = max(0, cs.pending - (up.block_size - b.size))
        kept = {b.id for b in blocks}
        for block_id in up.blocks:
            if block_id not in kept:
                self.cluster.drop_block(block_id)
        if old is not None:
            self._garbage([old])
        under = [str(b.id) for b in blocks
                 if len(self.cluster.live_replicas(b.id)) < up.replication]
        for block_id in under:
            self.replicator.check(int(block_id))
        record = ["publish", up.path, [b.to_list() for b in blocks], up.replication,
                  up.block_size, now]
        return self._durable(record, {"path": up.path, "under_replicated": under})

    def handle_abort(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> dict[str, Any]:
        up = self.uploads.get(_int(h, "upload"))
        if up is not None:
            self._abort(up)
        return {}

    def _abort(self, up: Upload) -> None:
        self.uploads.pop(up.id, None)
        for block_id in up.blocks:
            self.cluster.drop_block(block_id)

    def _garbage(self, files: list[File]) -> None:
        """Blocks of removed or replaced files: deleted after `delete_grace`, so a reader
        that opened the old version just before can finish (HDFS deletes at the next
        heartbeat and such a reader fails; we keep the common race harmless)."""
        due = time.monotonic() + self.delete_grace if self.delete_grace > 0 else 0.0
        for f in files:
            for b in f.blocks:
                self.cluster.drop_block(b.id, due)

    # namespace ------------------------------------------------------------------------
    def _entry(self, path: str, node: Node, blocks: bool) -> dict[str, Any]:
        if isinstance(node, Dir):
            return {"path": path, "type": "dir", "size": 0, "mtime": node.mtime,
                    "entries": len(node.children)}
        out: dict[str, Any] = {"path": path, "type": "file", "size": node.size,
                               "replication": node.replication, "block_size": node.block_size,
                               "mtime": node.mtime}
        if blocks:
            out["blocks"] = [{"id": str(b.id), "gen": b.gen, "size": b.size,
                              "replicas": self.cluster.live_replicas(b.id)}
                             for b in node.blocks]
            if self.security.authenticating:  # read tokens for the chunkservers
                for b, entry in zip(node.blocks, out["blocks"], strict=True):
                    entry["token"] = self.security.issue(b.id, b.gen, "r")
        return out

    def handle_stat(self, h: dict[str, Any], payload: memoryview,
                    conn: ServerConnection) -> dict[str, Any]:
        path = normalise(h.get("path"))
        return self._entry(path, self.ns.lookup(path), blocks=bool(h.get("blocks", True)))

    def handle_ls(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> dict[str, Any]:
        path = normalise(h.get("path"))
        start_after = h.get("start_after") or ""
        limit = min(_int(h, "limit", 1000), config.MAX_LS_PAGE)
        if not isinstance(start_after, str) or limit < 1:
            raise BadRequest("bad ls paging")
        node = self.ns.lookup(path)
        if not isinstance(node, Dir):
            return {"entries": [self._entry(path, node, False)], "more": False}
        entries, more = self.ns.listdir(path, start_after, limit)
        if h.get("columns"):
            return self._ls_columns(path, entries, more)
        base = "" if path == "/" else path
        out: list[dict[str, Any]] = []
        budget = config.MAX_HEADER // 2  # a page must always fit in one reply frame
        for name, node in entries:
            budget -= len(base) + len(name.encode()) + 160
            if budget < 0 and out:
                more = True
                break
            out.append(self._entry(f"{base}/{name}", node, False))
        return {"entries": out, "more": more}

    @staticmethod
    def _ls_columns(path: str, entries: list[tuple[str, Node]], more: bool) -> dict[str, Any]:
        """A page of a listing as columns of plain values: names relative to the directory,
        no repeated keys. About 4x more entries per frame than a list of maps, and far less
        to build and encode: a 100,000-entry `ls` is a few pages, not 35."""
        names: list[str] = []
        is_dir: list[bool] = []
        size: list[int] = []
        mtime: list[float] = []
        replication: list[int] = []
        block_size: list[int] = []
        budget = config.MAX_HEADER // 2
        for name, node in entries:
            budget -= len(name.encode()) + 40  # a name, a bool, four numbers of <= 9 bytes
            if budget < 0 and names:
                more = True
                break
            names.append(name)
            mtime.append(node.mtime)
            if isinstance(node, Dir):
                is_dir.append(True)
                size.append(len(node.children))  # for a directory: how many entries
                replication.append(0)
                block_size.append(0)
            else:
                is_dir.append(False)
                size.append(node.size)
                replication.append(node.replication)
                block_size.append(node.block_size)
        return {"path": path, "names": names, "dir": is_dir, "size": size, "mtime": mtime,
                "replication": replication, "block_size": block_size, "more": more}

    def handle_mkdir(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> Awaitable[dict[str, Any]] | dict[str, Any]:
        path = normalise(h.get("path"))
        parents = bool(h.get("parents"))
        now = time.time()
        if not self.ns.mkdir(path, parents, now):
            return {"path": path, "created": False}
        return self._durable(["mkdir", path, parents, now], {"path": path, "created": True})

    def handle_rm(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Awaitable[dict[str, Any]]:
        path = normalise(h.get("path"))
        recursive = bool(h.get("recursive"))
        now = time.time()
        removed = self.ns.remove(path, recursive, now)
        self._garbage(removed)
        return self._durable(["rm", path, recursive, now], {"files": len(removed)})

    def handle_mv(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Awaitable[dict[str, Any]]:
        src, dst = normalise(h.get("src")), normalise(h.get("dst"))
        now = time.time()
        final, replaced = self.ns.rename(src, dst, now)
        if replaced is not None:
            self._garbage([replaced])
        return self._durable(["mv", src, dst, now], {"path": final})

    def handle_report_bad(self, h: dict[str, Any], payload: memoryview,
                          conn: ServerConnection) -> dict[str, Any]:
        block_id = _int(h, "block")
        removed = self.cluster.bad_replica(block_id, _str(h, "replica"))
        if removed:
            self.replicator.check(block_id)
        return {"removed": removed}

    def handle_decommission(self, h: dict[str, Any], payload: memoryview,
                            conn: ServerConnection) -> dict[str, Any]:
        """Start draining a chunkserver: it takes no new blocks and each of its blocks is
        copied to servers in service; once all are, it is `decommissioned`."""
        addr = _str(h, "addr")
        try:
            host, port = config.parse_addr(addr)
        except ValueError:
            raise BadRequest(f"not a chunkserver address: {addr!r}") from None
        cs = self.cluster.by_addr.get(config.format_addr(host, port))
        if cs is None:
            raise NotFound(f"no chunkserver at {addr}")
        if not cs.decommission:
            cs.decommission = "decommissioning"
            self.replicator.needy.update(cs.blocks)
            log.info("decommissioning chunkserver %s: %d blocks to copy elsewhere", cs.addr,
                     len(cs.blocks))
        return {"addr": cs.addr, "state": cs.shown_state, "blocks": len(cs.blocks)}

    def handle_fsck(self, h: dict[str, Any], payload: memoryview,
                    conn: ServerConnection) -> dict[str, Any]:
        """Health of every block under a path (shape of `dfs-cli fsck --json`)."""
        path = normalise(h.get("path") or "/")
        node = self.ns.lookup(path)
        counts = {"healthy": 0, "under_replicated": 0, "missing": 0, "corrupt": 0}
        problems: list[dict[str, Any]] = []
        budget = config.MAX_HEADER // 2  # the reply must fit in one frame; counts stay exact
        files = blocks = 0
        if isinstance(node, File):
            found: list[tuple[str, File]] = [(path, node)]
        else:
            found = self._all_files(node, "" if path == "/" else path)
        for fpath, f in sorted(found, key=lambda t: t[0]):
            files += 1
            for b in f.blocks:
                blocks += 1
                state, live = self.cluster.health(b.id)
                counts[state] += 1
                if state != "healthy":
                    budget -= len(fpath) + 64 + sum(len(a) + 4 for a in live)
                    if budget > 0:
                        problems.append({"path": fpath, "block": str(b.id), "state": state,
                                         "replicas": live})
        out: dict[str, Any] = {"path": path, "files": files, "blocks": blocks, **counts,
                               "problems": problems}
        if sum(counts.values()) - counts["healthy"] > len(problems):
            out["problems_truncated"] = True
        return out

    def handle_status(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> dict[str, Any]:
        now = time.monotonic()
        servers = [{"id": cs.id, "addr": cs.addr, "state": cs.shown_state,
                    "blocks": len(cs.blocks),
                    "used": cs.used, "capacity": cs.capacity, "free": cs.free,
                    "last_heartbeat_s": round(now - cs.last_heartbeat, 3)}
                   for cs in sorted(self.cluster.servers.values(), key=lambda c: c.addr)]
        return {"meta": self.addr, "cluster_id": self.cluster_id, "files": self.ns.files,
                "safe_mode": self.safe_mode,
                "safe_mode_s": round(max(0.0, self.safe_until - now), 1) if self.safe_mode
                else 0.0,
                "blocks": self.ns.blocks, "uploads": len(self.uploads), "pid": os.getpid(),
                "chunkservers": servers}
