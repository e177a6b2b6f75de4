"""DFSFileSystem against a real cluster: the fsspec surface data tools call, mapped to the
cheapest dfs request, with the errors, pickling, threads and event loops fsspec promises.
(fsspec's own conformance suite runs in test_fsspec_conformance.py; pandas and pyarrow in
test_fsspec_dataframes.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import io
import os
import pickle
import secrets
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cluster import Cluster, data_of
from fsspec.asyn import sync
from fsspec.callbacks import Callback

import dfs
from dfs.fsspec import DFSFileSystem

MiB = 1 << 20


@pytest.fixture(scope="module")
def fs(shared_cluster: Cluster) -> Iterator[DFSFileSystem]:
    fs = DFSFileSystem(shared_cluster.meta_addr, skip_instance_cache=True)
    yield fs
    fs.close()


@pytest.fixture
def base(fs: DFSFileSystem) -> Iterator[str]:
    """A fresh directory for one test."""
    path = f"/fsspec-{uuid.uuid4().hex[:10]}"
    fs.mkdir(path)
    yield path
    fs.rm(path, recursive=True)


def moved(fs: DFSFileSystem) -> int:
    """Block bytes the filesystem's client has received from chunkservers so far."""
    async def count() -> int:
        return fs.client().bytes_read
    return int(sync(fs.loop, count))


@contextlib.contextmanager
def meta_ops(fs: DFSFileSystem) -> Iterator[list[str]]:
    """The ops of every meta request the filesystem's client sends inside the block."""
    ops: list[str] = []

    async def install() -> Any:
        client = fs.client()
        original = client.meta_call

        async def counting(op: str, **fields: Any) -> dict[str, Any]:
            ops.append(op)
            return await original(op, **fields)
        client.meta_call = counting  # type: ignore[method-assign]
        return client

    client = sync(fs.loop, install)
    try:
        yield ops
    finally:
        del client.meta_call


def blocks_of(cluster: Cluster, path: str) -> list[str]:
    return [b["id"] for b in cluster.admin().stat(path)["blocks"]]


# -- listings and info ------------------------------------------------------------------

def test_info_is_exactly_the_ls_entry(fs: DFSFileSystem, base: str) -> None:
    fs.pipe_file(f"{base}/f.bin", b"x" * 1000)
    fs.mkdir(f"{base}/sub")
    listing = fs.ls(base, detail=True)
    assert sorted(e["name"] for e in listing) == [f"{base}/f.bin", f"{base}/sub"]
    for e in listing:
        assert fs.info(e["name"]) == e
        assert fs.info(fs.unstrip_protocol(e["name"])) == e  # a full URL names the same
    f = fs.info(f"{base}/f.bin")
    assert set(f) == {"name", "size", "type", "mtime", "replication", "block_size"}
    assert (f["size"], f["type"], f["replication"]) == (1000, "file", 2)
    assert fs.info(f"{base}/sub")["type"] == "directory"
    assert fs.ls(f"{base}/f.bin") == [f]  # ls of a file: the file itself
    assert fs.ls(base, detail=False) == [f"{base}/f.bin", f"{base}/sub"]
    assert fs.info("/")["type"] == "directory"


def test_exists_isdir_isfile_size_modified(fs: DFSFileSystem, base: str) -> None:
    fs.pipe_file(f"{base}/a", b"12345")
    assert fs.exists(f"{base}/a") and fs.isfile(f"{base}/a") and not fs.isdir(f"{base}/a")
    assert fs.isdir(base) and not fs.isfile(base)
    assert not fs.exists(f"{base}/nope")
    assert not fs.exists(f"{base}/a/below-a-file")  # a file as a parent: simply absent
    assert fs.size(f"{base}/a") == 5
    assert fs.sizes([f"{base}/a", f"{base}/a"]) == [5, 5]
    when = fs.modified(f"{base}/a")
    assert isinstance(when, datetime.datetime)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - when).total_seconds()) < 60


