"""The client's read path: seekable, verified, with read-ahead and per-block failover.

A file is read in segments of READ_SIZE bytes, aligned inside each block, so every segment is a
whole number of checksum units and is verified end to end against the CRC32Cs stored with the
replica. Sequential reads keep READ_WINDOW segments in flight (read-ahead); memory is bounded by
that window. A dead server, a timeout or a checksum mismatch moves to the next replica for that
block only; a corrupt replica is reported to meta so it stops being served. The block list
comes from meta a page at a time as the reader reaches it (blocklist.py): a file of any number
of blocks opens with one small `stat`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .. import checksum, config
from ..errors import BadRequest, ChecksumError, DFSError, Unavailable
from .blocklist import BlockList

if TYPE_CHECKING:
    from .async_client import AsyncClient

log = logging.getLogger(__name__)

SEGMENT = config.READ_SIZE
UNIT = config.CHECKSUM_UNIT
# Pauses before re-asking meta for a block's locations when all replicas failed (None: stop).
RETRY_DELAYS: tuple[float | None, ...] = (*config.READ_RETRY_DELAYS, None)


class FileReader:
    """An open dfs file for reading. Use `read`, `seek`, `tell`; `close` cancels read-ahead."""

    def __init__(self, client: "AsyncClient", info: dict[str, Any]) -> None:
        self.client = client
        self.path: str = info["path"]
        self.size: int = info["size"]
        self.block_size: int = info["block_size"]
        # Loaded a page at a time as the reader gets there (blocklist.py).
        self.blocks = BlockList(client, self.path, info)
        self.mtime: float = info.get("mtime", 0.0)
        self.replication: int = info.get("replication", 0)
        self.pos = 0
        self.closed = False
        self._segments: dict[tuple[int, int], asyncio.Task[bytes]] = {}
        self._corrupt: dict[int, set[str]] = {}  # block index -> replicas with bad bytes
        self._slow: set[str] = set()  # replicas that failed lately: tried last
        # Segments a sequential read keeps in flight, the one being read included. A caller
        # that knows its access pattern (see fsspec/files.py) may lower it: 1 reads no
        # further than asked.
        self.window = config.READ_WINDOW

    def block_len(self, bi: int) -> int:
        """Bytes in block `bi`: every block but the last is whole (commit checks it)."""
        entry = self.blocks.cached(bi)
        if entry is not None:
            return int(entry["size"])
        if bi < self.blocks.count - 1:
            return self.block_size
        return self.size - bi * self.block_size

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
        parts: list[bytes | memoryview] = []
        while n > 0:
            piece = await self._piece(n)
            parts.append(piece)
            n -= len(piece)
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    async def read1(self, n: int = -1) -> bytes | memoryview:
        """At most n bytes (any amount if n < 0) from one segment, without copying them:
        a view of the verified segment. Empty at the end of the file. This is what a
        streaming download uses; `read` joins pieces into the bytes callers expect."""
        if self.closed:
            raise ValueError("read from a closed dfs file")
        remaining = self.size - self.pos
        if n < 0 or n > remaining:
            n = max(0, remaining)
        return await self._piece(n) if n else b""

    async def _piece(self, n: int) -> bytes | memoryview:
        """Up to n bytes at pos from the segment holding pos (read-ahead started beyond it)."""
        bi, off = divmod(self.pos, self.block_size)
        seg = off - off % SEGMENT
        data = await self._segment(bi, seg, read_ahead=True)
        start = off - seg
        piece: bytes | memoryview = data if start == 0 and n >= len(data) else \
            memoryview(data)[start:start + n]
        if not piece:
            raise Unavailable(f"block {bi} of {self.path} is shorter than expected")
        self.pos += len(piece)
        return piece

    def span(self, start: int | None, end: int | None) -> tuple[int, int]:
        """[start, end) as a slice means it (None: the file's ends; negative: from the end),
        clamped to the file, as (offset, length)."""
        def clamp(i: int | None, default: int) -> int:
            if i is None:
                return default
            return max(0, self.size + i) if i < 0 else min(i, self.size)
        first = clamp(start, 0)
        return first, max(0, clamp(end, self.size) - first)

    async def pread(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer at the end of the file), leaving the position
        alone and reading nothing ahead: only the checksum units covering the range are
        fetched, in READ_SIZE pieces, several at once. Random access (a parquet footer, one
        column chunk, a 4 KiB record) costs what it asks for plus at most a unit each side."""
        if self.closed:
            raise ValueError("read from a closed dfs file")
        end = min(offset + length, self.size)
        if offset < 0 or offset >= end:
            return b""
        pieces: list[tuple[int, int, int]] = []  # (block index, offset in block, length)
        pos = offset
        while pos < end:
            bi, off = divmod(pos, self.block_size)
            bsize = self.block_len(bi)
            stop = min(end - bi * self.block_size, bsize)
            last = min(-(-stop // UNIT) * UNIT, bsize)
            for seg in range(off - off % UNIT, last, SEGMENT):
                pieces.append((bi, seg, min(SEGMENT, last - seg)))
            pos = bi * self.block_size + stop
        gate = asyncio.Semaphore(2 * config.READ_WINDOW)

        async def fetch(bi: int, seg: int, n: int) -> bytes:
            async with gate:
                return await self._fetch(bi, seg, n)
        tasks = [asyncio.ensure_future(fetch(*p)) for p in pieces]
        try:
            datas = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        parts: list[memoryview] = []
        for (bi, seg, _), data in zip(pieces, datas, strict=True):
            base = bi * self.block_size + seg
            parts.append(memoryview(data)[max(offset, base) - base:
                                          min(end, base + len(data)) - base])
        if len(parts) == 1 and len(parts[0]) == len(datas[0]):
            return datas[0]
        return b"".join(parts)

    async def segment(self, bi: int, seg: int) -> bytes:
        """The verified bytes of block `bi` from `seg` (a READ_SIZE boundary) for READ_SIZE
        bytes or to the block's end, failing over like every read; for a caller that keeps
        its own cache of segments (dfs-mount, whose kernel reads out of order)."""
        if self.closed:
            raise ValueError("read from a closed dfs file")
        return await self._fetch(bi, seg)

    async def close(self) -> None:
        self.abandon()

    def abandon(self) -> None:
        """Close without awaiting: cancel the read-ahead (call it on the reader's loop)."""
        self.closed = True
        for task in self._segments.values():
            task.cancel()
        self._segments.clear()

    # segments -------------------------------------------------------------------------
    def _next(self, bi: int, seg: int) -> tuple[int, int] | None:
        seg += SEGMENT
        if seg >= self.block_len(bi):
            bi, seg = bi + 1, 0
        return (bi, seg) if bi < self.blocks.count else None

    async def _segment(self, bi: int, seg: int, read_ahead: bool) -> bytes:
        key = (bi, seg)
        for k in [k for k in self._segments if k < key]:  # behind us: no longer needed
            self._segments.pop(k).cancel()
        task = self._segments.get(key)
        if task is None:
            task = self._segments[key] = asyncio.ensure_future(self._fetch(bi, seg))
        if read_ahead:
            nxt: tuple[int, int] | None = key
            for _ in range(self.window - 1):
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

    async def _fetch(self, bi: int, seg: int, size: int = SEGMENT) -> bytes:
        """`size` bytes (fewer at the block's end) at `seg`, a checksum unit boundary, from
        the first replica that returns verified bytes. When every known
        replica fails, back off, ask meta where the block lives now, and try again: right
        after a meta restart, locations reappear as chunkservers re-register."""
        errors: list[str] = []
        corrupt = self._corrupt.setdefault(bi, set())
        block = await self.blocks.get(bi)
        for delay in RETRY_DELAYS:
            length = min(size, block["size"] - seg)
            replicas = [a for a in block["replicas"] if a not in corrupt]
            if replicas:
                k = bi % len(replicas)  # spread a file's blocks over their replicas
                replicas = replicas[k:] + replicas[:k]
            for addr in sorted(replicas, key=lambda a: a in self._slow):
                try:
                    data = await self._read_from(addr, block, seg, length)
                    self._slow.discard(addr)
                    return data
                except ChecksumError as exc:
                    corrupt.add(addr)
                    errors.append(f"{addr}: {exc}")
                    log.warning("block %s on %s is corrupt (%s); trying another replica",
                                block["id"], addr, exc)
                    self.client.report_bad(int(block["id"]), addr)
                except DFSError as exc:
                    self._slow.add(addr)  # dead or slow: try it last from now on
                    errors.append(f"{addr}: {exc}")
            if delay is None:
                break
            fresh = await self._refresh(bi, block, delay)
            if fresh is None:
                raise Unavailable(f"{self.path} was replaced or removed while being read "
                                  f"({'; '.join(errors[-2:])})")
            block = fresh
        detail = "; ".join(errors[-4:]) or "no live replica"
        raise Unavailable(f"no replica of block {block['id']} of {self.path} could "
                          f"be read ({detail})")

    async def _read_from(self, addr: str, block: dict[str, Any], seg: int, length: int) -> bytes:
        fields = {"block": int(block["id"]), "gen": block["gen"], "offset": seg,
                  "length": length, "token": block.get("token")}
        pooled = await self.client.pool.checkout(addr)
        try:
            reply = await pooled.conn.call("read_block", timeout=config.READ_TIMEOUT, **fields)
        except Unavailable as exc:
            if not pooled.died_idle(exc):
                raise
            # Only the connection had died (idle in the pool): a read is safe to send again.
            log.info("connection to %s had died while idle (%s); reading on a new one",
                     addr, exc)
            conn = await self.client.pool.get(addr)
            reply = await conn.call("read_block", timeout=config.READ_TIMEOUT, **fields)
        try:
            data = reply.payload
            if len(data) != length:
                raise ChecksumError(f"replica returned {len(data)} bytes, expected {length}")
            try:
                checksum.verify(data, reply.header.get("crcs") or [])
            except BadRequest as exc:  # a replica that sends malformed checksums is bad too
                raise ChecksumError(str(exc)) from None
            self.client.bytes_read += length
            return bytes(data)
        finally:
            reply.release()

    async def _refresh(self, bi: int, known: dict[str, Any],
                       delay: float) -> dict[str, Any] | None:
        """Wait, then reload the block's locations from meta. None when the file was
        replaced or removed meanwhile: its old blocks are being deleted (after meta's delete
        grace), so the version we opened cannot be finished."""
        await asyncio.sleep(delay)
        try:
            fresh = await self.blocks.refresh(bi)
        except DFSError:
            return known  # meta may be restarting: try the replicas we know again
        if fresh is None or fresh["id"] != known["id"]:
            return None
        return fresh
