"""The journal's on-disk format: encoding records, and reading a journal image back with the
rules that tell a torn tail from damage. Pure code: bytes in, records out, no I/O.

File layout (all integers big-endian)::

    offset 0   8 bytes   magic b"DFSJRNL1" (format version 1)
    then, repeated, one record:
               4 bytes   body_len   u32, 1 .. MAX_RECORD
               4 bytes   body_crc   u32, CRC32C of body
               4 bytes   head_crc   u32, CRC32C of the 8 bytes above (so a damaged length
                                    is never mistaken for a record cut short by a crash)
               body_len  body       msgpack array: [op, arg, ...] (see meta/records.py)
    then zero bytes to the end of the file: room allocated ahead for the next records

Reading (`read_records`), at the first place where no whole, checksummed record starts:
  - only zero bytes from there to the end: the allocated room, nothing was lost;
  - damage (a cut-short or checksum-failing record, or stray bytes) with no valid record
    anywhere after it: a torn tail, the last write a crash interrupted; it was never
    acknowledged. It is dropped, and FileJournal keeps the bytes in a file for inspection;
  - damage followed by a valid record: corruption in the middle. `JournalCorrupt` names the
    file and offset and start-up stops, rather than silently lose acknowledged changes.
A record whose checksums pass but whose body is not [op, ...] is corruption wherever it is:
those bytes are exactly what was written, so no crash explains them.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import crc32c
import msgpack

from ..fsutil import CorruptFile

MAGIC = b"DFSJRNL1"
RECORD = struct.Struct(">III")
_HEAD = struct.Struct(">II")
MAX_RECORD = 64 * 1024 * 1024
_NONZERO = re.compile(rb"[^\x00]")


class JournalCorrupt(CorruptFile):
    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(path, offset, why, "journal")


def record_prefix(body_len: int, body_crc: int) -> bytes:
    head = _HEAD.pack(body_len, body_crc)
    return head + struct.pack(">I", crc32c.crc32c(head))


def encode_record(record: list[Any]) -> bytes:
    body = msgpack.packb(record, use_bin_type=True)
    return record_prefix(len(body), crc32c.crc32c(body)) + body


def _check(data: bytes, off: int) -> tuple[int, str | None]:
    """Whether a whole, checksummed record starts at `off`: (its end, None), or (0, why not)."""
    end = len(data)
    if end - off < RECORD.size:
        return 0, "record prefix cut short"
    body_len, crc, head_crc = RECORD.unpack_from(data, off)
    if crc32c.crc32c(memoryview(data)[off:off + _HEAD.size]) != head_crc:
        return 0, "record prefix checksum mismatch"
    if body_len == 0 or body_len > MAX_RECORD:
        return 0, f"record length {body_len} out of range"
    start = off + RECORD.size
    if start + body_len > end:
        return 0, "record body cut short"
    if crc32c.crc32c(memoryview(data)[start:start + body_len]) != crc:
        return 0, "record checksum mismatch"
    return start + body_len, None


def _record_after(data: bytes, start: int) -> bool:
    """Whether a valid record starts anywhere at or after `start`. Runs of zeros (allocated
    room) are skipped: a record prefix is never twelve zero bytes."""
    off, last = start, len(data) - RECORD.size
    while off <= last:
        if data[off] == 0 and data.count(0, off, off + RECORD.size) == RECORD.size:
            m = _NONZERO.search(data, off)
            if m is None:
                return False
            off = max(off + 1, m.start() - RECORD.size + 1)
            continue
        if _check(data, off)[1] is None:
            return True
        off += 1
    return False


def _decode(body: memoryview, path: str, off: int) -> list[Any]:
    try:
        rec = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:
        raise JournalCorrupt(path, off, f"undecodable record ({exc})") from None
    if not isinstance(rec, list) or not rec or not isinstance(rec[0], str):
        raise JournalCorrupt(path, off, "record is not [op, ...]")
    return rec


def read_records(data: bytes, path: str = "<memory>") -> tuple[list[list[Any]], int, str | None]:
    """Decode a whole journal image. Returns (records, end of the last good record, why the
    bytes after it are a torn tail, or None when there are none or only zeros). Raises
    JournalCorrupt for damage with a valid record after it."""
    if data[:len(MAGIC)] != MAGIC:
        if data.count(0) == len(data):
            return [], 0, None  # nothing yet
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            return [], 0, "torn file header"
        raise JournalCorrupt(path, 0, "bad magic (not a dfs journal)")
    records: list[list[Any]] = []
    off = len(MAGIC)
    end = len(data)
    while off < end:
        nxt, why = _check(data, off)
        if why is None:
            records.append(_decode(memoryview(data)[off + RECORD.size:nxt], path, off))
            off = nxt
            continue
        if data.count(0, off) == end - off:
            return records, off, None
        if _record_after(data, off + 1):
            raise JournalCorrupt(path, off, why)
        return records, off, why
    return records, off, None
