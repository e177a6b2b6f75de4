"""A chunkserver's data dirs (`--data-dir a,b,c`): one `Volume` per dir, which of them takes a
new block, and when a dir has failed. Owns the state of each dir; never reads or writes a
block (blockstore.py does, and tells us of the errors it meets).

Each dir is laid out as a whole single-dir chunkserver is (docs/STORAGE.md): its own
`blocks/XX/...` tree, `LOCK`, and a copy of the identity files (`chunkserver.id`,
`cluster.id`), so any one surviving dir still says whose blocks these are.

New replicas go to a healthy dir chosen at random, weighted by the space it has free: dirs
fill at the same rate, and concurrent writers spread over every disk instead of all piling
onto the emptiest one until it stops being the emptiest (HDFS's round-robin chooser does the
former badly on unequal disks, its available-space chooser is this one's coarse cousin).

A dir fails (HDFS: a "volume failure") on an error that says the disk or its filesystem is
broken: EIO and friends on a read, write, sync, seal or scrub, or EROFS (the filesystem
went read-only, as ext4 does by itself with `errors=remount-ro`). ENOSPC is not a failure:
the dir is full, which the space accounting already handles. A cheap probe (write, fsync,
remove a small file; list the blocks dir) runs every `--dir-check-interval` so a dir that
went read-only is noticed while idle too. A failed dir stays failed until the chunkserver
restarts, which probes it again: a disk that failed once is not trusted by itself again.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
from typing import Callable, Sequence

from .groupsync import GroupSync

log = logging.getLogger(__name__)

# errnos that mean the dir's disk or filesystem is broken, not that the request was bad or
# the disk full. EUCLEAN is ext4's EFSCORRUPTED and EBADMSG its EFSBADCRC.
FAILURE_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ENXIO, errno.ENODEV, errno.EUCLEAN,
                            errno.EBADMSG, errno.ENOTCONN, errno.ESTALE})
PROBE_NAME = ".dfs-probe"


def is_disk_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FAILURE_ERRNOS


class Volume:
    """One data dir. `failed` is "" while healthy, else why it failed (set once, from any
    thread); `used`, `count` and `inflight` are kept by the block store."""

    def __init__(self, number: int, root: str) -> None:
        self.number = number  # its place in --data-dir, also kept in each Replica
        self.root = root
        self.blocks_dir = os.path.join(root, "blocks")
        self.failed = ""
        self.failed_at = 0.0  # time.time() of the failure
        self.dropped = False  # its replicas have left the store's index
        self.lost = 0  # replicas it held when it failed
        self.used = 0  # bytes of the replica files indexed here
        self.count = 0  # replicas indexed here
        self.inflight = 0  # bytes claimed by replicas being written here
        self.reserve = 0
        self.dev = -1  # st_dev: dirs on one filesystem share its free space
        self.direct_io = False
        self.group: GroupSync | None = None  # its GroupSync (one syncfs covers one filesystem)

    def path(self, block_id: int, gen: int) -> str:
        return block_path(self.blocks_dir, block_id, gen)

    def disk(self) -> tuple[int, int]:
        """(size, bytes available) of the filesystem holding this dir."""
        st = os.statvfs(self.blocks_dir)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def __repr__(self) -> str:
        return f"Volume({self.root!r}{', failed' if self.failed else ''})"


def block_path(blocks_dir: str, block_id: int, gen: int) -> str:
    return os.path.join(blocks_dir, f"{block_id & 0xff:02x}", f"blk_{block_id:016x}_{gen}")


class Volumes:
    """The dirs of one chunkserver and their health. Thread-safe where it must be: `fail` is
    called from disk threads; `notify` (the disk checker's wake-up) must be too."""

    def __init__(self, roots: Sequence[str]) -> None:
        if not roots:
            raise ValueError("a chunkserver needs at least one data dir")
        self.all = [Volume(i, root) for i, root in enumerate(roots)]
        self._lock = threading.Lock()
        self.notify: Callable[[], None] = lambda: None

    def healthy(self) -> list[Volume]:
        return [v for v in self.all if not v.failed]

    def fail(self, vol: Volume, why: str) -> bool:
        """Mark a dir failed; True if this call did (the first failure is the one kept)."""
        with self._lock:
            if vol.failed:
                return False
            vol.failed, vol.failed_at = why or "failed", time.time()
        log.error("data dir %s FAILED: %s; its replicas are reported lost and no new block "
                  "goes there until this chunkserver restarts", vol.root, why)
        self.notify()
        return True

    def check_error(self, vol: Volume, exc: BaseException) -> bool:
        """Fail `vol` if `exc` says its disk is broken; True if it does."""
        if not is_disk_failure(exc):
            return False
        assert isinstance(exc, OSError)
        self.fail(vol, f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename
                                                    else ""))
        return True


def choose(candidates: Sequence[tuple[Volume, int]], rng: random.Random | None = None
           ) -> Volume | None:
    """The dir for a new replica, among (healthy dir, bytes free there): at random weighted
    by free space; when none has any, the first (its claim then fails with no space)."""
    if not candidates:
        return None
    total = sum(max(0, free) for _, free in candidates)
    if total <= 0:
        return candidates[0][0]
    pick = (rng.random() if rng is not None else random.random()) * total
    for vol, free in candidates:
        pick -= max(0, free)
        if pick < 0:
            return vol
    return candidates[-1][0]


def probe(vol: Volume) -> None:
    """Prove the dir still takes a durable write and lists its blocks: write, fsync and
    remove a small file. Blocking (run it in a thread); raises the OSError it meets. A full
    disk (ENOSPC) passes: full is not broken."""
    path = os.path.join(vol.root, PROBE_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"dfs probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    os.listdir(vol.blocks_dir)
