"""File checksums that do not depend on how a file was cut into blocks (HDFS's COMPOSITE_CRC).

The value is CRC32C of the file's bytes. For a dfs file it is combined from the CRC32Cs the
chunkservers already store, one per 64 KiB unit (`block_crcs`, docs/PROTOCOL.md): a few bytes
per 64 KiB cross the network and no data is read, yet the same bytes stored with any block
size, or sitting in a local file, give the same value. So `dfs-cli checksum` can compare a
copy with its source, or two copies, without downloading either.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

import crc32c

from .. import checksum, config
from ..errors import ChecksumError, DFSError, IsADirectory, Unavailable

if TYPE_CHECKING:
    from .async_client import AsyncClient

ALGORITHM = "COMPOSITE-CRC32C"
CONCURRENCY = 16  # blocks asked for at once: one tiny request each, over pooled connections
LOCAL_READ = 4 * 1024 * 1024


async def file_checksum(client: "AsyncClient", path: str) -> dict[str, Any]:
    """The composite CRC32C of a dfs file, from its replicas' stored CRC tables."""
    info = await client.stat(path)
    if info["type"] != "file":
        raise IsADirectory(info["path"])
    blocks: list[dict[str, Any]] = info.get("blocks") or []
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(block: dict[str, Any]) -> int:
        async with limit:
            return await _block_crc(client, info["path"], block)
    tasks = [asyncio.ensure_future(one(b)) for b in blocks]
    try:
        crcs = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # the first failure decides; do not leave the rest running
            task.cancel()
        raise
    value = checksum.combine_blocks(zip(crcs, (int(b["size"]) for b in blocks), strict=True))
    return {"path": info["path"], "algorithm": ALGORITHM, "checksum": f"{value:08x}",
            "size": info["size"], "blocks": len(blocks)}


async def _block_crc(client: "AsyncClient", path: str, block: dict[str, Any]) -> int:
    """CRC32C of one block, from the first replica whose table is whole (and, when meta
    knows the block's digest, is the committed one). Any error moves to the next replica,
    as the reader does; a short or foreign table counts as a bad replica."""
    errors: list[str] = []
    for addr in block["replicas"]:
        try:
            table = await _table_from(client, addr, block)
            return checksum.crc_of_table(table, int(block["size"]))
        except (ValueError, DFSError) as exc:  # ValueError: a table of the wrong length
            errors.append(f"{addr}: {exc}")
    detail = "; ".join(errors[-4:]) or "no live replica"
    raise Unavailable(f"no replica of block {block['id']} of {path} gave its checksums "
                      f"({detail})")


async def _table_from(client: "AsyncClient", addr: str, block: dict[str, Any]) -> bytes:
    conn = await client.pool.get(addr)
    reply = await conn.call("block_crcs", block=int(block["id"]), gen=block["gen"],
                            token=block.get("token"), timeout=config.READ_TIMEOUT)
    try:
        table = bytes(reply.payload)
    finally:
        reply.release()
    if reply.header.get("size") != block["size"]:
        raise ChecksumError(f"replica has {reply.header.get('size')} bytes, "
                            f"meta says {block['size']}")
    digest = block.get("digest")
    if digest is not None and checksum.digest_of_table(table) != digest:
        raise ChecksumError("replica's checksums are not the committed block's")
    return table


def local_checksum(path: str) -> dict[str, Any]:
    """The same checksum of a local file ("-": standard input), read in 4 MiB pieces. A
    directory is IsADirectory, as in dfs; other OSErrors are the caller's to word."""
    if path == "-":
        value, size = _crc_of(sys.stdin.buffer)
    elif os.path.isdir(path):
        raise IsADirectory(path)
    else:
        with open(path, "rb") as f:
            value, size = _crc_of(f)
    return {"path": path, "algorithm": ALGORITHM, "checksum": f"{value:08x}", "size": size}


def _crc_of(f: BinaryIO) -> tuple[int, int]:
    value = size = 0
    while chunk := f.read(LOCAL_READ):
        value = crc32c.crc32c(chunk, value)
        size += len(chunk)
    return value, size
