"""Files whose block list does not fit in one frame: `stat` pages it, a writer sends it to
`commit` in parts (`commit_part`). Driven through MetaService's handlers, no sockets; each
reply is packed as the server would pack it, to show it fits in a frame."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from dfs import config
from dfs.errors import BadRequest, NotFound, TooLarge, Unavailable
from dfs.meta.service import MetaService
from dfs.net.security import Security

from ._meta import BLOCK, call, digest_of, new_meta

BIG = 20_000  # blocks: past both frame limits (stat ~14,700, commit ~22,000 at 2 replicas)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def fits(reply: dict[str, Any]) -> bool:
    return len(msgpack.packb({"id": 1 << 40, **reply})) <= config.MAX_HEADER


async def allocate(svc: MetaService, path: str, count: int,
                   replication: int = 2) -> tuple[int, list[list[Any]]]:
    """An upload of `count` whole blocks, allocated but not committed: (upload, entries)."""
    up = (await call(svc, "create", path=path, replication=replication,
                     block_size=BLOCK))["upload"]
    entries = []
    for _ in range(count):
        b = await call(svc, "add_block", upload=up)
        entries.append([b["block"], b["gen"], BLOCK, b["targets"], digest_of(BLOCK)])
    return up, entries


async def put_in_parts(svc: MetaService, path: str, count: int, part: int = 5_000,
                       last: int = BLOCK) -> list[list[Any]]:
    """A file of `count` blocks committed as commit_part pieces of `part` blocks and a final
    commit listing the rest (its last block `last` bytes long)."""
    up, entries = await allocate(svc, path, count)
    entries[-1][2] = last
    sent = 0
    while count - sent > part:
        reply = await call(svc, "commit_part", upload=up, block_start=sent,
                           blocks=entries[sent:sent + part])
        sent += part
        assert reply == {"recorded": sent}
    await call(svc, "commit", upload=up, block_start=sent, blocks=entries[sent:])
    return entries


async def pages(svc: MetaService, path: str, **fields: Any) -> list[dict[str, Any]]:
    out = []
    start = 0
    while True:
        page = await call(svc, "stat", path=path, block_start=start, **fields)
        assert fits(page)
        out.append(page)
        start += len(page["blocks"])
        if not page["blocks_more"]:
            return out


def test_stat_pages_a_long_block_list_and_refuses_it_whole() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        entries = await put_in_parts(svc, "/big", BIG, last=10)
        got = await pages(svc, "/big")
        assert len(got) > 1 and all(p["block_count"] == BIG for p in got)
        assert {p["first_block"] for p in got} == {str(entries[0][0])}
        assert [p["blocks_more"] for p in got] == [True] * (len(got) - 1) + [False]
        blocks = [b for p in got for b in p["blocks"]]
        assert [b["id"] for b in blocks] == [str(e[0]) for e in entries]
        assert [b["size"] for b in blocks] == [BLOCK] * (BIG - 1) + [10]
        assert all(len(b["replicas"]) == 2 for b in blocks)
        assert got[0]["size"] == (BIG - 1) * BLOCK + 10
        # A request that does not page (a client of before paging) cannot have them all.
        with pytest.raises(TooLarge, match="block_start"):
            await call(svc, "stat", path="/big")
        # Without blocks, as ever.
        bare = await call(svc, "stat", path="/big", blocks=False)
        assert "blocks" not in bare and "block_count" not in bare
        # A page asked for in the middle, with a limit; past the end: empty, no more.
        mid = await call(svc, "stat", path="/big", block_start=BIG - 3, block_limit=2)
        assert [b["id"] for b in mid["blocks"]] == [str(e[0]) for e in entries[-3:-1]]
        assert mid["blocks_more"] is True
        end = await call(svc, "stat", path="/big", block_start=BIG + 5)
        assert end["blocks"] == [] and end["blocks_more"] is False
        await svc.stop()

    run(main())


def test_a_page_fits_with_tokens_and_many_long_addresses() -> None:
    async def main() -> None:
        secure = Security(b"0123456789abcdef0123456789abcdef")
        svc = await new_meta(servers=0, security=secure)
        for i in range(4):  # addresses far longer than usual
            name = f"chunkserver-{i}." + "rack-b.datacenter-west.example.org" * 3
            await call(svc, "register", chunk_id=f"cs{i}", addr=f"{name}:6001",
                       capacity=1 << 40, used=0, free=1 << 40, blocks=[])
        up, entries = await allocate(svc, "/wide", 3_000, replication=4)
        await call(svc, "commit_part", upload=up, block_start=0, blocks=entries[:2_000])
        await call(svc, "commit", upload=up, block_start=2_000, blocks=entries[2_000:])
        got = await pages(svc, "/wide")
        assert len(got) > 1 and sum(len(p["blocks"]) for p in got) == 3_000
        assert all(b["token"] for p in got for b in p["blocks"])
        await svc.stop()

    run(main())


def test_stat_without_paging_still_returns_whatever_fits() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        entries = await put_in_parts(svc, "/f", 11_000, last=7)
        # ~91 bytes a block: 11,000 blocks are one reply, as before paging existed.
        whole = await call(svc, "stat", path="/f")
        assert fits(whole) and len(whole["blocks"]) == 11_000
        assert not {"block_count", "blocks_more", "first_block"} & set(whole)
        assert [b["id"] for b in whole["blocks"]] == [str(e[0]) for e in entries]
        # A small file pages in one: all its blocks, nothing more to come.
        await put_in_parts(svc, "/small", 3)
        page = await call(svc, "stat", path="/small", block_start=0)
        assert len(page["blocks"]) == 3 and page["blocks_more"] is False
        assert page["block_count"] == 3
        assert {k: v for k, v in page.items()
                if k not in ("block_count", "blocks_more", "first_block")} == \
            await call(svc, "stat", path="/small")
        # An empty file: no blocks, no first block.
        up = (await call(svc, "create", path="/empty", block_size=BLOCK))["upload"]
        await call(svc, "commit", upload=up, blocks=[])
        page = await call(svc, "stat", path="/empty", block_start=0)
        assert page["blocks"] == [] and page["block_count"] == 0 and "first_block" not in page
        for bad in ({"block_start": -1}, {"block_start": "0"}, {"block_limit": 0},
                    {"block_limit": 1.5}):
            with pytest.raises(BadRequest):
                await call(svc, "stat", path="/small", **bad)
        capped = await call(svc, "stat", path="/f", block_limit=10 ** 9)
        assert len(capped["blocks"]) <= config.MAX_BLOCK_PAGE and capped["blocks_more"]
        await svc.stop()

    run(main())


def test_commit_parts_are_checked_like_a_commit() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        up, entries = await allocate(svc, "/p", 10)
        entries[-1][2] = 100
        # A part for an upload meta does not know.
        with pytest.raises(Unavailable):
            await call(svc, "commit_part", upload=up + 1, block_start=0, blocks=entries[:2])
        # Out of order: the first part must start at block 0.
        with pytest.raises(BadRequest, match="out of order"):
            await call(svc, "commit_part", upload=up, block_start=2, blocks=entries[2:4])
        for bad in ([], "x", [entries[0], entries[0]],  # empty, not a list, a duplicate
                    [entries[0], entries[-1]],  # a short block inside a part
                    [[entries[0][0], 2] + entries[0][2:]],  # a stale generation
                    [entries[0][:4]]):  # four fields
            with pytest.raises(BadRequest):
                await call(svc, "commit_part", upload=up, block_start=0, blocks=bad)
        with pytest.raises(BadRequest):
            await call(svc, "commit_part", upload=up, blocks=entries[:2])  # no block_start
        assert (await call(svc, "commit_part", upload=up, block_start=0,
                           blocks=entries[:4]))["recorded"] == 4
        # Sent again after a lost reply: answered as before, nothing added.
        assert (await call(svc, "commit_part", upload=up, block_start=0,
                           blocks=entries[:4]))["recorded"] == 4
        assert (await call(svc, "commit_part", upload=up, block_start=2,
                           blocks=entries[2:4]))["recorded"] == 4
        # The same start with other blocks is no re-send: out of order.
        with pytest.raises(BadRequest, match="out of order"):
            await call(svc, "commit_part", upload=up, block_start=2, blocks=entries[4:6])
        # A block listed by an earlier part, again in a later part or in the commit.
        with pytest.raises(BadRequest, match="twice"):
            await call(svc, "commit_part", upload=up, block_start=4,
                       blocks=[entries[4], entries[1]])
        with pytest.raises(BadRequest, match="twice"):
            await call(svc, "commit", upload=up, block_start=4, blocks=[entries[1]])
        # A block a part recorded cannot be rewritten under a new generation.
        with pytest.raises(BadRequest, match="commit_part"):
            await call(svc, "recover_block", upload=up, block=entries[1][0], exclude=[],
                       keep=entries[1][3])
        # The commit must say where the parts ended.
        for start in (0, 3, 5):
            with pytest.raises(BadRequest, match="starts at block"):
                await call(svc, "commit", upload=up, block_start=start, blocks=entries[4:])
        # Nothing is visible before the commit.
        with pytest.raises(NotFound):
            await call(svc, "stat", path="/p")
        assert (await call(svc, "commit_part", upload=up, block_start=4,
                           blocks=entries[4:8]))["recorded"] == 8
        reply = await call(svc, "commit", upload=up, block_start=8, blocks=entries[8:])
        st = await call(svc, "stat", path="/p")
        assert [b["id"] for b in st["blocks"]] == [str(e[0]) for e in entries]
        assert st["size"] == 9 * BLOCK + 100
        # The commit sent again after a lost reply: the same answer.
        again = await call(svc, "commit", upload=up, block_start=8, blocks=entries[8:])
        assert again == {**reply, "under_replicated": []}
        with pytest.raises(Unavailable):  # the upload is gone: parts of it too
            await call(svc, "commit_part", upload=up, block_start=8, blocks=entries[8:])
        await svc.stop()

    run(main())


def test_parts_of_an_aborted_upload_vanish_and_the_commit_may_list_nothing_more() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        up, entries = await allocate(svc, "/a", 4)
        await call(svc, "commit_part", upload=up, block_start=0, blocks=entries)
        await call(svc, "abort", upload=up)
        with pytest.raises(Unavailable):
            await call(svc, "commit", upload=up, block_start=4, blocks=[])
        with pytest.raises(NotFound):
            await call(svc, "stat", path="/a")
        # Every block sent in parts (all whole): the commit lists none.
        up, entries = await allocate(svc, "/b", 4)
        await call(svc, "commit_part", upload=up, block_start=0, blocks=entries)
        await call(svc, "commit", upload=up, block_start=4, blocks=[])
        assert (await call(svc, "stat", path="/b"))["size"] == 4 * BLOCK
        await svc.stop()

    run(main())


def test_the_commit_reply_of_a_huge_under_replicated_file_fits() -> None:
    async def main() -> None:
        svc = await new_meta(servers=1)  # replication 2 on one server: every block short
        up, entries = await allocate(svc, "/under", 12_000)
        await call(svc, "commit_part", upload=up, block_start=0, blocks=entries[:6_000])
        reply = await call(svc, "commit", upload=up, block_start=6_000, blocks=entries[6_000:])
        assert fits(reply) and reply["under_replicated_count"] == 12_000
        assert len(reply["under_replicated"]) < 12_000
        await svc.stop()

    run(main())
