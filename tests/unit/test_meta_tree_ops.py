"""Meta's cluster-side copy (blocks shared between files and counted), setrep, du and touch,
driven through the handlers with no sockets; restarts through a real journal and checkpoint."""

from __future__ import annotations

import asyncio
import time

import pytest

from dfs.errors import AlreadyExists, BadRequest, IsADirectory, NotFound
from dfs.meta.journal import FileJournal

from ._meta import BLOCK, GiB, addr, call, new_meta, put, walk


def run(coro):
    return asyncio.run(coro)


async def beat(svc, i: int) -> list:
    reply = await call(svc, "heartbeat", chunk_id=f"cs{i}", addr=addr(i), capacity=100 * GiB,
                       used=0, free=100 * GiB, load=0, writing=0, received=[])
    return reply["commands"]


async def deletes(svc, servers: int = 3) -> set[int]:
    """Block ids any chunkserver is told to delete, once every held-back delete is due."""
    svc.cluster.sweep_doomed(time.monotonic() + svc.delete_grace + 1)
    out = set()
    for i in range(servers):
        for cmd in await beat(svc, i):
            if cmd["op"] == "delete":
                out.update(b for b, _gen in cmd["blocks"])
    return out


async def ids(svc, path: str) -> list[int]:
    return [int(b["id"]) for b in (await call(svc, "stat", path=path))["blocks"]]


def test_a_copy_shares_blocks_and_they_go_with_the_last_file() -> None:
    async def main() -> None:
        svc = await new_meta()
        await put(svc, "/a", [BLOCK, BLOCK, 7])
        reply = await call(svc, "cp", src="/a", dst="/b")
        assert reply == {"path": "/b", "files": 1}
        assert await ids(svc, "/a") == await ids(svc, "/b")
        shared = set(await ids(svc, "/a"))
        assert {svc.cluster.blocks[b].refs for b in shared} == {2}
        assert (await call(svc, "stat", path="/b"))["size"] == 2 * BLOCK + 7
        await call(svc, "rm", path="/a")
        assert await deletes(svc) == set()  # /b still uses them
        assert (await call(svc, "stat", path="/b"))["blocks"][0]["replicas"]
        await call(svc, "rm", path="/b")
        assert await deletes(svc) == shared
        assert not shared & set(svc.cluster.blocks)
        await svc.stop()

    run(main())


def test_copying_over_a_copy_and_replacing_keeps_the_counts_right() -> None:
    async def main() -> None:
        svc = await new_meta()
        await put(svc, "/a", [10])
        [blk] = await ids(svc, "/a")
        await call(svc, "cp", src="/a", dst="/b")
        await call(svc, "cp", src="/a", dst="/b")  # replaces /b by another copy
        assert svc.cluster.blocks[blk].refs == 2
        await call(svc, "mv", src="/b", dst="/a")  # the rename replaces /a: one file left
        assert svc.cluster.blocks[blk].refs == 1
        await put(svc, "/a", [20])  # a new upload replaces the last user
        assert await deletes(svc) == {blk}
        await svc.stop()

    run(main())


def test_cp_of_a_tree_and_its_refusals() -> None:
    async def main() -> None:
        svc = await new_meta()
        await put(svc, "/d/x", [10])
        await put(svc, "/d/sub/y", [20])
        await call(svc, "mkdir", path="/d/empty", parents=True)
        with pytest.raises(IsADirectory):
            await call(svc, "cp", src="/d", dst="/e")
        assert await call(svc, "cp", src="/d", dst="/e", recursive=True) == \
            {"path": "/e", "files": 2}
        assert await ids(svc, "/e/sub/y") == await ids(svc, "/d/sub/y")
        assert (await call(svc, "stat", path="/e/empty"))["type"] == "dir"
        # Into an existing directory, as cp does.
        assert (await call(svc, "cp", src="/d", dst="/e", recursive=True))["path"] == "/e/d"
        with pytest.raises(AlreadyExists):
            await call(svc, "cp", src="/d", dst="/e", recursive=True)
        with pytest.raises(BadRequest):
            await call(svc, "cp", src="/d", dst="/d/sub", recursive=True)
        with pytest.raises(BadRequest):
            await call(svc, "cp", src="/d/x", dst="/d/x")
        await call(svc, "mkdir", path="/f/x", parents=True)
        with pytest.raises(AlreadyExists):  # a file never replaces a directory
            await call(svc, "cp", src="/d/x", dst="/f")
        with pytest.raises(NotFound):
            await call(svc, "cp", src="/nope", dst="/z")
        assert svc.ns.files == 6 and svc.ns.blocks == 6
        await svc.stop()

    run(main())


