"""The directory tree: paths -> directories and files -> block lists.

Owns the in-memory namespace; never touches the disk (the journal does) and never does I/O.
Every mutation is a deterministic method, so journal replay calls the very same code that
served the live request. Methods raise `DFSError` subclasses a client can understand.
"""

from __future__ import annotations

import bisect
from itertools import islice
from typing import Any, Iterator, Sequence

from ..errors import (
    AlreadyExists,
    BadRequest,
    DirectoryNotEmpty,
    IsADirectory,
    NotADirectory,
    NotFound,
    TooLarge,
)
from .blocks import Block

MAX_PATH = 4096
MAX_NAME = 255


# mode, uid, gid of an entry, each None until set (chmod, chown, or a create through
# dfs-mount). Recorded and shown, not enforced: dfs has no per-user permissions yet. Equal
# tuples are shared (Namespace.attrs), so a million files owned alike cost one tuple.
Attrs = tuple[int | None, int | None, int | None]

# (replication, block_size, attrs) of a file. Few files differ in them, so equal ones share
# one tuple: a file holds one reference instead of three (16 bytes less per file).
Kind = tuple[int, int, "Attrs | None"]
_kinds: dict[Kind, Kind] = {}


def kind(replication: int, block_size: int, attrs: Attrs | None) -> Kind:
    k = (replication, block_size, attrs)
    return _kinds.setdefault(k, k)


class File:
    """A committed file. Compact, as a million of them must fit in a few hundred MB: its one
    block is held directly (several as a tuple), its size is its blocks', and replication,
    block size and attrs are one shared `Kind`."""

    __slots__ = ("_blocks", "mtime", "kind")

    def __init__(self, blocks: Sequence[Block], replication: int, block_size: int,
                 mtime: float, attrs: Attrs | None = None) -> None:
        self._blocks: Block | tuple[Block, ...] = blocks[0] if len(blocks) == 1 else \
            tuple(blocks)
        self.mtime = mtime
        self.kind = kind(replication, block_size, attrs)

    @classmethod
    def of(cls, held: "Block | tuple[Block, ...]", mtime: float, kind: Kind) -> "File":
        """A file from its parts as File keeps them (one block, or a tuple of them; a shared
        kind): what checkpoint loading calls a million times."""
        f = cls.__new__(cls)
        f._blocks, f.mtime, f.kind = held, mtime, kind
        return f

    @property
    def blocks(self) -> list[Block]:
        b = self._blocks
        return list(b) if type(b) is tuple else [b]  # type: ignore[arg-type,list-item]

    @blocks.setter
    def blocks(self, blocks: Sequence[Block]) -> None:
        self._blocks = blocks[0] if len(blocks) == 1 else tuple(blocks)

    @property
    def size(self) -> int:
        b = self._blocks
        if type(b) is tuple:
            return sum([x.size for x in b]) if b else 0  # type: ignore[union-attr]
        return b.size  # type: ignore[union-attr]

    @property
    def replication(self) -> int:
        return self.kind[0]

    @replication.setter
    def replication(self, replication: int) -> None:
        self.kind = kind(replication, self.kind[1], self.kind[2])

    @property
    def block_size(self) -> int:
        return self.kind[1]

    @property
    def attrs(self) -> Attrs | None:
        return self.kind[2]

    @attrs.setter
    def attrs(self, attrs: Attrs | None) -> None:
        self.kind = kind(self.kind[0], self.kind[1], attrs)


class Link:
    """A symbolic link: meta stores its target text and never follows it (the kernel does,
    through dfs-mount); to every other request it is a leaf, like a file without blocks."""

    __slots__ = ("target", "mtime", "attrs")

    def __init__(self, target: str, mtime: float, attrs: Attrs | None = None) -> None:
        self.target, self.mtime, self.attrs = target, mtime, attrs


class Dir:
    __slots__ = ("children", "mtime", "_sorted", "attrs")

    def __init__(self, mtime: float, attrs: Attrs | None = None) -> None:
        self.children: dict[str, File | Dir | Link] = {}
        self.mtime = mtime
        self._sorted: list[str] | None = None
        self.attrs = attrs

    def names(self) -> list[str]:
        """Child names in order, cached until the directory changes (ls pages through it)."""
        if self._sorted is None:
            self._sorted = sorted(self.children)
        return self._sorted

    def page(self, start_after: str, limit: int) -> tuple[list[str], list["Node"], bool]:
        """Up to `limit` child names after `start_after` in order, their nodes, and whether
        more follow. Two flat lists rather than (name, node) pairs: a page of 10,000 pairs
        is 10,000 new objects for the cyclic GC to count and scan, on meta's event loop."""
        names = self.names()
        lo = bisect.bisect_right(names, start_after) if start_after else 0
        chunk = names[lo:lo + limit]
        return chunk, list(map(self.children.__getitem__, chunk)), lo + limit < len(names)

    def put(self, name: str, node: "File | Dir | Link") -> None:
        if name not in self.children:
            self._sorted = None
        self.children[name] = node

    def pop(self, name: str) -> "File | Dir | Link":
        self._sorted = None
        return self.children.pop(name)


