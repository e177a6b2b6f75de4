"""What a chunkserver's HTTP side door answers: `/healthz` and `/metrics`."""

from __future__ import annotations

from typing import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..chunk.blockstore import BlockStore
from . import metrics


def routes(store: BlockStore, writing: Callable[[], int],
           registry: CollectorRegistry) -> web.RouteTableDef:
    registry.register(metrics.ChunkCollector(store, writing))
    table = web.RouteTableDef()

    @table.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @table.get("/metrics")
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    return table
