"""Local files on the client's side of a transfer, moved off the event loop.

`Pump` reads an upload's source and `Drain` writes a download's destination in helper threads,
a few packets ahead or behind the network, so local disk or pipe I/O overlaps the transfer
instead of stalling the loop.

Writing a large download around the page cache:

On this project's benchmark machine (a VM) a write into page-cache pages the process has
never touched costs ~2.5 s of kernel time per GiB (perf: copy_folio_from_iter_atomic), three
times a write into recycled pages, and it bounds `dfs-cli get` of a large file. A download of
at least DIRECT_MIN bytes into a fresh regular file is therefore staged through one reused,
page-aligned buffer and written with O_DIRECT (as `dd oflag=direct` would): no copy into the
page cache, no dirty pages left to write back. The unaligned tail goes through the cache.
Where O_DIRECT is refused (tmpfs, some network filesystems) the caller writes normally.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import queue
import stat as stat_mod
import threading
from typing import BinaryIO

from ..fsutil import pwrite_all

DIRECT_MIN = 64 * 1024 * 1024  # smaller downloads are not worth it
STAGE = 4 * 1024 * 1024  # bytes per direct write (a multiple of the page size)
ALIGN = 4096


class DirectFile:
    """Sequential writes from offset 0 of an open, empty regular file. Blocking: used from
    the download's writer thread. `close()` writes the tail; the caller closes `fd`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT)
        self.stage = mmap.mmap(-1, STAGE)  # page-aligned, touched once, reused
        self.fill = 0
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), STAGE - self.fill)
            self.stage[self.fill:self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == STAGE:
                self._flush(STAGE)

    def _flush(self, n: int) -> None:
        pwrite_all(self.dfd, memoryview(self.stage)[:n], self.offset)
        self.offset += n
        rest = self.fill - n
        if rest:
            self.stage.move(0, n, rest)
        self.fill = rest

    def close(self) -> None:
        try:
            aligned = self.fill - self.fill % ALIGN
            if aligned:
                self._flush(aligned)
            if self.fill:
                pwrite_all(self.fd, memoryview(self.stage)[:self.fill], self.offset)
                self.offset += self.fill
                self.fill = 0
        finally:
            os.close(self.dfd)


def open_direct(fd: int, size: int) -> DirectFile | None:
    """A DirectFile for a download of `size` bytes into fd, or None to write normally."""
    if size < DIRECT_MIN or not hasattr(os, "O_DIRECT"):
        return None
    try:
        return DirectFile(fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EACCES, errno.EOPNOTSUPP):
            return None
        raise


def read_full(f: BinaryIO, n: int) -> bytes:
    """Read exactly n bytes unless the stream ends (pipes return short reads)."""
    data = f.read(n)
    if not data or len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_full_fd(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = os.read(fd, n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class Pump:
    """Reads the source of an upload in a daemon thread, a few packets ahead, so disk or
    pipe reads overlap sending (the client has its own core for that on a 2-core machine).

    A regular file is read with pread() from the stream's current offset; anything else
    (stdin, a pipe) with read() on the descriptor. Never through the buffered file object: a
    thread parked inside a buffered reader holds its lock, and the interpreter aborts at exit
    when it finds that lock taken. A daemon thread, not an executor: a read blocked on an
    idle pipe must never keep the process from exiting on Ctrl-C, and executors are joined."""

    def __init__(self, f: BinaryIO, size: int, ahead: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._room = threading.Semaphore(ahead)
        fd = f.fileno()
        offset = f.tell() if stat_mod.S_ISREG(os.fstat(fd).st_mode) else None
        threading.Thread(target=self._run, args=(fd, size, offset), name="dfs-source",
                         daemon=True).start()

    def _run(self, fd: int, size: int, offset: int | None) -> None:
        while True:
            self._room.acquire()
            try:
                if offset is None:
                    item: bytes | BaseException = _read_full_fd(fd, size)
                else:
                    item = os.pread(fd, size, offset)
                    offset += len(item)
            except BaseException as exc:  # handed to the reader, raised there
                item = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody wants the rest
                return
            if not isinstance(item, bytes) or not item:
                return

    async def next(self) -> bytes:
        item = await self._queue.get()
        self._room.release()
        if isinstance(item, BaseException):
            raise item
        return item


class Drain:
    """Writes a download to its local stream in a daemon thread, a few segments behind the
    network, so the disk write (a third of a get's time when done inline) overlaps receiving
    and verifying the next segments. Daemon thread for the same reason as Pump."""

    def __init__(self, f: BinaryIO | DirectFile, depth: int = 8) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(depth)
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(f,), name="dfs-sink", daemon=True).start()

    def _run(self, f: BinaryIO | DirectFile) -> None:
        error: BaseException | None = None
        while True:
            item = self._items.get()
            if item is None:
                break
            if error is None:
                try:
                    f.write(item)
                except BaseException as exc:  # raised on the loop by write()/finish()
                    error = exc
                    self._error = exc
            try:
                self._loop.call_soon_threadsafe(self._room.release)
            except RuntimeError:
                return
        if isinstance(f, DirectFile):
            try:
                f.close()  # the tail, and the direct descriptor
            except BaseException as exc:
                error = error or exc
        try:
            self._loop.call_soon_threadsafe(self._finished, error)
        except RuntimeError:
            pass

    def _finished(self, error: BaseException | None) -> None:
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)

    async def write(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        await self._room.acquire()
        self._items.put(data)

    async def finish(self) -> None:
        """Wait until everything handed over is written; raises the first write error."""
        self._items.put(None)
        await self._done

    def abandon(self) -> None:
        """Stop; a write error the thread meets now or met already is dropped (whoever
        abandons is already handling an error of their own)."""
        self._items.put(None)
        self._done.add_done_callback(lambda f: f.cancelled() or f.exception())
