"""The client's read path: seekable, verified, with read-ahead and per-block failover.

A file is read in segments of READ_SIZE bytes, aligned inside each block, so every segment is a
whole number of checksum chunks and is verified end to end against the CRC32Cs stored with the
replica. Sequential reads keep READ_WINDOW segments in flight (read-ahead); memory is bounded by
that window. A dead server, a timeout or a checksum mismatch moves to the next replica for that
block only; a corrupt replica is reported to meta so it stops being served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import crc32c

from .. import config
from ..errors import ChecksumError, DFSError, Unavailable

if TYPE_CHECKING:
    from .async_client import AsyncClient

log = logging.getLogger(__name__)

CHUNK = config.CHECKSUM_CHUNK
SEGMENT = config.READ_SIZE


def verify(data: memoryview, crcs: list[int]) -> None:
    n = (len(data) + CHUNK - 1) // CHUNK
    if len(crcs) != n:
        raise ChecksumError(f"expected {n} checksums, got {len(crcs)}")
    for i in range(n):
        if crc32c.crc32c(data[i * CHUNK:(i + 1) * CHUNK]) != crcs[i]:
            raise ChecksumError(f"chunk {i} does not match its CRC32C")


class FileReader:
    """An open dfs file for reading. Use `read`, `seek`, `tell`; `close` cancels read-ahead."""

    def __init__(self, client: "AsyncClient", info: dict[str, Any]) -> None:
        self.client = client
        self.path: str = info["path"]
        self.size: int = info["size"]
        self.block_size: int = info["block_size"]
        self.blocks: list[dict[str, Any]] = info["blocks"]
        self.pos = 0
        self.closed = False
        self._segments: dict[tuple[int, int], asyncio.Task[bytes]] = {}
        self._failed: dict[int, set[str]] = {}  # block index -> replicas that failed it
        self._refreshed: set[int] = set()

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError("negative seek position")
        self.pos = pos
        return pos

    def tell(self) -> int:
        return self.pos

    async def read(self, n: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed dfs file")
        remaining = self.size - self.pos
        if n < 0 or n > remaining:
            n = max(0, remaining)
        parts: list[bytes] = []
        while n > 0:
            bi, off = divmod(self.pos, self.block_size)
            seg = off - off % SEGMENT
            data = await self._segment(bi, seg, read_ahead=True)
            piece = data[off - seg:off - seg + n]
            if not piece:
                raise Unavailable(f"block {bi} of {self.path} is shorter than expected")
            parts.append(piece)
            self.pos += len(piece)
            n -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def close(self) -> None:
        self.closed = True
        for task in self._segments.values():
            task.cancel()
        self._segments.clear()

    # segments -------------------------------------------------------------------------
    def _next(self, bi: int, seg: int) -> tuple[int, int] | None:
        seg += SEGMENT
        if seg >= self.blocks[bi]["size"]:
            bi, seg = bi + 1, 0
        return (bi, seg) if bi < len(self.blocks) else None

    async def _segment(self, bi: int, seg: int, read_ahead: bool) -> bytes:
        key = (bi, seg)
        for k in [k for k in self._segments if k < key]:  # behind us: no longer needed
            self._segments.pop(k).cancel()
        task = self._segments.get(key)
        if task is None:
            task = self._segments[key] = asyncio.ensure_future(self._fetch(bi, seg))
        if read_ahead:
            nxt: tuple[int, int] | None = key
            for _ in range(config.READ_WINDOW - 1):
                nxt = self._next(*nxt) if nxt else None
                if nxt is None:
                    break
                if nxt not in self._segments:
                    self._segments[nxt] = asyncio.ensure_future(self._fetch(*nxt))
        try:
            return await task
        finally:
            if task.done() and self._segments.get(key) is task and not task.cancelled() \
                    and task.exception() is not None:
                self._segments.pop(key, None)  # let a later read try again

    async def _fetch(self, bi: int, seg: int) -> bytes:
        errors: list[str] = []
        for _ in range(2):
            block = self.blocks[bi]
            length = min(SEGMENT, block["size"] - seg)
            replicas: list[str] = list(block["replicas"])
            if replicas:
                k = bi % len(replicas)  # spread blocks over replicas
                replicas = replicas[k:] + replicas[:k]
            failed = self._failed.setdefault(bi, set())
            for addr in replicas:
                if addr in failed:
                    continue
                try:
                    return await self._read_from(addr, block, seg, length)
                except ChecksumError as exc:
                    failed.add(addr)
                    errors.append(f"{addr}: {exc}")
                    log.warning("block %s on %s is corrupt (%s); trying another replica",
                                block["id"], addr, exc)
                    self.client.report_bad(int(block["id"]), addr)
                except DFSError as exc:
                    failed.add(addr)
                    errors.append(f"{addr}: {exc}")
            if not await self._refresh(bi):
                break
        detail = "; ".join(errors) or "no live replica"
        raise Unavailable(f"no replica of block {self.blocks[bi]['id']} of {self.path} could "
                          f"be read ({detail})")

    async def _read_from(self, addr: str, block: dict[str, Any], seg: int, length: int) -> bytes:
        conn = await self.client.pool.get(addr)
        reply = await conn.call("read_block", block=int(block["id"]), gen=block["gen"],
                                offset=seg, length=length, timeout=config.READ_TIMEOUT)
        try:
            data = reply.payload
            if len(data) != length:
                raise ChecksumError(f"replica returned {len(data)} bytes, expected {length}")
            verify(data, reply.header.get("crcs") or [])
            return bytes(data)
        finally:
            reply.release()

    async def _refresh(self, bi: int) -> bool:
        """Every known replica failed: ask meta once where the block lives now."""
        if bi in self._refreshed:
            return False
        self._refreshed.add(bi)
        try:
            info = await self.client.stat(self.path)
        except DFSError:
            return False
        fresh = info.get("blocks") or []
        if bi >= len(fresh) or fresh[bi]["id"] != self.blocks[bi]["id"]:
            return False  # the file was replaced; keep reading the version we opened
        self.blocks[bi] = fresh[bi]
        failed = self._failed.setdefault(bi, set())
        if set(fresh[bi]["replicas"]) <= failed:
            return False
        return True
