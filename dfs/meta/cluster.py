"""Chunkservers and the block map: who is alive, what they hold, what they must delete.

Owns chunkserver liveness and block locations, rebuilt from registrations, block reports and
heartbeats (never persisted, as in GFS and SeaweedFS). Never touches the disk or the network;
the service feeds it messages and carries its commands back in heartbeat replies. The one
thing here that is persisted is which chunkservers an operator decommissioned: the service
journals it (records.py) and hands it back at start-up (`decommissions`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Iterable

from .blocks import BlockInfo, exactly
from .namespace import File
from .placement import Candidate

log = logging.getLogger(__name__)


class ChunkServer:
    __slots__ = ("id", "addr", "capacity", "used", "free", "load", "state", "last_heartbeat",
                 "blocks", "pending", "writing", "deletes", "copies", "decommission", "beats",
                 "reporting", "deleting", "handed", "dirs", "link")

    def __init__(self, id: str, addr: str, now: float) -> None:
        self.id = id
        self.addr = addr
        self.capacity = 0
        self.used = 0
        self.free = 0
        self.load = 0
        self.state = "live"
        self.last_heartbeat = now
        self.blocks: set[int] = set()  # good replicas it holds
        self.pending = 0  # bytes promised to blocks allocated since its last heartbeat
        self.writing = 0
        self.deletes: list[list[int]] = []  # [block, gen] to delete, sent with the next reply
        self.copies: list[list[Any]] = []  # [block, gen, target addr, token] to send copies to
        # "" (in service), "decommissioning" (draining: serves reads, takes no new blocks,
        # its replicas do not count toward R) or "decommissioned" (drained).
        self.decommission = ""
        # Heartbeats and registrations processed: a delete handed out in the reply to beat n
        # has been carried out before beat n+1 is sent.
        self.beats = 0
        self.reporting: set[int] | None = None  # blocks in the full report being received
        # Blocks whose good replica here meta told this server to delete (an extra copy,
        # trimmed) and that may still be on its disk: queued in `deletes`, or handed out in
        # the reply to its last beat (`handed`; carried out before it sends the next one).
        # Until then the server is no target for a new copy of such a block, which that
        # delete (same block, same generation) would remove, and its reports of the doomed
        # replica are not believed.
        self.deleting: set[int] = set()
        self.handed: list[int] = []
        # Its data dirs as its last heartbeat described them (reports.dirs_of): path, state
        # "ok" or "failed", error, blocks, used, capacity, free, lost. Shown by status only.
        self.dirs: list[dict[str, Any]] = []
        # The connection it last registered over (None when registered without one: tests,
        # or adopted at an HA takeover). A chunkserver registers again on every new link, so
        # a heartbeat or report arriving on another connection is an old one, held up in a
        # link that was cut (TCP delivers it once the path heals): it must not add replicas
        # back, nor count as the beat that proves a delete was carried out.
        self.link: object | None = None

    @property
    def shown_state(self) -> str:
        """The state operators see: dead wins, then the decommission state, else live."""
        if self.state == "dead":
            return "dead"
        return self.decommission or "live"

    @property
    def in_service(self) -> bool:
        """Live and not being drained: may take new replicas, and its replicas count."""
        return self.state == "live" and not self.decommission


KEEP = -1  # a corrupt replica kept because no good one exists yet


class Cluster:
    def __init__(self, dead_timeout: float) -> None:
        self.dead_timeout = dead_timeout
        self.servers: dict[str, ChunkServer] = {}
        self.by_addr: dict[str, ChunkServer] = {}
        self.blocks: dict[int, BlockInfo] = {}
        self.orphans: dict[tuple[str, int], tuple[int, float]] = {}  # (server, block): (gen, seen)
        self.now = 0.0  # the service's clock at the last sweep (for orphan ages)
        # Deletes held back for readers of a removed or replaced file: (due, server, block, gen).
        self.doomed: deque[tuple[float, str, int, int]] = deque()
        # Chunkservers decommissioned, by id (the disk holding the replicas: a server keeps
        # its id in its data dir across restarts and address changes, a fresh data dir is a
        # new server) -> the address it had then. Journaled; a server listed here is
        # draining again from its first registration on.
        self.decommissions: dict[str, str] = {}

    def tick(self, now: float) -> None:
        """The service's clock, once a sweep: orphans are aged by it."""
        self.now = now

    # membership -----------------------------------------------------------------------
    def register(self, sid: str, addr: str, now: float) -> ChunkServer:
        cs = self.servers.get(sid)
        if cs is None:
            cs = ChunkServer(sid, addr, now)
            self.servers[sid] = cs
            if sid in self.decommissions:  # decommissioned before meta restarted
                cs.decommission = "decommissioning"
        else:
            self._forget_replicas(cs)
        old = self.by_addr.get(addr)
        if old is not None and old is not cs:  # another server took over this address
            self._forget_replicas(old)
            old.state = "dead"
            del self.servers[old.id]
        if cs.addr != addr:
            self.by_addr.pop(cs.addr, None)
            cs.addr = addr
        self.by_addr[addr] = cs
        cs.state = "live"
        cs.last_heartbeat = now
        cs.deletes = []
        cs.copies = []
        # Deletes never sent are dropped, and one handed out either ran or was lost with
        # the connection: the report that comes with the registration is the truth.
        cs.deleting, cs.handed = set(), []
        cs.beats += 1
        return cs

    def heartbeat(self, cs: ChunkServer, capacity: int, used: int, free: int, load: int,
                  writing: int, now: float) -> None:
        cs.beats += 1
        if cs.handed:  # the deletes the reply to its last beat carried have been carried out
            cs.deleting.difference_update(cs.handed)
            cs.handed = []
        returned = cs.state == "dead"
        cs.state = "live"
        cs.capacity, cs.used, cs.free, cs.load, cs.writing = capacity, used, free, load, writing
        cs.pending = 0
        cs.last_heartbeat = now
        if returned:
            # Back without registering (meta could not hear it, say, but its link held): no
            # block report will come for an hour, so the blocks copied elsewhere while it was
            # dead lose their extra replica now.
            log.info("chunkserver %s (%s) is live again", cs.addr, cs.id)
            self.trim_extra(cs)

    def expire(self, now: float) -> list[ChunkServer]:
        """Mark servers silent for longer than the dead timeout as dead; returns them."""
        dead = []
        for cs in self.servers.values():
            if cs.state == "live" and now - cs.last_heartbeat > self.dead_timeout:
                cs.state = "dead"
                dead.append(cs)
                log.warning("chunkserver %s (%s) is dead: no heartbeat for %.1fs",
                            cs.addr, cs.id, now - cs.last_heartbeat)
        return dead

    def live(self) -> list[ChunkServer]:
        return [cs for cs in self.servers.values() if cs.state == "live"]

    def promise(self, addr: str, nbytes: int) -> None:
        """Bytes of a block just placed on a server: count them as used until its next
        heartbeat reports its free space afresh."""
        self.by_addr[addr].pending += nbytes

    def start_decommission(self, cs: ChunkServer) -> bool:
        """Start draining a server; False if it already is (or was) drained."""
        if cs.decommission:
            return False
        cs.decommission = "decommissioning"
        self.decommissions[cs.id] = cs.addr
        return True

    def end_decommission(self, sid: str) -> None:
        """Put a decommissioned (or draining) server back in service: its replicas count
        again, so the blocks that now have more than they ask for lose the extra ones."""
        self.decommissions.pop(sid, None)
        cs = self.servers.get(sid)
        if cs is None or not cs.decommission:
            return
        cs.decommission = ""
        self.trim_extra(cs)

    def trim_extra(self, cs: ChunkServer) -> None:
        """The server's replicas count again (back in service, or live again): the blocks
        it holds that now have more replicas than they ask for lose the extra ones."""
        for block_id in list(cs.blocks):
            info = self.blocks.get(block_id)
            if info is not None and not info.upload and len(info.replicas) > info.replication:
                self.trim(block_id, info)

    def decommissioned(self, cs: ChunkServer) -> None:
        """Every block the draining server holds has its replicas elsewhere."""
        cs.decommission = "decommissioned"

    def order_copy(self, source: str, block_id: int, gen: int, target: str,
                   token: Any) -> None:
        """Have chunkserver `source` (an id) copy its replica to `target` (an address), with
        meta's write token for it; sent in the reply to its next heartbeat."""
        self.servers[source].copies.append([block_id, gen, target, token])

    def take_commands(self, cs: ChunkServer, limit: int = 10_000) -> list[dict[str, Any]]:
        """The deletes and copies for one heartbeat reply, at most `limit` entries of each so
        the reply fits in a frame; the rest wait for the next beat."""
        commands: list[dict[str, Any]] = []
        if cs.deletes:
            sent = cs.deletes[:limit]
            commands.append({"op": "delete", "blocks": sent})
            del cs.deletes[:limit]
            if cs.deleting:
                cs.handed += [b for b, _ in sent if b in cs.deleting]
        if cs.copies:
            commands.append({"op": "replicate", "blocks": cs.copies[:limit]})
            del cs.copies[:limit]
        return commands

    def candidates(self) -> list[Candidate]:
        """Servers that may take new blocks (live and not decommissioned or draining)."""
        return [Candidate(cs.addr, cs.free - cs.pending, cs.writing) for cs in self.live()
                if not cs.decommission]

    # block map ------------------------------------------------------------------------
    def add_block(self, block_id: int, info: BlockInfo) -> None:
        info.id = block_id
        self.blocks[block_id] = info

    def adopt(self, files: Iterable[File]) -> None:
        """Enter the blocks of the files start-up loaded into the block map, each with its
        file's replication. A block that several files share (copies) gets one record, the
        first one's, which every one of those files then holds."""
        blocks = self.blocks
        for f in files:
            replication = f.replication
            held = f.blocks
            changed = False
            for i, b in enumerate(held):
                if type(b) is not BlockInfo:  # a bare namespace Block
                    b = held[i] = BlockInfo(b.gen, b.size, replication, 0, b.digest, b.id)
                    changed = True
                info = blocks.get(b.id)
                if info is None:  # the first file seen holding it
                    blocks[b.id] = b
                    b.replication = replication
                    if b._rare is not None:
                        b.refs = 1
                    continue
                if info is not b:
                    held[i] = info
                    changed = True
                self.share(b.id, replication)
            if changed:
                f.blocks = held

    def share(self, block_id: int, replication: int) -> bool:
        """One more file uses a committed block (a copy of a file, or, at start-up, another
        file found holding it). True if the block now wants more replicas than before."""
        info = self.blocks[block_id]
        info.refs += 1
        if replication > info.replication:
            info.replication = replication
            return True
        return False

    def set_replication(self, block_id: int, replication: int) -> bool:
        """The files using the block now ask for `replication` copies: extra replicas are
        deleted at once (from the fullest servers); True if it needs more copies."""
        info = self.blocks.get(block_id)
        if info is None or info.upload:
            return False
        grew = replication > info.replication
        info.replication = replication
        if len(info.replicas) > replication:
            self.trim(block_id, info)
        return grew

    def block_report(self, cs: ChunkServer, report: Iterable[list[int]]) -> None:
        """A full or incremental report of finalized replicas ([id, gen, size, digest] each;
        the digest may be left out)."""
        blocks, sid, held, deleting = self.blocks, cs.id, cs.blocks, cs.deleting
        for entry in report:
            block_id, gen = int(entry[0]), int(entry[1])
            if deleting and block_id in deleting:
                continue  # a replica it was told to delete: as good as gone
            info = blocks.get(block_id)
            if info is not None and exactly(info, gen, entry[2],
                                            entry[3] if len(entry) > 3 else None):
                # The usual replica, on the fast path (a meta start-up or an HA takeover
                # goes through millions of them).
                if sid not in info.replicas:
                    info.add(sid)
                held.add(block_id)
                if len(info.replicas) > info.replication:
                    self.trim(block_id, info)
                continue
            if info is None:
                # No file refers to it: deleted after a grace period if that still holds.
                self.orphans.setdefault((cs.id, block_id), (gen, self.now))
                continue
            if gen < info.gen:
                cs.deletes.append([block_id, gen])  # stale: the block was rewritten
                continue
            if info.corrupt and cs.id in info.corrupt:
                if not self.bad_copy_gone(info, cs):
                    continue  # the known bad copy: never served again
                del info.corrupt[cs.id]  # deleted since: this is a new, good copy
            if gen > info.gen:
                log.warning("%s reports block %d gen %d newer than expected %d; ignoring",
                            cs.addr, block_id, gen, info.gen)
                continue
            if not info.upload and self._foreign(info, entry):
                log.warning("%s holds a block %d gen %d of %d bytes (digest %s) that is not "
                            "the committed one (%d bytes, digest %s): refused as corrupt",
                            cs.addr, block_id, gen, entry[2],
                            entry[3] if len(entry) > 3 else "?", info.size, info.digest)
                if info.corrupt is None:
                    info.corrupt = {}
                self._delete_bad(block_id, info, cs)
                continue
            info.add(cs.id)
            cs.blocks.add(block_id)
            if not info.upload and len(info.replicas) > info.replication:
                self.trim(block_id, info)

    def begin_full_report(self, cs: ChunkServer) -> None:
        """A periodic full block report starts (it may come in several pages)."""
        cs.reporting = set()

    def note_full_report(self, cs: ChunkServer, page: list[list[int]]) -> None:
        if cs.reporting is not None:
            cs.reporting.update(e[0] for e in page)

    def end_full_report(self, cs: ChunkServer) -> list[int]:
        """The full report is complete: it replaces what we believed the server holds.
        Returns the blocks it no longer has (lost to a disk problem or an operator)."""
        reported, cs.reporting = cs.reporting, None
        if reported is None:
            return []
        lost = [b for b in cs.blocks if b not in reported]
        for block_id in lost:
            cs.blocks.discard(block_id)
            info = self.blocks.get(block_id)
            if info is not None:
                info.discard(cs.id)
        if lost:
            log.warning("%s no longer has %d replicas it held", cs.addr, len(lost))
        return lost

    def every_block_reported(self) -> bool:
        """Each committed block has at least one replica reported (safe mode may end)."""
        return all(info.replicas or info.upload for info in self.blocks.values())

    def trim(self, block_id: int, info: BlockInfo) -> None:
        """More live replicas than asked (a server came back after its blocks were copied
        elsewhere): delete the extras, from the fullest servers first. Never below R live."""
        live = [self.servers[sid] for sid in info.replicas
                if sid in self.servers and self.servers[sid].in_service]
        extra = len(live) - info.replication
        for cs in sorted(live, key=lambda c: c.free)[:max(0, extra)]:
            info.discard(cs.id)
            cs.blocks.discard(block_id)
            cs.deletes.append([block_id, info.gen])
            cs.deleting.add(block_id)
            log.info("block %d has %d live replicas, %d wanted: deleting the one on %s",
                     block_id, len(live), info.replication, cs.addr)

    @staticmethod
    def _foreign(info: BlockInfo, entry: list[int]) -> bool:
        """A reported replica that cannot be the committed block: another length, or
        another digest (an old block that happens to share the id, say)."""
        if entry[2] != info.size:
            return True
        return len(entry) > 3 and info.digest is not None and entry[3] != info.digest

    def commit_block(self, block_id: int, size: int, digest: int, replicas: list[str],
                     promised: int) -> None:
        """An upload committed the block: its size and digest are final, and the servers
        that acknowledged it hold it. They were promised `promised` bytes for it."""
        info = self.blocks[block_id]
        info.size, info.digest, info.upload = size, digest, 0
        for addr in replicas:
            cs = self.by_addr.get(addr)
            if cs is None:
                continue
            info.add(cs.id)
            cs.blocks.add(block_id)
            cs.pending = max(0, cs.pending - (promised - size))

    def bad_replica(self, block_id: int, addr: str) -> bool:
        """A reader or the scrubber found bad bytes in this replica: stop serving it. It is
        deleted at once if a good replica exists elsewhere, else kept (it may be the only
        copy of most of the block) until the block is whole again."""
        cs = self.by_addr.get(addr)
        info = self.blocks.get(block_id)
        if cs is None or info is None or cs.id not in info.replicas:
            return False
        info.discard(cs.id)
        cs.blocks.discard(block_id)
        if info.corrupt is None:
            info.corrupt = {}
        info.corrupt[cs.id] = KEEP
        if self.live_replicas(block_id):
            self._delete_bad(block_id, info, cs)
        log.warning("replica of block %d on %s reported corrupt: no longer served", block_id,
                    addr)
        return True

    def _delete_bad(self, block_id: int, info: BlockInfo, cs: ChunkServer) -> None:
        assert info.corrupt is not None
        cs.deletes.append([block_id, info.gen])
        # Handed out with the reply to the next beat, carried out before the one after it;
        # `deleting` holds it for as long as replies carry no commands (an HA meta unsure of
        # its lease) too.
        info.corrupt[cs.id] = cs.beats + 2
        cs.deleting.add(block_id)

    def bad_copy_gone(self, info: BlockInfo, cs: ChunkServer) -> bool:
        """The server's corrupt copy of this block has surely been deleted."""
        until = (info.corrupt or {}).get(cs.id)
        return until is None or (until != KEEP and cs.beats >= until)

    def delete_corrupt(self, block_id: int) -> None:
        """The block is whole again: delete the corrupt copies that were kept."""
        info = self.blocks.get(block_id)
        if info is None or not info.corrupt:
            return
        for sid, until in list(info.corrupt.items()):
            cs = self.servers.get(sid)
            if cs is None:
                del info.corrupt[sid]
            elif until == KEEP:
                self._delete_bad(block_id, info, cs)
            elif cs.beats >= until:
                del info.corrupt[sid]
        if not info.corrupt:
            info.corrupt = None

    def sweep_orphans(self, now: float, grace: float) -> int:
        """Delete replicas no file has referred to for `grace` seconds."""
        done = []
        for (sid, block_id), (gen, seen) in self.orphans.items():
            if now - seen < grace:
                continue
            done.append((sid, block_id))
            cs = self.servers.get(sid)
            if cs is not None and block_id not in self.blocks:
                cs.deletes.append([block_id, gen])
        for key in done:
            del self.orphans[key]
        return len(done)

    def health(self, block_id: int) -> tuple[str, list[str]]:
        """(state, live replicas): healthy, under_replicated, missing, or corrupt (no good
        replica is left and at least one was found corrupt)."""
        info = self.blocks.get(block_id)
        live = self.live_replicas(block_id)
        if info is None or not live:
            return ("corrupt" if info is not None and info.corrupt else "missing"), live
        return ("healthy" if len(live) >= info.replication else "under_replicated"), live

    def drop_block(self, block_id: int, due: float = 0.0) -> None:
        """A file no longer uses the block. When it was the last one the block is garbage:
        every holder deletes it, at once or from time `due` on (monotonic; deletes keep the
        order they were asked in, so `due` must not decrease)."""
        info = self.blocks.get(block_id)
        if info is None:
            return
        if info.refs > 1:
            info.refs -= 1
            return
        del self.blocks[block_id]
        for sid in info.replicas:
            cs = self.servers.get(sid)
            if cs is not None:
                cs.blocks.discard(block_id)
                if due:
                    self.doomed.append((due, sid, block_id, info.gen))
                else:
                    cs.deletes.append([block_id, info.gen])

    def sweep_doomed(self, now: float) -> None:
        """Send the held-back deletes whose grace has run out. Ids are never reused, so a
        late delete cannot hit a newer block."""
        while self.doomed and self.doomed[0][0] <= now:
            _, sid, block_id, gen = self.doomed.popleft()
            cs = self.servers.get(sid)
            if cs is not None and block_id not in self.blocks:
                cs.deletes.append([block_id, gen])

    def bump_generation(self, block_id: int) -> int:
        """The block is being rewritten (pipeline recovery): old replicas become stale."""
        info = self.blocks[block_id]
        for sid in info.replicas:
            cs = self.servers.get(sid)
            if cs is not None:
                cs.blocks.discard(block_id)
                cs.deletes.append([block_id, info.gen])
        info.replicas = ()
        info.gen += 1
        return info.gen

    def counted_replicas(self, block_id: int) -> int:
        """Replicas that count toward the block's replication: on servers in service."""
        info = self.blocks.get(block_id)
        if info is None:
            return 0
        return sum(1 for sid in info.replicas
                   if sid in self.servers and self.servers[sid].in_service)

    def live_replicas(self, block_id: int) -> list[str]:
        info = self.blocks.get(block_id)
        if info is None:
            return []
        out = []
        for sid in info.replicas:
            cs = self.servers.get(sid)
            if cs is not None and cs.state == "live":
                out.append(cs.addr)
        out.sort()
        return out

    def _forget_replicas(self, cs: ChunkServer) -> None:
        for block_id in cs.blocks:
            info = self.blocks.get(block_id)
            if info is not None:
                info.discard(cs.id)
        cs.blocks = set()