def test_sharing_survives_replay_and_checkpoint(tmp_path) -> None:
    jpath, cpath = str(tmp_path / "journal"), str(tmp_path / "checkpoint")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await put(svc, "/a", [BLOCK, 5], replication=1)
        await call(svc, "cp", src="/a", dst="/b")
        await call(svc, "setrep", path="/b", replication=3)
        await call(svc, "touch", path="/a", mtime=1_000_000.0)
        want = await walk(svc)
        await svc.journal.close()  # a crash: the journal alone carries the changes
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want
        shared = await ids(again, "/a")
        assert [again.cluster.blocks[b].refs for b in shared] == [2, 2]
        assert [again.cluster.blocks[b].replication for b in shared] == [3, 3]
        await again.stop()  # checkpoints
        third = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(third) == want
        assert [third.cluster.blocks[b].refs for b in shared] == [2, 2]
        # (No chunkserver has reported since this restart: what leaves the block map is
        # what a later report would have deleted as an orphan.)
        await call(third, "rm", path="/a")
        assert set(shared) <= set(third.cluster.blocks)
        await call(third, "rm", path="/b")
        assert not set(shared) & set(third.cluster.blocks)
        await third.stop()

    run(main())


def test_setrep_adds_and_trims_replicas() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        await put(svc, "/f", [BLOCK, 10], replication=2)
        blocks = await ids(svc, "/f")
        assert await call(svc, "setrep", path="/f", replication=3) == {"path": "/f", "files": 1}
        assert (await call(svc, "stat", path="/f"))["replication"] == 3
        copies = svc.replicator.schedule(time.monotonic())
        assert sorted(c.block for c in copies) == sorted(blocks)
        assert (await call(svc, "fsck", path="/f"))["under_replicated"] == 2
        await call(svc, "setrep", path="/f", replication=1)
        st = await call(svc, "stat", path="/f")
        assert [len(b["replicas"]) for b in st["blocks"]] == [1, 1]
        assert await deletes(svc) == set(blocks)  # the extra replica of each is deleted
        with pytest.raises(BadRequest):
            await call(svc, "setrep", path="/f", replication=0)
        with pytest.raises(IsADirectory):
            await call(svc, "setrep", path="/", replication=2)
        assert (await call(svc, "setrep", path="/", replication=2, recursive=True))["files"] == 1
        await svc.stop()

    run(main())


def test_a_shared_block_keeps_the_highest_replication_of_its_files() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        await put(svc, "/a", [10], replication=3)
        await call(svc, "cp", src="/a", dst="/b")
        await call(svc, "setrep", path="/b", replication=1)
        [blk] = await ids(svc, "/a")
        assert svc.cluster.blocks[blk].replication == 3  # /a still wants 3
        assert await deletes(svc) == set()
        await call(svc, "setrep", path="/a", replication=1)
        assert svc.cluster.blocks[blk].replication == 1
        assert await deletes(svc) == {blk}
        await svc.stop()

    run(main())


def test_setrep_puts_right_a_block_left_wanting_a_removed_copys_replication() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        await put(svc, "/a", [10], replication=1)
        await call(svc, "cp", src="/a", dst="/b")
        await call(svc, "setrep", path="/b", replication=3)
        [blk] = await ids(svc, "/a")
        await call(svc, "rm", path="/b")
        assert svc.cluster.blocks[blk].replication == 3  # kept until recomputed
        reply = await call(svc, "setrep", path="/a", replication=1)
        assert reply["files"] == 0  # /a already asked for 1 ...
        assert svc.cluster.blocks[blk].replication == 1  # ... and its block now does too
        await svc.stop()

    run(main())


