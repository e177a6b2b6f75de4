"""Open files of the mount.

Reading goes through the client's verified, failing-over `FileReader`: a read that continues
the previous one uses its read-ahead window; one that jumps fetches only the checksum units it
needs (`pread`).

dfs files are write-once, so a file opened for writing is spooled to a local file (in the
cache directory, within a byte budget shared by every open file) and uploaded atomically when
it is flushed (close) or fsync'd; until then other clients see the old version, if any. A
file opened for writing without O_TRUNC starts as a copy of the current one, which is what
makes appends, writes at any offset and seeks back (zip, tar) work.
"""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import time
from typing import Any

from .. import config
from ..client import AsyncClient
from ..client.reader import FileReader
from ..client.writer import FileWriter
from ..errors import DFSError, Unavailable

SEGMENT = config.READ_SIZE
WINDOW = config.READ_WINDOW  # segments kept in flight ahead of a sequential reader


class ReadHandle:
    """An open file being read. The kernel's own read-ahead sends several requests at once,
    out of order, so reads share one cache of 1 MiB segments (each fetched once, verified,
    from the first replica that answers) instead of one position: a request takes the
    segments it covers and starts the next WINDOW beyond them. A request far from any
    recent one (random access) reads only the checksum units it needs (`pread`)."""

    def __init__(self, reader: FileReader) -> None:
        self.reader = reader
        self.segments: dict[tuple[int, int], asyncio.Task[bytes]] = {}
        self.frontier = 0  # the end of the furthest request so far

    async def read(self, off: int, size: int) -> bytes:
        r = self.reader
        end = min(off + size, r.size)
        if off >= end:
            return b""
        if not self.frontier - 2 * WINDOW * SEGMENT <= off <= self.frontier + WINDOW * SEGMENT:
            self.frontier = max(self.frontier, end) if off < self.frontier else end
            return await r.pread(off, end - off)
        self.frontier = max(self.frontier, end)
        keys = self._covering(off, end)
        ahead = keys[-1]
        for _ in range(WINDOW):
            nxt = self._after(ahead)
            if nxt is None:
                break
            ahead = nxt
            self._start(nxt)
        parts = []
        for key in keys:
            data = await self._start(key)
            base = key[0] * r.block_size + key[1]
            lo, hi = max(off, base) - base, min(end, base + len(data)) - base
            # The kernel asks for whole aligned MiBs when it reads ahead: a whole segment
            # goes back as it is, uncopied.
            parts.append(data if (lo, hi) == (0, len(data)) else memoryview(data)[lo:hi])
        self._evict(keys[0])
        if len(parts) == 1:
            return parts[0] if isinstance(parts[0], bytes) else parts[0].tobytes()
        return b"".join(parts)

    def _covering(self, off: int, end: int) -> list[tuple[int, int]]:
        bs = self.reader.block_size
        keys = []
        pos = off
        while pos < end:
            bi, inner = divmod(pos, bs)
            seg = inner - inner % SEGMENT
            keys.append((bi, seg))
            pos = bi * bs + seg + SEGMENT
            if pos >= bi * bs + self.reader.block_len(bi):
                pos = (bi + 1) * bs
        return keys

    def _after(self, key: tuple[int, int]) -> tuple[int, int] | None:
        bi, seg = key[0], key[1] + SEGMENT
        if seg >= self.reader.block_len(bi):
            bi, seg = bi + 1, 0
        return (bi, seg) if bi < self.reader.blocks.count else None

    def _start(self, key: tuple[int, int]) -> asyncio.Task[bytes]:
        task = self.segments.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = self.segments[key] = asyncio.ensure_future(self.reader.segment(*key))
            # A read-ahead nobody awaits in the end must not log "never retrieved".
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    def _evict(self, first: tuple[int, int]) -> None:
        """Drop finished segments well behind the earliest one still wanted (requests a
        little behind it may still come, out of order); the cache stays bounded."""
        keep_from = (first[0], first[1] - 2 * SEGMENT)
        for key in [k for k, t in self.segments.items() if k < keep_from and t.done()]:
            del self.segments[key]
        while len(self.segments) > 4 * WINDOW:
            oldest = min(self.segments)
            self.segments.pop(oldest).cancel()

    def close(self) -> None:
        for task in self.segments.values():
            task.cancel()
        self.segments.clear()
        self.reader.abandon()


