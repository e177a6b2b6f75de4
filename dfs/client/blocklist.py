"""A file's block list as a reader sees it: loaded from meta a page at a time (`stat` with
`block_start`) as the reader reaches each page. Opening a file of 20,000 blocks costs one
request whose reply fits in a frame, and the reader holds a few pages whatever the file's size.

Owns the pages it loaded; never reads block bytes (reader.py does). A file's block list never
changes once published and block ids are never reused, so every page is checked against the
version the reader opened (its block count and first block id): a file replaced or removed
meanwhile fails the read instead of mixing two versions.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .. import config
from ..errors import DFSError, NotFound, Unavailable

if TYPE_CHECKING:
    from .async_client import AsyncClient

KEEP_PAGES = 4  # pages held at once: the one read now, and those random reads touched last
PAGE_LIMIT: int | None = None  # blocks asked for per page (None: as many as meta sends)
# Pauses before asking meta again for a page it could not give (restarting, failing over).
RETRY_DELAYS: tuple[float | None, ...] = (*config.READ_RETRY_DELAYS, None)

Entry = dict[str, Any]  # a block of a `stat` reply: id, gen, size, replicas, digest, token


def identity(info: dict[str, Any]) -> tuple[int, str | None]:
    """(block count, first block id) of a stat reply, paged or not (a meta of before
    paging sends every block and neither field)."""
    blocks = info.get("blocks") or []
    first = info.get("first_block", blocks[0]["id"] if blocks else None)
    return int(info.get("block_count", len(blocks))), first


class BlockList:
    """The blocks of one version of a file, by index; `info` is the stat reply the file was
    opened with (its first page, or every block)."""

    def __init__(self, client: "AsyncClient", path: str, info: dict[str, Any]) -> None:
        self.client, self.path = client, path
        self.count, self.first = identity(info)
        blocks: list[Entry] = info.get("blocks") or []
        self._pages: OrderedDict[int, list[Entry]] = OrderedDict()  # start -> entries
        if blocks:
            self._pages[0] = blocks
        self._lock = asyncio.Lock()  # one page load at a time: read-ahead waits for it

    def __len__(self) -> int:
        return self.count

    def cached(self, bi: int) -> Entry | None:
        """Block `bi` if a held page has it."""
        for start, page in self._pages.items():
            if start <= bi < start + len(page):
                return page[bi - start]
        return None

    async def get(self, bi: int) -> Entry:
        """Block `bi`, loading its page from meta if no held page has it."""
        if not 0 <= bi < self.count:
            raise IndexError(f"block {bi} of {self.path}, which has {self.count}")
        entry = self._touch(bi)
        if entry is not None:
            return entry
        async with self._lock:
            entry = self._touch(bi)  # another task may have loaded it meanwhile
            if entry is None:
                entry = self._hold(bi, await self._load(bi))
        return entry

    async def refresh(self, bi: int) -> Entry | None:
        """Block `bi` as meta lists it now (fresh replicas and tokens), with the blocks that
        follow it; None if the file was replaced or removed. Errors are meta's (it may be
        restarting: the caller tries the replicas it knows again)."""
        async with self._lock:
            page = await self._ask(bi)
            if page is None:
                return None
            for start in [s for s, p in self._pages.items() if s <= bi < s + len(p)]:
                del self._pages[start]
            return self._hold(bi, page)

    def _touch(self, bi: int) -> Entry | None:
        for start, page in self._pages.items():
            if start <= bi < start + len(page):
                self._pages.move_to_end(start)
                return page[bi - start]
        return None

    def _hold(self, start: int, page: list[Entry]) -> Entry:
        self._pages[start] = page
        while len(self._pages) > KEEP_PAGES:
            self._pages.popitem(last=False)
        return page[0]

    async def _load(self, start: int) -> list[Entry]:
        """The page from `start`, asking meta again (with pauses) while it cannot answer."""
        for delay in RETRY_DELAYS:
            try:
                page = await self._ask(start)
            except DFSError:
                if delay is None:
                    raise
            else:
                if page is None:
                    raise self._replaced()
                return page
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _ask(self, start: int) -> list[Entry] | None:
        """The page from `start`; None if the file is no longer the version opened."""
        try:
            info = await self.client.stat_page(self.path, start, PAGE_LIMIT)
        except NotFound:
            return None
        if info.get("type") != "file" or identity(info) != (self.count, self.first):
            return None
        blocks: list[Entry] = info["blocks"]
        if "block_count" not in info:  # a meta of before paging: it sent every block
            blocks = blocks[start:]
        if not blocks:
            raise Unavailable(f"meta listed no block {start} of {self.path}")
        return blocks

    def _replaced(self) -> Unavailable:
        return Unavailable(f"{self.path} was replaced or removed while being read")


async def whole(client: "AsyncClient", path: str, tries: int = 3) -> dict[str, Any]:
    """A stat entry with every block of the file (the shape `dfs-cli stat --json` prints),
    asked for a page at a time. A file replaced between two pages is asked for again from
    the start (up to `tries` times; then Unavailable)."""
    for _ in range(tries):
        info = await client.stat_page(path, 0, PAGE_LIMIT)
        if "block_count" not in info:  # a directory, a link, or a meta of before paging
            return info
        version = identity(info)
        blocks: list[Entry] = info["blocks"]
        while info.get("blocks_more") and info["blocks"]:
            try:
                info = await client.stat_page(path, len(blocks), PAGE_LIMIT)
            except NotFound:
                break
            if identity(info) != version:
                break
            blocks += info["blocks"]
        else:
            if len(blocks) == version[0]:
                for key in ("block_count", "blocks_more", "first_block"):
                    info.pop(key, None)
                info["blocks"] = blocks
                return info
    raise Unavailable(f"{path} was replaced {tries} times while its block list was read")