Node = File | Dir | Link
MAX_LINK = 4096  # bytes of a symbolic link's target, as PATH_MAX


def split_path(path: Any) -> list[str]:
    """Normalise an absolute path into its components; `..`, NUL, empty parts are rejected.

    `/a/./b/` is `/a/b`; `//a` is rejected (an empty component), as is anything relative.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadRequest(f"path must be absolute: {path!r}")
    if len(path) > MAX_PATH:
        raise BadRequest(f"path longer than {MAX_PATH} characters")
    if "\x00" in path:
        raise BadRequest("path contains NUL")
    if path == "/":
        return []
    parts = path[1:].split("/")
    if parts[-1] == "":
        parts.pop()  # one trailing slash is fine: /a/b/
    out = []
    for part in parts:
        if part == "":
            raise BadRequest(f"empty path component in {path!r}")
        if part == "..":
            raise BadRequest(f"'..' is not allowed in {path!r}")
        if part == ".":
            continue
        if len(part) > MAX_NAME:
            raise BadRequest(f"path component longer than {MAX_NAME} characters")
        out.append(part)
    return out


def join(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def normalise(path: Any) -> str:
    return join(split_path(path))


class Namespace:
    def __init__(self, now: float = 0.0) -> None:
        self.root = Dir(now)
        self.files = 0
        self.blocks = 0
        self.dirs = 1  # the root included: kept as the tree changes, for /metrics
        self._attrs: dict[Attrs, Attrs] = {}

    def attrs(self, mode: int | None, uid: int | None, gid: int | None) -> Attrs | None:
        """The shared tuple for these attributes (None when none is set)."""
        if mode is None and uid is None and gid is None:
            return None
        key = (mode, uid, gid)
        return self._attrs.setdefault(key, key)

    # lookups ------------------------------------------------------------------------
    def lookup(self, path: str) -> Node:
        return self._walk(split_path(path), path)

    def _walk(self, parts: list[str], path: str) -> Node:
        node: Node = self.root
        for i, name in enumerate(parts):
            if not isinstance(node, Dir):
                raise NotADirectory(f"{join(parts[:i])} is a file (in {path})")
            child = node.children.get(name)
            if child is None:
                raise NotFound(join(parts[:i + 1]))
            node = child
        return node

    def _parent(self, parts: list[str], path: str, create: bool, mtime: float) -> Dir:
        node: Node = self.root
        for i, name in enumerate(parts[:-1]):
            assert isinstance(node, Dir)
            child = node.children.get(name)
            if child is None:
                if not create:
                    raise NotFound(f"{join(parts[:i + 1])} (parent of {path})")
                child = Dir(mtime)
                node.put(name, child)
                self.dirs += 1
                node.mtime = mtime
            elif not isinstance(child, Dir):
                raise NotADirectory(f"{join(parts[:i + 1])} is a file (in {path})")
            node = child
        assert isinstance(node, Dir)
        return node

    def check_file_path(self, path: str) -> None:
        """Fail early, at create time, when a file could never be published at `path`."""
        parts = split_path(path)
        if not parts:
            raise IsADirectory("/")
        node: Node = self.root
        for i, name in enumerate(parts):
            if not isinstance(node, Dir):
                raise NotADirectory(f"{join(parts[:i])} is a file (in {path})")
            child = node.children.get(name)
            if child is None:
                return
            node = child
        if isinstance(node, Dir):
            raise IsADirectory(path)

    def listdir(self, path: str, start_after: str = "", limit: int = 1000
                ) -> tuple[list[tuple[str, Node]], bool]:
        """Entries of a directory in name order after `start_after`; (entries, more)."""
        node = self.lookup(path)
        if not isinstance(node, Dir):
            parts = split_path(path)
            return [(parts[-1], node)], False
        names, nodes, more = node.page(start_after, limit)
        return list(zip(names, nodes, strict=True)), more

    # mutations ----------------------------------------------------------------------
    def mkdir(self, path: str, parents: bool, mtime: float, attrs: Attrs | None = None
              ) -> bool:
        """Create a directory; returns False if `parents` and it already existed. `attrs`
        are the new directory's (not its parents')."""
        parts = split_path(path)
        if not parts:
            if parents:
                return False
            raise AlreadyExists("/")
        parent = self._parent(parts, path, parents, mtime)
        existing = parent.children.get(parts[-1])
        if existing is not None:
            if isinstance(existing, Dir) and parents:
                return False
            raise AlreadyExists(join(parts))
        parent.put(parts[-1], Dir(mtime, attrs))
        parent.mtime = mtime
        self.dirs += 1
        return True

    def symlink(self, path: str, target: str, mtime: float, attrs: Attrs | None = None
                ) -> None:
        """Create a symbolic link at `path` (its parent must exist; nothing may be there)."""
        parts = split_path(path)
        if not parts:
            raise AlreadyExists("/")
        if not isinstance(target, str) or not target or "\x00" in target or \
                len(target.encode()) > MAX_LINK:
            raise BadRequest(f"a link target is 1..{MAX_LINK} bytes of text without NUL")
        parent = self._parent(parts, path, False, mtime)
        if parts[-1] in parent.children:
            raise AlreadyExists(join(parts))
        parent.put(parts[-1], Link(target, mtime, attrs))
        parent.mtime = mtime

    def chattr(self, path: str, mode: int | None, uid: int | None, gid: int | None) -> None:
        """Set mode, uid and/or gid of an entry (None: leave as it is)."""
        node = self.lookup(path)
        old = node.attrs or (None, None, None)
        node.attrs = self.attrs(old[0] if mode is None else mode,
                                old[1] if uid is None else uid,
                                old[2] if gid is None else gid)

    def publish(self, path: str, file: File) -> File | None:
        """Make `file` visible at `path`, creating parents and replacing an old file there.
        Returns the replaced file (its blocks become garbage)."""
        parts = split_path(path)
        if not parts:
            raise IsADirectory("/")
        parent = self._parent(parts, path, True, file.mtime)
        old = parent.children.get(parts[-1])
        if isinstance(old, Dir):
            raise IsADirectory(join(parts))
        parent.put(parts[-1], file)
        # A file may bring an old mtime (put -p, sync): the directory's never goes back.
        parent.mtime = max(parent.mtime, file.mtime)
        self.files += 1
        self.blocks += len(file.blocks)
        if old is not None:
            self._count_out(old)
        return old if isinstance(old, File) else None

    def remove(self, path: str, recursive: bool, mtime: float) -> list[File]:
        """Remove a file or directory; returns every file removed (for block garbage)."""
        parts = split_path(path)
        if not parts:
            raise BadRequest("refusing to remove /")
        parent = self._parent(parts, path, False, mtime)
        node = parent.children.get(parts[-1])
        if node is None:
            raise NotFound(join(parts))
        if isinstance(node, Dir) and node.children and not recursive:
            raise DirectoryNotEmpty(f"{join(parts)} (use rm -r)")
        parent.pop(parts[-1])
        parent.mtime = mtime
        removed: list[File] = []
        if isinstance(node, Dir):
            self.dirs -= 1
            for _, child in walk(node):
                if isinstance(child, File):
                    removed.append(child)
                elif isinstance(child, Dir):
                    self.dirs -= 1
        elif isinstance(node, File):
            removed.append(node)
        for f in removed:
            self._count_out(f)
        return removed

    def rename(self, src: str, dst: str, mtime: float) -> tuple[str, File | None]:
        """Move a file or directory. An existing directory at `dst` receives `src` inside it;
        an existing file at `dst` is replaced by a file. Returns (final path, replaced file)."""
        sparts, dparts = split_path(src), split_path(dst)
        if not sparts:
            raise BadRequest("cannot move /")
        sparent = self._parent(sparts, src, False, mtime)
        node = sparent.children.get(sparts[-1])
        if node is None:
            raise NotFound(join(sparts))
        target = self._walk_or_none(dparts, dst)
        if isinstance(target, Dir):
            dparts = dparts + [sparts[-1]]
            target = target.children.get(sparts[-1])
        if dparts == sparts:
            return join(dparts), None
        if isinstance(node, Dir) and dparts[:len(sparts)] == sparts:
            raise BadRequest(f"cannot move {join(sparts)} into itself")
        if isinstance(target, Dir):
            raise AlreadyExists(f"{join(dparts)} (a directory)")
        if target is not None and isinstance(node, Dir):
            raise AlreadyExists(join(dparts))
        dparent = self._parent(dparts, dst, False, mtime)
        sparent.pop(sparts[-1])
        sparent.mtime = mtime
        dparent.put(dparts[-1], node)
        dparent.mtime = mtime
        replaced = target if isinstance(target, File) else None
        if replaced is not None:
            self._count_out(replaced)
        return join(dparts), replaced

    def copy(self, src: str, dst: str, recursive: bool, mtime: float,
             limit: int | None = None) -> tuple[str, list[File], File | None]:
        """Copy a file (or, with `recursive`, a directory tree) to `dst`, sharing its blocks:
        committed blocks never change, so a copy is new File objects over the same block ids.
        An existing directory at `dst` receives the copy inside it; an existing file there
        is replaced by a copied file (never by a directory). Returns (final path, the new
        files, the replaced file). The caller counts the extra references to the blocks.
        `limit`: refuse a tree of more entries than that (one request must not stall meta or
        grow it without bound; replay passes None, the copy was allowed when it was made)."""
        sparts, dparts = split_path(src), split_path(dst)
        node = self._walk(sparts, src)
        if isinstance(node, Dir) and not recursive:
            raise IsADirectory(f"{join(sparts)} is a directory (use cp -r)")
        target = self._walk_or_none(dparts, dst)
        if isinstance(target, Dir):
            if not sparts:
                raise BadRequest("cannot copy / into a directory")
            dparts = dparts + [sparts[-1]]
            target = target.children.get(sparts[-1])
        if not dparts:
            raise BadRequest("cannot copy onto /")
        if dparts == sparts:
            raise BadRequest(f"{join(sparts)} and its copy would be the same path")
        if isinstance(node, Dir):
            if dparts[:len(sparts)] == sparts:
                raise BadRequest(f"cannot copy {join(sparts)} into itself")
            if target is not None:
                raise AlreadyExists(join(dparts))
        elif isinstance(target, Dir):
            raise AlreadyExists(f"{join(dparts)} (a directory)")
        if limit is not None and isinstance(node, Dir):
            entries = sum(1 for _ in islice(walk(node), limit + 1))
            if entries > limit:
                raise TooLarge(f"{join(sparts)} holds more than {limit} entries: copy its "
                               "subdirectories one by one")
        dparent = self._parent(dparts, dst, True, mtime)
        copied: list[File] = []
        clone = _clone(node, mtime, copied)
        dparent.put(dparts[-1], clone)
        dparent.mtime = mtime
        self.files += len(copied)
        self.blocks += sum(len(f.blocks) for f in copied)
        if isinstance(clone, Dir):
            self.dirs += 1 + sum(1 for _, n in walk(clone) if isinstance(n, Dir))
        replaced = target if isinstance(target, File) else None
        if replaced is not None:
            self._count_out(replaced)
        return join(dparts), copied, replaced

    def set_replication(self, path: str, replication: int, recursive: bool
                        ) -> tuple[list[File], int]:
        """Set the replication of a file, or of every file under a directory (`recursive`);
        returns every file at or under the path, and how many of them changed."""
        node = self.lookup(path)
        if isinstance(node, Dir) and not recursive:
            raise IsADirectory(f"{normalise(path)} is a directory (use -R)")
        files = list(iter_files(node))
        changed = 0
        for f in files:
            changed += f.replication != replication
            f.replication = replication
        return files, changed

    def touch(self, path: str, mtime: float) -> None:
        """Set a file's or directory's modification time (touch, sync keeping mtimes)."""
        self.lookup(path).mtime = mtime

    def _walk_or_none(self, parts: list[str], path: str) -> Node | None:
        try:
            return self._walk(parts, path)
        except NotFound:
            return None

    def _count_out(self, f: Node) -> None:
        if isinstance(f, File):
            self.files -= 1
            self.blocks -= len(f.blocks)


def walk(d: Dir, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Every directory and file under `d` with its full path (`prefix` is d's own path, ""
    for the root), each directory before what it holds."""
    stack = [(prefix, d)]
    while stack:
        base, cur = stack.pop()
        for name, child in cur.children.items():
            path = f"{base}/{name}"
            yield path, child
            if isinstance(child, Dir):
                stack.append((path, child))


