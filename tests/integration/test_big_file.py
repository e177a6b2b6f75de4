"""Files of any size: one with more blocks than one frame holds of its block list (a whole-file
`stat` reply, ~11,500 blocks; a one-frame `commit`, ~20,000), written through
the client and read back byte for byte through the client and `dfs-cli get`, listed whole by
`dfs-cli stat --json`, read at ranges deep in the list through fsspec, the HTTP `/files` route
and dfs-mount (when FUSE is here), and read again after meta replays its publish record.

The suite's form: 12,288 blocks of 64 KiB (the smallest block size), 768 MiB, one replica on one
chunkserver, its data on a tmpfs when one has room (the disk's syncs are not what is tested;
each block is still a whole write, seal and commit entry): past the whole-file stat reply, two
stat pages, a commit part and the commit. It is smaller than the issue's ~20,000 blocks to keep
the suite inside CI's 15 minutes. `DFS_BIG_FILE=1` runs the longer form: two replicas on disk,
a cluster secret (every stat entry carries a read token, so pages hold fewer blocks) and
`DFS_BIG_FILE_BLOCKS` blocks (default 24,000, 1.5 GiB, past the one-frame commit too).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pytest
from cli_runner import CLI, clean_env, cli
from cluster import HOST, Cluster, KiB, MiB, data_of
from mounting import Mount

import dfs
from dfs.client import blocklist, writer

BLOCK = 64 * KiB
PER_MIB = MiB // BLOCK
LONG = os.environ.get("DFS_BIG_FILE", "") not in ("", "0")
BLOCKS = int(os.environ.get("DFS_BIG_FILE_BLOCKS", "24000")) if LONG else 12_288
TAIL = 1000  # the last block is short: the file is not a whole number of blocks
SIZE = (BLOCKS - 1) * BLOCK + TAIL
_BASE = random.Random(18).randbytes(MiB)
FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
try:
    import pyfuse3  # noqa: F401
except ImportError:
    FUSE = False


def mib(i: int) -> bytes:
    """MiB number `i` of the file (shorter at its end). Every block starts with its own index,
    so a block read from the wrong place, or a page of the list skipped or repeated, shows."""
    size = min(MiB, SIZE - i * MiB)
    buf = bytearray(_BASE[:size])
    for k, off in enumerate(range(0, size, BLOCK)):
        buf[off:off + 8] = (i * PER_MIB + k).to_bytes(8, "big")
    return bytes(buf)


def expected(offset: int, length: int) -> bytes:
    out = bytearray()
    while length > 0:
        i, skip = divmod(offset, MiB)
        piece = mib(i)[skip:skip + length]
        out += piece
        offset += len(piece)
        length -= len(piece)
    return bytes(out)


def base_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for the suite's form, else the test's own directory."""
    shm = Path("/dev/shm")
    if not LONG and shm.is_dir() and shutil.disk_usage(shm).free > 3 * SIZE:
        d = Path(tempfile.mkdtemp(prefix="dfs-big-", dir=shm))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture
def big_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, list[str]]]:
    """The cluster, and the flags dfs-cli needs to talk to it."""
    for base in base_dir(tmp_path):
        flags: list[str] = []
        options: dict[str, Any] = {}
        if LONG:
            secret = base / "secret"
            secret.write_bytes(os.urandom(32).hex().encode())
            flags = ["--secret-file", str(secret)]
            options = {"secret_file": str(secret)}
        c = Cluster(base / "cluster", 2 if LONG else 1, meta_args=flags, chunk_args=flags,
                    client_options=options, http=True)
        try:
            yield c.start(), flags
        finally:
            c.stop_all()


def read_all(f: Any, size: int) -> Iterator[bytes]:
    """`size` bytes of a binary stream, a MiB at a time (the last piece shorter)."""
    done = 0
    while done < size:
        want = min(MiB, size - done)
        buf = bytearray()
        while len(buf) < want:
            piece = f.read(want - len(buf))
            if not piece:
                raise AssertionError(f"stream ended after {done + len(buf):,} of {size:,} bytes")
            buf += piece
        done += want
        yield bytes(buf)


