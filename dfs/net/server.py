"""The serving end shared by meta and chunkservers: accept, hello, dispatch, reply, shut down.

A service is any object with `handle_<op>(header, payload, conn)` methods; the table is built
once from those names. A handler returns a reply dict, a `(dict, payload)` pair, or a
coroutine producing either; raising a `DFSError` sends that error. The server owns connection
limits, the hello and frame timeouts and per-connection back-pressure; it never interprets ops.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from typing import Any, Awaitable, Callable

from .. import config
from ..errors import (
    BadRequest,
    DFSError,
    ProtocolViolation,
    TooLarge,
    Unauthorized,
    VersionMismatch,
)
from ..protocol import Frame
from ..protocol.buffers import Lease
from .connection import FrameProtocol, Payload
from .logthrottle import LogThrottle
from .security import NO_SECURITY, NONCE_BYTES, Security

log = logging.getLogger(__name__)

Reply = dict[str, Any] | tuple[dict[str, Any], Payload | Lease]
Handler = Callable[[dict[str, Any], memoryview, "ServerConnection"], Reply | Awaitable[Reply]]


class ServerConnection(FrameProtocol):
    def __init__(self, server: "Server") -> None:
        super().__init__()
        self.server = server
        self.helloed = False  # hello (and, with a secret, auth) done: requests are served
        self.hello: dict[str, Any] = {}
        self._nonces: tuple[bytes, bytes] | None = None  # (client's, ours) while challenged
        self.opened = time.monotonic()
        self.frame_started = self.opened  # when the frame now arriving began to arrive
        self.inflight = 0
        self._paused_reading = False
        self._frame: Frame | None = None
        self._detached = False
        self.close_callbacks: list[Callable[[], None]] = []
        self.state: dict[str, Any] = {}  # per-connection state a service keeps (e.g. streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self.server.conns) >= self.server.max_connections:
            log.warning("refusing %s: %d connections open", self.peername, len(self.server.conns))
            self.send({"id": 0, "err": "unavailable", "msg": "too many connections"})
            self.close()
            return
        self.server.conns.add(self)

    def buffer_updated(self, nbytes: int) -> None:
        # A frame's deadline runs from its first byte, not its latest: a peer dripping one
        # byte at a time must not hold a half-received frame (and its buffer) forever.
        was_mid, done = self.reader.mid_frame, self.reader.completed
        super().buffer_updated(nbytes)
        if not was_mid or self.reader.completed != done:
            self.frame_started = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.conns.discard(self)
        callbacks, self.close_callbacks = self.close_callbacks, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("close callback failed")

    def detach_payload(self) -> Frame:
        """Take ownership of the current request's payload buffer (the handler will release
        it when nothing refers to it any more)."""
        assert self._frame is not None
        self._detached = True
        return self._frame

    # requests -----------------------------------------------------------------------
    def frame_received(self, frame: Frame) -> None:
        header = frame.header
        op, rid = header.get("op"), header.get("id")
        if not isinstance(op, str) or not isinstance(rid, int):
            frame.release()
            raise ProtocolViolation("a request needs a string op and an integer id")
        if not self.helloed:
            frame.release()
            self._hello(header, rid)
            return
        handler = self.server.handlers.get(op)
        if handler is None:
            frame.release()
            self.reply_error(rid, BadRequest(f"unknown op {op!r}"))
            return
        self._frame, self._detached = frame, False
        observe = self.server.observe
        started = time.perf_counter() if observe is not None else 0.0
        try:
            result = handler(header, frame.payload, self)
        except DFSError as exc:
            self.reply_error(rid, exc)
            result = None
            if observe is not None:
                observe(op, exc.code, time.perf_counter() - started)
        except Exception as exc:
            self._internal(rid, op, exc)
            result = None
            if observe is not None:
                observe(op, "internal", time.perf_counter() - started)
        finally:
            self._frame = None
            if not self._detached:
                frame.release()
        if result is None:
            return
        if inspect.isawaitable(result):
            self._track(1)
            task = asyncio.ensure_future(result)
            self.server.tasks.add(task)
            task.add_done_callback(lambda t: self._finished(t, rid, op, started))
        else:
            self.reply(rid, result)
            if observe is not None:
                observe(op, "ok", time.perf_counter() - started)

    def _hello(self, header: dict[str, Any], rid: int) -> None:
        """hello, then (when this server has the cluster secret) auth: see docs/SECURITY.md.
        Anything else before that is answered once and the connection closed."""
        security = self.server.security
        if self._nonces is not None:
            self._auth(header, rid, security)
            return
        if header.get("op") != "hello":
            self._refuse(rid, Unauthorized("authenticate first") if security.authenticating
                         else BadRequest("the first request must be hello"))
            return
        version = header.get("version")
        if version != config.PROTOCOL_VERSION:
            self._refuse(rid, VersionMismatch(
                f"peer speaks protocol {version!r}, this {self.server.role} speaks "
                f"{config.PROTOCOL_VERSION}"))
            return
        self.hello = header
        reply: dict[str, Any] = {"version": config.PROTOCOL_VERSION, "role": self.server.role}
        if security.authenticating:
            theirs = header.get("nonce")
            if not isinstance(theirs, bytes) or len(theirs) != NONCE_BYTES:
                self._refuse(rid, Unauthorized(f"this {self.server.role} requires the "
                                               "cluster secret (--secret-file)"))
                return
            ours = security.nonce()
            self._nonces = (theirs, ours)
            reply["challenge"] = ours
            reply["proof"] = security.server_proof(theirs, ours)
        else:
            self.helloed = True
        self.reply(rid, reply)

    def _auth(self, header: dict[str, Any], rid: int, security: Security) -> None:
        assert self._nonces is not None
        if header.get("op") != "auth":
            self._refuse(rid, Unauthorized("authenticate first"))
            return
        try:
            security.check_client(header.get("proof"), *self._nonces)
        except Unauthorized as exc:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            host = str(peer[0]) if isinstance(peer, tuple) else self.peername
            failures = self.server.auth_failures
            if failures.note(host, time.monotonic()):
                log.warning("refusing %s: %s (more failed auth attempts from %s are summed "
                            "up every %g s)", self.peername, exc, host, failures.interval)
            self._refuse(rid, exc)
            return
        self._nonces = None
        self.helloed = True
        self.reply(rid, {})

    def _refuse(self, rid: int, err: DFSError) -> None:
        self.reply_error(rid, err)
        self.close()

    def _finished(self, task: asyncio.Future[Reply], rid: int, op: str,
                  started: float) -> None:
        self.server.tasks.discard(task)
        self._track(-1)
        if task.cancelled():
            if not self.closed:
                self.reply_error(rid, DFSError("request cancelled: server shutting down"))
            return
        exc = task.exception()
        if exc is None:
            self.reply(rid, task.result())
            result = "ok"
        elif isinstance(exc, DFSError):
            self.reply_error(rid, exc)
            result = exc.code
        else:
            self._internal(rid, op, exc)
            result = "internal"
        if self.server.observe is not None:
            self.server.observe(op, result, time.perf_counter() - started)

    def _internal(self, rid: int, op: str, exc: BaseException) -> None:
        log.error("internal error in %s from %s", op, self.peername, exc_info=exc)
        self.reply_error(rid, DFSError(f"{op} failed: {exc.__class__.__name__}: {exc}"))

    def reply(self, rid: int, result: Reply) -> None:
        if self.closed:
            return
        header, payload = result if isinstance(result, tuple) else (result, None)
        try:
            if isinstance(payload, Lease):
                self.send({"id": rid, **header}, payload.view, payload.release)
                return
            self.send({"id": rid, **header}, payload)
        except ValueError as exc:  # our reply broke a frame limit: say so, keep the connection
            log.error("reply to %s is too large: %s", self.peername, exc)
            self.reply_error(rid, TooLarge(f"reply too large: {exc}"))

    def reply_error(self, rid: int, err: DFSError) -> None:
        if not self.closed:
            self.send({"id": rid, **err.to_wire()})

    # back-pressure ------------------------------------------------------------------
    def _track(self, delta: int) -> None:
        self.inflight += delta
        self._update_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._update_reading()

    def _update_reading(self) -> None:
        """Stop reading a peer that has too many requests open or does not read its replies,
        so one connection can never make the server's memory grow without bound."""
        if self.transport is None or self.closed:
            return
        limit = config.MAX_INFLIGHT_PER_CONN
        busy = self.inflight >= limit or self.writing_paused
        if busy and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()
        elif not busy and self._paused_reading and self.inflight < limit // 2:
            self._paused_reading = False
            self.frame_started = time.monotonic()  # our pause does not count against the peer
            self.transport.resume_reading()

    @property
    def paused_reading(self) -> bool:
        return self._paused_reading


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not listening yet: how a daemon claims a port
    before its slow start-up work. Raises OSError (port in use, bad address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Listens on one address for one service."""

    def __init__(self, role: str, host: str, port: int,
                 max_connections: int = config.MAX_CONNECTIONS,
                 security: Security = NO_SECURITY) -> None:
        self.role = role
        self.security = security
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.handlers: dict[str, Handler] = {}
        self.conns: set[ServerConnection] = set()
        self.tasks: set[asyncio.Future[Any]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Called with (op, result code or "ok", seconds) after each request a handler
        # answered: how metrics count and time requests (dfs/web/metrics.py). The op is always
        # one of the service's handlers, so its values are bounded.
        self.observe: Callable[[str, str, float], None] | None = None
        # Failed `auth` attempts: one line per host, then counts (anyone may send them).
        self.auth_failures = LogThrottle(config.auth_log_interval())

    def bind(self) -> None:
        """Claim the address now (so a port in use is reported before any slow start-up
        work) without accepting connections yet: listening means ready."""
        if self._sock is not None:
            return
        sock = bind_socket(self.host, self.port)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]

    async def start(self, service: object) -> None:
        """Start accepting requests for `service`, whose `handle_<op>` methods make the
        dispatch table. Raises OSError (port in use) for the caller to report."""
        self.handlers = {name[len("handle_"):]: getattr(service, name)
                         for name in dir(service) if name.startswith("handle_")}
        self.bind()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self.security.server_ssl is not None:
            tls = {"ssl": self.security.server_ssl,
                   "ssl_handshake_timeout": config.HELLO_TIMEOUT}
        self._server = await loop.create_server(
            lambda: ServerConnection(self), sock=self._sock, backlog=1024, **tls)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        """Close peers that never said hello or left a frame half sent; sum up the failed
        auth attempts held back from the log."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self._log_auth_failures(now)
            for conn in list(self.conns):
                if not conn.helloed and now - conn.opened > config.HELLO_TIMEOUT:
                    log.info("closing %s: no hello (and auth) in %gs", conn.peername,
                             config.HELLO_TIMEOUT)
                    conn.close()
                elif conn.reader.mid_frame and not conn.paused_reading and \
                        now - conn.frame_started > config.FRAME_TIMEOUT:
                    log.info("closing %s: frame incomplete for %gs", conn.peername,
                             config.FRAME_TIMEOUT)
                    conn.close()

    def _log_auth_failures(self, now: float, every: bool = False) -> None:
        for host, count, seconds in self.auth_failures.due(now, every):
            log.warning("%d more failed auth attempts from %s in the last %.0f s", count,
                        host, seconds)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, hang up."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._log_auth_failures(time.monotonic(), every=True)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        await asyncio.sleep(0)
