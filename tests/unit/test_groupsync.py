"""Group commit of small replicas (dfs/chunk/groupsync.py): one syncfs covers every seal that
began before it, a failure reaches every seal it covered, and BlockStore uses it only for
small blocks."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from typing import Callable

import pytest

from dfs import config
from dfs.chunk import groupsync
from dfs.chunk.blockstore import BlockStore
from dfs.chunk.groupsync import GroupSync
from dfs.errors import Unavailable

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


class GatedSyncfs:
    """A syncfs the test drives: each call is numbered and blocks until the test opens its
    gate, so which callers a sync covers does not depend on thread timing."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.started = 0  # calls begun
        self.allowed = 0  # calls allowed to finish

    def __call__(self, fd: int) -> int:
        with self.cond:
            self.started += 1
            number = self.started
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.allowed >= number, 30), "gate never opened"
        return 0

    def open_gate(self, upto: int) -> None:
        with self.cond:
            self.allowed = upto
            self.cond.notify_all()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def test_concurrent_callers_share_syncs_and_each_waits_for_one_that_began_after_it(
        tmp_path, monkeypatch) -> None:
    """One caller's sync is running (held at the gate); 15 more call meanwhile. Each of them
    must wait for a sync that begins after its call (not the running one), and one sync must
    serve all 15: two syncs in all, whatever the thread timing."""
    waiting = [0]  # threads parked in the group's condition wait right now

    class CountingCondition(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waiting[0] += 1  # (the lock is held here)
            try:
                return super().wait(timeout)
            finally:
                waiting[0] -= 1

    fake = GatedSyncfs()
    with monkeypatch.context() as m:  # (threading is global: patch only while it is built)
        m.setattr(groupsync.threading, "Condition", CountingCondition)
        group = GroupSync(str(tmp_path), fake)
    results: dict[int, BaseException | None] = {}

    def caller(k: int) -> None:
        try:
            group.sync()
            results[k] = None
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[k] = exc

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    wait_for(lambda: fake.started == 1, "the first sync to begin")
    others = [threading.Thread(target=caller, args=(k,)) for k in range(1, 16)]
    for t in others:
        t.start()
    wait_for(lambda: waiting[0] == 15, "15 callers waiting behind the running sync")
    assert not results, "a caller returned while the only sync so far was still running"
    fake.open_gate(1)  # the first sync ends: it covers the first caller only
    first.join(30)
    assert results.get(0, "missing") is None, results
    wait_for(lambda: fake.started == 2, "the second sync to begin")
    assert list(results) == [0], "a caller returned on a sync that began before its call"
    fake.open_gate(2)
    for t in others:
        t.join(30)
    assert not any(t.is_alive() for t in [first, *others])
    assert results == {k: None for k in range(16)}, results
    assert group.syncs == fake.started == 2, "the 15 waiting callers should share one sync"


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
    with pytest.raises(Unavailable):  # EIO: the dir has failed (volumes.py)
        w.seal(len(data))
    assert store.volumes.all[0].failed
    assert not os.path.exists(store.path(7, 1)) and not os.path.exists(store.path(7, 1) + ".tmp")
    assert 7 not in store.index and BlockStore(str(tmp_path)).index == {}


@pytest.mark.parametrize("f_type, trusted", [
    (0xEF53, True), (0x58465342, True), (0x01021994, True),  # ext4, xfs, tmpfs
    (0x65735546, False), (0x6969, False), (0x12345678, False), (None, False),  # fuse, nfs
])
def test_syncfs_is_trusted_only_on_file_systems_known_to_make_it_durable(
        tmp_path, monkeypatch, caplog, f_type: int | None, trusted: bool) -> None:
    """On FUSE, NFS or anything unknown, syncfs may return 0 having made nothing durable
    (tests/lazyfs.py shows it for FUSE): there every seal fsyncs its file and directory."""
    monkeypatch.setattr(groupsync, "fs_type", lambda path: f_type)
    with caplog.at_level("WARNING", logger="dfs.chunk.groupsync"):
        group = GroupSync.create(str(tmp_path))
    assert (group is not None) == trusted
    assert ("sealed with its own fsync" in caplog.text) != trusted
    store = BlockStore(str(tmp_path / "store"))
    assert (store.group is not None) == trusted
    seal(store, 7, b"small block")  # the fsync path works as well
    assert store.read(7, 1, 0, 100)[0] == b"small block"


def test_fs_type_reads_the_real_file_system(tmp_path) -> None:
    assert groupsync.fs_type(str(tmp_path)) is not None
    assert groupsync.fs_type(str(tmp_path / "missing")) is None
