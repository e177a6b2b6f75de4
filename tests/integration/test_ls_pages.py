"""`ls` of a directory that takes many pages: the client asks for the next page before it
turns the current one into rows, and the listing is the same, in the same order, as one
page would give."""

from __future__ import annotations

import asyncio

import pytest
from cluster import Cluster

import dfs
from dfs import config


def test_a_listing_in_many_pages_equals_the_one_page_listing(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with dfs.AsyncClient(cluster.meta_addr) as c:
            await c.mkdir("/d")
            await asyncio.gather(*(c.put_bytes(b"x" * i, f"/d/f{i:03d}") for i in range(40)))
            for i in range(5):
                await c.mkdir(f"/d/sub{i}/x", parents=True)
            await c.symlink("../elsewhere", "/d/link")
            whole = await c.ls("/d")
            assert len(whole) == 46
            assert [e["path"] for e in whole] == sorted(e["path"] for e in whole)
            assert {e["type"] for e in whole} == {"file", "dir", "symlink"}
            monkeypatch.setattr(config, "MAX_LS_PAGE", 7)  # 7 pages, several in flight
            assert await c.ls("/d") == whole
            monkeypatch.setattr(config, "MAX_LS_PAGE", 1)
            assert await c.ls("/d") == whole
            assert await c.ls("/d/f001") == [await c.stat("/d/f001", blocks=False)]
            with pytest.raises(dfs.NotFound):
                await c.ls("/nowhere")

    asyncio.run(main())
