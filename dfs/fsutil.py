"""Small durable-file helpers shared by meta and chunkservers: directory fsync, atomic
replacement of a small file, and the error that names a damaged file.

A rename is durable only once the directory holding it is fsynced: without that a crash can
bring the old name (or no name) back even though the file's bytes were synced.
"""

from __future__ import annotations

import os


class CorruptFile(Exception):
    """A file of ours holds bytes we cannot trust; start-up stops with this one line."""

    def __init__(self, path: str, offset: int, why: str, kind: str = "file") -> None:
        super().__init__(f"{kind} {path} is corrupt at offset {offset}: {why}")
        self.path, self.offset, self.why = path, offset, why


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory entries of `path` (a directory) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """os.pwrite at `offset` until every byte is written (a write may be short)."""
    view = memoryview(data)
    n = os.pwrite(fd, view, offset)
    while n < len(view):
        n += os.pwrite(fd, view[n:], offset + n)


def write_synced(path: str, data: bytes) -> int:
    """Create (or truncate) `path`, write `data`, fsync it; return its descriptor, still open.
    On failure the file is removed: a half-written copy must not hold a full disk's last free
    space. Blocking."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return fd


def atomic_write(path: str, data: bytes) -> None:
    """Replace `path` with `data` durably: write a temporary file beside it, fsync it, rename it
    over `path`, fsync the directory. A crash leaves the old file or the new one, never a mix.
    Blocking."""
    tmp = path + ".tmp"
    os.close(write_synced(tmp, data))
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_text(path: str) -> str:
    """A small text file's content without surrounding whitespace; "" if it does not exist."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""
