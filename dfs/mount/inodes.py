"""Inode numbers for dfs paths, as the kernel needs them.

dfs names files by path; FUSE names them by inode. An inode is handed out the first time the
kernel looks a path up and lives until the kernel forgets it (its lookup count falls to zero):
numbers are never reused, so a stale inode can never reach another file. A rename moves the
path of the inode and of everything the kernel knows under it; a removed path loses its inode
mapping at once (a new file there gets a new number), while the inode itself lives on until it
is forgotten, as an unlinked but open file does on a local disk.
"""

from __future__ import annotations

ROOT = 1  # pyfuse3.ROOT_INODE


class Inodes:
    def __init__(self) -> None:
        self._path: dict[int, str] = {ROOT: "/"}
        self._ino: dict[str, int] = {"/": ROOT}
        self._refs: dict[int, int] = {}
        self._next = ROOT + 1

    def __len__(self) -> int:
        return len(self._path)

    def path(self, ino: int) -> str | None:
        """The path an inode names now, or None if the kernel asks about one we forgot."""
        return self._path.get(ino)

    def known(self, path: str) -> int | None:
        """The inode of `path` if the kernel has one for it, else None."""
        return self._ino.get(path)

    def of(self, path: str) -> int:
        """The inode of `path`, made on first use (without a lookup reference)."""
        ino = self._ino.get(path)
        if ino is None:
            ino = self._ino[path] = self._next
            self._path[ino] = path
            self._next += 1
        return ino

    def looked_up(self, path: str) -> int:
        """The inode of `path`, counting one more kernel reference to it."""
        ino = self.of(path)
        if ino != ROOT:
            self._refs[ino] = self._refs.get(ino, 0) + 1
        return ino

    def forget(self, ino: int, n: int) -> None:
        left = self._refs.get(ino, 0) - n
        if left > 0:
            self._refs[ino] = left
            return
        self._refs.pop(ino, None)
        path = self._path.pop(ino, None)
        if path is not None and self._ino.get(path) == ino:
            del self._ino[path]

    def _under(self, path: str, tree: bool) -> list[str]:
        """Known paths at `path` and, with `tree` (a directory), under it."""
        if not tree:
            return [path] if path in self._ino else []
        prefix = path.rstrip("/") + "/"
        return [p for p in self._ino if p == path or p.startswith(prefix)]

    def moved(self, src: str, dst: str, tree: bool = True) -> None:
        """`src` (and, with `tree`, everything known under it) is now at `dst`; whatever
        inode `dst` had no longer has a path."""
        self.removed(dst, tree)
        for path in self._under(src, tree):
            ino = self._ino.pop(path)
            new = dst + path[len(src):]
            self._ino[new] = ino
            self._path[ino] = new

    def removed(self, path: str, tree: bool = True) -> None:
        """`path` (and, with `tree`, everything under it) is gone from the namespace."""
        for p in self._under(path, tree):
            self._path.pop(self._ino.pop(p), None)
