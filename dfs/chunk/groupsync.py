"""Group commit for small block files: one syncfs() makes many sealed replicas durable at once.

Sealing a replica the plain way costs an fsync of the file and one of its directory: two
journal commits, about 1 ms each on this machine's disk, so one chunkserver seals at most
~1,000 small blocks a second however many clients write. syncfs() flushes every dirty page and
the journal of the whole filesystem and waits for the device: one call covers every file
written and renamed before it began. Seals that arrive while a sync runs wait for the next one,
which starts as soon as the running one ends, so under load each sync covers a batch and the
rate is bounded by syncs per second times the batch, not by fsyncs per second.

The trade: a syncfs also flushes data that is not ours (other blocks being written, other
programs on the same filesystem), so it is used only for small blocks, where the commit is
the whole cost. A large block fsyncs its own file: its commit is amortised over megabytes,
and it should not wait behind anyone else's dirty pages. Linux only (syncfs reports writeback
errors since 5.8); elsewhere `GroupSync.create` returns None and every seal fsyncs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Callable


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()


class GroupSync:
    """Shared by the disk threads of one chunkserver. `sync()` returns once a syncfs that
    began after the call has completed; it raises OSError if that sync failed."""

    def __init__(self, path: str, syncfs: Callable[[int], int]) -> None:
        self._path = path
        self._syncfs = syncfs
        self._cond = threading.Condition()
        self._started = 0  # syncs begun so far (the running one included)
        self._completed = 0  # syncs finished, in order
        self._running = False
        self._failed: tuple[int, OSError] | None = None  # the last sync that failed
        self.syncs = 0  # for tests and logs: how many syncfs calls were made

    @classmethod
    def create(cls, path: str) -> "GroupSync | None":
        return cls(path, _SYNCFS) if _SYNCFS is not None else None

    def sync(self) -> None:
        with self._cond:
            # A sync already running may have begun before our rename: we need the next one.
            mine = self._started + 1
            while self._completed < mine:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                self._cond.release()
                try:
                    error = self._call()
                finally:
                    self._cond.acquire()
                self._running = False
                self._completed = number
                if error is not None:
                    self._failed = (number, error)
                self._cond.notify_all()
            # Conservative: any failure at or after our sync fails us too (the kernel reports
            # a writeback error once, so a later success would not prove our pages are safe).
            if self._failed is not None and self._failed[0] >= mine:
                raise self._failed[1]

    def _call(self) -> OSError | None:
        self.syncs += 1
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            return exc
        try:
            if self._syncfs(fd) != 0:
                err = ctypes.get_errno()
                return OSError(err, f"syncfs failed: {os.strerror(err)}")
            return None
        finally:
            os.close(fd)
