"""One framed connection over asyncio, and the client end of the request/reply shape.

`FrameProtocol` glues `protocol.FrameReader` to a transport (BufferedProtocol: bulk bytes are
received straight into pooled buffers). `Connection` is the one request shape every client of
every role uses: register a waiter under a fresh id -> write -> await with a timeout -> map an
error reply to its `DFSError` through `errors.from_wire`.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from .. import config
from ..config import format_addr
from ..errors import (
    DFSError,
    ProtocolViolation,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    from_wire,
)
from ..protocol import Frame, FrameReader, encode_header
from .security import NO_SECURITY, Security

log = logging.getLogger(__name__)

Payload = bytes | bytearray | memoryview
T = TypeVar("T")


class FrameProtocol(asyncio.BufferedProtocol):
    """Transport glue shared by both ends. Subclasses implement `frame_received`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.closed = False
        self._paused_writing = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.peername = "?"
        # Bytes ever handed to the transport, and (end, hook) of payloads whose sender wants
        # to know when the transport no longer holds them (see send).
        self._queued = 0
        self._sent_hooks: deque[tuple[int, Callable[[], None]]] = deque()

    # asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peername = format_addr(peer[0], peer[1])

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return  # we already hung up; whatever else arrives is ignored
        try:
            self.reader.buffer_updated(nbytes)
        except ProtocolViolation as exc:
            for frame in self.reader.pop_frames():
                self._deliver(frame)
            self.protocol_violation(exc)
            return
        for frame in self.reader.pop_frames():
            if self.closed:
                break
            self._deliver(frame)
        if self._sent_hooks:
            self._run_sent_hooks()

    def _deliver(self, frame: Frame) -> None:
        try:
            self.frame_received(frame)
        except ProtocolViolation as exc:
            self.protocol_violation(exc)
        except Exception:  # a bug of ours must not take the whole process down
            log.exception("error handling a frame from %s", self.peername)
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._sent_hooks.clear()  # never called: the garbage collector frees those buffers
        self._wake_drainers(Unavailable(f"connection to {self.peername} lost"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_drainers(None)
        if self._sent_hooks:
            self._run_sent_hooks()

    # hooks --------------------------------------------------------------------------
    def frame_received(self, frame: Frame) -> None:
        raise NotImplementedError  # abstract

    def protocol_violation(self, exc: ProtocolViolation) -> None:
        """The peer sent broken bytes: tell it once, then hang up."""
        log.warning("closing %s: %s", self.peername, exc)
        if not self.closed:
            self.send({"id": 0, "err": exc.code, "msg": str(exc)})
        self.close()

    # writing ------------------------------------------------------------------------
    def send(self, header: dict[str, Any], payload: Payload | None = None,
             on_sent: Callable[[], None] | None = None) -> None:
        """Write one frame. `on_sent` (plain TCP only, see `tracks_sent`) is called once the
        transport has handed every byte of the payload to the kernel and so holds no
        reference to it: the payload's buffer may then be reused. It is called at the next
        send, incoming data or resume of writing on this connection after that (or never, if
        the connection is lost first)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise Unavailable(f"connection to {self.peername} is closed")
        n = len(payload) if payload is not None else 0
        prefix = encode_header(header, n)
        if n:
            assert payload is not None
            self.transport.writelines((prefix, payload))
        else:
            self.transport.write(prefix)
        self._queued += len(prefix) + n
        if on_sent is not None:
            self._sent_hooks.append((self._queued, on_sent))
        if self._sent_hooks:
            self._run_sent_hooks()

    @property
    def tracks_sent(self) -> bool:
        """Whether `send(on_sent=...)` can tell when a payload has left: on plain TCP the
        transport's write buffer counts our own bytes; under TLS it counts ciphertext."""
        return self.transport is not None and \
            self.transport.get_extra_info("ssl_object") is None

    def _run_sent_hooks(self) -> None:
        assert self.transport is not None
        flushed = self._queued - self.transport.get_write_buffer_size()
        hooks = self._sent_hooks
        while hooks and hooks[0][0] <= flushed:
            hooks.popleft()[1]()

    @property
    def write_idle(self) -> bool:
        """True when every byte handed to the transport has gone to the kernel, so no
        payload buffer is still referenced by it."""
        return self.transport is None or self.transport.get_write_buffer_size() == 0

    @property
    def writing_paused(self) -> bool:
        return self._paused_writing

    async def drain(self) -> None:
        if self.closed:
            raise Unavailable(f"connection to {self.peername} lost")
        if not self._paused_writing:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    def _wake_drainers(self, exc: Exception | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True


class ClientProtocol(FrameProtocol):
    """The requesting end: replies are matched to waiters by id."""

    def __init__(self, addr: str) -> None:
        super().__init__()
        self.peername = addr
        self.waiters: dict[int, asyncio.Future[Frame]] = {}
        self.frames = 0  # frames received so far (see Checkout.died_idle)

    def frame_received(self, frame: Frame) -> None:
        self.frames += 1
        rid = frame.header.get("id")
        fut = self.waiters.pop(rid, None) if isinstance(rid, int) else None
        if fut is None:
            if rid == 0 and "err" in frame.header:  # the peer is hanging up on us
                self._fail_all(from_wire(frame.header))
                self.close()
            frame.release()
            return
        if not fut.done():
            fut.set_result(frame)
        else:
            frame.release()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fail_all(Unavailable(f"connection to {self.peername} lost"))

    def _fail_all(self, err: DFSError) -> None:
        waiters, self.waiters = self.waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(err)


class Connection:
    """A client connection to one dfsd, many requests in flight. Safe to share among tasks."""

    def __init__(self, addr: str, protocol: ClientProtocol) -> None:
        self.addr = addr
        self.protocol = protocol
        self._ids = itertools.count(1)
        self.server_info: dict[str, Any] = {}

    @classmethod
    async def open(cls, addr: str, *, role: str = "client",
                   timeout: float = config.CONNECT_TIMEOUT,
                   security: Security = NO_SECURITY, **hello: Any) -> "Connection":
        try:
            host, port = config.parse_addr(addr)
        except ValueError as exc:
            raise Unavailable(f"cannot connect to {addr!r}: {exc}", bad=addr) from None
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if security.client_ssl is not None:
            tls = {"ssl": security.client_ssl, "ssl_handshake_timeout": timeout}
        try:
            _, proto = await within(
                loop.create_connection(lambda: ClientProtocol(addr), host, port, **tls),
                timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"connecting to {addr} timed out") from None
        except ssl.SSLError as exc:
            raise Unauthorized(f"TLS handshake with {addr} failed: "
                               f"{exc.reason or exc}") from None
        except OSError as exc:
            raise Unavailable(f"cannot connect to {addr}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a host IDNA cannot encode, or with a NUL: no such host
            raise Unavailable(f"cannot connect to {addr!r}: {exc}", bad=addr) from None
        conn = cls(addr, proto)
        try:
            await conn._hello(role, timeout, security, hello)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _hello(self, role: str, timeout: float, security: Security,
                     fields: dict[str, Any]) -> None:
        """hello, and with a secret the challenge-response (docs/SECURITY.md): both ends
        prove they know the cluster secret without sending it."""
        mine = security.nonce() if security.authenticating else None
        if mine is not None:
            fields = {**fields, "nonce": mine}
        try:
            reply = await self.call("hello", version=config.PROTOCOL_VERSION, role=role,
                                    timeout=timeout, **fields)
        except Unavailable:
            if security.client_ssl is None:
                raise
            # TLS 1.3: our handshake completes before the server has checked our certificate;
            # its refusal arrives as a dropped connection instead of the hello reply.
            raise Unauthorized(f"{self.addr} closed the connection during the TLS hello: it "
                               "probably refused our certificate (not signed by the "
                               "cluster's CA?)") from None
        info = reply.header
        reply.release()
        theirs = info.get("challenge")
        if mine is None:
            if theirs is not None:
                raise Unauthorized(f"{self.addr} requires the cluster secret "
                                   "(--secret-file or $DFS_SECRET_FILE)")
        else:
            if not isinstance(theirs, bytes):
                raise Unauthorized(f"{self.addr} does not authenticate: it runs without the "
                                   "cluster secret")
            proof = info.get("proof")
            if not isinstance(proof, bytes) or \
                    not hmac.compare_digest(proof, security.server_proof(mine, theirs)):
                raise Unauthorized(f"{self.addr} does not know the cluster secret")
            (await self.call("auth", proof=security.client_proof(mine, theirs),
                             timeout=timeout)).release()
        self.server_info = info

    @property
    def closed(self) -> bool:
        return self.protocol.closed

    def request(self, op: str, payload: Payload | None = None,
                **fields: Any) -> asyncio.Future[Frame]:
        """Send one request now; the future resolves to the reply frame (errors not mapped)."""
        rid = next(self._ids)
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        waiters = self.protocol.waiters
        waiters[rid] = fut
        # A request given up on (timeout, cancellation) must not stay in the table forever.
        fut.add_done_callback(lambda f: f.cancelled() and waiters.pop(rid, None))
        header = {"op": op, "id": rid}
        header.update(fields)
        try:
            self.protocol.send(header, payload)
        except ValueError as exc:  # the request itself breaks a frame limit
            waiters.pop(rid, None)
            raise TooLarge(f"{op} request too large: {exc}") from None
        except BaseException:
            waiters.pop(rid, None)
            raise
        return fut

    async def call(self, op: str, payload: Payload | None = None, *,
                   timeout: float = config.RPC_TIMEOUT, **fields: Any) -> Frame:
        """Request, await the reply with a timeout, and raise the mapped error if it is one."""
        await self.drain(timeout, op)
        fut = self.request(op, payload, **fields)
        reply = await wait_reply(fut, timeout, f"{op} to {self.addr}")
        return reply

    async def drain(self, timeout: float = config.RPC_TIMEOUT, what: str = "data") -> None:
        """Wait until the peer takes what we sent, for `timeout` at most: a peer that stopped
        reading (hung, partitioned) must time out like one that stopped replying."""
        if self.protocol.closed or not self.protocol.writing_paused:
            await self.protocol.drain()  # returns (or raises) at once: no timer needed
            return
        try:
            await within(self.protocol.drain(), timeout)
        except asyncio.TimeoutError:
            raise Timeout(f"{self.addr} took no {what} for {timeout:g}s") from None

    def close(self) -> None:
        self.protocol.close()


async def within(aw: Awaitable[T], timeout: float) -> T:
    """Await `aw` for `timeout` seconds at most (asyncio.TimeoutError after that, `aw`
    cancelled). Unlike asyncio.wait_for before Python 3.12, a cancellation of the caller that
    arrives in the same loop iteration as `aw`'s result is never swallowed: a reply and a
    Ctrl-C can land together, and the command must still stop."""
    fut = asyncio.ensure_future(aw)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        fut.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await fut
    except asyncio.CancelledError:
        task = asyncio.current_task()
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        if expired and not (cancelling is not None and cancelling()):
            raise asyncio.TimeoutError() from None
        raise
    finally:
        timer.cancel()


async def wait_reply(fut: asyncio.Future[Frame], timeout: float, what: str) -> Frame:
    """Await a reply future; time out as `Timeout`, turn an error reply into its exception."""
    try:
        reply = await within(fut, timeout)
    except asyncio.TimeoutError:
        raise Timeout(f"{what} got no reply in {timeout:g}s") from None
    if "err" in reply.header:
        reply.release()
        raise from_wire(reply.header)
    return reply


async def cancel_and_wait(task: "asyncio.Task[None] | None") -> None:
    """Stop a background loop (heartbeats, scrubbing) and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


class Checkout:
    """One use of a pooled connection: the connection, and whether it was already open and
    idle in the pool (how many frames it had received then) or opened for this use."""

    def __init__(self, conn: Connection, frames: int | None) -> None:
        self.conn = conn
        self._frames = frames

    def died_idle(self, exc: BaseException) -> bool:
        """Whether `exc` only shows that the connection had died while it sat in the pool: it
        came out of the pool open, it is closed now, and nothing came back on it since. A
        NAT box or firewall that restarts, or an idle timeout on the way, drops connections
        without telling either end; the client finds out at its next request, which the
        server never saw. Such a failure says nothing about the server: try once more on a
        new connection before blaming it (as HDFS's client does with its socket cache)."""
        return (self._frames is not None and isinstance(exc, Unavailable)
                and self.conn.closed and self.conn.protocol.frames == self._frames)


class ConnectionPool:
    """One shared connection per address, reopened when it breaks.

    Callers that want an address while a connect to it is under way share that one attempt:
    queued one after another, N requests to a hung server would fail at 5, 10, 15 ... s, and
    the last ones would outlive their own timeouts and blame the wrong server."""

    def __init__(self, role: str = "client", security: Security = NO_SECURITY,
                 **hello: Any) -> None:
        self._conns: dict[str, Connection] = {}
        self._opening: dict[str, asyncio.Future[Connection]] = {}
        self._role = role
        self._security = security
        self._hello = hello

    async def get(self, addr: str) -> Connection:
        return (await self.checkout(addr)).conn

    async def checkout(self, addr: str) -> Checkout:
        """The connection to `addr`, saying whether it comes out of the pool (see
        `Checkout.died_idle`) or was opened just now."""
        conn = self._conns.get(addr)
        if conn is not None and not conn.closed:
            return Checkout(conn, conn.protocol.frames)
        opening = self._opening.get(addr)
        if opening is None:
            opening = asyncio.ensure_future(Connection.open(
                addr, role=self._role, security=self._security, **self._hello))
            self._opening[addr] = opening

            def opened(f: asyncio.Future[Connection]) -> None:
                if self._opening.get(addr) is f:
                    del self._opening[addr]
                if not f.cancelled() and f.exception() is None:
                    self._conns[addr] = f.result()
            opening.add_done_callback(opened)
        return Checkout(await asyncio.shield(opening), None)

    def discard(self, addr: str) -> None:
        conn = self._conns.pop(addr, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for fut in self._opening.values():
            fut.cancel()
        self._opening.clear()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