def test_find_glob_walk_du(fs: DFSFileSystem, base: str) -> None:
    for name in ["a.csv", "b.csv", "c.txt", "d/e.csv", "d/f/g.csv"]:
        fs.pipe_file(f"{base}/{name}", b"1" * len(name))
    assert fs.find(base) == [f"{base}/{n}" for n in
                             ["a.csv", "b.csv", "c.txt", "d/e.csv", "d/f/g.csv"]]
    assert fs.glob(f"{base}/*.csv") == [f"{base}/a.csv", f"{base}/b.csv"]
    assert fs.glob(f"{base}/**/*.csv") == [f"{base}/{n}" for n in
                                            ["a.csv", "b.csv", "d/e.csv", "d/f/g.csv"]]
    assert fs.glob(f"dfs:///{base}/?.txt") == [f"{base}/c.txt"]
    walked = {root: (sorted(dirs), sorted(files)) for root, dirs, files in fs.walk(base)}
    assert walked[base] == (["d"], ["a.csv", "b.csv", "c.txt"])
    assert walked[f"{base}/d/f"] == ([], ["g.csv"])
    assert fs.du(base) == sum(len(n) for n in ["a.csv", "b.csv", "c.txt", "d/e.csv",
                                               "d/f/g.csv"])
    assert fs.du(base, total=False)[f"{base}/d/e.csv"] == len("d/e.csv")


def test_listings_are_fresh_by_default_and_the_opt_in_cache_sees_our_writes(
        shared_cluster: Cluster, fs: DFSFileSystem, base: str) -> None:
    fs.pipe_file(f"{base}/one", b"1")
    assert fs.ls(base, detail=False) == [f"{base}/one"]
    shared_cluster.admin().put_bytes(b"2", f"{base}/two")  # another client writes
    assert fs.ls(base, detail=False) == [f"{base}/one", f"{base}/two"]

    cached = DFSFileSystem(shared_cluster.meta_addr, use_listings_cache=True,
                           skip_instance_cache=True)
    try:
        assert cached.ls(base, detail=False) == [f"{base}/one", f"{base}/two"]
        assert base in cached.dircache
        cached.pipe_file(f"{base}/three", b"3")  # our own write: seen at once
        assert cached.ls(base, detail=False) == [f"{base}/one", f"{base}/three", f"{base}/two"]
        cached.ls(base)
        cached.rm(f"{base}/one")
        assert not cached.exists(f"{base}/one")
        cached.ls(base)
        cached.mv(f"{base}/two", f"{base}/zwei")
        assert cached.ls(base, detail=False) == [f"{base}/three", f"{base}/zwei"]
        with cached.open(f"{base}/four", "wb") as f:
            f.write(b"4")
        assert f"{base}/four" in cached.ls(base, detail=False)
    finally:
        cached.close()


# -- reading ----------------------------------------------------------------------------

def test_cat_file_reads_only_the_range(fs: DFSFileSystem, base: str) -> None:
    data = data_of(10 * MiB + 12345, seed=3)
    fs.pipe_file(f"{base}/big", data)
    before = moved(fs)
    assert fs.cat_file(f"{base}/big", 5 * MiB + 100, 5 * MiB + 4196) == \
        data[5 * MiB + 100:5 * MiB + 4196]
    assert moved(fs) - before <= 2 * 64 * 1024  # the units around the range, nothing ahead
    assert fs.cat_file(f"{base}/big", -8) == data[-8:]  # a parquet footer's magic
    assert fs.cat_file(f"{base}/big", 3, -3) == data[3:-3]
    assert fs.cat_file(f"{base}/big", len(data) + 5) == b""
    before = moved(fs)
    assert fs.cat_file(f"{base}/big") == data
    assert moved(fs) - before == len(data)
    assert fs.cat(f"{base}/big", start=0, end=4) == data[:4]