def test_one_cp_copies_at_most_max_copy_files_entries(monkeypatch) -> None:
    from dfs import config
    from dfs.errors import TooLarge

    async def main() -> None:
        svc = await new_meta()
        for i in range(4):
            await put(svc, f"/top/d/f{i}", [10])
        monkeypatch.setattr(config, "MAX_COPY_FILES", 4)
        with pytest.raises(TooLarge):
            await call(svc, "cp", src="/top", dst="/copy", recursive=True)  # 5 entries
        assert (await call(svc, "cp", src="/top/d", dst="/e", recursive=True))["files"] == 4
        assert svc.ns.files == 8
        await svc.stop()

    run(main())


def test_du_counts_logical_and_stored_bytes() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        await put(svc, "/d/a", [BLOCK, 100], replication=2)
        await put(svc, "/d/s/b", [50], replication=1)
        await call(svc, "cp", src="/d/a", dst="/d/s/a2")
        total = await call(svc, "du", path="/d")
        assert total == {"path": "/d", "type": "dir", "size": 2 * (BLOCK + 100) + 50,
                         "replicated": 2 * (BLOCK + 100) + 50, "files": 3, "dirs": 1}
        page = await call(svc, "du", path="/d", children=True)
        assert [(e["path"], e["size"], e["replicated"]) for e in page["entries"]] == [
            ("/d/a", BLOCK + 100, 2 * (BLOCK + 100)),
            ("/d/s", BLOCK + 150, 2 * (BLOCK + 100) + 50)]
        assert page["more"] is False
        assert (await call(svc, "du", path="/d/a"))["type"] == "file"
        with pytest.raises(NotFound):
            await call(svc, "du", path="/nope")
        await svc.stop()

    run(main())


def test_commit_and_touch_take_a_client_mtime() -> None:
    async def main() -> None:
        svc = await new_meta()
        up = (await call(svc, "create", path="/f", block_size=BLOCK))["upload"]
        await call(svc, "commit", upload=up, blocks=[], mtime=1234.5)
        assert (await call(svc, "stat", path="/f"))["mtime"] == 1234.5
        await call(svc, "touch", path="/f", mtime=99)
        assert (await call(svc, "stat", path="/f"))["mtime"] == 99.0
        for bad in ("x", True, 1e12, -1e12, float("nan"), float("inf"), [1]):
            with pytest.raises(BadRequest):
                await call(svc, "touch", path="/f", mtime=bad)
        await call(svc, "touch", path="/f", mtime=-86400)  # a file from 31 Dec 1969
        assert (await call(svc, "stat", path="/f"))["mtime"] == -86400.0
        await call(svc, "touch", path="/f", mtime=None)  # nil: now, as when absent
        assert (await call(svc, "stat", path="/f"))["mtime"] > 1e9
        with pytest.raises(NotFound):
            await call(svc, "touch", path="/g")
        await svc.stop()

    run(main())


def test_exclusive_create_and_commit_refuse_an_existing_entry() -> None:
    async def main() -> None:
        svc = await new_meta()
        await call(svc, "mkdir", path="/d", parents=False)
        with pytest.raises(AlreadyExists):  # at create: nothing is started
            await call(svc, "create", path="/d", block_size=BLOCK, exclusive=True)
        up = (await call(svc, "create", path="/f", block_size=BLOCK, exclusive=True))["upload"]
        other = (await call(svc, "create", path="/f", block_size=BLOCK))["upload"]
        await call(svc, "commit", upload=other, blocks=[], mtime=5.0)  # published first
        with pytest.raises(AlreadyExists):  # checked again at commit, atomically
            await call(svc, "commit", upload=up, blocks=[], exclusive=True)
        assert (await call(svc, "stat", path="/f"))["mtime"] == 5.0  # the first one stays
        await call(svc, "abort", upload=up)
        up = (await call(svc, "create", path="/g", block_size=BLOCK, exclusive=True))["upload"]
        await call(svc, "commit", upload=up, blocks=[], exclusive=True)
        assert (await call(svc, "stat", path="/g"))["size"] == 0
        await svc.stop()

    run(main())
