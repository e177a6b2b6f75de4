"""Uploads in progress: their leases, new block ids, where their blocks go, and the rules a
commit must pass.

Owns the uploads and the block id counter; never touches the journal, the namespace or the
network. The service hands it requests and journals what it returns; the block map (cluster.py)
learns here about every block allocated, rebuilt or committed.

Block ids are (epoch << 32) | k. A new epoch is journaled at every start of meta, and it is at
least the current Unix time in seconds, so ids never repeat even when the journal that recorded
earlier epochs is gone or rolled back (a restored backup, a truncated journal). The block map's
digest check (cluster.py) is the second line: a replica that is not the committed block is
refused whatever its id.
"""

from __future__ import annotations

import secrets
from typing import Any

from .. import config
from ..errors import BadRequest, DFSError, NoSpace, Unavailable
from ..protocol.fields import is_uint
from .cluster import BlockInfo, Cluster
from .namespace import Block
from .placement import choose_targets

# A block a commit lists: the block, the replicas that acknowledged it, its digest.
Committed = tuple[Block, list[str], int]

EPOCH_BITS = 32
MAX_EPOCH = (1 << (64 - EPOCH_BITS)) - 1  # the last epoch whose ids fit in 64 bits


class Upload:
    __slots__ = ("id", "path", "replication", "block_size", "expected", "blocks", "touched",
                 "parts", "part_ids")

    def __init__(self, uid: int, path: str, replication: int, block_size: int,
                 expected: int | None, now: float) -> None:
        self.id, self.path = uid, path
        self.replication, self.block_size = replication, block_size
        self.expected = expected  # the writer's word for the file's size, if it knew it
        self.blocks: list[int] = []
        self.touched = now
        # The head of the block list, sent ahead of the commit by `commit_part` (a list too
        # long for one frame), checked as a commit checks it; nothing is published until the
        # commit sends the rest.
        self.parts: list[Committed] = []
        self.part_ids: set[int] = set()

    def need(self, index: int) -> int:
        """Bytes a server needs free to take block `index` of this file: a whole block,
        unless the writer said the file ends sooner."""
        if self.expected is None:
            return self.block_size
        return max(1, min(self.block_size, self.expected - index * self.block_size))


class BlockIds:
    """Allocates block ids within the current epoch (see the module docstring)."""

    def __init__(self) -> None:
        self.epoch = 0  # the last epoch made durable in the journal; 0: none yet
        self.next = 0
        self.wanted = 0  # the next epoch must be at least this (chunkservers hold older ids)

    def after(self, last: int, now: float) -> int:
        """The epoch to journal next."""
        return max(last + 1, int(now), self.wanted)

    def seen(self, epoch: int) -> bool:
        """A chunkserver holds ids of `epoch`. True when that calls for a newer epoch than the
        one in use (a clock set back, and a lost journal). An epoch that leaves no room for a
        newer one is someone's garbage, not ours: ignored, so ids stay within 64 bits."""
        if epoch >= MAX_EPOCH:
            return False
        self.wanted = max(self.wanted, epoch + 1)
        return 0 < self.epoch < epoch

    def begin(self, epoch: int) -> None:
        """`epoch` is durable: allocate from it."""
        self.epoch, self.next = epoch, 0

    @property
    def running_low(self) -> bool:
        """Half the epoch is used: time to journal the next one."""
        return self.next >= 1 << (EPOCH_BITS - 1)

    def take(self) -> int:
        if not self.epoch:
            raise Unavailable("meta cannot allocate blocks before it has journaled an epoch")
        if self.next >= 1 << EPOCH_BITS:
            raise Unavailable("this epoch's block ids are used up; meta is journaling a new "
                              "one: retry")
        block_id = (self.epoch << EPOCH_BITS) | self.next
        self.next += 1
        return block_id


