"""Block checksums: one CRC32C per CHECKSUM_UNIT (64 KiB) of a block, and the digest of a
block's whole CRC table. Pure functions, no I/O; every role checks bytes with these.

The writer computes a unit's CRC once; every chunkserver in the pipeline verifies it before
the bytes touch its disk, stores it in the block file, and readers verify it again end to end.
The *digest* (a CRC32C over the big-endian table of a block's unit CRCs) names a block's exact
contents in four bytes: meta records it at commit and refuses a reported replica whose digest
or length differs, so a replica can never pass for another block that happens to share its id.

*Combining* (`crc32c_combine`, `combine_units`, `combine_blocks`): CRC32C(A + B) follows from
CRC32C(A), CRC32C(B) and len(B) alone (zlib's crc32_combine, for this polynomial). Every block
holds whole units but for the last, so the unit CRCs the chunkservers already store, combined
in order, give CRC32C of a whole file without reading its bytes, whatever its block size
(HDFS's COMPOSITE_CRC): the file checksum of dfs/client/filechecksum.py.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Iterable

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


# Combining ---------------------------------------------------------------------------------
# A CRC value is a polynomial over GF(2), bit-reflected: bit 31 is x^0, bit 0 is x^31. Shifting
# a CRC over n zero bytes multiplies it by x^(8n) modulo the polynomial; the pre- and
# post-inversion cancel out in the combination, as in zlib's crc32_combine.
POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo POLY (both reflected)."""
    m, p = 1 << 31, 0
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1
    return p


def _squares() -> list[int]:
    """x^(2^k) mod POLY for k = 0..63: x^(8n) is a product of at most 64 of them."""
    out = [1 << 30]  # x^1
    for _ in range(63):
        out.append(_multmodp(out[-1], out[-1]))
    return out


_X2N = _squares()


def _xpow8n(n: int) -> int:
    """x^(8n) mod POLY: the factor that shifts a CRC over n zero bytes."""
    p, k = 1 << 31, 3  # x^0; 8n = n << 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC32C(A + B) from crc1 = CRC32C(A), crc2 = CRC32C(B) and len2 = len(B)."""
    return _multmodp(_xpow8n(len2), crc1) ^ crc2


@functools.lru_cache(maxsize=8)
def _shifter(n: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """The linear map crc -> crc * x^(8n) as four 256-entry tables, one per byte of the CRC,
    so that shifting costs four lookups instead of 32 rounds of _multmodp. Built from the
    images of the 32 single bits (by linearity), so building is cheap too; cached because a
    file's blocks and units share a few lengths."""
    factor = _xpow8n(n)
    tables = []
    for byte in range(4):
        t = [0] * 256
        for bit in range(8):
            t[1 << bit] = _multmodp(factor, 1 << (8 * byte + bit))
        for i in range(3, 256):
            low = i & -i
            if i != low:
                t[i] = t[low] ^ t[i ^ low]
        tables.append(t)
    return tables[0], tables[1], tables[2], tables[3]


def combine_units(crcs: list[int], last_len: int) -> int:
    """CRC32C of the bytes whose unit CRCs are `crcs`: every unit CHECKSUM_UNIT bytes long
    but the last, which is `last_len` (1..CHECKSUM_UNIT) bytes. No units: 0, CRC32C(b"")."""
    if not crcs:
        return 0
    if not 0 < last_len <= CHECKSUM_UNIT:
        raise ValueError(f"a last checksum unit of {last_len} bytes")
    t0, t1, t2, t3 = _shifter(CHECKSUM_UNIT)
    value = crcs[0]
    for crc in crcs[1:-1]:  # 16384 of these for a 1 GiB block: keep the body tiny
        value = t0[value & 0xFF] ^ t1[(value >> 8) & 0xFF] ^ t2[(value >> 16) & 0xFF] ^ \
            t3[value >> 24] ^ crc
    return crc32c_combine(value, crcs[-1], last_len) if len(crcs) > 1 else value


def crc_of_table(table: bytes | bytearray | memoryview, size: int) -> int:
    """CRC32C of a block's `size` bytes from its packed CRC table (as a block file stores
    it). ValueError if the table does not have one CRC per unit of `size`."""
    n = units(size)
    if len(table) != 4 * n:
        raise ValueError(f"a {size}-byte block has {n} checksums, not {len(table) / 4:g}")
    return combine_units(list(struct.unpack(f">{n}I", table)), size - (n - 1) * CHECKSUM_UNIT)


def combine_blocks(parts: Iterable[tuple[int, int]]) -> int:
    """CRC32C of consecutive pieces given as (CRC32C of the piece, its length) pairs: a file
    from its blocks. No pieces: 0."""
    value = 0
    for crc, length in parts:
        t0, t1, t2, t3 = _shifter(length)
        value = t0[value & 0xFF] ^ t1[(value >> 8) & 0xFF] ^ t2[(value >> 16) & 0xFF] ^ \
            t3[value >> 24] ^ crc
    return value
