"""The metadata service: one `handle_<op>` per request, tying together the namespace, the
journal, the block map, uploads and re-replication. It never carries file bytes.

Rule for every change: check it can be made (the journal has room, the request is valid),
apply it in memory, append its record to the journal in the same order, and acknowledge it only
once the journal has made that record durable (group commit). The record formats and replay
are in records.py, the upload rules in uploads.py, what is shown in views.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import Any, Awaitable, Callable

import msgpack

from .. import config
from ..errors import AlreadyExists, BadRequest, DFSError, NoSpace, NotADirectory, NotFound, TooLarge
from ..net import NO_SECURITY, Security, ServerConnection
from ..protocol.fields import addrs, attrs, mtime, text, uint
from . import records, views
from .checkpointer import Checkpointer
from .cluster import ChunkServer, Cluster
from .hold import RepairHold, quiet_after
from .journal import JournalStore
from .namespace import Dir, File, Namespace, every_file, normalise
from .replication import Replicator
from .reports import ChunkserverReports
from .uploads import Uploads, block_size_ok

log = logging.getLogger(__name__)

LIVENESS_TICK = 0.25  # seconds between checks for chunkservers past the dead timeout
# Under-replicated block ids a commit reply lists at most (then it gives their count too):
# 10,000 ids of up to 22 bytes each keep it well inside a frame.
UNDER_LISTED = 10_000

Reply = dict[str, Any]


class MetaService:
    def __init__(self, journal: JournalStore, addr: str, *, cluster_id: str = "",
                 dead_timeout: float = config.DEFAULT_DEAD_TIMEOUT,
                 heartbeat_interval: float = config.DEFAULT_HEARTBEAT_INTERVAL,
                 upload_lease: float = config.UPLOAD_LEASE,
                 checkpoint_path: str | None = None,
                 checkpoint_interval: float = config.CHECKPOINT_INTERVAL,
                 checkpoint_records: int = config.CHECKPOINT_RECORDS,
                 orphan_grace: float = config.ORPHAN_GRACE,
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
        # No copies while most chunkservers are silent at once (meta cut off, likelier than
        # all of them dead): see hold.py.
        self.hold = RepairHold(self.cluster,
                               stale_after=quiet_after(dead_timeout, heartbeat_interval),
                               hold_max=config.REPAIR_HOLD_MAX * dead_timeout)
        self.uploads = Uploads(self.cluster)
        self.commits = records.Commits()
        self._sweeper: asyncio.Task[None] | None = None
        self._epoch_task: asyncio.Future[None] | None = None
        self._last_epoch = 0  # the newest epoch journaled or being journaled
        self.safe_mode = False
        self.safe_until = 0.0
        self.repair_after = 0.0  # monotonic: an HA meta that took over orders nothing before
        self.checkpointer = Checkpointer(checkpoint_path, journal, checkpoint_interval,
                                         checkpoint_records)
        self.orphan_grace = orphan_grace
        self.delete_grace = delete_grace
        self.security = security  # signs the block tokens chunkservers check
        self.reports = reports = ChunkserverReports(
            self.cluster, self.replicator, self.uploads.ids, cluster_id, heartbeat_interval,
            self._roll_epoch, lambda: self._schedule_copies(time.monotonic()))
        self.handle_register = reports.handle_register
        self.handle_block_report = reports.handle_block_report
        self.handle_heartbeat = reports.handle_heartbeat
        self.handle_poll_commands = reports.handle_poll_commands

    @property
    def epoch(self) -> int:
        """The block id epoch in use (0 before one is journaled)."""
        return self.uploads.ids.epoch

    # start-up -------------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild the namespace and block map from checkpoint and journal, journal a new
        block id epoch, and enter safe mode until chunkservers have reported."""
        # Millions of long-lived objects are about to be made: the cyclic GC would rescan
        # them over and over while they are created, so it waits until they exist.
        gc.disable()
        try:
            restored = records.restore(self.ns, self.journal, self.checkpointer.path,
                                       self.cluster)
            if restored.changed:  # the journal changed files since: the tree says which
                self.cluster.blocks.clear()
                self.cluster.adopt(every_file(self.ns.root))
        finally:
            gc.enable()
            gc.freeze()  # what was loaded lives as long as the process: stop rescanning it
        self._last_epoch = restored.epoch
        self.commits = restored.commits
        self.cluster.decommissions = restored.decommission  # before any server registers
        if self.journal.full:
            log.error("meta starts read-only: no room to journal changes (see above)")
        else:
            await self._new_epoch()
        log.info("meta loaded %d journal records after its checkpoint: %d files, %d blocks; "
                 "epoch %d", restored.records, self.ns.files, self.ns.blocks, self.epoch)
        # Safe mode: locations are rebuilt from chunkservers' reports, so nothing is
        # declared missing or copied until each block has been reported or the wait is over.
        now = time.monotonic()
        self.cluster.tick(now)
        self.safe_until = now + self.cluster.dead_timeout
        self.safe_mode = True
        self._sweeper = asyncio.ensure_future(self._sweep())

    def adopt(self, ns: Namespace, restored: records.Restored,
              hand_over: Callable[[Cluster], int]) -> int:
        """Take over as an HA active: the namespace a standby kept current, and the
        chunkservers it heard from (`hand_over` enters them into our cluster; returns their
        count). Then safe mode until every block is reported, and no repair, no orphan
        deletion and no commands for a dead timeout: what the standby heard may be a little
        behind. `begin()` then journals a new epoch."""
        gc.disable()
        try:
            self.ns = ns
            self.cluster.blocks.clear()
            self.cluster.adopt(every_file(ns.root))
        finally:
            gc.enable()
        self._last_epoch = restored.epoch
        self.commits = restored.commits
        self.cluster.decommissions = dict(restored.decommission)  # before hand_over registers
        servers = hand_over(self.cluster)
        now = time.monotonic()
        self.cluster.tick(now)
        self.safe_until = self.repair_after = now + self.cluster.dead_timeout
        self.safe_mode = True
        self._sweeper = asyncio.ensure_future(self._sweep())
        return servers

    async def begin(self) -> None:
        """An adopted namespace's first write: a new block id epoch."""
        await self._new_epoch()

    def abandon(self, exc: DFSError) -> None:
        """This meta lost the lead (HA): stop at once, failing what waits on the journal;
        no checkpoint (the namespace may hold changes etcd refused)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        fail = getattr(self.journal, "fail", None)
        if fail is not None:
            fail(exc)
        self.reports.release_polls()

    async def _new_epoch(self) -> None:
        """Journal the next block id epoch and allocate from it once it is durable; again if
        a report asked for a newer one meanwhile."""
        ids = self.uploads.ids
        while not ids.epoch or ids.epoch < ids.wanted or ids.running_low:
            epoch = ids.after(max(self._last_epoch, ids.epoch), time.time())
            self._last_epoch = epoch
            await self.journal.append(records.epoch(epoch))
            ids.begin(epoch)

    def _roll_epoch(self) -> None:
        """Start journaling a new epoch in the background (ids of this one run low, or a
        chunkserver reported ids from an epoch at least as new). A failure is the journal's
        and is logged (fatally) there."""
        if self._epoch_task is None or self._epoch_task.done():
            self._epoch_task = asyncio.ensure_future(self._new_epoch())
            self._epoch_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _check_safe_mode(self, now: float) -> None:
        if not self.safe_mode:
            return
        complete = self.cluster.every_block_reported()
        if complete or now >= self.safe_until:
            self.safe_mode = False
            self.replicator.check_all(self.cluster.blocks)
            log.info("leaving safe mode: %s; checking every block's replication",
                     "every block reported" if complete else "the wait for reports is over")

    async def checkpoint(self) -> None:
        await self.checkpointer.write(self.ns, self._last_epoch, self._digest,
                                      self.cluster.decommissions)

    def _digest(self, block_id: int) -> int | None:
        info = self.cluster.blocks.get(block_id)
        return info.digest if info is not None else None

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if not self.journal.full:
            await self.checkpoint()
        await self.journal.close()

    async def _sweep(self) -> None:
        """Every LIVENESS_TICK: liveness, and repair of what a dead server held, so a copy
        starts within a tick of the dead timeout. Once a second: leases, repair,
        decommissioning, checkpoints, and room in the journal while it is full."""
        period = min(1.0, self.heartbeat_interval)
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(LIVENESS_TICK, period))
            now = time.monotonic()
            dead = self.cluster.expire(now)
            for cs in dead:
                self.replicator.server_lost(cs.id)
            self.hold.update(now, dead)
            if now - last < period:
                if dead and not self.safe_mode:
                    self._schedule_copies(now)
                continue
            last = now
            self.cluster.tick(now)
            self.cluster.sweep_doomed(now)
            if not self.safe_mode and now >= self.repair_after and not self.hold.held:
                self.cluster.sweep_orphans(now, self.orphan_grace)
            self._check_safe_mode(now)
            if not self.safe_mode:
                self._schedule_copies(now)
            if self.journal.full:
                await self.journal.make_room()
            elif self.checkpointer.due(now):
                asyncio.ensure_future(self.checkpoint())
            if not self.journal.full and (not self.epoch or self.uploads.ids.running_low):
                self._roll_epoch()
            for cs in self.cluster.live():
                if cs.decommission == "decommissioning" and self.replicator.drained(cs.id):
                    self.cluster.decommissioned(cs)
                    log.info("chunkserver %s is decommissioned: every block it holds has "
                             "its replicas elsewhere; it can be taken away", cs.addr)
            for up in self.uploads.expired(now, self.upload_lease):
                log.info("upload of %s expired after %.0fs without renewal; aborting",
                         up.path, self.upload_lease)
                self.uploads.abort(up)

    def _schedule_copies(self, now: float) -> None:
        """Hand each new copy to its source chunkserver: at once to one holding a
        poll_commands request, else with its next heartbeat reply."""
        if now < self.repair_after or self.hold.held:
            return
        sources = set()
        for copy in self.replicator.schedule(now):
            target = self.cluster.servers[copy.target]
            self.cluster.order_copy(copy.source, copy.block, copy.gen, target.addr,
                                    self.security.issue(copy.block, copy.gen, "w"))
            sources.add(copy.source)
            log.info("re-replicating block %d: %s -> %s", copy.block,
                     self.cluster.servers[copy.source].addr, target.addr)
        self.reports.wake(sources)

    # changes --------------------------------------------------------------------------
    def _writable(self) -> None:
        """Refuse a change while the journal has no room (read-only), before anything moves."""
        if self.journal.full:
            where = os.path.dirname(os.path.abspath(getattr(self.journal, "path", ".")))
            raise NoSpace(f"meta's journal disk is full ({where}): meta is read-only until "
                          "space is freed there")

    def _answered(self, reply: Reply) -> Awaitable[Reply]:
        """A reply once every change journaled so far is durable: what a re-sent commit
        waits for, since the first one may still be on its way to the journal."""
        return self._durable(None, reply)

    def _durable(self, record: list[Any] | None, reply: Reply) -> Awaitable[Reply]:
        fut = self.journal.append(record) if record is not None else self.journal.synced()

        async def wait() -> Reply:
            try:
                await fut
            except DFSError:
                raise  # e.g. not_leader: this meta lost the lead before the change was kept
            except OSError as exc:
                raise DFSError(f"metadata journal failed: {exc}") from None
            return reply
        return wait()

    def _garbage(self, files: list[File]) -> None:
        """Blocks of removed or replaced files: deleted after `delete_grace`, so a reader
        that opened the old version just before can finish (HDFS deletes at the next
        heartbeat and such a reader fails; we keep the common race harmless)."""
        due = time.monotonic() + self.delete_grace if self.delete_grace > 0 else 0.0
        for f in files:
            for b in f.blocks:
                self.cluster.drop_block(b.id, due)

    # uploads --------------------------------------------------------------------------
    def handle_create(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> Reply:
        """Start an upload; with `first_block`, place its first block in the same reply."""
        self._writable()
        path = normalise(h.get("path"))
        replication = uint(h, "replication", config.DEFAULT_REPLICATION)
        block_size = uint(h, "block_size", config.DEFAULT_BLOCK_SIZE)
        expected = uint(h, "size") if "size" in h else None
        if not 1 <= replication <= config.MAX_REPLICATION:
            raise BadRequest(f"replication must be 1..{config.MAX_REPLICATION}")
        if not block_size_ok(block_size):
            raise BadRequest(f"block size must be a multiple of {config.CHECKSUM_UNIT} "
                             f"between {config.MIN_BLOCK_SIZE} and {config.MAX_BLOCK_SIZE}")
        if h.get("exclusive"):  # first: O_CREAT|O_EXCL onto a directory is EEXIST too
            self._refuse_existing(path)
        self.ns.check_file_path(path)
        up = self.uploads.create(path, replication, block_size, expected, time.monotonic())
        reply: Reply = {"upload": up.id, "path": path}
        if h.get("first_block"):  # saves a small file's writer a round trip to add_block
            try:
                reply["first"] = self._allocate(up.id, set())
            except DFSError:
                pass  # no room or no server now: the writer's add_block reports it, if needed
        return reply

    def _allocate(self, upload: int, exclude: set[str]) -> Reply:
        up = self.uploads.get(upload, time.monotonic())
        block_id, targets = self.uploads.allocate(up, exclude)
        return {"block": block_id, "gen": 1, "targets": targets,
                "token": self.security.issue(block_id, 1, "w"),
                "read_token": self.security.issue(block_id, 1, "r")}

    def handle_add_block(self, h: dict[str, Any], payload: memoryview,
                         conn: ServerConnection) -> Reply:
        self._writable()
        return self._allocate(uint(h, "upload"), set(addrs(h, "exclude")))

    def handle_recover_block(self, h: dict[str, Any], payload: memoryview,
                             conn: ServerConnection) -> Reply:
        """A pipeline failed: new generation, survivors kept, dead ones replaced if we can."""
        up = self.uploads.get(uint(h, "upload"), time.monotonic())
        block_id = uint(h, "block")
        exclude = set(addrs(h, "exclude"))
        gen, targets = self.uploads.recover(up, block_id, exclude, addrs(h, "keep"))
        log.info("pipeline recovery of block %d: gen %d, targets %s (excluded %s)",
                 block_id, gen, targets, sorted(exclude))
        return {"block": block_id, "gen": gen, "targets": targets,
                "token": self.security.issue(block_id, gen, "w"),
                "read_token": self.security.issue(block_id, gen, "r")}

    def handle_renew(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> Reply:
        self.uploads.get(uint(h, "upload"), time.monotonic())
        return {}

    def handle_commit(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> Awaitable[Reply]:
        """Publish the upload's file atomically, replacing any old one at its path."""
        self._writable()
        uid = uint(h, "upload")
        done = self.commits.get(uid) if uid not in self.uploads.by_id else None
        if done is not None:  # a commit sent again: it took effect, answer as before
            return self._answered({"path": done[0], "under_replicated": [], "mtime": done[1]})
        up = self.uploads.get(uid, time.monotonic())
        committed = self.uploads.check_commit(up, h.get("blocks"), uint(h, "block_start", 0))
        if h.get("exclusive"):  # checked again: another client may have published since
            self._refuse_existing(up.path)
        # A client keeping the local file's time (sync, put -p) sends it; else meta's clock.
        # The file holds the block map's records of its blocks (their size and digest are
        # set by finish, once the file is published).
        blocks = self.cluster.blocks
        f = File([blocks[b.id] for b, _, _ in committed], up.replication, up.block_size,
                 mtime(h, "mtime", time.time()), self.ns.attrs(*attrs(h.get("attrs"))))
        self._fits_the_journal(up.path, committed)
        # Publish first: if the path cannot take the file (a directory appeared there since
        # create), nothing has changed yet and the client's abort reclaims the blocks.
        old = self.ns.publish(up.path, f)
        self.uploads.finish(up, committed)
        if old is not None:
            self._garbage([old])
        under = [str(b.id) for b in f.blocks
                 if len(self.cluster.live_replicas(b.id)) < up.replication]
        self.replicator.check_all(int(b) for b in under)
        record = records.publish(up.path, f, [d for _, _, d in committed], up.id)
        self.commits.add(up.id, up.path, f.mtime)
        reply: Reply = {"path": up.path, "under_replicated": under[:UNDER_LISTED],
                        "mtime": f.mtime}
        if len(under) > UNDER_LISTED:  # the reply must fit in a frame, whatever the file
            reply["under_replicated_count"] = len(under)
        return self._durable(record, reply)

    def _fits_the_journal(self, path: str, committed: list[Any]) -> None:
        """A journal with a record size limit (etcd's, for an HA meta) must be able to take
        the file's record, checked before anything changes: a record it refused after the
        namespace changed would stall every later change behind it."""
        limit = getattr(self.journal, "max_record", None)
        if limit is None:
            return
        blocks = [[b.id, b.gen, b.size, d] for b, _, d in committed]
        size = len(msgpack.packb(blocks)) + len(path.encode()) + 64
        if size > limit:
            raise TooLarge(f"a file of {len(blocks)} blocks makes a journal record of "
                           f"{size} bytes, more than the HA journal in etcd takes ({limit}): "
                           "use larger blocks, or raise etcd's --max-request-bytes and "
                           "DFS_HA_MAX_RECORD")

    def handle_commit_part(self, h: dict[str, Any], payload: memoryview,
                           conn: ServerConnection) -> Reply:
        """Record the head of an upload's block list ahead of its commit, for a file whose
        list does not fit in one frame. Kept with the upload in memory: nothing is visible
        or journaled until the commit, and an abort or an expired lease drops it too."""
        self._writable()
        up = self.uploads.get(uint(h, "upload"), time.monotonic())
        return {"recorded": self.uploads.add_part(up, uint(h, "block_start"),
                                                  h.get("blocks"))}

    def _refuse_existing(self, path: str) -> None:
        """An exclusive create (`open(path, "xb")`) fails once anything is at the path."""
        try:
            self.ns.lookup(path)
        except (NotFound, NotADirectory):
            return
        raise AlreadyExists(path)

    def handle_abort(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> Reply:
        up = self.uploads.by_id.get(uint(h, "upload"))
        if up is not None:
            self.uploads.abort(up)
        return {}

    # namespace ------------------------------------------------------------------------
    def handle_stat(self, h: dict[str, Any], payload: memoryview,
                    conn: ServerConnection) -> Reply:
        path = normalise(h.get("path"))
        page = None
        if "block_start" in h or "block_limit" in h:  # a client that pages block lists
            limit = min(uint(h, "block_limit", config.MAX_BLOCK_PAGE), config.MAX_BLOCK_PAGE)
            if limit < 1:
                raise BadRequest("field 'block_limit' must be at least 1")
            page = (uint(h, "block_start", 0), limit)
        return views.entry(path, self.ns.lookup(path), self.cluster, self.security,
                           blocks=bool(h.get("blocks", True)), page=page)

    def handle_ls(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Reply:
        path = normalise(h.get("path"))
        start_after = h.get("start_after") or ""
        limit = min(uint(h, "limit", 1000), config.MAX_LS_PAGE)
        if not isinstance(start_after, str) or limit < 1:
            raise BadRequest("bad ls paging")
        node = self.ns.lookup(path)
        if not isinstance(node, Dir):
            return {"entries": [views.entry(path, node, self.cluster, self.security, False)],
                    "more": False}
        if h.get("columns"):
            return views.ls_columns(path, *node.page(start_after, limit))
        entries, more = self.ns.listdir(path, start_after, limit)
        return views.ls_rows(path, entries, more, self.cluster, self.security)

    def handle_mkdir(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> Awaitable[Reply] | Reply:
        self._writable()
        path = normalise(h.get("path"))
        parents = bool(h.get("parents"))
        given = self.ns.attrs(*attrs(h.get("attrs")))
        now = time.time()
        if not self.ns.mkdir(path, parents, now, given):
            return {"path": path, "created": False}
        return self._durable(records.mkdir(path, parents, now, given),
                             {"path": path, "created": True})

    def handle_symlink(self, h: dict[str, Any], payload: memoryview,
                       conn: ServerConnection) -> Awaitable[Reply]:
        """A symbolic link at `path` holding `target` (stored, never followed by meta)."""
        self._writable()
        path = normalise(h.get("path"))
        target = text(h, "target")
        given = self.ns.attrs(*attrs(h.get("attrs")))
        now = time.time()
        self.ns.symlink(path, target, now, given)
        return self._durable(records.symlink(path, target, now, given), {"path": path})

    def handle_chattr(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> Awaitable[Reply]:
        """Set mode, uid and/or gid of a file, directory or link (chmod, chown): recorded
        and shown, not enforced."""
        self._writable()
        path = normalise(h.get("path"))
        mode, uid, gid = attrs(h, "chattr")
        self.ns.chattr(path, mode, uid, gid)
        return self._durable(records.chattr(path, mode, uid, gid), {"path": path})

    def handle_rm(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Awaitable[Reply]:
        self._writable()
        path = normalise(h.get("path"))
        recursive = bool(h.get("recursive"))
        now = time.time()
        removed = self.ns.remove(path, recursive, now)
        self._garbage(removed)
        return self._durable(records.rm(path, recursive, now), {"files": len(removed)})

    def handle_mv(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Awaitable[Reply]:
        self._writable()
        src, dst = normalise(h.get("src")), normalise(h.get("dst"))
        now = time.time()
        final, replaced = self.ns.rename(src, dst, now)
        if replaced is not None:
            self._garbage([replaced])
        return self._durable(records.mv(src, dst, now), {"path": final})

    def handle_cp(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Awaitable[Reply]:
        """Copy a file or tree inside the cluster: no bytes move, the copy shares the
        source's blocks (each block counts the files using it)."""
        self._writable()
        src, dst = normalise(h.get("src")), normalise(h.get("dst"))
        recursive = bool(h.get("recursive"))
        now = time.time()
        final, copied, replaced = self.ns.copy(src, dst, recursive, now,
                                               config.MAX_COPY_FILES)
        for f in copied:  # count the new users before the replaced file lets go of any
            for b in f.blocks:
                if self.cluster.share(b.id, f.replication):
                    self.replicator.check(b.id)
        if replaced is not None:
            self._garbage([replaced])
        return self._durable(records.cp(src, dst, recursive, now),
                             {"path": final, "files": len(copied)})

    def handle_setrep(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> Awaitable[Reply]:
        """Change the replication of a file or of every file under a directory; copies are
        added by re-replication, extra replicas deleted with the next heartbeats."""
        self._writable()
        path = normalise(h.get("path"))
        replication = uint(h, "replication")
        recursive = bool(h.get("recursive"))
        if not 1 <= replication <= config.MAX_REPLICATION:
            raise BadRequest(f"replication must be 1..{config.MAX_REPLICATION}")
        files, changed = self.ns.set_replication(path, replication, recursive)
        # Every file's blocks, changed or not: a block shared with a file since removed may
        # still want that file's higher replication, and this is when it is put right.
        for block_id, wanted in views.block_replication(self.ns.root, files,
                                                        self.cluster).items():
            if self.cluster.set_replication(block_id, wanted):
                self.replicator.check(block_id)
        return self._durable(records.setrep(path, replication, recursive),
                             {"path": path, "files": changed})

    def handle_touch(self, h: dict[str, Any], payload: memoryview,
                     conn: ServerConnection) -> Awaitable[Reply]:
        """Set a file's or directory's mtime (`mtime`, default now)."""
        self._writable()
        path = normalise(h.get("path"))
        when = mtime(h, "mtime", time.time())
        self.ns.touch(path, when)
        return self._durable(records.touch(path, when), {"path": path})

    def handle_du(self, h: dict[str, Any], payload: memoryview,
                  conn: ServerConnection) -> Reply:
        """Space used under a path; with `children`, one page of its entries' totals."""
        path = normalise(h.get("path"))
        node = self.ns.lookup(path)
        if not h.get("children"):
            return views.du(path, node, self.cluster)
        start_after = h.get("start_after") or ""
        if not isinstance(start_after, str):
            raise BadRequest("bad du paging")
        limit = min(uint(h, "limit", 1000), config.MAX_LS_PAGE)
        if limit < 1:
            raise BadRequest("bad du paging")
        entries, more = self.ns.listdir(path, start_after, limit)
        base = "" if path == "/" else path
        if not isinstance(node, Dir):
            base = path.rsplit("/", 1)[0]
        return views.du_page(base, entries, more, self.cluster)

    # repair and administration --------------------------------------------------------
    def handle_report_bad(self, h: dict[str, Any], payload: memoryview,
                          conn: ServerConnection) -> Reply:
        block_id = uint(h, "block")
        removed = self.cluster.bad_replica(block_id, text(h, "replica"))
        if removed:
            self.replicator.check(block_id)
        return {"removed": removed}

    def handle_decommission(self, h: dict[str, Any], payload: memoryview,
                            conn: ServerConnection) -> Awaitable[Reply]:
        """Start draining a chunkserver: it takes no new blocks and each of its blocks is
        copied to servers in service; once all are, it is `decommissioned`. With `cancel`,
        put it back in service. Journaled (by chunkserver id), so a restarted meta, or the
        HA meta that takes over, drains it again as soon as it registers."""
        self._writable()
        addr = text(h, "addr")
        try:
            host, port = config.parse_addr(addr)
        except ValueError:
            raise BadRequest(f"not a chunkserver address: {addr!r}") from None
        addr = config.format_addr(host, port)
        cs = self.cluster.by_addr.get(addr)
        if h.get("cancel"):
            return self._recommission(addr, cs)
        if cs is None:
            raise NotFound(f"no chunkserver at {addr}")
        reply = {"addr": cs.addr, "state": "decommissioning", "blocks": len(cs.blocks)}
        if not self.cluster.start_decommission(cs):  # already: once its record is durable
            return self._answered({**reply, "state": cs.shown_state})
        self.replicator.check_all(cs.blocks)
        log.info("decommissioning chunkserver %s (%s): %d blocks to copy elsewhere", cs.addr,
                 cs.id, len(cs.blocks))
        return self._durable(records.decommission(cs.id, cs.addr), reply)

    def _recommission(self, addr: str, cs: ChunkServer | None) -> Awaitable[Reply]:
        """End the decommission of the server at `addr`, or, when none is registered there,
        of every server that was decommissioned at that address (gone for good, say)."""
        if cs is not None:
            ids = [cs.id] if cs.id in self.cluster.decommissions else []
        else:
            ids = [sid for sid, was in self.cluster.decommissions.items() if was == addr]
            if not ids:
                raise NotFound(f"no chunkserver at {addr}, and none was decommissioned there")
        waits = []
        for sid in ids:
            self.cluster.end_decommission(sid)
            waits.append(self._durable(records.recommission(sid), {}))
            log.info("chunkserver %s (%s) is back in service: decommission cancelled", addr,
                     sid)
        reply = {"addr": addr, "state": cs.shown_state if cs is not None else "unknown",
                 "blocks": len(cs.blocks) if cs is not None else 0}

        async def done() -> Reply:
            for wait in waits or [self._answered({})]:
                await wait
            return reply
        return done()

    def handle_fsck(self, h: dict[str, Any], payload: memoryview,
                    conn: ServerConnection) -> Reply:
        """Health of every block under a path (shape of `dfs-cli fsck --json`)."""
        path = normalise(h.get("path") or "/")
        return views.fsck(path, self.ns.lookup(path), self.cluster)

    def handle_status(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> Reply:
        now = time.monotonic()
        out: Reply = {
            "meta": self.addr, "cluster_id": self.cluster_id, "files": self.ns.files,
            "safe_mode": self.safe_mode,
            "safe_mode_s": round(max(0.0, self.safe_until - now), 1) if self.safe_mode
            else 0.0,
            "read_only": self.journal.full,
            "repair_held": len(self.hold.held),
            "blocks": self.ns.blocks, "uploads": len(self.uploads), "pid": os.getpid(),
            "chunkservers": views.chunkservers(self.cluster, now),
            "repair": self.replicator.progress()}
        if self.journal.full:
            try:
                self._writable()
            except NoSpace as exc:
                out["read_only_reason"] = exc.msg
        return out
