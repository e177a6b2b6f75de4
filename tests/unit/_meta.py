"""Helpers that drive a MetaService through its handle_<op> methods, with no sockets.

Meta handlers take (header, payload, conn) and return a dict or an awaitable; `conn` is unused
by meta, so None is passed.
"""

from __future__ import annotations

import inspect
from typing import Any

from dfs.meta.journal import JournalStore, MemoryJournal
from dfs.meta.service import MetaService

KiB = 1024
GiB = 1024 * 1024 * 1024
BLOCK = 64 * KiB  # the smallest legal block size keeps the numbers readable


async def call(svc: MetaService, op: str, **header: Any) -> dict[str, Any]:
    result = getattr(svc, f"handle_{op}")(header, memoryview(b""), None)
    if inspect.isawaitable(result):
        result = await result
    return result


async def new_meta(journal: JournalStore | None = None, servers: int = 3,
                   free: int = 100 * GiB, **kwargs: Any) -> MetaService:
    svc = MetaService(journal if journal is not None else MemoryJournal(), "127.0.0.1:5000",
                      cluster_id="cluster-1", **kwargs)
    await svc.start()
    for i in range(servers):
        await register(svc, i, free=free)
    return svc


async def register(svc: MetaService, i: int, free: int = 100 * GiB,
                   blocks: list[list[int]] | None = None) -> dict[str, Any]:
    return await call(svc, "register", chunk_id=f"cs{i}", addr=addr(i), capacity=free,
                      used=0, free=free, blocks=blocks or [])


def digest_of(size: int) -> int:
    """The digest these tests commit for a block of `size` bytes (any u32 will do: no bytes
    are written), so a replica report can match it."""
    return size


def row(block_id: int, gen: int, size: int) -> list[int]:
    """A block report row for a replica of a block committed by `put`."""
    return [block_id, gen, size, digest_of(size)]


def addr(i: int) -> str:
    return f"127.0.0.1:{6001 + i}"


async def put(svc: MetaService, path: str, sizes: list[int], replication: int = 2,
              block_size: int = BLOCK, recover: int | None = None) -> dict[str, Any]:
    """Create, allocate one block per size, commit. With `recover=k`, block k goes through
    one pipeline recovery first (so it is committed at generation 2)."""
    up = (await call(svc, "create", path=path, replication=replication,
                     block_size=block_size))["upload"]
    entries = []
    for k, size in enumerate(sizes):
        b = await call(svc, "add_block", upload=up)
        if k == recover:
            b = await call(svc, "recover_block", upload=up, block=b["block"],
                           exclude=[b["targets"][0]], keep=b["targets"][1:])
        entries.append([b["block"], b["gen"], size, b["targets"], digest_of(size)])
    return await call(svc, "commit", upload=up, blocks=entries)


async def walk(svc: MetaService, path: str = "/") -> dict[str, Any]:
    """Every entry under `path` as stat sees it (replica locations left out: they come from
    chunkservers, not from the journal)."""
    out: dict[str, Any] = {}
    stack = [path]
    while stack:
        p = stack.pop()
        st = await call(svc, "stat", path=p)
        for b in st.get("blocks", []):
            b.pop("replicas")
        if p == "/":
            st.pop("mtime")  # the root's mtime is not journaled
        out[p] = st
        if st["type"] == "dir":
            start_after = ""
            while True:
                page = await call(svc, "ls", path=p, start_after=start_after, limit=7)
                stack += [e["path"] for e in page["entries"]]
                if not page["more"]:
                    break
                start_after = page["entries"][-1]["path"].rsplit("/", 1)[-1]
    return out
