"""Bytes in, same bytes out, through real processes; the namespace and JSON shapes as promised
in INTERFACE.md. Nothing here kills a daemon, so the module shares one cluster."""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import pytest
from cluster import Cluster, KiB, MiB, data_of, wait_until

import dfs

SMALL_BLOCK = 256 * KiB  # small blocks keep multi-block files small
BLOCK_SIZES = [MiB, SMALL_BLOCK]

STAT_FILE_KEYS = {"path", "type", "size", "replication", "block_size", "mtime", "blocks"}
STAT_DIR_KEYS = {"path", "type", "mtime"}
BLOCK_KEYS = {"id", "size", "replicas"}
LS_FILE_KEYS = STAT_FILE_KEYS - {"blocks"}
STATUS_KEYS = {"meta", "files", "blocks", "chunkservers"}
CHUNKSERVER_KEYS = {"id", "addr", "state", "blocks", "used", "capacity", "last_heartbeat_s"}
PUT_KEYS = {"path", "size", "blocks", "under_replicated"}


def edge_sizes(bs: int) -> list[int]:
    return [0, 1, 65535, 65536, 65537, bs, bs + 1, 3 * bs + 4097]


@pytest.fixture
def root(request: pytest.FixtureRequest) -> str:
    """A directory path of this test's own on the shared cluster."""
    return "/t/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)


@pytest.fixture(scope="module")
def client(shared_cluster: Cluster) -> dfs.Client:
    return shared_cluster.client()