def every_file(d: Dir) -> Iterator[File]:
    """Every file under `d`, in no particular order and without building paths (start-up
    visits a million of them)."""
    stack = [d]
    while stack:
        for child in stack.pop().children.values():
            if isinstance(child, File):
                yield child
            elif isinstance(child, Dir):
                stack.append(child)


def _clone(node: Node, mtime: float, files: list[File]) -> Node:
    """A copy of a file or directory tree over the same blocks; new files go to `files`.
    Iterative: a path of 4096 characters can nest 2048 directories, past Python's stack."""
    def one(n: Node) -> Node:
        if isinstance(n, File):
            f = File(list(n.blocks), n.replication, n.block_size, mtime, n.attrs)
            files.append(f)
            return f
        if isinstance(n, Link):
            return Link(n.target, mtime, n.attrs)
        return Dir(mtime, n.attrs)
    top = one(node)
    stack = [(node, top)]
    while stack:
        src, dst = stack.pop()
        if isinstance(src, Dir) and isinstance(dst, Dir):
            for name, child in src.children.items():
                twin = one(child)
                dst.children[name] = twin
                stack.append((child, twin))
    return top


def iter_files(node: Node) -> Iterator[File]:
    if isinstance(node, File):
        yield node
        return
    if not isinstance(node, Dir):
        return
    for _, child in walk(node):
        if isinstance(child, File):
            yield child
