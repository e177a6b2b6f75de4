"""Checkpoints: the whole namespace in one file, so start-up replays only the journal since.

File layout (integers big-endian)::

    offset 0   8 bytes   magic b"DFSCKPT1"
    8          4 bytes   crc    u32, CRC32C of body
    12         8 bytes   length u64, bytes in body
    20         length    body   msgpack map:
                                  gen     journal generation the checkpoint covers
                                  count   records of that generation it includes
                                  epoch   the last meta epoch
                                  dirs    [[path, mtime], ...]        parents before children
                                  files   [[path, [[id, gen, size, digest], ...],
                                            replication, block_size, mtime], ...]
                                          (a block whose digest is unknown, committed before
                                          digests existed, is [id, gen, size])
                                  links   [[path, target, mtime], ...]   (may be absent)
                                  root    [mode, uid, gid] of "/" (absent until set)
                                A dir, file or link whose mode, uid or gid was set has one
                                more element, [mode, uid, gid] (nil for those not set).

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

import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import crc32c
import msgpack

from ..fsutil import CorruptFile, atomic_write
from .namespace import Attrs, Block, Dir, File, Link, Namespace, walk

MAGIC = b"DFSCKPT1"
HEAD = struct.Struct(">IQ")


@dataclass
class Checkpoint:
    gen: int = 0
    count: int = 0
    epoch: int = 0
    dirs: list[list[Any]] = field(default_factory=list)
    files: list[list[Any]] = field(default_factory=list)
    links: list[list[Any]] = field(default_factory=list)
    root: list[Any] | None = None


def _no_digest(block_id: int) -> int | None:
    return None


def snapshot(ns: Namespace, gen: int, count: int, epoch: int,
             digest: Callable[[int], int | None] = _no_digest) -> bytes:
    """Serialise the namespace (on the event loop, so it is one consistent moment); `digest`
    gives a block's recorded digest (the block map holds them)."""
    dirs: list[list[Any]] = []
    files: list[list[Any]] = []
    links: list[list[Any]] = []
    for path, node in walk(ns.root):
        if isinstance(node, Dir):
            row = [path, node.mtime]
            dirs.append(row)
        elif isinstance(node, Link):
            row = [path, node.target, node.mtime]
            links.append(row)
        else:
            blocks = []
            for b in node.blocks:
                d = digest(b.id)
                blocks.append([b.id, b.gen, b.size] if d is None else [b.id, b.gen, b.size, d])
            row = [path, blocks, node.replication, node.block_size, node.mtime]
            files.append(row)
        if node.attrs is not None:
            row.append(list(node.attrs))
    m: dict[str, Any] = {"gen": gen, "count": count, "epoch": epoch, "dirs": dirs,
                         "files": files, "links": links}
    if ns.root.attrs is not None:
        m["root"] = list(ns.root.attrs)
    body = msgpack.packb(m, use_bin_type=True)
    return MAGIC + HEAD.pack(crc32c.crc32c(body), len(body)) + body


def write(path: str, data: bytes) -> None:
    """Durably replace the checkpoint file. Blocking: run in a worker thread."""
    atomic_write(path, data)


def read(path: str) -> Checkpoint | None:
    """The checkpoint at `path`, or None if there is none yet."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + HEAD.size:
        raise CorruptFile(path, 0, "not a dfs checkpoint", "checkpoint")
    crc, length = HEAD.unpack_from(data, len(MAGIC))
    body = memoryview(data)[len(MAGIC) + HEAD.size:]
    if len(body) != length:
        raise CorruptFile(path, len(MAGIC) + HEAD.size, "body has the wrong length",
                          "checkpoint")
    if crc32c.crc32c(body) != crc:
        raise CorruptFile(path, len(MAGIC) + HEAD.size, "checksum mismatch", "checkpoint")
    try:
        m = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        return Checkpoint(m["gen"], m["count"], m["epoch"], m["dirs"], m["files"],
                          m.get("links", []), m.get("root"))
    except (ValueError, KeyError, TypeError) as exc:  # msgpack's errors are ValueErrors
        raise CorruptFile(path, len(MAGIC) + HEAD.size, f"body cannot be read: {exc!r}",
                          "checkpoint") from None


def load(cp: Checkpoint, ns: Namespace, digests: dict[int, int]) -> None:
    """Rebuild the namespace the checkpoint describes into an empty `ns`, and the recorded
    block digests into `digests`. The paths were validated when they entered the namespace,
    so the tree is built directly (this is what makes start-up take seconds at millions of
    files)."""
    dirs: dict[str, Dir] = {"": ns.root}

    def dir_at(path: str) -> Dir:
        d = dirs.get(path)
        if d is None:
            parent, _, name = path.rpartition("/")
            d = Dir(0.0)
            dir_at(parent).put(name, d)
            dirs[path] = d
            ns.dirs += 1
        return d

    def attrs(row: list[Any], i: int) -> Attrs | None:
        return ns.attrs(*row[i]) if len(row) > i and row[i] is not None else None

    if cp.root is not None:
        ns.root.attrs = ns.attrs(*cp.root)
    for row in cp.dirs:
        d = dir_at(row[0])
        d.mtime = row[1]
        d.attrs = attrs(row, 2)
    files = blocks = 0
    for row in cp.files:
        path, block_list, replication, block_size, mtime = row[:5]
        parent, _, name = path.rpartition("/")
        for b in block_list:
            if len(b) > 3:
                digests[b[0]] = b[3]
        dir_at(parent).put(name, File([Block(b[0], b[1], b[2]) for b in block_list],
                                      replication, block_size, mtime, attrs(row, 5)))
        files += 1
        blocks += len(block_list)
    for row in cp.links:
        parent, _, name = row[0].rpartition("/")
        dir_at(parent).put(name, Link(row[1], row[2], attrs(row, 3)))
    ns.files += files
    ns.blocks += blocks
