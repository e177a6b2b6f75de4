"""Several data dirs in one BlockStore (dfs.chunk.volumes): where new replicas go, what a dir
that fails takes with it, identities across dirs, and the disk checker. No network; the
failures are OSErrors raised where the disk would raise them."""

from __future__ import annotations

import asyncio
import errno
import os
import random
from collections import Counter

import pytest

from dfs.checksum import crcs_of
from dfs.chunk import volumes as volumes_mod
from dfs.chunk.blockstore import BlockStore, block_file_size
from dfs.chunk.diskcheck import DiskChecker
from dfs.chunk.volumes import Volume, choose, is_disk_failure
from dfs.errors import NoSpace, NotFound, Unavailable

from .test_blockstore import data_of, write_block


def two(tmp_path, **kw) -> BlockStore:
    return BlockStore([str(tmp_path / "a"), str(tmp_path / "b")], **kw)


def test_choose_weights_by_free_space_and_skips_nothing_it_is_given() -> None:
    a, b, c = Volume(0, "a"), Volume(1, "b"), Volume(2, "c")
    rng = random.Random(1)
    picks: Counter[str] = Counter()
    for _ in range(4000):
        vol = choose([(a, 300), (b, 100), (c, 0)], rng)
        assert vol is not None
        picks[vol.root] += 1
    assert picks["c"] == 0
    assert 2.6 < picks["a"] / picks["b"] < 3.4  # 3:1, as their free space
    assert choose([], rng) is None
    assert choose([(a, 0), (b, 0)], rng) is a  # none has room: its claim says "no space"


@pytest.mark.parametrize("code,failure", [
    (errno.EIO, True), (errno.EROFS, True), (errno.EUCLEAN, True), (errno.ENOSPC, False),
    (errno.EDQUOT, False), (errno.ENOENT, False), (errno.EMFILE, False)])
def test_which_errors_fail_a_dir(code: int, failure: bool) -> None:
    assert is_disk_failure(OSError(code, os.strerror(code))) is failure


def test_blocks_spread_over_dirs_and_come_back_after_a_restart(tmp_path) -> None:
    store = two(tmp_path, rng=random.Random(7))
    for bid in range(1, 41):
        write_block(store, bid, 1, data_of(1000, bid))
    per = Counter(r.volume for r in store.index.values())
    assert per[0] > 5 and per[1] > 5 and per[0] + per[1] == 40
    assert store.volumes.all[0].count == per[0] and store.volumes.all[1].count == per[1]
    assert store.used == sum(v.used for v in store.volumes.all) == 40 * block_file_size(1000)
    again = two(tmp_path)
    assert again.index == store.index and again.server_id == store.server_id
    for bid in range(1, 41):
        assert again.read(bid, 1, 0, 1000)[0] == data_of(1000, bid)
    # every dir carries the identity, so either one alone still says whose blocks these are
    for d in ("a", "b"):
        assert open(tmp_path / d / "chunkserver.id").read().strip() == store.server_id


