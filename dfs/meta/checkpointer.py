"""When meta writes a checkpoint, and the steps that make one safe: snapshot in one step of the
event loop, wait until the journal holds every record the snapshot covers, write the file,
rotate the journal. The file format is checkpoint.py's.

A checkpoint that fails (a full disk, say) leaves the journal as it was and is tried again
after a growing pause: serialising the namespace blocks the event loop, and doing that every
second for a checkpoint that cannot land would starve every client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .. import config
from . import checkpoint
from .journal import JournalStore
from .namespace import Namespace

log = logging.getLogger(__name__)

MAX_RETRY = 300.0  # seconds between tries of a checkpoint that keeps failing


class Checkpointer:
    def __init__(self, path: str | None, journal: JournalStore,
                 interval: float = config.CHECKPOINT_INTERVAL,
                 records: int = config.CHECKPOINT_RECORDS) -> None:
        self.path, self.journal = path, journal
        self.interval, self.records = interval, records
        self.last = time.monotonic()  # the last checkpoint written (or start-up)
        self._not_before = 0.0
        self._retry = 0.0
        self._running = False

    def due(self, now: float) -> bool:
        """Enough records, or enough time with some, since the last one."""
        count = self.journal.count
        return self.path is not None and not self._running and now >= self._not_before and (
            count >= self.records or (count > 1 and now - self.last >= self.interval))

    async def write(self, ns: Namespace, epoch: int,
                    digest: Callable[[int], int | None],
                    decommission: dict[str, str] | None = None) -> None:
        """Write the namespace (and the decommissioned chunkservers) to the checkpoint file,
        then start a new journal generation holding only what came after it, so restart time
        follows the namespace's size, not its history."""
        if self.path is None or self._running:
            return
        self._running = True
        try:
            gen, count = self.journal.mark()
            data = checkpoint.snapshot(ns, gen, count, epoch, digest, decommission)  # one moment
            try:
                await self.journal.synced()  # never cover a record the journal could lose
                await asyncio.get_running_loop().run_in_executor(
                    None, checkpoint.write, self.path, data)
                await self.journal.rotate(data)
            except OSError as exc:
                self.journal.unmark()
                self._retry = min(2 * self._retry or 1.0, MAX_RETRY)
                self._not_before = time.monotonic() + self._retry
                log.error("checkpoint failed (the journal keeps everything; next try in "
                          "%.0f s): %s", self._retry, exc)
                return
            self.last, self._retry = time.monotonic(), 0.0
            log.info("checkpoint written: %d files, %d bytes; journal generation %d starts",
                     ns.files, len(data), gen + 1)
        finally:
            self._running = False
