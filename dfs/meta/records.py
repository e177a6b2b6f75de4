"""Journal records: the format of every namespace change, and how start-up replays them.

Pure code, no I/O of its own: `restore` reads through the journal and checkpoint objects it
is given. Every record is a msgpack array (meta/journal.py frames it, with checksums):

    ["epoch", n]                 a new block id epoch; ids allocated after it are (n << 32) | k
    ["mkdir", path, parents, mtime]            or with a 5th element, attrs
    ["publish", path, blocks, replication, block_size, mtime]      or with a 7th, attrs,
                                 and an 8th, the upload id (attrs nil when not set)
                                 blocks: [[id, gen, size, digest], ...]; records written before
                                 digests existed hold [id, gen, size] (the digest is unknown)
                                 attrs: [mode, uid, gid], each nil when not set
                                 upload: what makes a re-sent commit idempotent (Commits)
    ["rm", path, recursive, mtime]
    ["mv", src, dst, mtime]
    ["cp", src, dst, recursive, mtime]   a copy that shares the source's blocks
    ["setrep", path, replication, recursive]
    ["touch", path, mtime]
    ["chattr", path, mode, uid, gid]     each nil when left as it is
    ["symlink", path, target, mtime]     or with a 5th element, attrs
    ["decommission", chunk_id, addr]     an operator started draining that chunkserver
                                 (`addr`: where it was then, shown until it registers again)
    ["recommission", chunk_id]           ... and put it back in service

Replay calls the same Namespace methods that served the live request, so a replayed namespace
is the one the requests built.
"""

from __future__ import annotations

from typing import Any

from ..errors import DFSError
from ..fsutil import CorruptFile
from . import checkpoint
from .blocks import BlockInfo
from .cluster import Cluster
from .journal import JournalStore
from .journal_codec import JournalCorrupt
from .namespace import Attrs, File, Namespace

# What a well-framed record or checkpoint of the wrong shape raises when it is applied.
_BAD_SHAPE = (ValueError, KeyError, IndexError, TypeError, AttributeError, DFSError)


def epoch(n: int) -> list[Any]:
    return ["epoch", n]


def _with(rec: list[Any], attrs: Attrs | None) -> list[Any]:
    return rec if attrs is None else rec + [list(attrs)]


def mkdir(path: str, parents: bool, mtime: float, attrs: Attrs | None = None) -> list[Any]:
    return _with(["mkdir", path, parents, mtime], attrs)


def publish(path: str, f: File, digests: list[int | None], upload: int = 0) -> list[Any]:
    blocks = [[b.id, b.gen, b.size] + ([d] if d is not None else [])
              for b, d in zip(f.blocks, digests, strict=True)]
    rec = ["publish", path, blocks, f.replication, f.block_size, f.mtime]
    if upload:
        return rec + [list(f.attrs) if f.attrs is not None else None, upload]
    return _with(rec, f.attrs)


class Commits:
    """The most recent commits by upload id: a client that lost a commit's reply (the
    active meta died, the connection dropped) sends it again, to this meta or to the one that
    took over, and gets the same answer instead of "upload unknown". Bounded: a commit sent
    again after LIMIT newer ones is not recognised."""

    LIMIT = 50_000

    def __init__(self) -> None:
        self.by_upload: dict[int, tuple[str, float]] = {}

    def add(self, upload: int, path: str, mtime: float) -> None:
        by = self.by_upload
        by[upload] = (path, mtime)
        if len(by) > self.LIMIT:
            del by[next(iter(by))]  # dicts keep insertion order: the oldest goes

    def get(self, upload: int) -> tuple[str, float] | None:
        return self.by_upload.get(upload)


def chattr(path: str, mode: int | None, uid: int | None, gid: int | None) -> list[Any]:
    return ["chattr", path, mode, uid, gid]


def symlink(path: str, target: str, mtime: float, attrs: Attrs | None) -> list[Any]:
    return _with(["symlink", path, target, mtime], attrs)


def rm(path: str, recursive: bool, mtime: float) -> list[Any]:
    return ["rm", path, recursive, mtime]


def mv(src: str, dst: str, mtime: float) -> list[Any]:
    return ["mv", src, dst, mtime]


def cp(src: str, dst: str, recursive: bool, mtime: float) -> list[Any]:
    return ["cp", src, dst, recursive, mtime]


def setrep(path: str, replication: int, recursive: bool) -> list[Any]:
    return ["setrep", path, replication, recursive]


def touch(path: str, mtime: float) -> list[Any]:
    return ["touch", path, mtime]


def decommission(chunk_id: str, addr: str) -> list[Any]:
    return ["decommission", chunk_id, addr]


def recommission(chunk_id: str) -> list[Any]:
    return ["recommission", chunk_id]


# Records that change no file or directory: replaying them leaves the block map as it is.
_NOT_FILES = frozenset({"epoch", "decommission", "recommission"})