class Uploads:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.by_id: dict[int, Upload] = {}
        self.ids = BlockIds()

    def __len__(self) -> int:
        return len(self.by_id)

    def create(self, path: str, replication: int, block_size: int, expected: int | None,
               now: float) -> Upload:
        uid = secrets.randbits(63) or 1
        up = self.by_id[uid] = Upload(uid, path, replication, block_size, expected, now)
        return up

    def get(self, uid: int, now: float) -> Upload:
        """A live upload, its lease renewed."""
        up = self.by_id.get(uid)
        if up is None:
            # Not NotFound: that word is kept for paths. The upload must start again.
            raise Unavailable("the upload is no longer known to meta (its lease expired, it "
                              "was aborted, or meta restarted or failed over); upload the file "
                              "again")
        up.touched = now
        return up

    # placement --------------------------------------------------------------------------
    def _place(self, count: int, need: int, exclude: set[str]) -> list[str]:
        chosen = choose_targets(self.cluster.candidates(), count, need, exclude)
        for c in chosen:
            self.cluster.promise(c.addr, need)
        return [c.addr for c in chosen]

    def no_targets(self, need: int) -> DFSError:
        live = self.cluster.live()
        if not live:
            return Unavailable("no live chunkservers")
        if all(cs.decommission for cs in live):
            return Unavailable("every live chunkserver is decommissioned or being drained")
        return NoSpace(f"no live chunkserver has room for another block ({need} bytes)")

    def allocate(self, up: Upload, exclude: set[str]) -> tuple[int, list[str]]:
        """A new block for the upload and the chain of servers to write it to."""
        need = up.need(len(up.blocks))
        block_id = self.ids.take()  # first: a refusal here must not leave room promised
        targets = self._place(up.replication, need, exclude)
        if not targets:
            raise self.no_targets(need)
        self.cluster.add_block(block_id, BlockInfo(1, 0, up.replication, up.id))
        up.blocks.append(block_id)
        return block_id, targets

    def recover(self, up: Upload, block_id: int, exclude: set[str],
                keep: list[str]) -> tuple[int, list[str]]:
        """A pipeline failed: a new generation, the survivors kept, the failed replaced if
        any server can take them. Returns (gen, targets)."""
        if block_id not in up.blocks:
            raise BadRequest(f"block {block_id} is not part of this upload")
        if block_id in up.part_ids:  # its generation is recorded: it cannot be rewritten
            raise BadRequest(f"block {block_id} is already listed by commit_part")
        in_service = {c.addr for c in self.cluster.candidates()}  # not dead, not draining
        keep = [a for a in keep if a in in_service and a not in exclude]
        need = up.need(up.blocks.index(block_id))
        extra = self._place(up.replication - len(keep), need, exclude | set(keep))
        targets = keep + extra
        if not targets:
            if in_service and in_service <= exclude:  # every one failed this block
                raise Unavailable(f"no chunkserver left to write block {block_id} to "
                                  f"(excluded {', '.join(sorted(exclude))})")
            raise self.no_targets(need)  # some are left, but none has room: say so
        return self.cluster.bump_generation(block_id), targets

    # commit -----------------------------------------------------------------------------
    def add_part(self, up: Upload, start: int, entries: Any) -> int:
        """`commit_part`: blocks `start`, `start + 1`, ... of the file, recorded for the
        commit. Parts come in order and hold whole blocks only (the file's last block, which
        may be short, comes with the commit). A part sent again (its reply was lost) is
        answered as before. Returns how many blocks are recorded."""
        if not isinstance(entries, list) or not entries:
            raise BadRequest("commit_part needs a non-empty list of written blocks")
        recorded = len(up.parts)
        if start + len(entries) <= recorded and \
                all(_same(e, c) for e, c in zip(entries, up.parts[start:], strict=False)):
            return recorded
        if start != recorded:
            raise BadRequest(f"commit_part out of order: meta holds {recorded} blocks of this "
                             f"upload and the part starts at block {start}")
        checked = self._check(up, entries, last_may_be_short=False)
        up.parts += checked
        up.part_ids.update(b.id for b, _, _ in checked)
        return len(up.parts)

    def check_commit(self, up: Upload, entries: Any, start: int = 0) -> list[Committed]:
        """The file's written blocks: those of its parts, then the rest that the commit
        lists (`start`: the index of its first, i.e. how many the parts held), checked
        against what this upload allocated: (block, replicas that acked it, digest) each."""
        if start != len(up.parts):
            raise BadRequest(f"the commit starts at block {start} but meta holds "
                             f"{len(up.parts)} blocks of this upload from commit_part")
        return up.parts + self._check(up, entries, last_may_be_short=True)

    def _check(self, up: Upload, entries: Any, last_may_be_short: bool) -> list[Committed]:
        if not isinstance(entries, list) or len(up.parts) + len(entries) > len(up.blocks):
            raise BadRequest("commit needs the list of written blocks")
        out: list[Committed] = []
        seen: set[int] = set()
        for i, e in enumerate(entries):
            if not isinstance(e, list) or len(e) != 5:
                raise BadRequest("each committed block is [id, gen, size, replicas, digest]")
            block_id, gen, size, replicas, digest = e
            if not isinstance(replicas, list) or not all(isinstance(a, str) for a in replicas):
                raise BadRequest("a block's replicas must be a list of addresses")
            info = self.cluster.blocks.get(block_id) if is_uint(block_id) else None
            if info is None or info.upload != up.id or not is_uint(gen) or info.gen != gen:
                raise BadRequest(f"block {block_id} gen {gen} is not the upload's current block")
            whole = not last_may_be_short or i < len(entries) - 1
            if not is_uint(size) or not 0 < size <= up.block_size or \
                    (whole and size != up.block_size):
                raise BadRequest(f"block {block_id} has a bad size {size!r}")
            if not is_uint(digest) or digest >= 1 << 32:
                raise BadRequest(f"block {block_id} has a bad digest {digest!r}")
            if block_id in seen or block_id in up.part_ids:
                raise BadRequest(f"block {block_id} is listed twice")
            seen.add(block_id)
            out.append((Block(block_id, gen, size), replicas, digest))
        return out

    def finish(self, up: Upload, committed: list[Committed]) -> None:
        """The upload's file is published: its blocks join the block map as committed, with
        the replicas that acknowledged them; blocks it allocated but did not use go."""
        del self.by_id[up.id]
        for i, (b, replicas, digest) in enumerate(committed):
            self.cluster.commit_block(b.id, b.size, digest, replicas, up.need(i))
        kept = {b.id for b, _, _ in committed}
        for block_id in up.blocks:
            if block_id not in kept:
                self.cluster.drop_block(block_id)

    def abort(self, up: Upload) -> None:
        self.by_id.pop(up.id, None)
        for block_id in up.blocks:
            self.cluster.drop_block(block_id)

    def expired(self, now: float, lease: float) -> list[Upload]:
        return [up for up in self.by_id.values() if now - up.touched > lease]


def _same(entry: Any, committed: Committed) -> bool:
    """A commit entry names exactly a block already recorded."""
    b, replicas, digest = committed
    return entry == [b.id, b.gen, b.size, replicas, digest]


def block_size_ok(block_size: int) -> bool:
    return config.MIN_BLOCK_SIZE <= block_size <= config.MAX_BLOCK_SIZE and \
        block_size % config.CHECKSUM_UNIT == 0
