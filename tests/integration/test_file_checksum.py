"""The composite file checksum (dfs.client.filechecksum) through real processes: the same bytes
give CRC32C of those bytes whatever the block size, without the data leaving the chunkservers;
a dead, short or missing replica is skipped for the next one, block by block."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

import crc32c
import pytest
from cluster import Cluster, KiB, MiB, data_of

import dfs
from dfs.client import filechecksum
from dfs.client.filechecksum import file_checksum, local_checksum
from dfs.config import CHECKSUM_UNIT

SIZE = 3 * MiB + 300 * KiB + 12345  # several units and blocks, and an odd last unit


def checksum_of(cluster: Cluster, path: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with dfs.AsyncClient(cluster.meta_addr, **cluster.client_options) as ac:
            return await file_checksum(ac, path)
    return asyncio.run(main())


def put(cluster: Cluster, data: bytes, path: str, **kw: Any) -> None:
    async def main() -> None:
        async with dfs.AsyncClient(cluster.meta_addr, **cluster.client_options) as ac:
            await ac.put_bytes(data, path, **kw)
    asyncio.run(main())


def test_same_bytes_same_checksum_whatever_the_block_size(shared_cluster: Cluster,
                                                          tmp_path: Path) -> None:
    data = data_of(SIZE)
    want = f"{crc32c.crc32c(data):08x}"
    local = tmp_path / "local"
    local.write_bytes(data)
    assert local_checksum(str(local))["checksum"] == want
    for bs, blocks in ((64 * KiB, -(-SIZE // (64 * KiB))), (MiB, 4), (None, 1)):
        path = f"/sum/bs-{bs}"
        put(shared_cluster, data, path, **({"block_size": bs} if bs else {}))
        assert checksum_of(shared_cluster, path) == {
            "path": path, "algorithm": "COMPOSITE-CRC32C", "checksum": want, "size": SIZE,
            "blocks": blocks}


def test_one_byte_changes_the_checksum(shared_cluster: Cluster) -> None:
    data = bytearray(data_of(SIZE))
    put(shared_cluster, bytes(data), "/sum/a", block_size=MiB)
    data[2 * MiB + 7] ^= 0x40
    put(shared_cluster, bytes(data), "/sum/b", block_size=MiB)
    a, b = checksum_of(shared_cluster, "/sum/a"), checksum_of(shared_cluster, "/sum/b")
    assert a["checksum"] != b["checksum"]
    assert b["checksum"] == f"{crc32c.crc32c(bytes(data)):08x}"


def test_empty_file_and_not_a_file(shared_cluster: Cluster) -> None:
    put(shared_cluster, b"", "/sum/empty")
    assert checksum_of(shared_cluster, "/sum/empty") == {
        "path": "/sum/empty", "algorithm": "COMPOSITE-CRC32C", "checksum": "00000000",
        "size": 0, "blocks": 0}
    with pytest.raises(dfs.IsADirectory):
        checksum_of(shared_cluster, "/sum")
    with pytest.raises(dfs.NotFound):
        checksum_of(shared_cluster, "/sum/no-such-file")


def test_a_killed_first_replica_is_skipped(make_cluster: Callable[..., Cluster],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A long dead timeout: meta keeps listing the killed server first, so the client must
    # meet it and move on to the other replica.
    cluster = make_cluster(2, dead_timeout="60s")
    data = data_of(SIZE, seed=1)
    put(cluster, data, "/f", block_size=MiB)
    first = cluster.admin().stat("/f")["blocks"][0]["replicas"][0]
    cluster.kill(cluster.by_addr(first).name)
    tried: list[tuple[str, bool]] = []
    table_from = filechecksum._table_from

    async def spy(client: dfs.AsyncClient, addr: str, block: dict[str, Any]) -> bytes:
        try:
            table = await table_from(client, addr, block)
        except dfs.DFSError:
            tried.append((addr, False))
            raise
        tried.append((addr, True))
        return table
    monkeypatch.setattr(filechecksum, "_table_from", spy)
    out = checksum_of(cluster, "/f")
    assert out["checksum"] == f"{crc32c.crc32c(data):08x}" and out["blocks"] == 4
    assert (first, False) in tried and (first, True) not in tried, tried


def test_a_replica_with_a_short_crc_table_is_skipped_and_none_left_is_unavailable(
        cluster: Cluster) -> None:
    size = 5 * CHECKSUM_UNIT + 3
    data = data_of(size, seed=2)
    put(cluster, data, "/f")
    (block,) = cluster.admin().stat("/f")["blocks"]
    first, second = (cluster.by_addr(a).name for a in block["replicas"])
    (path,) = cluster.block_files(first, block["id"])
    os.truncate(path, size + 8)  # cuts into the CRC table: the chunkserver says `checksum`
    assert checksum_of(cluster, "/f")["checksum"] == f"{crc32c.crc32c(data):08x}"
    (path,) = cluster.block_files(second, block["id"])
    os.truncate(path, size)
    with pytest.raises(dfs.Unavailable, match=f"block {block['id']} of /f"):
        checksum_of(cluster, "/f")


def test_a_replica_whose_crc_table_rotted_is_skipped_by_the_digest(cluster: Cluster) -> None:
    """A flipped bit in a stored CRC table leaves its length right; only the block digest
    that meta recorded at commit tells that replica's table from the committed one."""
    size = 3 * CHECKSUM_UNIT + 5
    data = data_of(size, seed=3)
    put(cluster, data, "/f")
    (block,) = cluster.admin().stat("/f")["blocks"]
    assert "digest" in block  # stat carries each block's committed digest
    cluster.flip_byte(cluster.by_addr(block["replicas"][0]).name, block["id"], size + 1)
    assert checksum_of(cluster, "/f")["checksum"] == f"{crc32c.crc32c(data):08x}"
