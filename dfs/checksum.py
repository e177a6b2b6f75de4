"""Block checksums: one CRC32C per CHECKSUM_UNIT (64 KiB) of a block, and the digest of a
block's whole CRC table. Pure functions, no I/O; every role checks bytes with these.

The writer computes a unit's CRC once; every chunkserver in the pipeline verifies it before
the bytes touch its disk, stores it in the block file, and readers verify it again end to end.
The *digest* (a CRC32C over the big-endian table of a block's unit CRCs) names a block's exact
contents in four bytes: meta records it at commit and refuses a reported replica whose digest
or length differs, so a replica can never pass for another block that happens to share its id.
"""

from __future__ import annotations

import struct
from typing import Any

import crc32c

from .config import CHECKSUM_UNIT
from .errors import BadRequest, ChecksumError


def units(size: int) -> int:
    """How many checksum units cover `size` bytes."""
    return (size + CHECKSUM_UNIT - 1) // CHECKSUM_UNIT


def crcs_of(data: bytes | bytearray | memoryview) -> list[int]:
    """One CRC32C per unit of `data` (the last unit may be short)."""
    view = memoryview(data)
    return [crc32c.crc32c(view[i:i + CHECKSUM_UNIT])
            for i in range(0, len(view), CHECKSUM_UNIT)]


def verify(data: bytes | bytearray | memoryview, crcs: Any) -> None:
    """Check `data` against one CRC per unit. A CRC list of the wrong shape is the peer's bad
    request (BadRequest); bytes that do not match are ChecksumError."""
    n = units(len(data))
    if not isinstance(crcs, list) or len(crcs) != n:
        raise BadRequest(f"{len(data)} bytes need {n} checksums")
    # type() is int, not isinstance: 12345.0 and True must not pass for a CRC.
    if not all(type(c) is int and 0 <= c < 1 << 32 for c in crcs):
        raise BadRequest("checksums must be unsigned 32-bit integers")
    view = memoryview(data)
    for i in range(n):
        if crc32c.crc32c(view[i * CHECKSUM_UNIT:(i + 1) * CHECKSUM_UNIT]) != crcs[i]:
            raise ChecksumError(f"checksum unit {i} does not match its CRC32C")


def pack_table(crcs: list[int]) -> bytes:
    """The CRC table as a block file stores it: u32 big-endian each."""
    return struct.pack(f">{len(crcs)}I", *crcs)


def digest(crcs: list[int], start: int = 0) -> int:
    """The digest of a block's CRC table; `start` continues a digest begun earlier (a writer
    extends it packet by packet)."""
    return crc32c.crc32c(pack_table(crcs), start)


def digest_of_table(table: bytes) -> int:
    """The digest of a CRC table already packed as a block file stores it."""
    return crc32c.crc32c(table)
