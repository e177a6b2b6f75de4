"""Attributes (mode, uid, gid) and symbolic links in meta: the requests that set them, what
they refuse, and that the journal and the checkpoint bring them back exactly."""

from __future__ import annotations

import asyncio

import pytest

from dfs.errors import AlreadyExists, BadRequest, NotADirectory, NotFound
from dfs.meta.journal import FileJournal
from dfs.meta.namespace import Dir
from dfs.meta.namespace import walk as walk_tree

from ._meta import BLOCK, call, new_meta, put, walk


def run(coro):
    return asyncio.run(coro)


async def history(svc) -> None:
    await call(svc, "mkdir", path="/d", attrs={"mode": 0o700, "uid": 7, "gid": 8})
    await call(svc, "mkdir", path="/p/q", parents=True, attrs={"mode": 0o750})
    await put(svc, "/d/f", [BLOCK, 3])
    await call(svc, "chattr", path="/d/f", mode=0o640)
    await call(svc, "chattr", path="/d/f", uid=1000)  # mode kept
    await call(svc, "chattr", path="/", mode=0o755, uid=0, gid=0)
    await call(svc, "symlink", path="/d/ln", target="f", attrs={"uid": 1000})
    await call(svc, "symlink", path="/abs", target="/etc/passwd")
    await call(svc, "cp", src="/d", dst="/copy", recursive=True)  # attrs and links copied
    await call(svc, "mv", src="/abs", dst="/p/abs")


def test_attributes_and_links_as_stat_and_ls_show_them() -> None:
    async def main() -> None:
        svc = await new_meta()
        await history(svc)
        st = await call(svc, "stat", path="/d/f")
        assert (st["mode"], st["uid"]) == (0o640, 1000) and "gid" not in st
        d = await call(svc, "stat", path="/d")
        assert (d["mode"], d["uid"], d["gid"]) == (0o700, 7, 8)
        assert (await call(svc, "stat", path="/p"))["type"] == "dir"
        assert "mode" not in await call(svc, "stat", path="/p")  # parents get none
        assert (await call(svc, "stat", path="/p/q"))["mode"] == 0o750
        ln = await call(svc, "stat", path="/copy/ln")
        assert (ln["type"], ln["target"], ln["size"], ln["uid"]) == ("symlink", "f", 1, 1000)
        page = await call(svc, "ls", path="/d", columns=True)
        assert page["names"] == ["f", "ln"] and page["links"] == {"ln": "f"}
        assert page["replication"] == [2, 0]
        rows = await call(svc, "ls", path="/d")
        assert rows["entries"][1]["type"] == "symlink"
        status = await call(svc, "status")
        assert status["files"] == 2  # /d/f and its copy; links are not files
        assert (await call(svc, "du", path="/"))["files"] == 2
        await svc.stop()

    run(main())


def test_what_chattr_and_symlink_refuse() -> None:
    async def main() -> None:
        svc = await new_meta()
        await put(svc, "/f", [3])
        await call(svc, "symlink", path="/ln", target="f")
        cases = [
            ("chattr", {"path": "/f", "mode": 0o10000}, BadRequest),
            ("chattr", {"path": "/f", "uid": -1}, BadRequest),
            ("chattr", {"path": "/f", "gid": 2**32}, BadRequest),
            ("chattr", {"path": "/f", "mode": "644"}, BadRequest),
            ("chattr", {"path": "/nope", "mode": 0o644}, NotFound),
            ("symlink", {"path": "/ln", "target": "x"}, AlreadyExists),
            ("symlink", {"path": "/f", "target": "x"}, AlreadyExists),
            ("symlink", {"path": "/new", "target": ""}, BadRequest),
            ("symlink", {"path": "/new", "target": "a\0b"}, BadRequest),
            ("symlink", {"path": "/new", "target": "x" * 4097}, BadRequest),
            ("symlink", {"path": "/missing/new", "target": "x"}, NotFound),
            ("mkdir", {"path": "/d", "attrs": {"mode": 0o777777}}, BadRequest),
            ("mkdir", {"path": "/d", "attrs": [0o755]}, BadRequest),
            ("stat", {"path": "/ln/inside"}, NotADirectory),  # meta never follows a link
        ]
        for op, fields, error in cases:
            with pytest.raises(error):
                await call(svc, op, **fields)
        assert "mode" not in await call(svc, "stat", path="/f")
        await call(svc, "rm", path="/ln")  # removes the link, not its target
        assert (await call(svc, "stat", path="/f"))["size"] == 3
        await svc.stop()

    run(main())


def test_attributes_and_links_survive_replay_and_checkpoint(tmp_path) -> None:
    jpath, cpath = str(tmp_path / "journal"), str(tmp_path / "checkpoint")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await history(svc)
        want = await walk(svc)
        root = await call(svc, "stat", path="/")
        await svc.journal.close()  # a crash: the journal alone carries the changes
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want
        await again.stop()  # checkpoints
        third = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(third) == want
        again_root = await call(third, "stat", path="/")
        assert (again_root["mode"], again_root["uid"]) == (root["mode"], root["uid"]) == \
            (0o755, 0)
        # Equal attributes share one tuple.
        f, g = third.ns.lookup("/d/f"), third.ns.lookup("/copy/f")
        assert f.attrs is g.attrs
        await third.stop()

    run(main())


def _walked_dirs(ns) -> int:
    return 1 + sum(1 for _, n in walk_tree(ns.root) if isinstance(n, Dir))


def test_the_directory_count_follows_every_change_and_restart(tmp_path) -> None:
    """dfs_directories comes from a counter kept as the tree changes (a scrape must not walk
    a million directories); it always equals a walk of the tree."""
    jpath, cpath = str(tmp_path / "journal"), str(tmp_path / "checkpoint")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        steps = [
            ("mkdir", {"path": "/a/b/c", "parents": True}),
            ("mkdir", {"path": "/a/b/c", "parents": True}),  # nothing new
            ("mkdir", {"path": "/x"}),
            ("cp", {"src": "/a", "dst": "/x/copy", "recursive": True}),
            ("mv", {"src": "/x/copy/b", "dst": "/moved"}),
            ("rm", {"path": "/a", "recursive": True}),
            ("symlink", {"path": "/x/ln", "target": "/a"}),
        ]
        await put(svc, "/implicit/parents/f", [3])
        assert svc.ns.dirs == _walked_dirs(svc.ns) == 3
        for op, fields in steps:
            await call(svc, op, **fields)
            assert svc.ns.dirs == _walked_dirs(svc.ns), (op, fields)
        await call(svc, "rm", path="/implicit", recursive=True)
        want = svc.ns.dirs
        assert want == _walked_dirs(svc.ns) == 5  # /, /x, /x/copy, /moved, /moved/c
        await svc.journal.close()
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert again.ns.dirs == want
        await again.stop()
        third = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert third.ns.dirs == want == _walked_dirs(third.ns)
        await third.stop()

    run(main())
