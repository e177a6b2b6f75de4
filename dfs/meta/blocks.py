"""The record of one block: what the namespace knows of it (id, generation, size, digest)
and, in the subclass the block map keeps, where its replicas are.

Holds no I/O and no policy: the namespace and the block map (cluster.py) decide what happens
to blocks; this module only keeps their state small. A file and the block map hold the very
same BlockInfo object, so a block costs one object in meta, not two; at a million files
every slot counts (docs/PERFORMANCE.md, "Meta memory, start-up and ls").
"""

from __future__ import annotations

from typing import Any


class Block:
    """One block of a file as the namespace knows it: id, generation, size and the digest of
    its CRC table (None while unknown: an upload's block, or one committed before digests
    were recorded). The block map's record (BlockInfo, below) is a subclass, and the very
    object the file holds: at millions of files every object per block counts.

    Size and digest share one int (`_sd`: size << 33 | known << 32 | digest), as one int
    object instead of two saves 32 bytes a block."""

    __slots__ = ("id", "gen", "_sd")

    def __init__(self, id: int, gen: int, size: int, digest: int | None = None) -> None:
        self.id, self.gen = id, gen
        self._sd = _pack(size, digest)

    @property
    def size(self) -> int:
        return self._sd >> 33

    @size.setter
    def size(self, size: int) -> None:
        self._sd = _pack(size, self.digest)

    @property
    def digest(self) -> int | None:
        sd = self._sd
        return sd & 0xFFFF_FFFF if sd & _KNOWN else None

    @digest.setter
    def digest(self, digest: int | None) -> None:
        self._sd = _pack(self._sd >> 33, digest)


_KNOWN = 1 << 32


def _pack(size: int, digest: int | None) -> int:
    if size < 0 or (digest is not None and not 0 <= digest < _KNOWN):
        raise ValueError(f"a block of {size!r} bytes with digest {digest!r}")
    return size << 33 if digest is None else size << 33 | _KNOWN | digest


class BlockInfo(Block):
    """The expected state of one block (generation, size, digest of its CRC table: the
    namespace's Block, which this is) and where its good replicas are. The files using the
    block hold this same object, so a block costs one object in meta, not two."""

    __slots__ = ("replication", "replicas", "_rare")

    def __init__(self, gen: int, size: int, replication: int, upload: int = 0,
                 digest: int | None = None, id: int = 0) -> None:
        # digest: checksum.digest of the committed block's CRCs; None while it is being
        # written, or for a block committed before digests were recorded. (Block.__init__
        # written out: start-up makes a million of these.)
        self.id, self.gen = id, gen
        if digest is not None and 0 <= digest < _KNOWN and size >= 0:
            self._sd = size << 33 | _KNOWN | digest
        else:
            self._sd = _pack(size, digest)
        self.replication = replication
        # Chunkserver ids with this gen, finalized. A tuple, not a set: an empty set costs 216
        # bytes and a 2-set as much, a 2-tuple 56 and the empty one nothing; at a million
        # blocks that is most of meta's memory per file (see docs/PERFORMANCE.md).
        self.replicas: tuple[str, ...] = ()
        # upload, corrupt and refs, which few blocks ever set: one slot holding None until
        # one of them differs from its default (a slot each would cost 16 bytes a block).
        self._rare: _Rare | None = None
        if upload:
            self.upload = upload

    # nonzero while the block belongs to an uncommitted upload
    @property
    def upload(self) -> int:
        rare = self._rare
        return 0 if rare is None else rare.upload

    @upload.setter
    def upload(self, upload: int) -> None:
        self._set_rare("upload", upload)

    # Chunkservers whose replica had bad bytes -> the heartbeat count of that server from
    # which its delete has surely been carried out (KEEP: not deleted yet, it is the last
    # copy there is). Until then the server is no target for a new copy of this block.
    @property
    def corrupt(self) -> dict[str, int] | None:
        rare = self._rare
        return None if rare is None else rare.corrupt

    @corrupt.setter
    def corrupt(self, corrupt: dict[str, int] | None) -> None:
        self._set_rare("corrupt", corrupt)

    # Files that use the block: a cluster-side copy (`cp`) shares a committed block
    # instead of copying bytes, and the block is garbage only when the last one goes.
    # Its `replication` is then the highest any of those files asks for.
    @property
    def refs(self) -> int:
        rare = self._rare
        return 1 if rare is None else rare.refs

    @refs.setter
    def refs(self, refs: int) -> None:
        self._set_rare("refs", refs)

    def _set_rare(self, name: str, value: Any) -> None:
        rare = self._rare
        if rare is None:
            if value == _DEFAULTS[name]:
                return
            rare = self._rare = _Rare()
        setattr(rare, name, value)
        if rare.upload == 0 and rare.corrupt is None and rare.refs == 1:
            self._rare = None

    def add(self, server_id: str) -> None:
        if server_id not in self.replicas:
            self.replicas = _replica_set(self.replicas + (server_id,))

    def discard(self, server_id: str) -> None:
        if server_id in self.replicas:
            self.replicas = _replica_set(tuple(s for s in self.replicas if s != server_id))


def exactly(info: BlockInfo, gen: int, size: int, digest: int | None) -> bool:
    """A reported replica is this committed block as recorded (generation, size, digest if
    both are known) and the block has nothing rare about it (no upload, no known corrupt
    copy, one file): the case a block report is nearly all made of, checked in one step."""
    sd = info._sd
    return info._rare is None and gen == info.gen and sd >> 33 == size and (
        digest is None or not sd & _KNOWN or sd & 0xFFFF_FFFF == digest)


# Equal replica tuples are shared, as most blocks sit on the same few sets of servers: a
# 2-tuple of its own costs a block 64 bytes: sharing them took what a million blocks cost
# once two chunkservers had reported them from 173 to 109 bytes a block (the servers' own
# block sets are the rest). Bounded: past the cap (many servers, many orders) new sets are
# simply not shared.
_REPLICA_SETS_CAP = 100_000
_replica_sets: dict[tuple[str, ...], tuple[str, ...]] = {}


def _replica_set(replicas: tuple[str, ...]) -> tuple[str, ...]:
    shared = _replica_sets.get(replicas)
    if shared is not None:
        return shared
    if len(_replica_sets) < _REPLICA_SETS_CAP:
        _replica_sets[replicas] = replicas
    return replicas


class _Rare:
    """A block's upload, corrupt and refs once any of them is not its default."""

    __slots__ = ("upload", "corrupt", "refs")

    def __init__(self) -> None:
        self.upload: int = 0
        self.corrupt: dict[str, int] | None = None
        self.refs = 1


_DEFAULTS: dict[str, Any] = {"upload": 0, "corrupt": None, "refs": 1}
