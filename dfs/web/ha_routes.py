"""What an HA meta's HTTP side door answers (dfs/ha/run.py).

/healthz      200 while the process serves (active or standby)
/readyz       200 on the active meta once out of safe mode with a live chunkserver; 503 on a
              standby (a load balancer in front of the metas sends users to the active)
/metrics      Prometheus text: requests, dfs_ha_is_active, dfs_ha_term, dfs_ha_failovers_total,
              and the namespace gauges while active
/api/status   the object `dfs-cli status --json` prints, with its `ha` section
/, /chunkservers, /browse, /api/fsck, /files/PATH
              the single meta's pages and downloads (meta_routes.py), served by the active
              meta; a standby answers them 503, naming the active one
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..errors import NotLeader
from . import meta_routes, metrics
from .meta_routes import json_response

OWN = {"/healthz", "/readyz", "/metrics", "/api/status"}  # answered by every role, below


class ActiveService:
    """The active MetaService, whichever it is now: what the single meta's pages read."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def __getattr__(self, name: str) -> Any:
        service = self._node.service
        if service is None:
            raise NotLeader("a standby meta", leader=self._node.leader)
        return getattr(service, name)


def routes(node: Any, registry: CollectorRegistry,
           client: Callable[[], Any]) -> list[web.AbstractRouteDef]:
    """`client()`: the AsyncClient /files reads through (to this meta)."""
    table = web.RouteTableDef()

    def active_only(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            if node.service is None or not node.confident():
                leader = f"; the active one is {node.leader}" if node.leader else ""
                return web.Response(status=503, text=f"a standby meta{leader}\n")
            return await handler(request)
        return serve

    @table.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @table.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        service = node.service
        if service is None or not node.confident():
            leader = f"; the active one is {node.leader}" if node.leader else ""
            return web.Response(status=503, text=f"not ready: a standby meta{leader}\n")
        return meta_routes.readiness(service)

    @table.get("/metrics")
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    @table.get("/api/status")
    async def api_status(request: web.Request) -> web.Response:
        return json_response(dict(node.handle_status({}, memoryview(b""), None)))

    # The pages: built once against whichever service is active (their collector goes to a
    # registry nobody scrapes: /metrics above has the HA one).
    pages = meta_routes.routes(ActiveService(node), client, CollectorRegistry())  # type: ignore[arg-type]
    out: list[web.AbstractRouteDef] = list(table)
    for rd in pages:
        if isinstance(rd, web.RouteDef) and rd.path not in OWN:
            out.append(web.RouteDef(rd.method, rd.path, active_only(rd.handler), rd.kwargs))
    return out
