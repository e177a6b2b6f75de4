"""What meta's HTTP side door answers.

/             the overview page; /chunkservers and /browse?path=/DIR (pages.py)
/healthz      200 while the process serves
/readyz       200 once out of safe mode with a live chunkserver, else 503
/metrics      Prometheus text (metrics.py)
/api/status   the object `dfs-cli status --json` prints
/api/fsck     the object `dfs-cli fsck --json` prints (?path=/DIR, default /)
/files/PATH   the file, streamed through the normal client read path (verified, failing over
              between replicas), with Content-Length, Accept-Ranges and single Range requests

A path from a URL is only ever a name in the dfs namespace, validated by meta like any
request's: it never reaches the local file system.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..client.async_client import AsyncClient
from ..errors import BadRequest, DFSError, IsADirectory, NotADirectory, NotFound
from ..meta.namespace import normalise
from . import metrics, pages

if TYPE_CHECKING:
    from ..meta.service import MetaService

_STATUS = {NotFound: 404, NotADirectory: 404, IsADirectory: 400, BadRequest: 400}


def routes(service: "MetaService", client: Callable[[], AsyncClient],
           registry: CollectorRegistry) -> web.RouteTableDef:
    """`client()`: the AsyncClient (to this meta) that /files reads through."""
    registry.register(metrics.MetaCollector(service))
    table = web.RouteTableDef()

    def ask(op: str, **fields: Any) -> dict[str, Any]:
        """A request answered by the service directly, as the protocol would answer it."""
        try:
            reply = getattr(service, f"handle_{op}")(fields, memoryview(b""), None)
        except DFSError as exc:
            raise http_error(exc) from None
        return dict(reply)

    @table.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @table.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        return readiness(service)

    @table.get("/metrics")
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    @table.get("/api/status")
    async def api_status(request: web.Request) -> web.Response:
        return json_response(ask("status"))

    @table.get("/api/fsck")
    async def api_fsck(request: web.Request) -> web.Response:
        return json_response(ask("fsck", path=request.query.get("path", "/")))

    started = time.monotonic()

    def html(text: str) -> web.Response:
        return web.Response(text=text, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    @table.get("/")
    async def overview(request: web.Request) -> web.Response:
        return html(pages.overview(service, started))

    @table.get("/chunkservers")
    async def chunkservers(request: web.Request) -> web.Response:
        return html(pages.chunkservers(service))

    @table.get("/browse")
    async def browse(request: web.Request) -> web.Response:
        try:
            path = normalise(request.query.get("path", "/"))
            return html(pages.browse(service, path, request.query.get("after", "")))
        except DFSError as exc:
            raise http_error(exc) from None

    @table.get("/files/{path:.*}")
    async def files(request: web.Request) -> web.StreamResponse:
        return await download(request, client(), "/" + request.match_info["path"])

    return table


async def download(request: web.Request, client: AsyncClient, path: str) -> web.StreamResponse:
    try:
        reader = await client.open_read(path)
    except DFSError as exc:
        raise http_error(exc) from None
    try:
        size = reader.size
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "Content-Disposition": "attachment; filename*=UTF-8''"
                                          + quote(path.rsplit("/", 1)[-1]),
                   "Last-Modified": email.utils.formatdate(reader.mtime, usegmt=True)}
        status, start, length = 200, 0, size
        if "Range" in request.headers:
            try:
                wanted = request.http_range
            except ValueError:  # malformed, or several ranges: the whole file, as RFC 9110
                wanted = slice(None, None)
            if wanted.start is not None or wanted.stop is not None:
                if wanted.start is not None and wanted.start >= size:
                    raise web.HTTPRequestRangeNotSatisfiable(
                        headers={"Content-Range": f"bytes */{size}"})
                start, length = reader.span(wanted.start, wanted.stop)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        reader.seek(start)
        left = length
        while left > 0:
            data = await reader.read1(left)  # a DFSError here cuts the transfer short
            await response.write(data)
            left -= len(data)
        await response.write_eof()
        return response
    finally:
        await reader.close()


def readiness(service: "MetaService") -> web.Response:
    """/readyz of a meta that serves: 200 once out of safe mode with a live chunkserver."""
    live = sum(1 for cs in service.cluster.servers.values() if cs.shown_state == "live")
    if service.safe_mode:
        return web.Response(status=503, text="not ready: safe mode\n")
    if not live:
        return web.Response(status=503, text="not ready: no live chunkserver\n")
    return web.Response(text=f"ready: {live} live chunkservers\n")


def http_error(exc: DFSError) -> web.HTTPException:
    """404 for a missing path, 400 for a bad or directory path, else 503 (no replica, meta
    busy), with the dfs error's words as the body."""
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 503)
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound}.get(status,
                                                             web.HTTPServiceUnavailable)
    return cls(text=f"{exc}\n")


def json_response(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, indent=2) + "\n",
                        content_type="application/json")
