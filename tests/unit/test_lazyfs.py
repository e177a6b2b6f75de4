"""tests/lazyfs.py, the FUSE file system the power-loss tests run dfsd on: what a crash keeps
(what was fsynced: file data by the file's fsync, names by their directory's fsync) and what
it drops (everything else), on real FUSE mounts. Also: syncfs on it makes nothing durable,
and GroupSync knows not to trust it."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lazyfs_mount import LazyMount, skip_reason  # noqa: E402

from dfs.chunk.groupsync import GroupSync, syncfs_is_barrier  # noqa: E402
from dfs.fsutil import fsync_dir  # noqa: E402

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[LazyMount]:
    m = LazyMount(tmp_path / "backing", tmp_path / "mnt", tmp_path / "control")
    try:
        yield m.start()
    finally:
        m.close()


def write(path: Path, data: bytes, sync: bool = False, flags: int = os.O_TRUNC) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def reboot(m: LazyMount) -> None:
    m.crash()
    m.start()


def test_synced_data_and_name_survive_and_unsynced_writes_go(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    write(mnt / "a", b"durable", sync=True)
    fsync_dir(mnt)
    write(mnt / "a", b" and more", flags=os.O_APPEND)
    write(mnt / "b", b"never synced")
    assert (mnt / "a").read_bytes() == b"durable and more"
    assert lazy.stats()["files"] == 2
    reboot(lazy)
    assert (mnt / "a").read_bytes() == b"durable"
    assert not (mnt / "b").exists()  # its name was never made durable


def test_fdatasync_makes_data_durable_but_only_a_directory_fsync_makes_a_name(
        lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    write(mnt / "named", b"x" * 5000)
    fsync_dir(mnt)  # the name is durable, the data not
    fd = os.open(mnt / "unnamed", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"data")
    os.fdatasync(fd)  # data durable, name not
    os.close(fd)
    reboot(lazy)
    assert (mnt / "named").read_bytes() == b""
    assert not (mnt / "unnamed").exists()


def test_rename_over_is_undone_without_a_directory_fsync(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    write(mnt / "f", b"old", sync=True)
    fsync_dir(mnt)
    write(mnt / "f.tmp", b"new", sync=True)
    os.rename(mnt / "f.tmp", mnt / "f")
    assert (mnt / "f").read_bytes() == b"new"
    reboot(lazy)
    assert (mnt / "f").read_bytes() == b"old"  # the replaced file came back whole
    assert not (mnt / "f.tmp").exists()  # it was created after the last directory fsync
    write(mnt / "f.tmp", b"newer", sync=True)
    os.rename(mnt / "f.tmp", mnt / "f")
    fsync_dir(mnt)
    reboot(lazy)
    assert (mnt / "f").read_bytes() == b"newer"
    assert not (mnt / "f.tmp").exists()


def test_unlink_and_mkdir_need_their_directory_fsync(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    os.mkdir(mnt / "d")
    write(mnt / "d" / "x", b"in d", sync=True)
    fsync_dir(mnt / "d")  # x is durable in d, but d's own name is not
    write(mnt / "gone", b"doomed", sync=True)
    write(mnt / "kept", b"kept", sync=True)
    fsync_dir(mnt)  # now d, gone and kept are named durably
    os.unlink(mnt / "gone")
    os.mkdir(mnt / "e")
    os.rmdir(mnt / "e")
    os.unlink(mnt / "kept")
    fsync_dir(mnt)  # the unlink of kept is durable too
    write(mnt / "gone2", b"x", sync=True)
    reboot(lazy)
    assert (mnt / "d" / "x").read_bytes() == b"in d"
    assert not (mnt / "gone").exists()
    assert not (mnt / "kept").exists()
    assert sorted(os.listdir(mnt)) == ["d"]


def test_an_unsynced_unlink_comes_back_with_its_bytes(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    write(mnt / "f", b"precious", sync=True)
    fsync_dir(mnt)
    os.unlink(mnt / "f")  # never made durable: the file returns
    reboot(lazy)
    assert (mnt / "f").read_bytes() == b"precious"


def test_truncate_and_overwrite_are_undone_byte_for_byte(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    data = bytes(range(256)) * 64
    write(mnt / "f", data, sync=True)
    fsync_dir(mnt)
    with open(mnt / "f", "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 3000)
        f.truncate(2000)
        f.seek(10_000)
        f.write(b"tail")
    reboot(lazy)
    assert (mnt / "f").read_bytes() == data


def test_syncfs_and_sync_make_nothing_durable_on_fuse(lazy: LazyMount) -> None:
    """The finding behind GroupSync's file system check: Linux does not send syncfs (or
    sync) to a FUSE daemon, so they return 0 and nothing is durable."""
    mnt = lazy.mountpoint
    write(mnt / "f", b"x")
    fsync_dir(mnt)
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0
    finally:
        os.close(fd)
    os.sync()
    assert lazy.stats()["files"] == 1
    reboot(lazy)
    assert (mnt / "f").read_bytes() == b""
    assert syncfs_is_barrier(str(mnt)) == (False, "fuse (f_type 0x65735546)")
    assert GroupSync.create(str(mnt)) is None


def test_torn_crash_keeps_a_prefix_of_the_writes(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    write(mnt / "f", b"", sync=True)
    fsync_dir(mnt)
    fd = os.open(mnt / "f", os.O_WRONLY)
    for i in range(20):
        os.write(fd, bytes([65 + i]) * 100)
    os.close(fd)
    lazy.crash(torn_seed=7)
    lazy.start()
    got = (mnt / "f").read_bytes()
    assert got == b"".join(bytes([65 + i]) * 100 for i in range(len(got) // 100))


def test_a_torn_crash_can_cut_one_write_at_a_sector_boundary(lazy: LazyMount) -> None:
    mnt = lazy.mountpoint
    data = bytes(range(256)) * 256  # 64 KiB in one write
    sizes = set()
    for seed in (0, 4, 9):  # seeds that keep all of it, and cut it at two places
        write(mnt / "f", b"", sync=True)
        fsync_dir(mnt)
        write(mnt / "f", data, flags=0)
        lazy.crash(torn_seed=seed)
        lazy.start()
        got = (mnt / "f").read_bytes()
        assert got == data[:len(got)] and len(got) % 512 == 0
        sizes.add(len(got))
    assert len(sizes) > 1 and len(data) in sizes, sizes


def test_a_journal_cut_in_its_last_group_commit_starts_with_every_synced_record(
        lazy: LazyMount, monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta's journal on lazyfs, the power cut after a group commit's write but before its
    fdatasync returned (so nothing of it was acknowledged): at the next start the journal
    loads every record synced before, then some prefix of the cut batch, and drops a torn
    tail as journal.py intends, never refusing to start."""
    import asyncio

    from dfs.meta import journal as journal_mod
    from dfs.meta.journal import FileJournal

    synced = [["mkdir", f"/d{i}", False, float(i)] for i in range(20)]
    cut = [["mkdir", f"/cut{i}", False, float(i), "x" * 300] for i in range(40)]
    torn_tails = 0
    for seed in (4, 7, 8, 9):
        path = str(lazy.mountpoint / f"journal{seed}")

        async def fill(path: str) -> None:
            j = FileJournal(path, preallocate=0)
            j.load()
            await asyncio.gather(*(j.append(r) for r in synced))
            with monkeypatch.context() as m:  # the power goes before this fdatasync returns
                m.setattr(journal_mod.os, "fdatasync", lambda fd: None)
                await asyncio.gather(*(j.append(r) for r in cut))  # one group commit
            await j.close()
        asyncio.run(fill(path))
        lazy.crash(torn_seed=seed)
        lazy.start()
        j = FileJournal(path, preallocate=0)
        records = j.load()  # must not raise JournalCorrupt
        assert records[:20] == synced
        assert records[20:] == cut[:len(records) - 20]
        torn_tails += any(n.startswith(f"journal{seed}.torn-")
                          for n in os.listdir(lazy.mountpoint))
        os.close(j._fd)
    print(f"{torn_tails} of 4 cuts left a torn journal tail")
    assert torn_tails, "no seed tore a record: the torn-tail path went untested"
