"""The scrubber: re-reads every replica on this chunkserver at a bounded rate and checks it
against its stored CRC32Cs, so silent rot is found even in blocks nobody reads.

Owns only its schedule; it reads through the block store and reports a bad replica through a
callback (the meta link carries it to meta, which stops listing it, re-creates the block from
a good copy and has this one deleted). One full pass per `interval` at most `rate` bytes/s.

`scrubbed_bytes` and `checksum_failures` are plain ints (bumped on the loop) that /metrics
reads at scrape time; a replica found bad counts once, as it is reported once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Callable

from .. import checksum, config
from ..errors import ChecksumError, DFSError
from ..net import cancel_and_wait
from .blockstore import BlockStore, Replica

log = logging.getLogger(__name__)


class Scrubber:
    def __init__(self, store: BlockStore, rate: int, interval: float,
                 report: Callable[[int, int], None], executor: Executor) -> None:
        self.store = store
        self.rate = max(rate, config.CHECKSUM_UNIT)  # at least a unit a second
        self.interval = interval
        self.report = report
        self.executor = executor
        self.passes = 0
        self.bad: set[tuple[int, int]] = set()  # replicas found bad and already reported
        self.scrubbed_bytes = 0  # bytes read and checked against their CRCs, since start
        self.checksum_failures = 0  # replicas found corrupt, since start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            checked = await self.scrub_pass()
            self.passes += 1
            log.info("scrub pass %d: %d replicas checked in %.1fs", self.passes, checked,
                     time.monotonic() - started)
            await asyncio.sleep(max(0.0, started + self.interval - time.monotonic()))

    async def scrub_pass(self) -> int:
        checked = 0
        for block_id, replica in list(self.store.index.items()):
            if (block_id, replica.gen) in self.bad or self.store.index.get(block_id) != replica:
                continue  # already reported, or deleted / rewritten since the pass began
            await self._check(block_id, replica)
            checked += 1
        return checked

    async def _check(self, block_id: int, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        gen, size = replica.gen, replica.size
        offset = 0
        while offset < size:
            n = min(config.READ_SIZE, size - offset)
            t0 = time.monotonic()
            try:
                data, crcs, _ = await loop.run_in_executor(
                    self.executor, self.store.read, block_id, gen, offset, n)
                self.scrubbed_bytes += len(data)
                checksum.verify(data, crcs)
            except ChecksumError as exc:
                self.checksum_failures += 1
                log.error("scrubber: replica of block %d gen %d is corrupt at offset %d: %s",
                          block_id, gen, offset, exc)
                self.bad.add((block_id, gen))
                self.report(block_id, gen)
                return
            except (DFSError, OSError):
                return  # deleted or rewritten under us: nothing to judge
            offset += n
            # Hold the pace: n bytes may take n / rate seconds at most.
            await asyncio.sleep(max(0.0, n / self.rate - (time.monotonic() - t0)))
