"""The HTTP side door of a dfsd: aiohttp in the daemon's own event loop, on its own port,
never on the data path (clients and chunkservers speak the msgpack protocol).

With a cluster secret every route but the monitoring ones asks for HTTP Basic auth whose
password is the secret (any user name), compared in constant time. With TLS files the side
door serves HTTPS with the daemon's own certificate (no client certificate asked).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket
import ssl
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web

from ..net import Security
from ..net.server import bind_socket

log = logging.getLogger(__name__)

# Monitoring and orchestration probe these without credentials (INTERFACE.md).
OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth(secret: bytes) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not authorized(request, secret):
            raise web.HTTPUnauthorized(
                text="this dfs cluster needs its secret as the password\n",
                headers={"WWW-Authenticate": 'Basic realm="dfs", charset="UTF-8"'})
        return await handler(request)
    return check


def authorized(request: web.Request, secret: bytes) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _user, _, password = decoded.partition(b":")
    return hmac.compare_digest(password, secret)


class HttpServer:
    """One aiohttp site for a dfsd's routes; `start` raises OSError (port in use)."""

    def __init__(self, routes: Iterable[web.AbstractRouteDef], host: str, port: int,
                 security: Security, tls_cert: str | None = None,
                 tls_key: str | None = None) -> None:
        """tls_cert/tls_key: the daemon's own; with them the side door speaks HTTPS. Unlike
        the protocol port it asks no client certificate: a browser has none, and the
        secret (Basic auth) is what admits an operator."""
        self.host, self.port = host, port
        self.security = security
        self.ssl: ssl.SSLContext | None = None
        if security.tls and tls_cert and tls_key:
            self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
            self.ssl.load_cert_chain(tls_cert, tls_key)
        app = web.Application(middlewares=[basic_auth(security.secret)]
                              if security.secret else [])
        app.add_routes(routes)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.sock: socket.socket | None = None

    def bind(self) -> None:
        """Claim the port now, before the daemon's slow start-up work, so a port in use is
        reported at once (as net.Server.bind does). Raises OSError."""
        self.sock = bind_socket(self.host, self.port)

    async def start(self) -> None:
        if self.sock is None:
            self.bind()
        assert self.sock is not None
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock, ssl_context=self.ssl).start()

    async def close(self) -> None:
        await self.runner.cleanup()
