"""Group commit of small replicas (dfs/chunk/groupsync.py): one syncfs covers every seal that
began before it, a failure reaches every seal it covered, and BlockStore uses it only for
small blocks."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

import pytest

from dfs import config
from dfs.chunk.blockstore import BlockStore
from dfs.chunk.groupsync import GroupSync

from .test_blockstore import crcs_of, data_of


class FakeSyncfs:
    """Records when each sync ran; takes `delay` seconds, fails when told to."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.fail = False
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> int:
        start = time.monotonic()
        time.sleep(self.delay)
        with self.lock:
            self.spans.append((start, time.monotonic()))
        if self.fail:
            ctypes.set_errno(errno.EIO)
            return -1
        return 0


def run_callers(group: GroupSync, n: int) -> list[tuple[float, float, BaseException | None]]:
    out: list[tuple[float, float, BaseException | None]] = []
    lock = threading.Lock()
    go = threading.Barrier(n)

    def caller() -> None:
        go.wait()
        t0 = time.monotonic()
        err: BaseException | None = None
        try:
            group.sync()
        except OSError as exc:
            err = exc
        with lock:
            out.append((t0, time.monotonic(), err))

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_concurrent_callers_share_syncs_and_each_waits_for_one_that_began_after_it(
        tmp_path) -> None:
    fake = FakeSyncfs()
    group = GroupSync(str(tmp_path), fake)
    calls = run_callers(group, 16)
    assert len(calls) == 16 and all(err is None for _, _, err in calls)
    assert group.syncs == len(fake.spans) <= 4, "16 concurrent seals should share a few syncs"
    for called, returned, _ in calls:
        assert any(called <= start and end <= returned for start, end in fake.spans), \
            "a caller returned without a sync that began after its call"


def test_a_lone_caller_gets_its_own_sync(tmp_path) -> None:
    fake = FakeSyncfs(delay=0)
    group = GroupSync(str(tmp_path), fake)
    for _ in range(3):
        group.sync()
    assert group.syncs == 3


def test_a_failed_sync_fails_every_caller_it_covered(tmp_path) -> None:
    fake = FakeSyncfs()
    fake.fail = True
    group = GroupSync(str(tmp_path), fake)
    calls = run_callers(group, 8)
    assert len(calls) == 8
    assert all(isinstance(err, OSError) and err.errno == errno.EIO for _, _, err in calls)
    fake.fail = False
    group.sync()  # a later sync that succeeds serves later callers


def test_real_syncfs_is_available_on_linux(tmp_path) -> None:
    group = GroupSync.create(str(tmp_path))
    assert group is not None
    group.sync()
    assert group.syncs == 1


def seal(store: BlockStore, block_id: int, data: bytes) -> None:
    w = store.open_write(block_id, 1)
    w.write(0, memoryview(data), crcs_of(data))
    w.finalize(len(data))


def test_small_blocks_use_the_group_and_large_ones_fsync_their_own_file(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    assert store.group is not None
    fake = FakeSyncfs(delay=0)
    store.group = GroupSync(store.blocks_dir, fake)
    small = data_of(4096, 1)
    seal(store, 1, small)
    assert store.group.syncs == 1
    large = data_of(config.GROUP_SYNC_MAX_BYTES + config.CHECKSUM_UNIT, 2)
    seal(store, 2, large)
    assert store.group.syncs == 1
    again = BlockStore(str(tmp_path))  # both are found, whole, after a rescan
    assert {b: r[:2] for b, r in again.index.items()} == {1: (1, 4096), 2: (1, len(large))}
    assert again.read(1, 1, 0, 4096)[0] == small


def test_a_failed_group_sync_leaves_no_replica_behind(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    fake = FakeSyncfs(delay=0)
    fake.fail = True
    store.group = GroupSync(store.blocks_dir, fake)
    w = store.open_write(7, 1)
    data = data_of(1000, 3)
    w.write(0, memoryview(data), crcs_of(data))
    with pytest.raises(OSError):  # the service turns it into an error naming this server
        w.seal(len(data))
    assert not os.path.exists(store.path(7, 1)) and not os.path.exists(store.path(7, 1) + ".tmp")
    assert 7 not in store.index and BlockStore(str(tmp_path)).index == {}
