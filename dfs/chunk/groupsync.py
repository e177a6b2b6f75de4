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

syncfs is a durability barrier only where the file system implements it: a FUSE mount (Linux
forwards FUSE_SYNCFS to virtiofs alone), NFS, SMB and other network file systems return 0
without making anything durable. So `create` trusts only the local file systems listed in
SYNCFS_BARRIER (statfs f_type); anywhere else it logs that once and returns None, and every
seal fsyncs its file and directory (tests/lazyfs.py, a FUSE file system that forgets what was
not fsynced, is how the power-loss tests caught acknowledged blocks lost this way).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
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

log = logging.getLogger(__name__)

# statfs f_type of the file systems whose syncfs writes back and flushes the device.
SYNCFS_BARRIER = {
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0xF2F52010: "f2fs",
    0x2FC12FC1: "zfs", 0xCA451A4E: "bcachefs", 0x3153464A: "jfs",
    0x794C7630: "overlayfs",  # syncs its upper file system
    0x01021994: "tmpfs",  # nothing is durable there: syncfs and fsync are equally empty
}
# Names for the log line, for the common file systems where syncfs promises nothing.
_OTHERS = {0x65735546: "fuse", 0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2",
           0x00C36400: "ceph", 0x01021997: "9p", 0x47504653: "gpfs", 0x0BD00BD0: "lustre"}


def _load_statfs() -> Callable[[bytes, ctypes.Array[ctypes.c_char]], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).statfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_STATFS = _load_statfs()


def fs_type(path: str) -> int | None:
    """statfs(2) f_type of the file system holding `path` (Linux), None if unknown."""
    if _STATFS is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _STATFS(os.fsencode(path), buf) != 0:
        return None
    # f_type comes first, a long (__fsword_t); magic numbers fit in 32 bits.
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def syncfs_is_barrier(path: str) -> tuple[bool, str]:
    """Whether syncfs on the file system of `path` makes its writes durable, and its name."""
    kind = fs_type(path)
    if kind is None:
        return False, "unknown file system"
    if kind in SYNCFS_BARRIER:
        return True, SYNCFS_BARRIER[kind]
    return False, f"{_OTHERS.get(kind, 'file system')} (f_type {kind:#x})"


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
        """A GroupSync for the file system of `path`, or None where syncfs cannot be trusted
        to make writes durable (then every seal fsyncs its own file and directory)."""
        if _SYNCFS is None:
            return None
        barrier, name = syncfs_is_barrier(path)
        if not barrier:
            log.warning("%s is on %s, where syncfs is not known to make writes durable: "
                        "every block is sealed with its own fsync (slower for small blocks)",
                        path, name)
            return None
        return cls(path, _SYNCFS)

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