def test_a_single_dir_keeps_its_layout(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    write_block(store, 0x2AB, 1, b"x" * 10)
    assert os.path.exists(tmp_path / "blocks" / "ab" / f"blk_{0x2AB:016x}_1")
    assert sorted(os.listdir(tmp_path)) == ["blocks", "chunkserver.id"]
    assert store.report() == [[0x2AB, 1, 10, store.index[0x2AB].digest]]  # 4 fields on the wire


def test_a_dir_of_another_chunkserver_is_refused(tmp_path) -> None:
    BlockStore(str(tmp_path / "a"))
    BlockStore(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="disagree about chunkserver.id"):
        two(tmp_path)


def test_a_new_empty_dir_joins_with_the_existing_identity(tmp_path) -> None:
    old = BlockStore(str(tmp_path / "a"))
    old.write_identity("cluster.id", "c1")
    store = two(tmp_path)
    assert store.server_id == old.server_id
    assert open(tmp_path / "b" / "cluster.id").read().strip() == "c1"


def fail_on(monkeypatch, root: str, code: int, calls: tuple[str, ...]) -> None:
    """Make os calls on paths under `root` raise OSError(code), as a broken disk would."""
    for name in calls:
        real = getattr(os, name)

        def broken(path, *a, _real=real, **kw):
            if isinstance(path, str) and path.startswith(root):
                raise OSError(code, os.strerror(code), path)
            return _real(path, *a, **kw)
        monkeypatch.setattr(os, name, broken)


def test_a_read_error_fails_the_dir_and_loses_only_its_blocks(tmp_path, monkeypatch) -> None:
    store = two(tmp_path, rng=random.Random(3))
    for bid in range(1, 21):
        write_block(store, bid, 1, data_of(500, bid))
    on_b = sorted(b for b, r in store.index.items() if r.volume == 1)
    on_a = sorted(b for b, r in store.index.items() if r.volume == 0)
    assert on_a and on_b
    fail_on(monkeypatch, str(tmp_path / "b"), errno.EIO, ("open",))
    with pytest.raises(OSError):
        store.read(on_b[0], 1, 0, 500)
    b = store.volumes.all[1]
    assert b.failed and "Input/output error" in b.failed
    with pytest.raises(NotFound):  # before the drop: refused, never read from a failed dir
        store.read(on_b[1], 1, 0, 500)
    assert store.drop_failed() == [b] and store.drop_failed() == []
    assert sorted(store.index) == on_a and b.lost == len(on_b) and b.count == 0
    assert store.used == len(on_a) * block_file_size(500)
    assert store.read(on_a[0], 1, 0, 500)[0] == data_of(500, on_a[0])
    # new blocks go to the dir left
    for bid in range(100, 110):
        write_block(store, bid, 1, b"new")
        assert store.index[bid].volume == 0
    dirs = {d["path"]: d for d in store.dirs()}
    assert dirs[str(tmp_path / "b")]["state"] == "failed"
    assert dirs[str(tmp_path / "b")]["lost"] == len(on_b)
    assert dirs[str(tmp_path / "a")]["state"] == "ok"


def test_a_read_only_dir_fails_writes_there_and_the_next_write_goes_elsewhere(
        tmp_path, monkeypatch) -> None:
    store = two(tmp_path, rng=random.Random(5))
    w = store.open_write(1, 1)
    fail_on(monkeypatch, w.volume.root, errno.EROFS, ("open", "rename"))
    monkeypatch.setattr(os, "pwrite", lambda *a: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(Unavailable, match="has failed"):
        w.write(0, memoryview(b"abc"), crcs_of(b"abc"))
    w.abort()
    assert w.volume.failed
    monkeypatch.undo()
    for bid in range(2, 8):  # every later block opens in the healthy dir
        assert store.open_write(bid, 1).volume is not w.volume
    assert store.stats()[2] > 0


def test_opening_a_block_skips_a_dir_that_fails_right_then(tmp_path, monkeypatch) -> None:
    store = two(tmp_path, rng=random.Random(1))
    fail_on(monkeypatch, str(tmp_path / "a"), errno.EROFS, ("open",))
    writers = [store.open_write(bid, 1) for bid in range(1, 10)]
    assert all(w.volume.root == str(tmp_path / "b") for w in writers)
    assert store.volumes.all[0].failed


def test_with_every_dir_failed_the_store_takes_no_writes(tmp_path) -> None:
    store = two(tmp_path)
    write_block(store, 1, 1, b"abc")
    for vol in store.volumes.all:
        store.volumes.fail(vol, "test")
    store.drop_failed()
    assert not store.writable and store.index == {}
    assert store.stats()[2] == 0
    with pytest.raises(Unavailable, match="every data dir"):
        store.open_write(2, 1)


def test_no_space_is_not_a_failure(tmp_path) -> None:
    store = two(tmp_path, reserve=1 << 62)
    w = store.open_write(1, 1)
    with pytest.raises(NoSpace):
        w.write(0, memoryview(b"x"), crcs_of(b"x"))
    assert all(not v.failed for v in store.volumes.all)


def test_a_dir_unusable_at_start_starts_failed(tmp_path) -> None:
    (tmp_path / "b").write_text("a file, not a dir")
    store = two(tmp_path)
    assert [bool(v.failed) for v in store.volumes.all] == [False, True]
    write_block(store, 1, 1, b"abc")
    with pytest.raises(OSError):  # one dir, unusable: the start fails as before
        BlockStore(str(tmp_path / "b"))


def test_the_checker_probes_and_reports_a_dir_gone_read_only(tmp_path, monkeypatch) -> None:
    store = two(tmp_path)
    write_block(store, 1, 1, b"abc")
    lost: list[list[Volume]] = []
    real_probe = volumes_mod.probe

    def probe(vol: Volume) -> None:
        if vol.number == store.index[1].volume:
            raise OSError(errno.EROFS, "Read-only file system")
        real_probe(vol)
    monkeypatch.setattr("dfs.chunk.diskcheck.probe", probe)

    async def run() -> None:
        checker = DiskChecker(store, lost.append, interval=0.05)
        checker.start()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.01)
        await checker.stop()
    asyncio.run(run())
    assert len(lost) == 1 and lost[0][0].failed.startswith("probe failed: Read-only")
    assert 1 not in store.index


def test_a_failure_met_in_a_disk_thread_wakes_the_checker(tmp_path) -> None:
    store = two(tmp_path)
    lost: list[list[Volume]] = []

    async def run() -> None:
        checker = DiskChecker(store, lost.append, interval=60)
        checker.start()
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(
            None, store.volumes.check_error, store.volumes.all[1], OSError(errno.EIO, "EIO"))
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.01)
        await checker.stop()
    asyncio.run(run())
    assert lost and lost[0] == [store.volumes.all[1]] and checker_probes_none(store)