@pytest.mark.timeout(900 if LONG else 240)
def test_a_file_past_one_frame_of_blocks_writes_and_reads_back(
        big_cluster: tuple[Cluster, list[str]], tmp_path: Path) -> None:
    c, flags = big_cluster
    client = c.client(timeout=60)
    replication = 2 if LONG else 1
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    with client.open("/big/file.bin", "wb", replication=replication,
                     block_size=BLOCK) as f:
        for i in range(-(-SIZE // MiB)):
            f.write(mib(i))
    timings["put"] = time.monotonic() - t0

    # The whole list, as dfs-cli prints it: every block, in order, once.
    t0 = time.monotonic()
    meta = c.meta_addr
    st = cli("stat", "--json", "/big/file.bin", *flags, meta=meta, timeout=120).json()
    timings["stat"] = time.monotonic() - t0
    assert st["size"] == SIZE and st["block_size"] == BLOCK
    assert len(st["blocks"]) == BLOCKS and len({b["id"] for b in st["blocks"]}) == BLOCKS
    assert [b["size"] for b in st["blocks"][-2:]] == [BLOCK, TAIL]
    assert all(len(b["replicas"]) == replication for b in st["blocks"])
    assert not {"block_count", "blocks_more", "first_block"} & set(st)
    report = client.fsck("/big")
    assert (report["blocks"], report["healthy"]) == (BLOCKS, BLOCKS)

    # Through the client: sequentially, and at random places far into the list.
    t0 = time.monotonic()
    with client.open("/big/file.bin", "rb") as f:
        for i, got in enumerate(read_all(f, SIZE)):
            assert got == mib(i), f"MiB {i} differs"
        assert f.read(1) == b""
        for offset in (SIZE - 5000, 3 * BLOCK - 10, (BLOCKS // 2) * BLOCK + 17, 7 * MiB):
            f.seek(offset)
            assert f.read(20_000) == expected(offset, min(20_000, SIZE - offset))
    timings["get"] = time.monotonic() - t0

    # The other ways in, each at a range deep in the list: fsspec, HTTP, the mount.
    far = (BLOCKS - 40) * BLOCK - 100
    fs = fsspec.filesystem("dfs", meta=meta, skip_instance_cache=True, **c.client_options)
    assert fs.cat_file("/big/file.bin", far, far + MiB) == expected(far, MiB)
    assert fs.ukey("/big/file.bin") == fs.ukey("/big/file.bin")
    request = urllib.request.Request(
        f"http://{HOST}:{c['meta'].http_port}/files/big/file.bin",
        headers={"Range": f"bytes={far}-{far + MiB - 1}"})
    if LONG:
        secret = Path(c.client_options["secret_file"]).read_bytes()
        request.add_header("Authorization", "Basic " + base64.b64encode(b"ops:" + secret).decode())
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 206 and response.read() == expected(far, MiB)
    if FUSE:
        with Mount(c, tmp_path / "mnt", *flags) as m:
            fd = os.open(m.path / "big" / "file.bin", os.O_RDONLY)
            try:
                assert os.fstat(fd).st_size == SIZE
                assert os.pread(fd, MiB, far) == expected(far, MiB)
            finally:
                os.close(fd)

    # Through dfs-cli get, to stdout.
    t0 = time.monotonic()
    proc = subprocess.Popen(CLI + ["--meta", meta, *flags, "get", "/big/file.bin", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=clean_env())
    try:
        assert proc.stdout is not None
        for i, got in enumerate(read_all(proc.stdout, SIZE)):
            assert got == mib(i), f"MiB {i} differs in dfs-cli get"
        assert proc.stdout.read() == b""
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    timings["cli_get"] = time.monotonic() - t0

    # Meta replays the large publish record from its journal after a crash.
    c.kill("meta")
    c.restart("meta")
    c.wait_live()
    again = dfs.Client(meta, timeout=60, **c.client_options)
    try:
        with again.open("/big/file.bin", "rb") as f:
            offset = (BLOCKS - 100) * BLOCK + 123
            f.seek(offset)
            assert f.read(MiB) == expected(offset, MiB)
        assert [b["id"] for b in again.stat("/big/file.bin")["blocks"]] == \
            [b["id"] for b in st["blocks"]]
    finally:
        again.close()
    print(f"{BLOCKS:,} blocks, {SIZE / 2**30:.2f} GiB, replication {replication}: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def test_small_parts_and_pages_on_a_real_cluster(cluster: Cluster, monkeypatch: Any) -> None:
    """The same paths with tiny parts and pages, so a few blocks cross many of them: parts
    ending just before the last block or on it, pages loaded out of order by range reads, a
    whole `stat`, and a file replaced while a reader is between two pages."""
    monkeypatch.setattr(writer, "PART_BYTES", 350)  # a part every 5 blocks at 2 replicas
    monkeypatch.setattr(blocklist, "PAGE_LIMIT", 3)
    ops: list[tuple[str, dict[str, Any]]] = []
    real = dfs.AsyncClient.meta_call

    async def spy(self: dfs.AsyncClient, op: str, **fields: Any) -> dict[str, Any]:
        ops.append((op, fields))
        return await real(self, op, **fields)
    monkeypatch.setattr(dfs.AsyncClient, "meta_call", spy)

    async def main() -> None:
        async with dfs.AsyncClient(cluster.meta_addr) as ac:
            for blocks, tail in ((10, 0), (11, 500), (2, 7)):
                size = (blocks - 1) * BLOCK + (tail or BLOCK)
                data = data_of(size, blocks)
                ops.clear()
                await ac.put_bytes(data, f"/p/{blocks}", block_size=BLOCK)
                parts = [f for op, f in ops if op == "commit_part"]
                commit = next(f for op, f in ops if op == "commit")
                starts = [p["block_start"] for p in parts]
                assert starts == sorted(starts) and (not parts or starts[0] == 0)
                assert commit.get("block_start", 0) + len(commit["blocks"]) == blocks
                assert all(b[2] == BLOCK for p in parts for b in p["blocks"])
                if blocks == 10:  # the last part ends on the last block: nothing left
                    assert commit["blocks"] == [] and commit["block_start"] == 10
                assert await ac.get_bytes(f"/p/{blocks}") == data
                info = await ac.stat(f"/p/{blocks}")
                assert len(info["blocks"]) == blocks and "block_count" not in info
                reader = await ac.open_read(f"/p/{blocks}")
                try:
                    for bi in reversed(range(blocks)):  # each page reached from its end
                        at = bi * BLOCK + 3
                        assert await reader.pread(at, 100) == data[at:at + 100]
                finally:
                    await reader.close()
            # Replaced between pages: the reader fails rather than mix the two versions.
            reader = await ac.open_read("/p/10")
            try:
                assert await reader.read(BLOCK) == data_of(10 * BLOCK, 10)[:BLOCK]
                await ac.put_bytes(data_of(10 * BLOCK, 99), "/p/10", block_size=BLOCK)
                with pytest.raises(dfs.Unavailable, match="replaced or removed"):
                    await reader.read()
            finally:
                await reader.close()

    asyncio.run(main())
