"""The checkpoint's two formats: the columnar one written now (DFSCKPT2) and the row format
written before (DFSCKPT1), which meta must still start from. Either way the namespace, the
block map (digests, replication, files sharing a block) and the journal replayed after it
come back as they were, and each file holds its block map records themselves."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable

import crc32c
import msgpack
import pytest

from dfs.fsutil import CorruptFile
from dfs.meta import checkpoint
from dfs.meta.journal import FileJournal
from dfs.meta.namespace import Dir, File, Link, Namespace
from dfs.meta.namespace import walk as walk_tree
from dfs.meta.service import MetaService

from ._meta import BLOCK, call, new_meta, put, walk


def rows_snapshot(ns: Namespace, gen: int, count: int, epoch: int,
                  digest: Callable[[int], int | None]) -> bytes:
    """A DFSCKPT1 checkpoint, written as meta wrote them before the columnar format."""
    dirs: list[list[Any]] = []
    files: list[list[Any]] = []
    links: list[list[Any]] = []
    for path, node in walk_tree(ns.root):
        row: list[Any]
        if isinstance(node, Dir):
            row = [path, node.mtime]
            dirs.append(row)
        elif isinstance(node, Link):
            row = [path, node.target, node.mtime]
            links.append(row)
        else:
            assert isinstance(node, File)
            blocks = []
            for b in node.blocks:
                d = digest(b.id)
                blocks.append([b.id, b.gen, b.size] if d is None else [b.id, b.gen, b.size, d])
            row = [path, blocks, node.replication, node.block_size, node.mtime]
            files.append(row)
        if node.attrs is not None:
            row.append(list(node.attrs))
    m: dict[str, Any] = {"gen": gen, "count": count, "epoch": epoch, "dirs": dirs,
                         "files": files, "links": links}
    if ns.root.attrs is not None:
        m["root"] = list(ns.root.attrs)
    body = msgpack.packb(m, use_bin_type=True)
    return b"DFSCKPT1" + struct.pack(">IQ", crc32c.crc32c(body), len(body)) + body


async def build(svc: MetaService) -> None:
    """Something of everything: attrs, several blocks, an empty file, a link, copies that
    share blocks, a changed replication, a recovered block (gen 2)."""
    await call(svc, "mkdir", path="/a/b", parents=True, attrs={"mode": 0o750, "uid": 7})
    await put(svc, "/a/big", [BLOCK, BLOCK, 10])
    await put(svc, "/a/one", [5], replication=3)
    await put(svc, "/a/b/again", [6], recover=0)
    await put(svc, "/a/empty", [])
    await call(svc, "symlink", path="/a/link", target="../x")
    await call(svc, "chattr", path="/", mode=0o700)
    await call(svc, "chattr", path="/a/one", uid=12, gid=13)
    await call(svc, "cp", src="/a", dst="/copy", recursive=True)
    await call(svc, "setrep", path="/copy/one", replication=4)
    for i in range(30):
        await put(svc, f"/many/f{i}", [i + 1])


def block_map(svc: MetaService) -> dict[int, tuple[Any, ...]]:
    return {bid: (info.gen, info.size, info.digest, info.replication, info.refs, info.upload)
            for bid, info in svc.cluster.blocks.items()}


def held_by_files(svc: MetaService) -> None:
    """Every file holds the block map's record of each of its blocks, not a copy."""
    for _path, node in walk_tree(svc.ns.root):
        if isinstance(node, File):
            for b in node.blocks:
                assert svc.cluster.blocks[b.id] is b


@pytest.mark.parametrize("form", ["columns", "rows"])
def test_meta_starts_from_either_format(tmp_path, form: str) -> None:
    jpath, cpath = str(tmp_path / "journal"), str(tmp_path / "checkpoint")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc)
        want, blocks = await walk(svc), block_map(svc)
        gen, count = svc.journal.mark()
        if form == "rows":
            data = rows_snapshot(svc.ns, gen, count, svc.epoch, svc._digest)
        else:
            data = checkpoint.snapshot(svc.ns, gen, count, svc.epoch, svc._digest)
        assert data[:8] == (b"DFSCKPT1" if form == "rows" else b"DFSCKPT2")
        checkpoint.write(cpath, data)
        await svc.journal.close()  # a crash before the rotation: nothing to replay
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want
        assert block_map(again) == blocks
        assert (again.ns.files, again.ns.blocks, again.ns.dirs) == \
            (svc.ns.files, svc.ns.blocks, svc.ns.dirs)
        assert again.ns.root.attrs == (0o700, None, None)
        held_by_files(again)
        await again.stop()

    asyncio.run(main())


def test_journal_changes_after_a_checkpoint_rebuild_the_block_map(tmp_path) -> None:
    jpath, cpath = str(tmp_path / "journal"), str(tmp_path / "checkpoint")

    async def run() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc)
        await svc.checkpoint()
        await call(svc, "rm", path="/a/big")  # /copy/big still holds its blocks
        await call(svc, "rm", path="/many", recursive=True)
        await call(svc, "cp", src="/a/one", dst="/third")
        await call(svc, "setrep", path="/third", replication=5)
        await put(svc, "/new", [9])
        want, blocks = await walk(svc), block_map(svc)
        await svc.journal.close()  # a crash: the journal holds what came after
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want
        assert block_map(again) == blocks
        assert (again.ns.files, again.ns.blocks) == (svc.ns.files, svc.ns.blocks)
        held_by_files(again)
        await again.stop()

    asyncio.run(run())


def test_a_checkpoint_whose_columns_do_not_fit_stops_start_up(tmp_path) -> None:
    ns = Namespace()
    cpath = str(tmp_path / "checkpoint")
    body = msgpack.packb({"gen": 0, "count": 0, "epoch": 1, "dirs": [], "links": [],
                          "kinds": [[2, BLOCK, None]],
                          "files": [["", ["f", "g"], [1.0, 1.0], [0, 0], None,
                                     [1], [1], [5], [None]]]})
    checkpoint.write(cpath, b"DFSCKPT2" + struct.pack(">IQ", crc32c.crc32c(body), len(body))
                     + body)
    with pytest.raises(CorruptFile, match="cannot be loaded"):
        checkpoint.load(cpath, ns)
