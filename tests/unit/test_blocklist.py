"""The client's paged block list (dfs/client/blocklist.py) against a fake meta: pages loaded as
the reader reaches them, a few held at once, a file replaced between pages caught, a meta that
cannot answer for a moment waited for, and `stat` assembling every page."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dfs.client import blocklist
from dfs.client.blocklist import BlockList, identity, whole
from dfs.errors import NotFound, Unavailable


class FakeMeta:
    """Answers `stat_page` as meta does, from a file of `count` blocks with ids base+i."""

    def __init__(self, count: int, page: int = 10, base: int = 1000) -> None:
        self.page = page
        self.asked: list[int] = []
        self.fail: list[Exception] = []  # raised, one per request, before answering
        self.set(count, base)

    def set(self, count: int, base: int) -> None:
        self.blocks = [{"id": str(base + i), "gen": 1, "size": 10, "replicas": ["a:1"]}
                       for i in range(count)]

    async def stat_page(self, path: str, block_start: int = 0,
                        block_limit: int | None = None) -> dict[str, Any]:
        self.asked.append(block_start)
        if self.fail:
            raise self.fail.pop(0)
        if self.blocks is None:
            raise NotFound(path)
        n = min(self.page, block_limit or self.page)
        page = self.blocks[block_start:block_start + n]
        out = {"path": path, "type": "file", "size": 10 * len(self.blocks), "blocks": page,
               "block_count": len(self.blocks),
               "blocks_more": block_start + len(page) < len(self.blocks)}
        if self.blocks:
            out["first_block"] = self.blocks[0]["id"]
        return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_pages_load_as_needed_and_a_few_are_held() -> None:
    async def main() -> None:
        meta = FakeMeta(100)
        blocks = BlockList(meta, "/f", await meta.stat_page("/f"))  # type: ignore[arg-type]
        assert (blocks.count, blocks.first) == (100, "1000")
        assert (await blocks.get(3))["id"] == "1003" and meta.asked == [0]
        assert blocks.cached(57) is None
        assert (await blocks.get(57))["id"] == "1057" and meta.asked == [0, 57]
        assert (await blocks.get(66))["id"] == "1066" and meta.asked == [0, 57]  # same page
        for start in (70, 80, 90):
            await blocks.get(start)
        assert blocks.cached(3) is None and blocks.cached(95) is not None  # the oldest went
        # Read-ahead asking for the blocks of one page at once: one request.
        meta.asked.clear()
        got = await asyncio.gather(*(blocks.get(i) for i in range(20, 30)))
        assert [g["id"] for g in got] == [str(1020 + i) for i in range(10)]
        assert meta.asked == [20]
        with pytest.raises(IndexError):
            await blocks.get(100)

    run(main())


def test_a_file_replaced_or_removed_between_pages_fails_the_read() -> None:
    async def main() -> None:
        for change in ("ids", "count", "removed"):
            meta = FakeMeta(30)
            blocks = BlockList(meta, "/f", await meta.stat_page("/f"))  # type: ignore[arg-type]
            if change == "ids":
                meta.set(30, 5000)  # as long, other blocks: a new version
            elif change == "count":
                meta.set(31, 1000)
            else:
                meta.blocks = None  # type: ignore[assignment]
            with pytest.raises(Unavailable, match="replaced or removed"):
                await blocks.get(15)
            assert await blocks.refresh(2) is None
            assert (await blocks.get(2))["id"] == "1002"  # a held page still serves

    run(main())


def test_a_meta_that_cannot_answer_for_a_moment_is_waited_for(monkeypatch: Any) -> None:
    monkeypatch.setattr(blocklist, "RETRY_DELAYS", (0.0, 0.0, None))

    async def main() -> None:
        meta = FakeMeta(30)
        blocks = BlockList(meta, "/f", await meta.stat_page("/f"))  # type: ignore[arg-type]
        meta.fail = [Unavailable("meta restarting"), Unavailable("meta restarting")]
        assert (await blocks.get(25))["id"] == "1025"
        meta.fail = [Unavailable("meta restarting")] * 3
        with pytest.raises(Unavailable, match="restarting"):
            await blocks.get(12)
        # refresh: fresh locations of the block and those after it, the held copy replaced
        meta.blocks[4]["replicas"] = ["b:2"]
        assert (await blocks.refresh(4))["replicas"] == ["b:2"]  # type: ignore[index]
        assert blocks.cached(4)["replicas"] == ["b:2"]  # type: ignore[index]

    run(main())


def test_whole_assembles_every_page_and_starts_over_after_a_replacement() -> None:
    async def main() -> None:
        meta = FakeMeta(35)
        info = await whole(meta, "/f")  # type: ignore[arg-type]
        assert [b["id"] for b in info["blocks"]] == [str(1000 + i) for i in range(35)]
        assert not {"block_count", "blocks_more", "first_block"} & set(info)
        assert meta.asked == [0, 10, 20, 30]
        # Replaced after the first page: asked for again from the start, whole and new.
        real = meta.stat_page
        calls = 0

        async def replacing(path: str, block_start: int = 0,
                            block_limit: int | None = None) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls == 2:
                meta.set(25, 7000)
            return await real(path, block_start, block_limit)
        meta.stat_page = replacing  # type: ignore[method-assign]
        info = await whole(meta, "/f")  # type: ignore[arg-type]
        assert [b["id"] for b in info["blocks"]] == [str(7000 + i) for i in range(25)]
        assert identity({"blocks": info["blocks"]}) == (25, "7000")
        meta.stat_page = real  # type: ignore[method-assign]
        meta.set(0, 0)
        assert (await whole(meta, "/f"))["blocks"] == []  # type: ignore[arg-type]

    run(main())
