"""Re-replication, the sending side: copy a replica held here to another chunkserver when meta
asks (in a heartbeat reply), paced so repair leaves room for clients.

Owns the copies in flight and the shared pace; it reads through the block store and sends
through the one block stream (net/blockstream.py), exactly as a writer would, so the target
verifies every unit's CRC and acknowledges only once the copy is durable. The target reports
the new replica to meta itself. Every unit is verified here before it is sent: rot found on
this disk is never spread to a new replica; `checksum_failures` counts such finds (a plain int
that /metrics adds to the chunkserver's other checksum failures).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any, Callable

from .. import checksum, config
from ..errors import ChecksumError, DFSError
from ..net import ConnectionPool
from ..net.blockstream import BlockStream, abort_block
from ..protocol.buffers import POOL
from .blockstore import BlockStore

log = logging.getLogger(__name__)

COPY_WINDOW = 8  # packets of one copy in flight: enough for loopback and a LAN


class Copier:
    def __init__(self, store: BlockStore, pool: ConnectionPool, disk: Executor,
                 rate: int = config.DEFAULT_REPLICATION_RATE,
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.store = store
        self.pool = pool
        self.disk = disk
        self.rate = rate  # bytes/s for all copies together (0: unlimited)
        self.busy = busy  # whether clients are using this server now
        self.copies: set[asyncio.Future[None]] = set()
        self._clock = 0.0  # when the copy bandwidth is next free
        self.checksum_failures = 0  # units of our own replicas found bad while copying them

    def start(self, block_id: int, gen: int, target: str, token: Any = None) -> None:
        """Copy our replica of (block, gen) to `target` in the background, with meta's write
        token for it."""
        task = asyncio.ensure_future(self._copy_once_more(block_id, gen, target, token))
        self.copies.add(task)
        task.add_done_callback(self.copies.discard)

    async def _copy_once_more(self, block_id: int, gen: int, target: str, token: Any) -> None:
        """A copy whose pooled connection to the target had died while idle (a NAT box or
        firewall that restarted: `Checkout.died_idle`) is tried once more on a new one.
        Meta learns of a failed copy only when its copy timeout (minutes) runs out, so
        giving up on such a failure would leave the block short that long for a server that
        is fine. Anything the target started on the dead connection is dropped when that
        connection closes, and a replica only lands whole (renamed once sealed)."""
        if await self._copy(block_id, gen, target, token) == "died idle":
            log.info("copy of block %d to %s: the pooled connection had died while idle; "
                     "trying once more on a new one", block_id, target)
            await self._copy(block_id, gen, target, token)

    async def _copy(self, block_id: int, gen: int, target: str, token: Any) -> str:
        """One try: "ok", "died idle", or "failed" (logged)."""
        loop = asyncio.get_running_loop()
        conn = None
        head = None
        stream: BlockStream | None = None
        # Packet k is read into bufs[k % len(bufs)]: by then packet k - len(bufs) has been
        # acknowledged (`send` keeps fewer than COPY_WINDOW unacknowledged), so the target
        # has its bytes and no transport still holds that buffer.
        bufs = [POOL.get(config.PACKET_SIZE) for _ in range(COPY_WINDOW + 1)]
        try:
            size = self.store.lookup(block_id, gen)
            head = await self.pool.checkout(target)
            conn = head.conn
            stream = await BlockStream.open(conn, block_id, gen, [], token, window=COPY_WINDOW)
            for k, offset in enumerate(range(0, size, config.PACKET_SIZE)):
                n = min(config.PACKET_SIZE, size - offset)
                data, crcs, _ = await loop.run_in_executor(
                    self.disk, self.store.read_into, block_id, gen, offset, n,
                    bufs[k % len(bufs)], True)
                checksum.verify(data, crcs)
                await self._pace(n)
                await stream.send(offset, data, crcs)
            await stream.finish(size)
            for buf in bufs:
                POOL.put(buf)
            log.info("copied block %d (%d bytes) to %s", block_id, size, target)
            return "ok"
        except (DFSError, OSError) as exc:
            if isinstance(exc, ChecksumError):
                self.checksum_failures += 1
            if stream is not None:
                stream.abort()
            else:
                abort_block(conn, block_id)
            if head is not None and head.died_idle(exc):
                return "died idle"
            log.warning("copy of block %d to %s failed: %s", block_id, target, exc)
            return "failed"

    async def _pace(self, n: int) -> None:
        """Hold all copies together to `rate`, and to REPAIR_BUSY_RATE while clients use
        this server: repair takes what clients leave, and yields when they come back.
        (Unpaced, repair ran at 590-700 MB/s on the project's 2-core machine and a client
        reading meanwhile kept only 32-44% of its speed.)"""
        rates = [r for r in (self.rate, config.REPAIR_BUSY_RATE if self.busy() else 0) if r > 0]
        if not rates:
            return
        now = time.monotonic()
        start = max(now, self._clock)
        self._clock = start + n / min(rates)
        if start > now:
            await asyncio.sleep(start - now)
