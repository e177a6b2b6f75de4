"""The metadata journal: every namespace change, appended and made durable before it is
acknowledged, behind one small interface (`JournalStore`) with a file store for a real meta
and a memory store for tests. The byte format and the recovery rules are in journal_codec.py.

Group commit: `append()` queues a record and returns a future; one flusher writes every queued
record with a single write and a single fdatasync, then resolves all of their futures.

Numbers for /metrics, kept as plain attributes so this module never imports prometheus:
`appended` (records since start, across rotations; `count` restarts with each generation) and
`on_sync`, called on the loop with the seconds each group commit's write + fdatasync took when
the daemon installs it (dfs/web/metrics.py; None, the default, costs one test per commit).

Room ahead: FileJournal keeps `preallocate` bytes allocated past its last record (zeros, which
the reader knows as room, not damage). When the disk cannot give more, `full` turns true and
meta stops taking changes (it serves reads, read-only) while the room already allocated absorbs
what is in flight; `make_room()`, retried by meta, ends that once space is freed. So a full disk
refuses new changes cleanly instead of failing a write whose change meta has already applied.

A write or fsync that fails anyway (EIO, or no space despite the room) is fatal: after a
failed fsync the page cache can no longer be trusted to hold what was written, so the store
refuses everything from then on and calls `on_fatal`; meta exits non-zero and recovers from
the journal at its next start (as PostgreSQL does).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from typing import Any, Callable, Protocol

from .. import config
from ..fsutil import fsync_dir, pwrite_all, write_synced
from .journal_codec import MAGIC, JournalCorrupt, encode_record, read_records

__all__ = ["FileJournal", "JournalCorrupt", "JournalStore", "MemoryJournal"]

log = logging.getLogger(__name__)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class JournalStore(Protocol):
    """What the metadata service needs from a journal; tests use MemoryJournal."""

    gen: int  # generation (bumped by each checkpoint's rotation)
    base: int | None  # records of generation gen-1 this one follows (None: not recorded)
    count: int  # records in this generation
    full: bool  # no room for more changes now: meta is read-only until make_room() succeeds

    def load(self) -> list[list[Any]]: ...
    def append(self, record: list[Any]) -> asyncio.Future[None]: ...
    def mark(self) -> tuple[int, int]: ...
    def synced(self) -> asyncio.Future[None]: ...
    def unmark(self) -> None: ...
    def rotate(self, snapshot: bytes = b"") -> asyncio.Future[None]: ...
    async def make_room(self) -> bool: ...
    async def close(self) -> None: ...


def _done() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


def _failed(exc: BaseException) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_exception(OSError(f"journal failed earlier: {exc}"))
    return fut


class MemoryJournal:
    """A journal that forgets on exit; same interface, for unit tests. Set `full` to see
    meta go read-only."""

    def __init__(self) -> None:
        self.records: list[list[Any]] = []
        self.gen = 0
        self.base: int | None = None
        self.count = 0
        self.full = False
        self._mark = 0

    def load(self) -> list[list[Any]]:
        self.count = len(self.records)
        return list(self.records)

    def append(self, record: list[Any]) -> asyncio.Future[None]:
        self.records.append(record)
        self.count += 1
        return _done()

    def mark(self) -> tuple[int, int]:
        self._mark = len(self.records)
        return self.gen, self.count

    def synced(self) -> asyncio.Future[None]:
        return _done()

    def unmark(self) -> None:
        return None

    def rotate(self, snapshot: bytes = b"") -> asyncio.Future[None]:
        self.records = self.records[self._mark:]
        self.gen += 1
        self.base = self._mark
        self.count = len(self.records)
        return _done()

    async def make_room(self) -> bool:
        return not self.full

    async def close(self) -> None:
        return None


class FileJournal:
    def __init__(self, path: str, on_fatal: Callable[[BaseException], None] | None = None,
                 preallocate: int = config.JOURNAL_PREALLOCATE) -> None:
        self.path = path
        self._fd = -1
        self._pending: list[tuple[bytes | _Rotation, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._on_fatal = on_fatal
        self.syncs = 0  # fdatasync calls made (group commit makes this << records)
        self.appended = 0  # records appended since start (never reset: a counter for /metrics)
        self.on_sync: Callable[[float], None] | None = None  # gets each group commit's seconds
        self.gen = 0  # journal generation: bumped each time a checkpoint rotates it
        self.base: int | None = None  # records of generation gen-1 before this one's first
        self._last: asyncio.Future[None] | None = None  # the newest append's future
        self.count = 0  # records in this generation (what a checkpoint's `count` refers to)
        self._tail: list[bytes] | None = None  # records appended since mark()
        self._marked = 0  # count at mark()
        # The file: records end at _end; zeros allocated up to _allocated. Both change in
        # the flusher's thread or make_room's, one at a time (_io).
        self._io = threading.Lock()
        self._end = 0
        self._allocated = 0
        self.preallocate = preallocate
        self.full = False

    # start-up -------------------------------------------------------------------------
    def load(self) -> list[list[Any]]:
        """Read and validate the journal, keep a torn tail aside, open it for appending and
        allocate room ahead. Raises JournalCorrupt, or OSError when it cannot be read."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        records, good, why = read_records(data, self.path)
        if why is not None:
            self._keep_torn_tail(data, good, why)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        if good == 0:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, MAGIC, 0)
            good = len(MAGIC)
        elif good < len(data):
            os.ftruncate(self._fd, good)  # the torn tail, and any old room, go
        self._end = self._allocated = good
        os.fsync(self._fd)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._extend()
        if records and records[0][0] == "gen":
            self.gen = int(records[0][1])
            self.base = int(records[0][2]) if len(records[0]) > 2 else None
            records = records[1:]
        self.count = len(records)
        return records

    def _keep_torn_tail(self, data: bytes, good: int, why: str) -> None:
        """Save the bytes of a torn tail beside the journal before they are cut off."""
        torn = data[good:].rstrip(b"\0")
        keep = f"{self.path}.torn-{good}-{int(time.time())}"
        with open(keep, "wb") as f:
            f.write(torn)
            f.flush()
            os.fsync(f.fileno())
        log.warning("journal %s: dropped a torn tail of %d bytes at offset %d (%s), never "
                    "acknowledged; the bytes are kept in %s", self.path, len(torn), good, why,
                    keep)

    # room ahead -------------------------------------------------------------------------
    def _extend(self) -> bool:
        """Make sure `preallocate` bytes are allocated past the last record; sets `full` when
        the disk cannot give them. Blocking."""
        with self._io:
            if self._allocated - self._end >= self.preallocate or self._fd < 0:
                return not self.full
            want = self._end + self.preallocate - self._allocated
            try:
                os.posix_fallocate(self._fd, self._allocated, want)
                self._allocated += want
            except OSError as exc:
                self._allocated = max(self._allocated, os.fstat(self._fd).st_size)
                if exc.errno not in _NO_SPACE:
                    # A file system that cannot allocate ahead: write without room.
                    log.warning("journal %s: cannot allocate room ahead (%s); meta will not "
                                "see a full disk coming", self.path, exc.strerror or exc)
                    self.preallocate = 0
                    self.full = False
                    return True
                if not self.full:
                    log.error("journal %s: the disk is full; meta is read-only (it serves "
                              "reads and refuses changes) until space is freed", self.path)
                self.full = True
                return False
            if self.full:
                log.warning("journal %s: there is room again; meta takes changes again",
                            self.path)
            self.full = False
            return True

    async def make_room(self) -> bool:
        """Try again to allocate room ahead; True when the journal can take changes."""
        if not self.full or self._failed is not None:
            return not self.full
        return await asyncio.get_running_loop().run_in_executor(None, self._extend)

    # appending --------------------------------------------------------------------------
    def append(self, record: list[Any]) -> asyncio.Future[None]:
        if self._failed is not None:
            return _failed(self._failed)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        data = encode_record(record)
        self._pending.append((data, fut))
        self._last = fut
        self.count += 1
        self.appended += 1
        if self._tail is not None:
            self._tail.append(data)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return fut

    def mark(self) -> tuple[int, int]:
        """The journal position a checkpoint taken right now covers: (generation, records).
        Records appended from here on are remembered for `rotate`."""
        self._tail = []
        self._marked = self.count
        return self.gen, self.count

    def synced(self) -> asyncio.Future[None]:
        """Done when every record appended so far is on disk (or failed with the journal).
        A checkpoint waits for it: it must never cover a record the journal could lose."""
        last = self._last
        if last is None or last.done():
            return _done() if self._failed is None else _failed(self._failed)
        return asyncio.shield(last)

    def unmark(self) -> None:
        self._tail = None

    def rotate(self, snapshot: bytes = b"") -> asyncio.Future[None]:
        """After the checkpoint for `mark()` is durable: start generation gen+1 holding only
        the records appended since the mark. Runs in order with appends (in the flusher).
        (`snapshot`, the checkpoint's bytes, is for journals that keep it themselves.)"""
        assert self._tail is not None, "rotate() without mark()"
        tail, self._tail = self._tail, None
        # From this call on, appends belong to the new generation (they queue behind it).
        rot = _Rotation(self.gen + 1, tail, self._marked, self.base)
        self.gen, self.base, self.count = rot.gen, rot.marked, len(tail)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rot, fut))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                cut = next((i for i, (item, _) in enumerate(self._pending)
                            if isinstance(item, _Rotation)), len(self._pending))
                batch = [(item, w) for item, w in self._pending[:cut]
                         if isinstance(item, bytes)]
                del self._pending[:cut]
                if not batch:
                    rot, fut = self._pending.pop(0)
                    assert isinstance(rot, _Rotation)
                    try:
                        await loop.run_in_executor(None, self._rotate, rot)
                    except OSError as exc:
                        if exc.errno not in _NO_SPACE:
                            self._fail(exc, [])
                            fut.set_exception(exc)
                            return
                        self._undo_rotation(rot, exc)
                        fut.set_exception(exc)
                        continue
                    fut.set_result(None)
                    continue
                data = b"".join(d for d, _ in batch)
                try:
                    took = await loop.run_in_executor(None, self._write, data)
                except OSError as exc:
                    self._fail(exc, batch)
                    return
                if self.on_sync is not None:
                    self.on_sync(took)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._flusher = None

    def _write(self, data: bytes) -> float:
        """One group commit; returns the seconds its write and fdatasync took (what every
        change in the batch waited for on the disk, not counting the wait for the lock)."""
        with self._io:
            started = time.perf_counter()
            pwrite_all(self._fd, data, self._end)
            self._end += len(data)
            os.fdatasync(self._fd)
            took = time.perf_counter() - started
            self.syncs += 1
            self._allocated = max(self._allocated, self._end)
        if self.preallocate and self._allocated - self._end < self.preallocate:
            self._extend()
        return took

    def _rotate(self, rot: "_Rotation") -> None:
        """Write generation gen+1 beside the journal, then rename it over: a crash leaves
        either the old journal (the checkpoint's `count` skips what it covers) or the new."""
        tmp = self.path + ".next"
        body = MAGIC + encode_record(["gen", rot.gen, rot.marked]) + b"".join(rot.tail)
        fd = write_synced(tmp, body)  # no room: the old generation goes on; else fatal
        try:
            os.rename(tmp, self.path)
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:  # the name may already be the new file's: no going back
            os.close(fd)
            raise OSError(errno.EIO, f"renaming {tmp}: {exc.strerror or exc}") from None
        with self._io:
            os.close(self._fd)
            self._fd = fd
            self._end = self._allocated = len(body)
        self._extend()

    def _undo_rotation(self, rot: "_Rotation", exc: OSError) -> None:
        """No room for the new generation: keep appending to this one. The checkpoint just
        written covers `rot.marked` records of it, which start-up then skips."""
        self.gen -= 1
        self.base = rot.base
        self.count += rot.marked
        log.error("journal %s: could not start a new generation after the checkpoint (%s); "
                  "it keeps growing until there is room", self.path, exc.strerror or exc)

    def _fail(self, exc: BaseException,
              batch: list[tuple[bytes, asyncio.Future[None]]]) -> None:
        """The namespace in memory is now ahead of the disk: refuse everything from here on."""
        self._failed = exc
        log.critical("journal %s: write failed (%s); metadata service must stop", self.path, exc)
        for _, fut in batch + self._pending:
            if not fut.done():
                fut.set_exception(OSError(f"journal write failed: {exc}"))
        self._pending = []
        if self._on_fatal is not None:
            self._on_fatal(exc)

    async def close(self) -> None:
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._fd >= 0:
            with self._io:
                os.close(self._fd)
                self._fd = -1


class _Rotation:
    """A place in the append queue where the journal moves to a new generation."""

    __slots__ = ("gen", "tail", "marked", "base")

    def __init__(self, gen: int, tail: list[bytes], marked: int, base: int | None) -> None:
        self.gen, self.tail, self.marked = gen, tail, marked
        self.base = base  # the old generation's base, should the rotation be undone
