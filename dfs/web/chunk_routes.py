"""What a chunkserver's HTTP side door answers: `/` (its own page), `/healthz`, `/metrics`."""

from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..chunk.blockstore import BlockStore
from . import metrics


def routes(store: BlockStore, writing: Callable[[], int], registry: CollectorRegistry,
           page: Callable[[], str]) -> web.RouteTableDef:
    """page(): this server's HTML page (pages.chunk_overview, filled in by the daemon)."""
    registry.register(metrics.ChunkCollector(store, writing))
    table = web.RouteTableDef()

    @table.get("/")
    async def overview(request: web.Request) -> web.Response:
        return web.Response(text=page(), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    @table.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @table.get("/metrics")
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    return table