def test_cat_ranges_returns_every_range_and_errors_in_place(fs: DFSFileSystem,
                                                            base: str) -> None:
    data = data_of(3 * MiB, seed=4)
    fs.pipe_file(f"{base}/f", data)
    fs.pipe_file(f"{base}/g", b"0123456789")
    starts = [i * 37_001 for i in range(60)]
    paths = [f"{base}/f"] * 60 + [f"{base}/g", f"{base}/missing"]
    with meta_ops(fs) as ops:
        out = fs.cat_ranges(paths, starts + [2, 0], [s + 4096 for s in starts] + [5, 4])
    assert sorted(ops) == ["stat"] * 3  # each file looked up once, not once per range
    assert out[:60] == [data[s:s + 4096] for s in starts]
    assert out[60] == b"234"
    assert isinstance(out[61], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges([f"{base}/missing"], [0], [1], on_error="raise")


def test_open_rb_is_seekable_and_reads_ahead_only_when_sequential(fs: DFSFileSystem,
                                                                  base: str) -> None:
    data = data_of(20 * MiB, seed=5)
    fs.pipe_file(f"{base}/f", data)
    with fs.open(f"{base}/f", "rb") as f:
        assert f.size == len(data) and f.seekable() and f.info()["size"] == len(data)
        before = moved(fs)
        f.seek(-8, 2)
        assert f.read(8) == data[-8:]
        f.seek(7 * MiB + 3)
        assert f.read(MiB) == data[7 * MiB + 3:8 * MiB + 3]
        # footer and one "column chunk": what they cover, no 64 MiB block, no read-ahead
        assert moved(fs) - before <= 8 + MiB + 4 * 64 * 1024
        f.seek(0)
        got = [f.read(256 * 1024) for _ in range(40)]  # a sequential scan
        assert b"".join(got) == data[:10 * MiB]
        assert f.tell() == 10 * MiB
        assert f.read() == data[10 * MiB:]
        assert f.read(10) == b""


def test_reading_a_directory_or_missing_file_is_the_right_oserror(fs: DFSFileSystem,
                                                                  base: str) -> None:
    with pytest.raises(IsADirectoryError):
        fs.cat_file(base)
    with pytest.raises(IsADirectoryError):
        fs.open(base, "rb")
    with pytest.raises(FileNotFoundError):
        fs.open(f"{base}/missing", "rb")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{base}/missing")
    fs.pipe_file(f"{base}/x/y", b"1")
    with pytest.raises(OSError) as err:
        fs.rm(f"{base}/x")  # not recursive: a non-empty directory stays
    assert err.value.errno == errno.ENOTEMPTY
    assert fs.exists(f"{base}/x/y")


# -- writing ----------------------------------------------------------------------------

def test_open_wb_streams_and_the_file_appears_at_close(fs: DFSFileSystem, base: str) -> None:
    data = data_of(9 * MiB + 7, seed=6)
    with fs.open(f"{base}/w", "wb") as f:
        for i in range(0, len(data), 300_001):
            f.write(data[i:i + 300_001])
            assert not fs.exists(f"{base}/w")  # invisible until closed
    assert fs.cat_file(f"{base}/w") == data
    with fs.open(f"{base}/w", "wb") as f:  # replaces, atomically
        f.write(b"second")
    assert fs.cat_file(f"{base}/w") == b"second"


def test_an_exception_in_the_with_block_publishes_nothing(fs: DFSFileSystem, base: str) -> None:
    fs.pipe_file(f"{base}/keep", b"old")
    with pytest.raises(RuntimeError):
        with fs.open(f"{base}/keep", "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("writer died")
    assert fs.cat_file(f"{base}/keep") == b"old"
    with pytest.raises(RuntimeError):
        with fs.open(f"{base}/new", "wb") as f:
            f.write(data_of(5 * MiB))
            raise RuntimeError("writer died")
    assert not fs.exists(f"{base}/new")


def test_text_mode_and_write_once_modes(fs: DFSFileSystem, base: str) -> None:
    with fs.open(f"{base}/t.txt", "w", encoding="utf-8") as f:
        f.write("línea 1\nlínea 2\n")
    with fs.open(f"{base}/t.txt", "r", encoding="utf-8") as f:
        assert f.readlines() == ["línea 1\n", "línea 2\n"]
    for mode in ["ab", "a", "r+b", "r+", "w+b"]:
        with pytest.raises((io.UnsupportedOperation, ValueError)) as err:
            fs.open(f"{base}/t.txt", mode)
        assert "write-once" in str(err.value) or mode == "w+b", (mode, err.value)
    assert fs.cat_file(f"{base}/t.txt") == "línea 1\nlínea 2\n".encode()
    with pytest.raises(FileExistsError):
        fs.open(f"{base}/t.txt", "xb")
    with fs.open(f"{base}/fresh", "xb") as f:
        f.write(b"x")
    assert fs.cat_file(f"{base}/fresh") == b"x"


def test_exclusive_create_loses_a_race_at_close(shared_cluster: Cluster, fs: DFSFileSystem,
                                                base: str) -> None:
    f = fs.open(f"{base}/race", "xb")
    f.write(b"mine")
    shared_cluster.admin().put_bytes(b"theirs", f"{base}/race")  # published first
    with pytest.raises(FileExistsError):
        f.close()
    assert fs.cat_file(f"{base}/race") == b"theirs"
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{base}/race", b"x", mode="create")


def test_transactions_publish_at_the_end(fs: DFSFileSystem, base: str) -> None:
    with fs.transaction:
        with fs.open(f"{base}/t1", "wb") as f:
            f.write(b"one")
        assert not fs.exists(f"{base}/t1")
    assert fs.cat_file(f"{base}/t1") == b"one"
    with pytest.raises(RuntimeError):
        with fs.transaction:
            with fs.open(f"{base}/t2", "wb") as f:
                f.write(b"two")
            raise RuntimeError("give up")
    assert not fs.exists(f"{base}/t2")


def test_put_file_get_file_stream_with_progress(fs: DFSFileSystem, base: str,
                                                tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(data_of(6 * MiB + 5, seed=7))

    class Count(Callback):  # type: ignore[misc]
        pass
    up = Count()
    fs.put_file(str(src), f"{base}/p.bin", callback=up)
    assert (up.size, up.value) == (src.stat().st_size, src.stat().st_size)
    down = Count()
    fs.get_file(f"{base}/p.bin", str(tmp_path / "back.bin"), callback=down)
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert down.value == src.stat().st_size
    buf = io.BytesIO()
    fs.get_file(f"{base}/p.bin", buf)
    assert buf.getvalue() == src.read_bytes()
    fs.put(str(tmp_path), f"{base}/tree", recursive=True)
    assert fs.cat_file(f"{base}/tree/src.bin") == src.read_bytes()
    with pytest.raises(FileExistsError):
        fs.put_file(str(src), f"{base}/p.bin", mode="create")


def test_ukey_and_checksum_follow_the_version(shared_cluster: Cluster, fs: DFSFileSystem,
                                              base: str) -> None:
    fs.pipe_file(f"{base}/v", b"same bytes")
    key, check = fs.ukey(f"{base}/v"), fs.checksum(f"{base}/v")
    assert fs.ukey(f"{base}/v") == key and fs.checksum(f"{base}/v") == check
    fs.pipe_file(f"{base}/v", b"same bytes")  # replaced, even with the same bytes
    assert fs.ukey(f"{base}/v") != key and fs.checksum(f"{base}/v") != check
    key = fs.ukey(f"{base}/v")
    fs.mv(f"{base}/v", f"{base}/w")
    fs.mv(f"{base}/w", f"{base}/v")
    assert fs.ukey(f"{base}/v") == key  # renamed back: the same version


# -- namespace --------------------------------------------------------------------------

def test_mkdir_makedirs_rmdir(fs: DFSFileSystem, base: str) -> None:
    fs.makedirs(f"{base}/a/b/c")
    fs.makedirs(f"{base}/a/b/c", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.makedirs(f"{base}/a/b/c")
    with pytest.raises(FileExistsError):
        fs.mkdir(f"{base}/a")
    with pytest.raises(FileNotFoundError):
        fs.mkdir(f"{base}/x/y", create_parents=False)
    fs.rmdir(f"{base}/a/b/c")
    with pytest.raises(OSError):
        fs.rmdir(f"{base}/a")  # not empty
    assert fs.isdir(f"{base}/a/b")


def test_rm_recursive_is_one_request_for_a_whole_tree(fs: DFSFileSystem, base: str) -> None:
    fs.pipe({f"{base}/t/d{i % 5}/f{i}": b"x" for i in range(50)})
    with meta_ops(fs) as ops:
        fs.rm(f"{base}/t", recursive=True)
    assert ops == ["rm"]
    assert not fs.exists(f"{base}/t")
    fs.pipe({f"{base}/{n}": b"x" for n in ["a1", "a2", "b1"]})
    fs.rm(f"{base}/a*")
    assert fs.ls(base, detail=False) == [f"{base}/b1"]
    fs.rm_file(f"{base}/b1")
    with pytest.raises(FileNotFoundError):
        fs.rm(f"{base}/b1")


def test_mv_is_a_rename_and_cp_file_shares_blocks(shared_cluster: Cluster, fs: DFSFileSystem,
                                                  base: str) -> None:
    data = data_of(3 * MiB, seed=8)
    fs.pipe_file(f"{base}/src", data)
    ids = blocks_of(shared_cluster, f"{base}/src")
    before = moved(fs)
    with meta_ops(fs) as ops:
        fs.mv(f"{base}/src", f"{base}/dst")
    assert ops == ["mv"]
    assert blocks_of(shared_cluster, f"{base}/dst") == ids and not fs.exists(f"{base}/src")
    fs.makedirs(f"{base}/into")
    fs.mv(f"{base}/dst", f"{base}/into")  # into an existing directory, as mv(1)
    assert fs.exists(f"{base}/into/dst")
    fs.mv(f"{base}/into", f"{base}/renamed")  # a directory, atomically
    assert fs.cat_file(f"{base}/renamed/dst", 0, 4) == data[:4]
    with pytest.raises(FileNotFoundError):
        fs.mv(f"{base}/renamed/dst", f"{base}/no/such/dir/file")
    fs.cp_file(f"{base}/renamed/dst", f"{base}/copy")
    assert blocks_of(shared_cluster, f"{base}/copy") == ids
    assert moved(fs) - before == 64 * 1024  # the unit holding the 4 bytes read above
    fs.copy(f"{base}/renamed", f"{base}/tree-copy", recursive=True)
    assert blocks_of(shared_cluster, f"{base}/tree-copy/dst") == ids
    fs.pipe({f"{base}/m{i}": b"m" for i in range(3)})
    fs.mv(f"{base}/m*", f"{base}/ms/")  # a glob into a directory
    assert fs.ls(f"{base}/ms", detail=False) == [f"{base}/ms/m{i}" for i in range(3)]


# -- pickling, threads, event loops -----------------------------------------------------

def test_a_pickled_filesystem_works_in_another_process(make_cluster: Callable[..., Cluster],
                                                       tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(secrets.token_hex(24).encode())
    flag = ["--secret-file", str(secret)]
    c = make_cluster(2, meta_args=flag, chunk_args=flag,
                     client_options={"secret_file": str(secret)})
    fs = DFSFileSystem(c.meta_addr, secret_file=str(secret), skip_instance_cache=True)
    try:
        fs.pipe_file("/shared/in.txt", b"from the parent")
        blob = pickle.dumps(fs)  # after use: the connection must not travel
        assert secret.read_bytes() not in blob
        assert b"from the parent" not in blob
        assert len(blob) < 1000
        code = ("import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); "
                "data = fs.cat_file('/shared/in.txt'); "
                "fs.pipe_file('/shared/out.txt', data.upper()); print(fs.ls('/shared', False))")
        proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                              timeout=60, env={k: v for k, v in os.environ.items()
                                               if not k.startswith("DFS_")})
        assert proc.returncode == 0, proc.stderr.decode()
        assert fs.cat_file("/shared/out.txt") == b"FROM THE PARENT"
        assert pickle.loads(blob).cat_file("/shared/in.txt") == b"from the parent"
    finally:
        fs.close()


def test_fsspec_finds_dfs_without_importing_it(shared_cluster: Cluster, fs: DFSFileSystem,
                                               base: str) -> None:
    fs.pipe_file(f"{base}/plain.csv", b"a,b\n1,2\n3,4\n")
    code = ("import sys, fsspec\n"
            "assert 'dfs' not in sys.modules\n"
            f"with fsspec.open('dfs://{shared_cluster.meta_addr}{base}/plain.csv') as f:\n"
            "    print(f.read().decode(), end='')\n"
            "print(type(fsspec.filesystem('dfs')).__module__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "a,b\n1,2\n3,4\ndfs.fsspec.filesystem\n"


def test_many_threads_share_one_filesystem(fs: DFSFileSystem, base: str) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            payload = data_of(100_000 + i, seed=i)
            for j in range(5):
                fs.pipe_file(f"{base}/t{i}-{j}", payload)
                assert fs.cat_file(f"{base}/t{i}-{j}") == payload
                assert fs.info(f"{base}/t{i}-{j}")["size"] == len(payload)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(fs.ls(base)) == 40


def test_inside_a_running_event_loop(shared_cluster: Cluster, fs: DFSFileSystem,
                                     base: str) -> None:
    async def notebook_cell() -> None:
        # The sync API from a coroutine (a Jupyter cell): runs on fsspec's IO thread.
        fs.pipe_file(f"{base}/nb", b"from a cell")
        assert fs.cat_file(f"{base}/nb") == b"from a cell"
        # The async API on this very loop.
        afs = DFSFileSystem(shared_cluster.meta_addr, asynchronous=True,
                            skip_instance_cache=True)
        await afs._pipe_file(f"{base}/async", b"awaited")
        assert await afs._cat_file(f"{base}/async", 1, 4) == b"wai"
        got = await asyncio.gather(*(afs._cat_file(f"{base}/nb") for _ in range(20)))
        assert got == [b"from a cell"] * 20
        assert sorted(await afs._ls(base, detail=False)) == [f"{base}/async", f"{base}/nb"]
        with pytest.raises(NotImplementedError):
            afs.open(f"{base}/nb", "rb")  # sync files need a sync filesystem: open_async
        data = data_of(3 * MiB + 11, seed=9)
        async with await afs.open_async(f"{base}/af", "wb") as f:
            for i in range(0, len(data), 500_000):
                await f.write(data[i:i + 500_000])
            assert not await afs._exists(f"{base}/af")  # appears at close
        f = await afs.open_async(f"{base}/af", "rb")
        assert f.size == len(data) and f.info()["size"] == len(data)
        f.seek(MiB + 5)
        assert await f.read(100) == data[MiB + 5:MiB + 105]
        f.seek(0)
        assert b"".join([await f.read(300_000) for _ in range(11)]) == data[:3_300_000]
        assert await f.read() == data[3_300_000:]
        await f.close()
        with pytest.raises(RuntimeError):
            async with await afs.open_async(f"{base}/aborted", "wb") as f:
                await f.write(b"half")
                raise RuntimeError("give up")
        assert not await afs._exists(f"{base}/aborted")
        with pytest.raises(FileExistsError):
            await afs.open_async(f"{base}/af", "xb")
        with pytest.raises(io.UnsupportedOperation):
            await afs.open_async(f"{base}/af", "ab")
        await afs._close()
    asyncio.run(notebook_cell())


def test_clear_errors_when_meta_is_down(tmp_path: Path) -> None:
    from dfs.local_cluster import free_ports
    (port,) = free_ports(1)
    fs = DFSFileSystem(f"127.0.0.1:{port}", timeout=2, skip_instance_cache=True)
    with pytest.raises(OSError) as err:
        fs.ls("/")
    assert "meta server" in str(err.value) and isinstance(err.value.__cause__, dfs.DFSError)
    fs.close()
