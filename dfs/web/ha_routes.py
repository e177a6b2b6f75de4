"""What an HA meta's HTTP side door answers (dfs/ha/run.py).

/healthz      200 while the process serves (active or standby)
/readyz       200 on the active meta once out of safe mode with a live chunkserver; 503 on a
              standby (a load balancer in front of the metas sends users to the active)
/metrics      Prometheus text: requests, dfs_ha_is_active, dfs_ha_term, dfs_ha_failovers_total,
              and the namespace gauges while active
/api/status   the object `dfs-cli status --json` prints, with its `ha` section
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from . import metrics
from .meta_routes import json_response


def routes(node: Any, registry: CollectorRegistry) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @table.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        service = node.service
        if service is None or not node.confident():
            leader = f"; the active one is {node.leader}" if node.leader else ""
            return web.Response(status=503, text=f"not ready: a standby meta{leader}\n")
        if service.safe_mode:
            return web.Response(status=503, text="not ready: safe mode\n")
        live = sum(1 for cs in service.cluster.servers.values() if cs.shown_state == "live")
        if not live:
            return web.Response(status=503, text="not ready: no live chunkserver\n")
        return web.Response(text=f"ready: {live} live chunkservers\n")

    @table.get("/metrics")
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    @table.get("/api/status")
    async def api_status(request: web.Request) -> web.Response:
        return json_response(dict(node.handle_status({}, memoryview(b""), None)))

    return table
