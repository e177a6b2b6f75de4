"""The metadata journal: every namespace change, appended and fsynced before it is acknowledged.

File layout (all integers big-endian)::

    offset 0   8 bytes   magic b"DFSJRNL1" (format version 1)
    then, repeated to the end of the file, one record:
               4 bytes   body_len   u32, 1 .. MAX_RECORD
               4 bytes   body_crc   u32, CRC32C of body
               4 bytes   head_crc   u32, CRC32C of the 8 bytes above (so a damaged length
                                    is never mistaken for a record cut short by a crash)
               body_len  body       msgpack array: [op, arg, ...] (see meta.service)

Recovery rules (`read_records`) tell a torn append from damage:
  - a prefix cut short by the end of the file, or only zero bytes left: torn;
  - a bad head_crc: torn only if the claimed record would end exactly at the end of the file
    or only zeros follow the prefix; anything else is corruption;
  - a good prefix whose body is cut short by the end of the file: torn;
  - a bad body_crc: torn if the record ends at the end of the file or only zeros follow it.
A torn tail is dropped, logged and truncated away. Anything else raises `JournalCorrupt`
naming the file and offset: start-up stops rather than silently lose acknowledged changes.

Group commit: `append()` queues a record and returns a future; one flusher writes every
queued record with a single write and a single fdatasync, then resolves all of their futures.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any, Callable, Protocol

import crc32c
import msgpack

log = logging.getLogger(__name__)

MAGIC = b"DFSJRNL1"
RECORD = struct.Struct(">III")
_HEAD = struct.Struct(">II")
MAX_RECORD = 64 * 1024 * 1024


class JournalCorrupt(Exception):
    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(f"journal {path} is corrupt at offset {offset}: {why}")
        self.path, self.offset = path, offset


def record_prefix(body_len: int, body_crc: int) -> bytes:
    head = _HEAD.pack(body_len, body_crc)
    return head + struct.pack(">I", crc32c.crc32c(head))


def encode_record(record: list[Any]) -> bytes:
    body = msgpack.packb(record, use_bin_type=True)
    return record_prefix(len(body), crc32c.crc32c(body)) + body


def read_records(data: bytes, path: str = "<memory>") -> tuple[list[list[Any]], int, str | None]:
    """Decode a whole journal image. Returns (records, length of the good prefix, why the
    tail was dropped or None). Raises JournalCorrupt for damage before the tail."""
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            return [], 0, ("torn file header" if data else None)
        raise JournalCorrupt(path, 0, "bad magic")
    if data[:len(MAGIC)] != MAGIC:
        raise JournalCorrupt(path, 0, "bad magic (not a dfs journal)")
    records: list[list[Any]] = []
    off = len(MAGIC)
    end = len(data)
    view = memoryview(data)

    def zero_tail(at: int) -> bool:
        return data.count(0, at) == end - at  # bytes.count: one C pass, no copy

    while off < end:
        if end - off < RECORD.size:
            why = f"{end - off} zero bytes at the tail" if zero_tail(off) else \
                "record prefix cut short"
            return records, off, why
        body_len, crc, head_crc = RECORD.unpack_from(data, off)
        start = off + RECORD.size
        if crc32c.crc32c(view[off:off + _HEAD.size]) != head_crc:
            if zero_tail(off):
                return records, off, f"{end - off} zero bytes at the tail"
            if start + body_len == end or zero_tail(start):
                return records, off, "checksum mismatch in the last record's prefix"
            raise JournalCorrupt(path, off, "record prefix checksum mismatch")
        if body_len == 0 or body_len > MAX_RECORD:
            raise JournalCorrupt(path, off, f"record length {body_len} out of range")
        if start + body_len > end:
            return records, off, "record body cut short"
        body = view[start:start + body_len]
        if crc32c.crc32c(body) != crc:
            if start + body_len == end or zero_tail(start + body_len):
                return records, off, "checksum mismatch in the last record"
            raise JournalCorrupt(path, off, "record checksum mismatch")
        try:
            rec = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:
            raise JournalCorrupt(path, off, f"undecodable record ({exc})") from None
        if not isinstance(rec, list) or not rec or not isinstance(rec[0], str):
            raise JournalCorrupt(path, off, "record is not [op, ...]")
        records.append(rec)
        off = start + body_len
    return records, off, None


class JournalStore(Protocol):
    """What the metadata service needs from a journal; tests use MemoryJournal."""

    gen: int  # generation (bumped by each checkpoint's rotation)
    count: int  # records in this generation

    def load(self) -> list[list[Any]]: ...
    def append(self, record: list[Any]) -> asyncio.Future[None]: ...
    def mark(self) -> tuple[int, int]: ...
    def unmark(self) -> None: ...
    def rotate(self) -> asyncio.Future[None]: ...
    async def close(self) -> None: ...


def _done() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class MemoryJournal:
    """A journal that forgets on exit; same interface, for unit tests."""

    def __init__(self) -> None:
        self.records: list[list[Any]] = []
        self.gen = 0
        self.count = 0
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

    def unmark(self) -> None:
        return None

    def rotate(self) -> asyncio.Future[None]:
        self.records = self.records[self._mark:]
        self.gen += 1
        self.count = len(self.records)
        return _done()

    async def close(self) -> None:
        return None


class FileJournal:
    def __init__(self, path: str, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.path = path
        self._fd = -1
        self._pending: list[tuple[bytes | _Rotation, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._on_fatal = on_fatal
        self.syncs = 0  # fdatasync calls made (group commit makes this << records)
        self.gen = 0  # journal generation: bumped each time a checkpoint rotates it
        self.count = 0  # records in this generation (what a checkpoint's `count` refers to)
        self._tail: list[bytes] | None = None  # records appended since mark()

    def load(self) -> list[list[Any]]:
        """Read, validate and open for appending; drops a torn tail."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        records, good, why = read_records(data, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        if why is not None:
            log.warning("journal %s: dropping %d bytes at offset %d (%s)",
                        self.path, len(data) - good, good, why)
        if good == 0:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, MAGIC)
            good = len(MAGIC)
        elif good < len(data):
            os.ftruncate(self._fd, good)
        os.lseek(self._fd, good, os.SEEK_SET)
        os.fsync(self._fd)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        if records and records[0][0] == "gen":
            self.gen = int(records[0][1])
            records = records[1:]
        self.count = len(records)
        return records

    def append(self, record: list[Any]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._failed is not None:
            fut.set_exception(OSError(f"journal failed earlier: {self._failed}"))
            return fut
        data = encode_record(record)
        self._pending.append((data, fut))
        self.count += 1
        if self._tail is not None:
            self._tail.append(data)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return fut

    def mark(self) -> tuple[int, int]:
        """The journal position a checkpoint taken right now covers: (generation, records).
        Records appended from here on are remembered for `rotate`."""
        self._tail = []
        return self.gen, self.count

    def unmark(self) -> None:
        self._tail = None

    def rotate(self) -> asyncio.Future[None]:
        """After the checkpoint for `mark()` is durable: start generation gen+1 holding only
        the records appended since the mark. Runs in order with appends (in the flusher)."""
        assert self._tail is not None, "rotate() without mark()"
        tail, self._tail = self._tail, None
        # From this call on, appends belong to the new generation (they queue behind it).
        self.gen += 1
        self.count = len(tail)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((_Rotation(self.gen, tail), fut))
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
                        self._fail(exc, [])
                        fut.set_exception(exc)
                        return
                    fut.set_result(None)
                    continue
                data = b"".join(d for d, _ in batch)
                try:
                    await loop.run_in_executor(None, self._write, data)
                except OSError as exc:
                    self._fail(exc, batch)
                    return
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._flusher = None

    def _rotate(self, rot: "_Rotation") -> None:
        """Write generation gen+1 beside the journal, then rename it over: a crash leaves
        either the old journal (the checkpoint's `count` skips what it covers) or the new."""
        tmp = self.path + ".next"
        body = MAGIC + encode_record(["gen", rot.gen]) + b"".join(rot.tail)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        os.rename(tmp, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        os.close(self._fd)
        self._fd = fd

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fdatasync(self._fd)
        self.syncs += 1

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
            os.close(self._fd)
            self._fd = -1


class _Rotation:
    """A place in the append queue where the journal moves to a new generation."""

    __slots__ = ("gen", "tail")

    def __init__(self, gen: int, tail: list[bytes]) -> None:
        self.gen, self.tail = gen, tail


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