class Restored:
    """What start-up rebuilt besides the namespace: the last epoch, the recent commits and
    the decommissioned chunkservers. The files' blocks are the block map's records already
    (cluster.BlockInfo, with their recorded digests); the service enters them into the block
    map. An HA standby keeps one current as it applies the active's records, and hands it to
    the service when it takes over (MetaService.adopt)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.records = 0
        self.commits = Commits()
        # Chunkserver id -> its address when it was decommissioned: each is draining (or
        # drained) again as soon as it registers (cluster.Cluster.decommissions).
        self.decommission: dict[str, str] = {}
        # A replayed record changed a file or directory: the block map the checkpoint
        # filled no longer matches the namespace and must be rebuilt from it.
        self.changed = False  # journal records replayed after the checkpoint


def apply(ns: Namespace, rec: list[Any], out: Restored) -> None:
    """Replay one record into the namespace."""
    op = rec[0]
    if op == "epoch":
        out.epoch = max(out.epoch, rec[1])
    elif op == "mkdir":
        ns.mkdir(rec[1], rec[2], rec[3], _attrs(ns, rec, 4))
    elif op == "publish":
        blocks = [BlockInfo(entry[1], entry[2], rec[3], digest=entry[3] if len(entry) > 3
                            else None, id=entry[0]) for entry in rec[2]]
        ns.publish(rec[1], File(blocks, rec[3], rec[4], rec[5], _attrs(ns, rec, 6)))
        if len(rec) > 7:
            out.commits.add(rec[7], rec[1], rec[5])
    elif op == "rm":
        ns.remove(rec[1], rec[2], rec[3])
    elif op == "mv":
        ns.rename(rec[1], rec[2], rec[3])
    elif op == "cp":
        ns.copy(rec[1], rec[2], rec[3], rec[4])
    elif op == "setrep":
        ns.set_replication(rec[1], rec[2], rec[3])
    elif op == "touch":
        ns.touch(rec[1], rec[2])
    elif op == "chattr":
        ns.chattr(rec[1], rec[2], rec[3], rec[4])
    elif op == "symlink":
        ns.symlink(rec[1], rec[2], rec[3], _attrs(ns, rec, 4))
    elif op == "decommission":
        out.decommission[rec[1]] = rec[2]
    elif op == "recommission":
        out.decommission.pop(rec[1], None)
    else:
        raise ValueError(f"unknown journal record {op!r}")


def _attrs(ns: Namespace, rec: list[Any], i: int) -> Attrs | None:
    """The optional attrs element of a record (absent in records from before attrs)."""
    return ns.attrs(*rec[i]) if len(rec) > i and rec[i] is not None else None


def restore(ns: Namespace, journal: JournalStore, checkpoint_path: str | None,
            cluster: Cluster | None = None) -> Restored:
    """Load the checkpoint (if any) into an empty namespace (and its blocks into `cluster`'s
    block map), then replay the journal records that came after it. Raises CorruptFile
    (JournalCorrupt when the two do not fit together)."""
    out = Restored()
    cp = None
    if checkpoint_path:
        try:
            cp = checkpoint.load(checkpoint_path, ns, cluster)
        except _BAD_SHAPE as exc:  # its checksum passed: written wrong, not damaged on disk
            raise CorruptFile(str(checkpoint_path), 0, f"cannot be loaded: {exc!r}",
                              "checkpoint") from None
    if cp is not None:
        out.epoch = cp.epoch
        out.decommission = dict(cp.decommission)
    records = journal.load()
    if cp is not None:
        why = _mismatch(journal, len(records), cp.gen, cp.count)
        if why:
            raise JournalCorrupt(getattr(journal, "path", "journal"), 0, why)
        if journal.gen == cp.gen:  # crashed before the journal was rotated
            records = records[cp.count:]
    for i, rec in enumerate(records):
        try:
            apply(ns, rec, out)
            out.changed = out.changed or rec[0] not in _NOT_FILES
        except _BAD_SHAPE as exc:  # a record that cannot have been made by a live request
            raise JournalCorrupt(getattr(journal, "path", "journal"), 0,
                                 f"record {i} after the checkpoint cannot be replayed: "
                                 f"{exc!r}") from None
    out.records = len(records)
    return out


def _mismatch(journal: JournalStore, records: int, cp_gen: int, cp_count: int) -> str:
    """Why a checkpoint covering `cp_count` records of generation `cp_gen` and this journal
    cannot have been written together ("" when they can): replaying them would skip or repeat
    changes. Seen after a backup copied the two at different moments."""
    if journal.gen == cp_gen:
        if records < cp_count:
            return (f"the checkpoint covers {cp_count} records of journal generation {cp_gen} "
                    f"but the journal holds {records}")
    elif journal.gen == cp_gen + 1:
        if journal.base is not None and journal.base != cp_count:
            return (f"journal generation {journal.gen} follows record {journal.base} of "
                    f"generation {cp_gen} but the checkpoint covers {cp_count}")
    else:
        return f"journal generation {journal.gen} does not follow checkpoint generation {cp_gen}"
    return ""