class SpoolBudget:
    """Bytes every spool together may hold on local disk; past it, a write fails ENOSPC
    (the program sees a full disk rather than filling the one it runs on)."""

    def __init__(self, directory: str, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.used = 0

    def grow(self, by: int) -> None:
        if by > 0 and self.used + by > self.limit:
            raise OSError(errno.ENOSPC, f"the mount's write cache ({self.directory}) is full")
        self.used += by


class WriteHandle:
    """One file opened for writing, and what is published at the next flush.

    A file that starts empty (created, or opened with O_TRUNC) is *streamed*: while every
    write lands at the end of what was written, the bytes go straight into an upload's
    pipeline (FileWriter) and no local copy is made. The first write elsewhere, read, or
    truncation moves the bytes written so far into the spool (the blocks already finished
    are read back from the chunkservers, the rest is still in the writer's memory) and the
    upload is abandoned; from then on the spool is the file. A file opened without O_TRUNC
    starts as a spooled copy of its current bytes."""

    def __init__(self, ino: int, budget: SpoolBudget, attrs: dict[str, int],
                 client: AsyncClient, replication: int, stream: bool,
                 block_size: int = config.DEFAULT_BLOCK_SIZE) -> None:
        self.ino = ino
        self.budget = budget
        self.client = client
        self.replication = replication
        self.block_size = block_size
        self.attrs = attrs  # mode/uid/gid the upload publishes (kept across replacements)
        self.mtime: float | None = None  # set by utimens while open: published with it
        self.streaming = stream
        self.writer: FileWriter | None = None  # the upload being streamed into
        self.fd: Any = None  # the spool, made when first needed
        self.spooled = 0  # bytes counted against the budget
        self.size = 0
        self.dirty = False
        self.unlinked = False  # removed while open: never published
        self.last_path = ""  # where the file was last seen (ops keeps it current)
        self.published: dict[str, Any] | None = None  # meta's entry after the last upload
        self.lost: DFSError | None = None  # a streamed upload failed: its bytes are gone
        self.changed = time.time()  # shown as the mtime while unflushed
        self.lock = asyncio.Lock()  # one change or upload at a time

    # the spool ----------------------------------------------------------------------------
    def _spool(self) -> int:
        if self.fd is None:
            self.fd = tempfile.TemporaryFile(dir=self.budget.directory, prefix="dfs-mount-",
                                             buffering=0)
        return int(self.fd.fileno())

    def _grow(self, size: int) -> None:
        if size > self.spooled:
            self.budget.grow(size - self.spooled)
            self.spooled = size

    async def fill(self, path: str) -> None:
        """Start from the file's current bytes (open without O_TRUNC, or a write after a
        streamed file was published)."""
        reader = await self.client.open_read(path)
        try:
            await self._copy_in(reader, 0)
            self.size = reader.size
        finally:
            reader.abandon()
        self.streaming = False

    async def _copy_in(self, reader: FileReader, at: int) -> int:
        self._grow(at + reader.size)
        fd = self._spool()
        while True:
            piece = await reader.read1(config.READ_SIZE)
            if not piece:
                return at
            at += os.pwrite(fd, piece, at)

    async def _unstream(self, path: str) -> None:
        """Move what was streamed into the spool and give the upload up."""
        self.streaming = False
        w, self.writer = self.writer, None
        if w is None:
            return
        try:
            at = 0
            if w.committed:  # finished blocks: read back from their replicas
                blocks = [{"id": str(b[0]), "gen": b[1], "size": b[2], "replicas": b[3],
                           "token": token} for b, token in zip(w.committed, w.read_tokens,
                                                                strict=True)]
                reader = FileReader(self.client, {
                    "path": path, "size": sum(b[2] for b in w.committed),
                    "block_size": w.block_size, "blocks": blocks})
                try:
                    at = await self._copy_in(reader, 0)
                finally:
                    reader.abandon()
            held = [data for data, _ in w.block.packets] if w.block is not None else []
            held.append(bytes(w.buf))
            fd = self._spool()
            self._grow(self.size)
            for data in held:
                at += os.pwrite(fd, data, at)
            assert at == self.size, (at, self.size)
        except (DFSError, OSError) as exc:
            # Part of the file exists nowhere now: never publish what is left.
            self.lost = Unavailable(f"{path}: what was written could not be moved to the "
                                    f"local spool ({exc})")
            raise self.lost from None
        finally:
            await w.abort()

    # what the kernel asks -------------------------------------------------------------
    async def write(self, path: str, off: int, data: bytes) -> int:
        async with self.lock:
            if self.lost is not None:
                raise self.lost
            if self.streaming and off == self.size:
                if self.writer is None:
                    self.writer = await self.client.open_write(path, self.replication,
                                                               self.block_size)
                try:
                    await self.writer.write(data)
                except DFSError as exc:  # the pipeline gave up: what it held is gone
                    w, self.writer = self.writer, None
                    await w.abort()
                    self.lost = Unavailable(f"{path}: the upload of what was written "
                                            f"failed ({exc})")
                    raise self.lost from None
                n = len(data)
            else:
                await self._leave_stream(path)
                self._grow(off + len(data))
                n = os.pwrite(self._spool(), data, off)
            self.size = max(self.size, off + n)
            self.dirty = True
            self.changed = time.time()
            return n

    async def _leave_stream(self, path: str) -> None:
        if self.streaming:
            await self._unstream(path)
        elif self.fd is None and self.size and not self.dirty:
            # Streamed and published, then written again: start from what was published.
            await self.fill(path)

    async def read(self, path: str, off: int, size: int) -> bytes:
        async with self.lock:
            if self.lost is not None:
                raise self.lost
            await self._leave_stream(path)
            return os.pread(self._spool(), size, off) if self.size else b""

    async def truncate(self, path: str, size: int) -> None:
        async with self.lock:
            if self.lost is not None:
                raise self.lost
            if self.streaming and size == self.size:
                return
            await self._leave_stream(path)
            self._grow(size)
            os.ftruncate(self._spool(), size)
            self.size = size
            self.dirty = True
            self.changed = time.time()

    async def upload(self, path: str) -> bool:
        """Publish the file at `path` if anything changed since the last upload; True if it
        uploaded. The new version replaces the old one atomically."""
        async with self.lock:
            if not self.dirty:
                return False
            if self.lost is not None:
                raise self.lost
            if self.streaming:
                w, self.writer = self.writer, None
                try:
                    if w is None:
                        w = await self.client.open_write(path, self.replication, self.block_size,
                                                         size=0)
                    w.mtime, w.attrs = self.mtime, self.attrs
                    self._published(await w.close())  # aborts the upload if it fails
                except DFSError as exc:
                    # What was streamed went with the upload: every later flush says so,
                    # rather than publish a file without those bytes.
                    self.lost = Unavailable(f"{path}: the upload of what was written failed "
                                            f"({exc})")
                    raise self.lost from None
                self.streaming = False
                self.dirty = False
                return True
            self.dirty = False
            try:
                await self._put(path)
            except BaseException:
                self.dirty = True
                raise
            return True

    async def _put(self, path: str) -> None:
        """The spool into a new upload. Reads come from the page cache (the bytes were just
        written), so they are done on the loop: a thread hop per packet cost more than the
        read itself for the small files tar and git write."""
        writer = await self.client.open_write(path, self.replication, self.block_size,
                                             size=self.size)
        writer.mtime = self.mtime
        writer.attrs = self.attrs
        try:
            fd, at = self._spool(), 0
            while at < self.size:
                data = os.pread(fd, min(config.PACKET_SIZE, self.size - at), at)
                if not data:
                    break
                await writer.write_packet(data)
                at += len(data)
            self._published(await writer.close())
        except BaseException:
            await writer.abort()
            raise

    def _published(self, result: dict[str, Any]) -> None:
        """What meta now holds: the entry stat would return, so nobody needs to ask."""
        self.published = {"path": result["path"], "type": "file", "size": self.size,
                          "replication": self.replication, "block_size": self.block_size,
                          "mtime": result.get("mtime", self.mtime or time.time()),
                          **self.attrs}

    def entry(self) -> dict[str, Any]:
        """What stat shows while the file is open for writing: its size and time here, or,
        once published and unchanged since, what meta holds."""
        if not self.dirty and self.published is not None:
            if self.mtime is None:
                return self.published
            return {**self.published, "mtime": self.mtime}
        return {"type": "file", "size": self.size, "mtime": self.mtime or self.changed,
                **self.attrs}

    async def close(self) -> None:
        if self.writer is not None:  # streamed but never published (unlinked, unmounted)
            w, self.writer = self.writer, None
            await w.abort()
        if self.fd is not None:
            self.fd.close()
            self.fd = None
        self.budget.used -= self.spooled
        self.spooled = 0