def check_stat_file(st: dict, path: str, size: int, replication: int, block_size: int,
                    cluster: Cluster) -> None:
    assert STAT_FILE_KEYS <= st.keys(), st
    assert st["path"] == path and st["type"] == "file"
    assert st["size"] == size
    assert st["replication"] == replication
    assert st["block_size"] == block_size
    assert isinstance(st["mtime"], float)
    blocks = st["blocks"]
    assert len(blocks) == -(-size // block_size)  # ceil; an empty file has no blocks
    addrs = {d.addr for d in cluster.chunkservers}
    for i, b in enumerate(blocks):
        assert BLOCK_KEYS <= b.keys(), b
        assert isinstance(b["id"], str) and b["id"].isdigit()
        want = block_size if i < len(blocks) - 1 else size - block_size * (len(blocks) - 1)
        assert b["size"] == want
        assert len(b["replicas"]) == replication, b
        assert len(set(b["replicas"])) == replication
        assert set(b["replicas"]) <= addrs
    assert len({b["id"] for b in blocks}) == len(blocks)


# -- put/get of edge sizes -------------------------------------------------------------------

@pytest.mark.parametrize("replication", [1, 2])
@pytest.mark.parametrize("block_size", BLOCK_SIZES, ids=["1MiB", "256KiB"])
@pytest.mark.parametrize("k", range(8), ids=["0", "1", "64K-1", "64K", "64K+1", "bs",
                                              "bs+1", "3bs+4097"])
def test_put_get_bytes_edge_sizes(client: dfs.Client, shared_cluster: Cluster, root: str,
                                  k: int, block_size: int, replication: int) -> None:
    size = edge_sizes(block_size)[k]
    data = data_of(size, replication)
    path = f"{root}/f.bin"
    result = client.put_bytes(data, path, replication=replication, block_size=block_size)
    assert PUT_KEYS <= result.keys(), result
    assert result["path"] == path
    assert result["size"] == size
    assert result["blocks"] == -(-size // block_size)
    assert result["under_replicated"] == []
    check_stat_file(client.stat(path), path, size, replication, block_size, shared_cluster)
    assert client.get_bytes(path) == data


@pytest.mark.parametrize("block_size", BLOCK_SIZES, ids=["1MiB", "256KiB"])
@pytest.mark.parametrize("k", [0, 4, 7], ids=["0", "64K+1", "3bs+4097"])
def test_put_get_local_files(client: dfs.Client, shared_cluster: Cluster, root: str,
                             tmp_path: Path, k: int, block_size: int) -> None:
    size = edge_sizes(block_size)[k]
    data = data_of(size, 7)
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(data)
    dst.write_bytes(b"old contents that must be replaced")
    result = client.put(str(src), f"{root}/deep/er/f.bin", block_size=block_size)
    assert result["size"] == size
    check_stat_file(client.stat(f"{root}/deep/er/f.bin"), f"{root}/deep/er/f.bin", size, 2,
                    block_size, shared_cluster)
    assert client.get(f"{root}/deep/er/f.bin", str(dst)) == size
    assert dst.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]  # no temp left


def test_defaults_are_64MiB_blocks_and_2_replicas(client: dfs.Client, root: str) -> None:
    client.put_bytes(b"hello", f"{root}/x")
    st = client.stat(f"{root}/x")
    assert st["block_size"] == 64 * MiB
    assert st["replication"] == 2
    assert [b["size"] for b in st["blocks"]] == [5]
    assert len(st["blocks"][0]["replicas"]) == 2


def test_more_replicas_than_chunkservers_is_reported_under_replicated(
        client: dfs.Client, shared_cluster: Cluster, root: str) -> None:
    data = data_of(MiB + 3, 8)
    result = client.put_bytes(data, f"{root}/r3", replication=3, block_size=MiB)
    st = client.stat(f"{root}/r3")
    assert st["replication"] == 3
    assert sorted(result["under_replicated"]) == sorted(b["id"] for b in st["blocks"])
    for b in st["blocks"]:
        assert sorted(b["replicas"]) == sorted(d.addr for d in shared_cluster.chunkservers)
    assert client.get_bytes(f"{root}/r3") == data


def test_put_replaces_atomically_and_frees_old_blocks(client: dfs.Client,
                                                      shared_cluster: Cluster,
                                                      root: str) -> None:
    path = f"{root}/f"
    old, new = data_of(3 * MiB + 5, 1), data_of(MiB + 7, 2)
    client.put_bytes(old, path, block_size=MiB)
    old_ids = {int(b["id"]) for b in client.stat(path)["blocks"]}
    client.put_bytes(new, path, block_size=MiB)
    assert client.get_bytes(path) == new
    st = client.stat(path)
    assert st["size"] == len(new) and len(st["blocks"]) == 2
    assert not old_ids & {int(b["id"]) for b in st["blocks"]}

    def old_blocks_gone() -> bool:
        return all(not old_ids & shared_cluster.stored_block_ids(d.name)
                   for d in shared_cluster.chunkservers)
    # "Space of a deleted file is freed on every chunkserver within seconds."
    wait_until(old_blocks_gone, 20, "replaced file's blocks deleted from chunkserver disks")

    new_ids = {int(b["id"]) for b in st["blocks"]}
    assert client.rm(path) == 1
    wait_until(lambda: all(not new_ids & shared_cluster.stored_block_ids(d.name)
                           for d in shared_cluster.chunkservers),
               20, "removed file's blocks deleted from chunkserver disks")


@pytest.mark.parametrize("block_size", [64 * KiB, 3 * MiB // 2],
                         ids=["64KiB_minimum", "1.5MiB"])
def test_block_sizes_that_are_not_a_multiple_of_the_packet_size(
        client: dfs.Client, shared_cluster: Cluster, root: str, block_size: int) -> None:
    """Any multiple of 64 KiB is a valid block size (INTERFACE: --block-size SIZE)."""
    size = 3 * block_size + 100
    data = data_of(size, 11)
    result = client.put_bytes(data, f"{root}/f", block_size=block_size)
    assert result["blocks"] == 4
    check_stat_file(client.stat(f"{root}/f"), f"{root}/f", size, 2, block_size,
                    shared_cluster)
    assert client.get_bytes(f"{root}/f") == data


# -- open("rb") and open("wb") -----------------------------------------------------------------

@pytest.mark.parametrize("block_size", [MiB, 2 * MiB, SMALL_BLOCK], ids=["1MiB", "2MiB", "256KiB"])
def test_open_rb_seek_and_read_random_ranges(client: dfs.Client, root: str,
                                             block_size: int) -> None:
    size = 3 * block_size + 12345
    data = data_of(size, 3)
    path = f"{root}/r.bin"
    client.put_bytes(data, path, block_size=block_size)
    rng = random.Random(42)
    with client.open(path, "rb") as f:
        assert f.readable() and f.seekable()
        for _ in range(60):
            off = rng.randrange(0, size + 10)
            n = rng.choice([0, 1, 17, 4096, 65535, 65536, 65537, block_size + 3,
                            rng.randrange(1, 2 * block_size)])
            assert f.seek(off) == off
            got = f.read(n)
            assert got == data[off:off + n], (off, n)
            assert f.tell() == off + len(got)
        # Around every block boundary.
        for b in range(1, 4):
            f.seek(b * block_size - 5)
            assert f.read(10) == data[b * block_size - 5:b * block_size + 5]
        assert f.seek(-100, 2) == size - 100
        assert f.read() == data[-100:]
        assert f.read(10) == b""
        f.seek(7)
        f.seek(5, 1)
        assert f.tell() == 12
        assert f.read(3) == data[12:15]
        f.seek(0)
        assert f.read() == data


def test_open_wb_is_invisible_until_close(client: dfs.Client, shared_cluster: Cluster,
                                          root: str) -> None:
    path = f"{root}/w.bin"
    client.put_bytes(b"previous version", path)
    data = data_of(2 * MiB + 3 * 65536 + 11, 4)
    f = client.open(path, "wb", block_size=MiB)
    try:
        assert f.writable()
        pos = 0
        rng = random.Random(5)
        while pos < len(data):
            n = rng.choice([1, 1000, 65536, 300_000, MiB + 1])
            f.write(data[pos:pos + n])
            pos += n
            # Readers keep seeing the old version until the writer closes.
            assert client.get_bytes(path) == b"previous version"
            assert client.stat(path)["size"] == len(b"previous version")
    except BaseException:
        f.abort()
        raise
    f.close()
    assert client.get_bytes(path) == data
    st = client.stat(path)
    assert st["size"] == len(data) and len(st["blocks"]) == 3

    fresh = f"{root}/new/w2.bin"
    with client.open(fresh, "wb", block_size=MiB) as g:
        g.write(data[:MiB + 5])
        with pytest.raises(dfs.NotFound):
            client.stat(fresh)
        with pytest.raises(dfs.NotFound):
            client.get_bytes(fresh)
        assert all(e["path"] != fresh for e in client.ls(root))
    assert client.get_bytes(fresh) == data[:MiB + 5]


def test_open_wb_aborted_by_an_exception_never_appears(client: dfs.Client, root: str,
                                                       shared_cluster: Cluster) -> None:
    path = f"{root}/aborted.bin"
    with pytest.raises(RuntimeError):
        with client.open(path, "wb", block_size=4 * MiB) as f:
            f.write(data_of(2 * MiB + 100, 9))  # two packets sent: the block is open
            raise RuntimeError("the writer gives up")
    with pytest.raises(dfs.NotFound):
        client.stat(path)
    # The client (and its pooled connections) lives on: the partial replicas go now, not
    # whenever those connections close.
    wait_until(lambda: not any(shared_cluster.tmp_files(cs.name)
                               for cs in shared_cluster.chunkservers),
               10, "partial replicas of the aborted write to be dropped")


# -- namespace and shapes ----------------------------------------------------------------------

def test_ls_stat_mkdir_mv_rm(client: dfs.Client, root: str) -> None:
    client.mkdir(f"{root}/a/b/c", parents=True)
    client.mkdir(f"{root}/a/b/c", parents=True)  # -p on an existing dir is fine
    client.put_bytes(b"one", f"{root}/a/one.txt")
    client.put_bytes(b"", f"{root}/a/b/empty")

    st = client.stat(f"{root}/a")
    assert STAT_DIR_KEYS <= st.keys() and st["type"] == "dir" and "blocks" not in st
    assert st["path"] == f"{root}/a"
    empty = client.stat(f"{root}/a/b/empty")
    assert empty["type"] == "file" and empty["size"] == 0 and empty["blocks"] == []

    entries = client.ls(f"{root}/a")
    assert [e["path"] for e in entries] == [f"{root}/a/b", f"{root}/a/one.txt"]
    d, f = entries
    assert d["type"] == "dir" and "blocks" not in d
    assert LS_FILE_KEYS <= f.keys() and "blocks" not in f
    assert f["type"] == "file" and f["size"] == 3 and f["replication"] == 2
    assert [e["path"] for e in client.ls(f"{root}/a/one.txt")] == [f"{root}/a/one.txt"]
    assert client.ls(f"{root}/a/b/c") == []
    # Normalised paths: "." components and one trailing slash.
    assert client.stat(f"{root}/a/./b/")["path"] == f"{root}/a/b"

    # mv of a file to a new name, then into an existing directory.
    assert client.mv(f"{root}/a/one.txt", f"{root}/a/two.txt") == f"{root}/a/two.txt"
    with pytest.raises(dfs.NotFound):
        client.stat(f"{root}/a/one.txt")
    assert client.get_bytes(f"{root}/a/two.txt") == b"one"
    assert client.mv(f"{root}/a/two.txt", f"{root}/a/b/c") == f"{root}/a/b/c/two.txt"
    assert client.get_bytes(f"{root}/a/b/c/two.txt") == b"one"

    # mv over an existing file replaces it.
    client.put_bytes(b"victim", f"{root}/a/victim")
    client.mv(f"{root}/a/b/c/two.txt", f"{root}/a/victim")
    assert client.get_bytes(f"{root}/a/victim") == b"one"

    # mv of a directory carries its subtree.
    assert client.mv(f"{root}/a/b", f"{root}/moved") == f"{root}/moved"
    assert client.get_bytes(f"{root}/moved/empty") == b""
    assert client.stat(f"{root}/moved/c")["type"] == "dir"
    with pytest.raises(dfs.NotFound):
        client.stat(f"{root}/a/b")
    with pytest.raises(dfs.BadRequest):
        client.mv(f"{root}/moved", f"{root}/moved/c/inside")

    # rm: a file, a non-empty directory needs recursive, rm -r counts files.
    client.put_bytes(b"x", f"{root}/moved/c/x")
    with pytest.raises(dfs.DirectoryNotEmpty):
        client.rm(f"{root}/moved")
    assert client.rm(f"{root}/moved", recursive=True) == 2
    with pytest.raises(dfs.NotFound):
        client.stat(f"{root}/moved")
    assert client.rm(f"{root}/a/victim") == 1
    client.mkdir(f"{root}/emptydir")
    assert client.rm(f"{root}/emptydir") == 0
    assert [e["path"] for e in client.ls(root)] == [f"{root}/a"]


def test_ls_pages_through_a_directory_bigger_than_one_page(shared_cluster: Cluster,
                                                           root: str) -> None:
    names = [f"e{i:05d}" for i in range(10_050)]  # more than one 10,000-entry page

    async def main() -> list[dict]:
        async with dfs.AsyncClient(shared_cluster.meta_addr) as ac:
            await ac.mkdir(root, parents=True)
            sem = asyncio.Semaphore(256)

            async def mk(name: str) -> None:
                async with sem:
                    await ac.mkdir(f"{root}/{name}")
            await asyncio.gather(*(mk(n) for n in names))
            return await ac.ls(root)
    entries = asyncio.run(main())
    assert [e["path"] for e in entries] == [f"{root}/{n}" for n in names]
    shared_cluster.admin().rm(root, recursive=True)


def test_error_classes(client: dfs.Client, root: str) -> None:
    client.put_bytes(b"file", f"{root}/file")
    client.mkdir(f"{root}/dir/sub", parents=True)

    for call in (lambda: client.stat(f"{root}/missing"),
                 lambda: client.get_bytes(f"{root}/missing"),
                 lambda: client.ls(f"{root}/missing"),
                 lambda: client.rm(f"{root}/missing"),
                 lambda: client.mv(f"{root}/missing", f"{root}/y"),
                 lambda: client.open(f"{root}/missing", "rb"),
                 lambda: client.mkdir(f"{root}/no/such/parent")):
        with pytest.raises(dfs.NotFound):
            call()
    with pytest.raises(dfs.DirectoryNotEmpty):
        client.rm(f"{root}/dir")
    with pytest.raises(dfs.AlreadyExists):
        client.mkdir(f"{root}/dir")
    with pytest.raises(dfs.AlreadyExists):
        client.mkdir(f"{root}/file")
    with pytest.raises(dfs.AlreadyExists):
        client.mkdir(f"{root}/file", parents=True)  # a file is in the way, even with -p
    with pytest.raises(dfs.IsADirectory):
        client.get_bytes(f"{root}/dir")
    with pytest.raises(dfs.IsADirectory):
        client.put_bytes(b"x", f"{root}/dir")
    with pytest.raises(dfs.IsADirectory):
        client.open(f"{root}/dir", "rb")
    with pytest.raises(dfs.NotADirectory):
        client.put_bytes(b"x", f"{root}/file/child")
    with pytest.raises(dfs.NotADirectory):
        client.mkdir(f"{root}/file/child", parents=True)
    for bad in (f"{root}/../etc", f"{root}/a/../../b", "relative/path", f"{root}//x",
                f"{root}/nul\x00byte"):
        with pytest.raises(dfs.BadRequest):
            client.stat(bad)
        with pytest.raises(dfs.BadRequest):
            client.put_bytes(b"x", bad)
        with pytest.raises(dfs.BadRequest):
            client.mkdir(bad, parents=True)
    with pytest.raises(dfs.BadRequest):
        client.rm("/", recursive=True)
    with pytest.raises(dfs.BadRequest):
        client.put_bytes(b"x", f"{root}/bs", block_size=65536 + 1)
    with pytest.raises(dfs.BadRequest):
        client.put_bytes(b"x", f"{root}/r0", replication=0)
    for cls in (dfs.NotFound, dfs.DirectoryNotEmpty, dfs.AlreadyExists, dfs.IsADirectory,
                dfs.BadRequest, dfs.NotADirectory, dfs.Unavailable):
        assert issubclass(cls, dfs.DFSError)
    # Nothing above left a file behind.
    assert [e["path"] for e in client.ls(root)] == [f"{root}/dir", f"{root}/file"]


def test_status_shape(client: dfs.Client, shared_cluster: Cluster) -> None:
    st = client.status()
    assert STATUS_KEYS <= st.keys(), st
    assert st["meta"] == shared_cluster.meta_addr
    assert isinstance(st["files"], int) and isinstance(st["blocks"], int)
    servers = st["chunkservers"]
    assert sorted(cs["addr"] for cs in servers) == sorted(d.addr for d in
                                                          shared_cluster.chunkservers)
    for cs in servers:
        assert CHUNKSERVER_KEYS <= cs.keys(), cs
        assert cs["state"] == "live"
        assert isinstance(cs["id"], str) and cs["id"]
        assert 0 <= cs["last_heartbeat_s"] < 3
        assert 0 <= cs["used"] <= cs["capacity"]


def test_async_client_shared_by_many_tasks(shared_cluster: Cluster, root: str) -> None:
    blobs = {f"{root}/a{i}": data_of(i * 40_000 + 3, i) for i in range(24)}

    async def main() -> None:
        async with dfs.AsyncClient(shared_cluster.meta_addr) as ac:
            await asyncio.gather(*(ac.put_bytes(b, p, block_size=MiB)
                                   for p, b in blobs.items()))
            got = await asyncio.gather(*(ac.get_bytes(p) for p in blobs))
            assert got == list(blobs.values())
            assert {e["path"] for e in await ac.ls(root)} == set(blobs)
            with pytest.raises(dfs.NotFound):
                await ac.stat(f"{root}/nope")
    asyncio.run(main())


def test_a_reader_of_the_old_version_finishes_within_the_delete_grace(make_cluster) -> None:
    """A file replaced (or removed) while a reader has it open: its old blocks stay on disk
    for meta's delete grace, so the reader gets the whole old version, never a mix and never
    an error, although heartbeats (which carry deletes) pass in between.

    The grace is 60 s here, so a slow machine cannot outlast it; instead of sleeping, the
    reader goes on only after every chunkserver has sent two heartbeats since the replace
    (a delete handed out in the reply to one beat is carried out before the next)."""
    cluster = make_cluster(2, meta_args=["--delete-grace", "60s"])
    path = "/grace/f"
    # Larger than the read-ahead window (8 segments of 1 MiB), so most is read after.
    old, new = data_of(12 * MiB + 11, 31), data_of(2 * MiB, 32)

    def beats_since(t: float) -> bool:
        asked = time.monotonic()  # meta's clock reads at least this when it answers
        return all(asked - cs["last_heartbeat_s"] > t
                   for cs in cluster.status()["chunkservers"])

    async def main() -> None:
        async with dfs.AsyncClient(cluster.meta_addr) as ac:
            await ac.put_bytes(old, path, block_size=MiB)
            old_ids = {int(b["id"]) for b in (await ac.stat(path))["blocks"]}
            reader = await ac.open_read(path)  # the stat: the old version's blocks
            first = await reader.read(1000)
            await ac.put_bytes(new, path, block_size=MiB)
            since = time.monotonic()
            for _ in range(2):
                await asyncio.to_thread(wait_until, lambda t=since: beats_since(t), 30,
                                        "a heartbeat of every chunkserver")
                since = time.monotonic()
            # Still there: the grace holds them back (not just a slow delete).
            assert all(old_ids <= cluster.stored_block_ids(d.name)
                       for d in cluster.chunkservers)
            rest = await reader.read()
            await reader.close()
            assert first + rest == old
            assert await ac.get_bytes(path) == new
    asyncio.run(main())
