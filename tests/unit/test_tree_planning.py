"""The many-file client logic (client/tree.py, client/treesync.py) against an in-memory
namespace standing in for the client's metadata calls: globs, and the sync rules whose
failure would delete data that should be kept. The real thing is in
tests/integration/test_cli_tree.py; these reach cases a live cluster cannot stage on cue
(a directory vanishing halfway through a walk)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from dfs.client import tree, treesync
from dfs.errors import BadRequest, NotADirectory, NotFound


class FakeMeta:
    """stat/ls/rm over a dict of path -> size (files) and a set of directories."""

    def __init__(self, files: dict[str, int], dirs: set[str]) -> None:
        self.files, self.dirs = files, dirs | {"/"}
        self.vanish: str | None = None  # a directory whose ls fails as if removed meanwhile
        self.removed: list[str] = []

    def _entry(self, path: str) -> dict[str, Any]:
        if path in self.files:
            return {"path": path, "type": "file", "size": self.files[path], "mtime": 1.0}
        if path in self.dirs:
            return {"path": path, "type": "dir", "size": 0, "mtime": 1.0}
        parent = path.rsplit("/", 1)[0] or "/"
        if parent in self.files:
            raise NotADirectory(parent)
        raise NotFound(path)

    async def stat(self, path: str, blocks: bool = True) -> dict[str, Any]:
        return self._entry(path.rstrip("/") or "/")

    async def ls(self, path: str) -> list[dict[str, Any]]:
        path = path.rstrip("/") or "/"
        if path == self.vanish:
            raise NotFound(path)
        e = self._entry(path)
        if e["type"] == "file":
            return [e]
        prefix = "" if path == "/" else path
        kids = {p for p in self.files | dict.fromkeys(self.dirs)
                if p != "/" and p.rsplit("/", 1)[0] == prefix}
        return [self._entry(p) for p in sorted(kids)]

    async def rm(self, path: str, recursive: bool = False) -> int:
        self.removed.append(path)
        return 1


def run(coro):
    return asyncio.run(coro)


def test_globs_match_like_the_shell() -> None:
    meta = FakeMeta({"/logs/2026-01": 1, "/logs/2026-02": 1, "/logs/.2026-03": 1,
                     "/logs/2025-12": 1, "/f": 1, "/d/cfg/x": 1, "/e/cfg": 1},
                    {"/logs", "/d", "/d/cfg", "/e"})
    paths = lambda pattern: [e["path"] for e in run(tree.glob_remote(meta, pattern))]  # noqa
    assert paths("/logs/2026-*") == ["/logs/2026-01", "/logs/2026-02"]
    assert paths("/logs/.2026-*") == ["/logs/.2026-03"]  # a leading dot only on request
    assert paths("/logs/202[5]-1?") == ["/logs/2025-12"]
    assert paths("/f/*") == []  # a file taken for a directory matches nothing
    assert paths("/*/cfg/x") == ["/d/cfg/x"]  # /e/cfg is a file: no match, no error
    assert paths("/nope/*") == []


def test_a_directory_vanishing_mid_walk_fails_the_sync_instead_of_deleting(
        tmp_path: Path) -> None:
    meta = FakeMeta({"/r/keep/a": 1, "/r/gone/s": 1}, {"/r", "/r/keep", "/r/gone"})
    local = tmp_path / "L"
    (local / "keep").mkdir(parents=True)
    (local / "gone").mkdir()
    (local / "keep" / "a").write_bytes(b"a")
    (local / "gone" / "s").write_bytes(b"s")
    meta.vanish = "/r/gone"
    with pytest.raises(NotFound):
        run(treesync.sync(meta, "dfs:/r", str(local), delete=True, dry_run=True))
    assert (local / "gone" / "s").exists() and (local / "keep" / "a").exists()


def test_an_unreadable_source_deletes_nothing(tmp_path: Path) -> None:
    meta = FakeMeta({"/r/a": 1, "/r/b": 1}, {"/r"})
    local = tmp_path / "L"
    local.mkdir()
    (local / "a").write_bytes(b"a")
    os.mkfifo(local / "fifo")  # cannot be copied: the walk records a failure
    r = run(treesync.sync(meta, str(local), "dfs:/r", delete=True, dry_run=True))
    assert not [c for c in r.changes if c[0] == "delete"]
    assert any("nothing deleted" in why for _, why in r.failed)
    (local / "fifo").unlink()
    r = run(treesync.sync(meta, str(local), "dfs:/r", delete=True, dry_run=True))
    assert ("delete", "/r/b") in r.changes and r.ok


def test_sync_refuses_a_file_as_the_destination_directory(tmp_path: Path) -> None:
    meta = FakeMeta({"/r": 5, "/d/x": 1}, {"/d"})
    (tmp_path / "src").mkdir()
    with pytest.raises(BadRequest):
        run(treesync.sync(meta, str(tmp_path / "src"), "/r", dry_run=True))
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(BadRequest):
        run(treesync.sync(meta, "dfs:/d", str(tmp_path / "afile"), dry_run=True))
    with pytest.raises(BadRequest):
        run(treesync.sync(meta, "dfs:/d", "dfs:/e"))
    with pytest.raises(BadRequest):
        treesync.remote_path("dfs://host:5000/x")
    assert treesync.remote_path("dfs:///x") == "/x" and treesync.remote_path("/x") is None


def test_two_sources_of_one_name_do_not_overwrite_each_other() -> None:
    result = tree.TreeResult()
    ran: list[str] = []

    async def one(job: tree.Job) -> int:
        ran.append(job.src)
        return job.size
    jobs = [tree.Job("/a/x", "out/x", 1), tree.Job("/b/x", "out/x", 2),
            tree.Job("/c/y", "out/y", 3)]
    run(tree.run_jobs(jobs, 4, result, tree.Tally(), one))
    assert sorted(ran) == ["/a/x", "/c/y"] and result.files == 2
    assert result.failed == [("/b/x", "another source is also copied to out/x: skipped")]