def checker_probes_none(store: BlockStore) -> bool:
    return not os.path.exists(os.path.join(store.volumes.all[0].root, volumes_mod.PROBE_NAME))


def test_a_delete_in_a_read_only_dir_fails_the_dir_not_the_caller(tmp_path,
                                                                  monkeypatch) -> None:
    store = two(tmp_path)
    write_block(store, 1, 1, b"abc")
    vol = store.volumes.all[store.index[1].volume]
    fail_on(monkeypatch, vol.root, errno.EROFS, ("unlink",))
    assert store.delete(1, 1)  # before: the OSError escaped into the heartbeat loop
    assert vol.failed


def test_meta_keeps_well_formed_dirs_only_and_shows_them_in_status() -> None:
    from dfs.meta.cluster import Cluster
    from dfs.meta.reports import dirs_of
    from dfs.meta.views import chunkservers
    good = {"path": "/d1", "state": "ok", "error": "", "blocks": 3, "used": 10,
            "capacity": 100, "free": 90, "lost": 0}
    bad = {"path": "/d2", "state": "failed", "error": "Read-only file system", "blocks": 0,
           "used": -5, "capacity": True, "free": "x", "lost": 7}
    rows = dirs_of({"dirs": [good, bad, {"path": 3, "state": "ok"}, {"path": "/d3"}, "junk"]})
    assert rows == [good, {**bad, "used": 0, "capacity": 0, "free": 0}]
    assert dirs_of({}) == [] and dirs_of({"dirs": "no"}) == []
    cluster = Cluster(dead_timeout=30)
    cs = cluster.register("c1", "127.0.0.1:6001", 0.0)
    cs.dirs = rows
    (row,) = chunkservers(cluster, 1.0)
    assert row["dirs"] == rows and row["failed_dirs"] == 1 and row["state"] == "live"


def test_dfsd_data_dirs_flag(tmp_path) -> None:
    import argparse

    from dfs.daemon import chunk_data_dirs
    from dfs.startup import StartupError

    def dirs(text: str) -> tuple[list[str], dict[str, str]]:
        return chunk_data_dirs(argparse.Namespace(data_dir=text, role="chunk", port=1))
    a, b, f = tmp_path / "a", tmp_path / "b", tmp_path / "f"
    f.write_text("not a dir")
    assert dirs(str(a)) == ([str(a)], {})
    paths, failed = dirs(f"{a}x,{b},{f}")
    assert paths == [f"{a}x", str(b), str(f)]
    assert failed == {str(f): "unusable at start: it is not a directory"}
    with pytest.raises(StartupError, match="listed twice"):
        dirs(f"{a},{a}/")
    with pytest.raises(StartupError, match="empty dir"):
        dirs(f"{a},")
    with pytest.raises(StartupError, match="in use by another dfsd"):
        dirs(f"{b},{tmp_path / 'c'}")  # b is locked by this process since the call above
    with pytest.raises(StartupError):
        dirs(str(f))  # one dir, unusable: the start stops as before
