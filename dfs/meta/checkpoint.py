"""Checkpoints: the whole namespace in one file, so start-up replays only the journal since.

File layout (integers big-endian)::

    offset 0   8 bytes   magic b"DFSCKPT2" (b"DFSCKPT1": the older row format, below)
    8          4 bytes   crc    u32, CRC32C of body
    12         8 bytes   length u64, bytes in body
    20         length    body   msgpack map:
                                  gen     journal generation the checkpoint covers
                                  count   records of that generation it includes
                                  epoch   the last meta epoch
                                  dirs    [[path, mtime], ...]        parents before children
                                  links   [[path, target, mtime], ...]
                                  kinds   [[replication, block_size, attrs], ...]: each
                                          distinct one of the files' once (attrs nil if unset)
                                  files   one group per directory holding files:
                                          [dir, names, mtimes, kinds, nblocks,
                                           ids, gens, sizes, digests]
                                            dir     the directory's path ("" for /)
                                            names, mtimes, kinds (an index into `kinds`):
                                                    one per file
                                            nblocks blocks of each file; nil when every file
                                                    of the group has exactly one
                                            ids, gens, sizes, digests: one per block, the
                                                    files' in order (digest nil if unknown)
                                  root    [mode, uid, gid] of "/" (absent until set)
                                  decommission  [[chunk_id, addr], ...]: the chunkservers
                                          an operator decommissioned (records.py,
                                          "decommission"); absent when there are none
                                A dir or link whose mode, uid or gid was set has one more
                                element, [mode, uid, gid] (nil for those not set).

Keys a loader does not know are skipped: a checkpoint without `decommission` (written before
it existed) loads with none, and a meta from before it loads a newer checkpoint, dropping only
that state.

Files are columns, directory by directory, because start-up time is mostly spent turning the
file into objects: whole columns decode in C, and a million files load in about a second.
DFSCKPT1 (written before) is still read; its body holds `dirs` and `links` as above and
`files` as rows [path, [[id, gen, size, digest], ...], replication, block_size, mtime]
(+ attrs), a block with an unknown digest being [id, gen, size].

A checkpoint covers records 0..count-1 of journal generation `gen`, all of them fsynced in
the journal before it is written (checkpointer.py). It is written to a temporary file,
fsynced, renamed over `checkpoint` and its directory fsynced; only then is the journal rotated
to generation gen+1 holding just the records appended since. Start-up loads the checkpoint,
then replays the journal: all of it if its generation is gen+1, or the records after `count`
if it is still `gen` (a crash between the rename and the rotation); records.restore refuses a
pair that does not fit.
Any damage in the file stops start-up with one clear error: it is never half-loaded.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import crc32c
import msgpack

from ..fsutil import CorruptFile, atomic_write
from .blocks import BlockInfo
from .cluster import Cluster
from .namespace import Attrs, Block, Dir, File, Kind, Link, Namespace, kind

MAGIC = b"DFSCKPT2"
MAGIC_ROWS = b"DFSCKPT1"
HEAD = struct.Struct(">IQ")


@dataclass
class Checkpoint:
    """What a checkpoint says besides the tree it loads: the journal position it covers, and
    the decommissioned chunkservers (id -> address then)."""
    gen: int = 0
    count: int = 0
    epoch: int = 0
    decommission: dict[str, str] = field(default_factory=dict)


def _no_digest(block_id: int) -> int | None:
    return None


def snapshot(ns: Namespace, gen: int, count: int, epoch: int,
             digest: Callable[[int], int | None] = _no_digest,
             decommission: dict[str, str] | None = None) -> bytes:
    """Serialise the namespace (on the event loop, so it is one consistent moment); `digest`
    gives a block's recorded digest (the block map holds them); `decommission` the
    decommissioned chunkservers, id -> address."""
    dirs: list[list[Any]] = []
    links: list[list[Any]] = []
    groups: list[list[Any]] = []
    kinds: dict[Kind, int] = {}
    stack: list[tuple[str, Dir]] = [("", ns.root)]
    while stack:
        base, d = stack.pop()
        names: list[str] = []
        mtimes: list[float] = []
        kind_of: list[int] = []
        nblocks: list[int] = []
        ids: list[int] = []
        gens: list[int] = []
        sizes: list[int] = []
        digests: list[int | None] = []
        for name, node in d.children.items():
            if isinstance(node, File):
                names.append(name)
                mtimes.append(node.mtime)
                kind_of.append(kinds.setdefault(node.kind, len(kinds)))
                held = node.blocks
                nblocks.append(len(held))
                for b in held:
                    ids.append(b.id)
                    gens.append(b.gen)
                    sizes.append(b.size)
                    digests.append(digest(b.id))
                continue
            path = f"{base}/{name}"
            if isinstance(node, Dir):
                row = [path, node.mtime]
                dirs.append(row)
                stack.append((path, node))
            else:
                assert isinstance(node, Link)
                row = [path, node.target, node.mtime]
                links.append(row)
            if node.attrs is not None:
                row.append(list(node.attrs))
        if names:
            groups.append([base, names, mtimes, kind_of,
                           None if all(n == 1 for n in nblocks) else nblocks,
                           ids, gens, sizes, digests])
    m: dict[str, Any] = {"gen": gen, "count": count, "epoch": epoch, "dirs": dirs,
                         "links": links,
                         "kinds": [[r, bs, None if a is None else list(a)]
                                   for (r, bs, a) in kinds],
                         "files": groups}
    if ns.root.attrs is not None:
        m["root"] = list(ns.root.attrs)
    if decommission:
        m["decommission"] = [[sid, addr] for sid, addr in decommission.items()]
    body = msgpack.packb(m, use_bin_type=True)
    return MAGIC + HEAD.pack(crc32c.crc32c(body), len(body)) + body


def write(path: str, data: bytes) -> None:
    """Durably replace the checkpoint file. Blocking: run in a worker thread."""
    atomic_write(path, data)


def load(path: str, ns: Namespace, cluster: Cluster | None = None) -> Checkpoint | None:
    """Rebuild the namespace the checkpoint at `path` describes into an empty `ns` (None if
    there is no checkpoint yet). Each file's blocks are block map records (BlockInfo, with
    their digests); with `cluster`, they are entered into its block map as well (the
    service rebuilds it instead if the journal then changes any file).

    The body is checked whole (length and CRC) before anything is built, then decoded piece
    by piece: decoding it all at once would hold every temporary list at the same moment, and
    the objects kept from them (names, block ids, mtimes) would pin that memory in the
    process for good. The paths were validated when they entered the namespace, so the tree
    is built directly."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    start = len(MAGIC) + HEAD.size
    magic = data[:len(MAGIC)]
    if magic not in (MAGIC, MAGIC_ROWS) or len(data) < start:
        raise CorruptFile(path, 0, "not a dfs checkpoint", "checkpoint")
    crc, length = HEAD.unpack_from(data, len(MAGIC))
    if len(data) - start != length:
        raise CorruptFile(path, start, "body has the wrong length", "checkpoint")
    if crc32c.crc32c(memoryview(data)[start:]) != crc:
        raise CorruptFile(path, start, "checksum mismatch", "checkpoint")
    body = io.BytesIO(data)  # shares the bytes, no copy
    body.seek(start)
    del data
    try:
        return _Loader(ns, cluster, magic == MAGIC_ROWS).run(msgpack.Unpacker(
            body, raw=False, strict_map_key=True, use_list=False, read_size=1 << 20,
            max_buffer_size=0))
    except (msgpack.UnpackException, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as exc:  # its checksum passed: written wrong, not damaged
        raise CorruptFile(path, start, f"body cannot be loaded: {exc!r}",
                          "checkpoint") from None


class _Loader:
    """One checkpoint body, streamed into a namespace (and a block map)."""

    def __init__(self, ns: Namespace, cluster: Cluster | None, rows: bool) -> None:
        self.ns = ns
        self.cluster = cluster
        self.rows = rows
        self.dirs: dict[str, Dir] = {"": ns.root}
        self.kinds: list[Kind] | None = None

    def run(self, u: msgpack.Unpacker) -> Checkpoint:
        head: dict[str, int] = {}
        decommission: dict[str, str] = {}
        for _ in range(u.read_map_header()):
            key = u.unpack()
            if key == "dirs":
                for _ in range(u.read_array_header()):
                    row = u.unpack()
                    d = self.dir_at(row[0])
                    d.mtime = row[1]
                    d.attrs = self.attrs(row, 2)
            elif key == "links":
                for _ in range(u.read_array_header()):
                    row = u.unpack()
                    parent, _, name = row[0].rpartition("/")
                    self.dir_at(parent).put(name, Link(row[1], row[2], self.attrs(row, 3)))
            elif key == "kinds":
                self.kinds = [kind(r, bs, None if a is None else self.ns.attrs(*a))
                              for r, bs, a in u.unpack()]
            elif key == "files" and self.rows:
                self.file_rows(u)
            elif key == "files":
                if self.kinds is None:
                    raise ValueError("files before kinds")
                for _ in range(u.read_array_header()):
                    self.file_group(*u.unpack())
            elif key == "root":
                root = u.unpack()
                if root is not None:
                    self.ns.root.attrs = self.ns.attrs(*root)
            elif key == "decommission":
                for sid, addr in u.unpack():
                    if not isinstance(sid, str) or not isinstance(addr, str):
                        raise ValueError(f"decommissioned chunkserver {sid!r} at {addr!r}")
                    decommission[sid] = addr
            else:
                head[key] = u.unpack()
        if _more(u):
            raise ValueError("data after the body's map")
        return Checkpoint(head["gen"], head["count"], head["epoch"], decommission)

    def dir_at(self, path: str) -> Dir:
        d = self.dirs.get(path)
        if d is None:
            parent, _, name = path.rpartition("/")
            d = Dir(0.0)
            self.dir_at(parent).put(name, d)
            self.dirs[path] = d
            self.ns.dirs += 1
        return d

    def attrs(self, row: Sequence[Any], i: int) -> Attrs | None:
        return self.ns.attrs(*row[i]) if len(row) > i and row[i] is not None else None

    def file_group(self, base: str, names: Sequence[str], mtimes: Sequence[float],
                   kind_of: Sequence[int], nblocks: Sequence[int] | None,
                   ids: Sequence[int], gens: Sequence[int], sizes: Sequence[int],
                   digests: Sequence[int | None]) -> None:
        """The files of one directory: the hot loop of start-up."""
        d = self.dir_at(base)
        d._sorted = None
        children = d.children
        kinds = self.kinds
        assert kinds is not None
        known = self.cluster.blocks if self.cluster is not None else None
        if nblocks is None:
            if len(ids) != len(names):
                raise ValueError(f"block columns do not match the files in {base or '/'}")
            for name, mtime, k, bid, gen, size, dg in zip(names, mtimes, kind_of, ids, gens,
                                                          sizes, digests, strict=True):
                fk = kinds[k]
                b = BlockInfo(gen, size, fk[0], 0, dg, bid)
                if known is not None:
                    first = known.setdefault(bid, b)
                    if first is not b:
                        b = self.shared(first, fk[0])
                children[name] = File.of(b, mtime, fk)
        else:
            if sum(nblocks) != len(ids) or not len(ids) == len(gens) == len(sizes) == \
                    len(digests):
                raise ValueError(f"block columns do not match the files in {base or '/'}")
            j = 0
            for name, mtime, k, n in zip(names, mtimes, kind_of, nblocks, strict=True):
                fk = kinds[k]
                made: list[Block] = []
                for i in range(j, j + n):
                    b = BlockInfo(gens[i], sizes[i], fk[0], 0, digests[i], ids[i])
                    if known is not None:
                        first = known.setdefault(b.id, b)
                        if first is not b:
                            b = self.shared(first, fk[0])
                    made.append(b)
                j += n
                children[name] = File.of(made[0] if n == 1 else tuple(made), mtime, fk)
        self.ns.files += len(names)
        self.ns.blocks += len(ids)

    def shared(self, first: BlockInfo, replication: int) -> BlockInfo:
        """Another file holding a block already loaded (a copy): it holds the same record."""
        assert self.cluster is not None
        self.cluster.share(first.id, replication)
        return first

    def file_rows(self, u: msgpack.Unpacker) -> None:
        """`files` of a DFSCKPT1 checkpoint: one row a file."""
        ns = self.ns
        known = self.cluster.blocks if self.cluster is not None else None
        for _ in range(u.read_array_header()):
            row = u.unpack()
            parent, _, name = row[0].rpartition("/")
            replication = row[2]
            made: list[Block] = []
            for e in row[1]:
                b = BlockInfo(e[1], e[2], replication, 0, e[3] if len(e) > 3 else None, e[0])
                if known is not None:
                    first = known.setdefault(b.id, b)
                    if first is not b:
                        b = self.shared(first, replication)
                made.append(b)
            self.dir_at(parent).put(name, File(made, replication, row[3], row[4],
                                               self.attrs(row, 5)))
            ns.files += 1
            ns.blocks += len(made)


def _more(u: msgpack.Unpacker) -> bool:
    try:
        u.skip()
    except msgpack.OutOfData:
        return False
    return True
