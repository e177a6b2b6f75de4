"""The disk checker: notices failed data dirs and has their replicas reported lost.

A dir is marked failed by whoever meets the error (a packet write, a seal, a read, the
scrubber: see volumes.py), from any thread; that wakes this task, which, on the event loop,
drops the dir's replicas from the store's index and calls `on_failed` (the meta links then
send a full block report at once, so meta re-replicates what was lost within a heartbeat).
Every `interval` it also probes each healthy dir (volumes.probe: write, fsync, remove a small
file) in a worker thread, so a dir that went read-only or whose disk went away is noticed
while nobody writes to it. A probe that hangs for `timeout` seconds fails its dir too: a disk
that never answers is as lost as one that answers EIO.

Owns only its schedule; it never touches a block file.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Callable

from .. import config
from ..net import cancel_and_wait, within
from .blockstore import BlockStore
from .volumes import Volume, is_disk_failure, probe

log = logging.getLogger(__name__)

# A probe failing with one of these also fails the dir: the dir is gone (an unmounted disk) or
# no longer ours to write. Errors of the process itself (EMFILE, ENOMEM) fail nothing.
PROBE_FAILURES = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR})


class DiskChecker:
    def __init__(self, store: BlockStore, on_failed: Callable[[list[Volume]], None],
                 interval: float = config.DIR_CHECK_INTERVAL,
                 timeout: float = config.DIR_CHECK_TIMEOUT) -> None:
        self.store = store
        self.on_failed = on_failed
        self.interval = interval
        self.timeout = timeout
        self.probes = 0  # probes run, for tests
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()

        def notify() -> None:  # from any thread
            loop.call_soon_threadsafe(wake.set)
        self.store.volumes.notify = notify
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self.store.volumes.notify = lambda: None
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        assert self._wake is not None
        self._settle()  # dirs that failed at start are reported with the first beat anyway
        while True:
            try:
                await within(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                await self.check()
            self._wake.clear()
            self._settle()

    def _settle(self) -> None:
        dropped = self.store.drop_failed()
        if dropped:
            self.on_failed(dropped)

    async def check(self) -> None:
        """Probe every healthy dir once, at the same time; fail those that do not pass."""
        vols = self.store.volumes.healthy()
        await asyncio.gather(*(self._probe(v) for v in vols))

    async def _probe(self, vol: Volume) -> None:
        self.probes += 1
        fut = asyncio.get_running_loop().run_in_executor(None, probe, vol)
        try:
            await within(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            self.store.volumes.fail(vol, f"a probe write did not finish in {self.timeout:g}s")
        except OSError as exc:
            if is_disk_failure(exc) or exc.errno in PROBE_FAILURES:
                self.store.volumes.fail(vol, f"probe failed: {exc.strerror or exc}")
            else:
                log.warning("probe of data dir %s failed: %s", vol.root, exc)
