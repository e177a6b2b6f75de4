"""dfs.net.server.ServerConnection driven with an in-memory fake transport (no sockets): the
hello, dispatch and error-frame rules docs/PROTOCOL.md describes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest

from dfs.config import MAX_HEADER, PROTOCOL_VERSION
from dfs.errors import NotFound
from dfs.net.connection import within
from dfs.net.server import Server, ServerConnection
from dfs.protocol import FrameReader, encode_frame
from dfs.protocol.buffers import BufferPool


class FakeTransport:
    """Just enough of asyncio.Transport: records what is written and whether it closed."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data: Any) -> None:
        assert not self.closing, "write after close"
        self.out += data

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def replies(self) -> list[dict[str, Any]]:
        frames = FrameReader(BufferPool()).feed(bytes(self.out))
        self.out.clear()
        return [f.header for f in frames]


class Service:
    def handle_echo(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
        return {"echo": h.get("x")}, bytes(payload)

    def handle_missing(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
        raise NotFound("no such thing")

    def handle_crash(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
        raise KeyError("oops")

    def handle_huge(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
        return {"blob": "x" * (MAX_HEADER + 10)}

    def handle_huge_later(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
        async def later() -> dict[str, Any]:
            return {"blob": "x" * (MAX_HEADER + 10)}
        return later()

    def handle_later(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
        async def later() -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"done": h.get("n")}
        return later()


def connect(role: str = "meta") -> tuple[ServerConnection, FakeTransport]:
    server = Server(role, "127.0.0.1", 0)
    server.handlers = {name[len("handle_"):]: getattr(Service(), name)
                       for name in dir(Service) if name.startswith("handle_")}
    conn = ServerConnection(server)
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    return conn, t


def send(conn: ServerConnection, data: bytes) -> None:
    view = memoryview(data)
    while view:
        buf = conn.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        conn.buffer_updated(n)
        view = view[n:]


def hello(conn: ServerConnection, t: FakeTransport) -> None:
    send(conn, encode_frame({"op": "hello", "id": 1, "version": PROTOCOL_VERSION,
                             "role": "client"}))
    assert t.replies() == [{"id": 1, "version": PROTOCOL_VERSION, "role": "meta"}]


def test_hello_then_requests() -> None:
    conn, t = connect()
    hello(conn, t)
    send(conn, encode_frame({"op": "echo", "id": 2, "x": 5}, b"abc"))
    frames = FrameReader(BufferPool()).feed(bytes(t.out))
    assert [(f.header, bytes(f.payload)) for f in frames] == [({"id": 2, "echo": 5}, b"abc")]
    assert not t.closing


@pytest.mark.parametrize("first,code", [
    ({"op": "echo", "id": 1}, "bad_request"),
    ({"op": "hello", "id": 1, "version": PROTOCOL_VERSION + 1}, "version"),
    ({"op": "hello", "id": 1}, "version"),
])
def test_a_bad_hello_is_answered_then_closed(first: dict[str, Any], code: str) -> None:
    conn, t = connect()
    send(conn, encode_frame(first))
    [reply] = t.replies()
    assert reply["id"] == 1 and reply["err"] == code and reply["msg"]
    assert t.closing


def test_request_errors_keep_the_connection_open() -> None:
    conn, t = connect()
    hello(conn, t)
    send(conn, encode_frame({"op": "nope", "id": 2}) + encode_frame({"op": "missing", "id": 3})
         + encode_frame({"op": "crash", "id": 4}) + encode_frame({"op": "hello", "id": 5,
                                                                   "version": PROTOCOL_VERSION}))
    r = t.replies()
    assert [(x["id"], x["err"]) for x in r] == [(2, "bad_request"), (3, "not_found"),
                                                (4, "internal"), (5, "bad_request")]
    assert r[1]["msg"] == "no such thing"
    assert not t.closing


@pytest.mark.parametrize("data,code", [
    (encode_frame({"op": "echo"}), "bad_request"),  # no id
    (encode_frame({"id": 2}), "bad_request"),  # no op
    (encode_frame({"op": 5, "id": 2}), "bad_request"),
    (struct.pack(">II", MAX_HEADER + 1, 0), "too_large"),
    (struct.pack(">II", 0, 0), "bad_request"),
    (struct.pack(">II", 1, 0) + b"\xc1", "bad_request"),
])
def test_protocol_violations_get_one_error_frame_with_id_0_then_close(data: bytes,
                                                                      code: str) -> None:
    conn, t = connect()
    hello(conn, t)
    send(conn, data)
    replies = t.replies()
    assert [(r["id"], r["err"]) for r in replies] == [(0, code)]
    assert isinstance(replies[0]["msg"], str) and replies[0]["msg"]
    assert t.closing


def test_protocol_violation_frames_are_exact() -> None:
    conn, t = connect()
    hello(conn, t)
    send(conn, struct.pack(">II", 0xFFFFFFFF, 0))
    [r] = t.replies()
    assert r["id"] == 0 and r["err"] == "too_large" and "header length" in r["msg"]
    assert t.closing


def test_garbage_after_a_rejected_hello_does_not_escape_buffer_updated() -> None:
    """Regression (fixed in e3da029): a non-hello first frame is answered and the connection
    closed; garbage following in the same read made protocol_violation() send on the closed
    connection, and the Unavailable escaped buffer_updated into the event loop (asyncio logs
    'Fatal error: protocol.buffer_updated() call failed' with a traceback)."""
    conn, t = connect()
    send(conn, encode_frame({"op": "echo", "id": 1}) + struct.pack(">II", 0, 0))
    assert [(r["id"], r["err"]) for r in t.replies()] == [(1, "bad_request")]
    assert t.closing


def test_too_many_connections() -> None:
    server = Server("meta", "127.0.0.1", 0, max_connections=1)
    a = ServerConnection(server)
    a.connection_made(FakeTransport())  # type: ignore[arg-type]
    b = ServerConnection(server)
    tb = FakeTransport()
    b.connection_made(tb)  # type: ignore[arg-type]
    assert [(r["id"], r["err"]) for r in tb.replies()] == [(0, "unavailable")]
    assert tb.closing and server.conns == {a}


def test_async_handlers_reply_out_of_order_with_their_ids() -> None:
    async def main() -> None:
        conn, t = connect()
        hello(conn, t)
        send(conn, encode_frame({"op": "later", "id": 7, "n": 1})
             + encode_frame({"op": "echo", "id": 8, "x": 2}))
        assert conn.inflight == 1
        assert [r["id"] for r in t.replies()] == [8]  # the sync one is answered at once
        while conn.inflight:
            await asyncio.sleep(0)
        assert t.replies() == [{"id": 7, "done": 1}]

    asyncio.run(main())


def test_back_pressure_pauses_reading_past_the_inflight_limit() -> None:
    from dfs import config

    async def main() -> None:
        conn, t = connect()
        hello(conn, t)
        n = config.MAX_INFLIGHT_PER_CONN
        send(conn, b"".join(encode_frame({"op": "later", "id": 10 + i, "n": i})
                            for i in range(n)))
        assert conn.inflight == n and not t.reading
        while conn.inflight:
            await asyncio.sleep(0)
        assert t.reading
        assert sorted(r["id"] for r in t.replies()) == [10 + i for i in range(n)]

    asyncio.run(main())


@pytest.mark.parametrize("op", ["huge", "huge_later"])
def test_a_reply_too_large_to_encode_becomes_an_error_reply(op: str) -> None:
    """Regression (fixed in e3da029): a reply header over MAX_HEADER made `encode_header`
    raise in the reply path. For a plain handler that closed the connection (losing every
    request in flight on it); for a coroutine handler no reply was ever sent (the peer
    waited for its timeout). Now it is a `too_large` error reply for that request."""
    async def main() -> None:
        conn, t = connect()
        hello(conn, t)
        send(conn, encode_frame({"op": op, "id": 2}))
        for _ in range(5):
            await asyncio.sleep(0)
        replies = t.replies()
        assert [r["id"] for r in replies] == [2], "no reply for the request"
        assert replies[0]["err"] == "too_large"
        assert not t.closing

    asyncio.run(main())


def test_header_ids_and_ops_are_echoed_not_interpreted() -> None:
    conn, t = connect()
    hello(conn, t)
    big_id = 2**64 - 1
    send(conn, encode_frame({"op": "echo", "id": big_id, "x": None}))
    frames = FrameReader(BufferPool()).feed(bytes(t.out))
    assert frames[0].header == {"id": big_id, "echo": None}
    assert msgpack.unpackb(bytes(t.out)[8:8 + struct.unpack(">I", bytes(t.out)[:4])[0]]) == \
        {"id": big_id, "echo": None}


# -- the sweeper: hello and frame timeouts, on a fake clock ----------------------------------

class _StopSweep(Exception):
    pass


def sweep_with_fake_clock(monkeypatch, seconds: int, each_second) -> None:
    """Run Server._sweep for `seconds` fake seconds; `each_second(now)` runs after each tick.
    Only dfs.net.server's view of `time` and `asyncio` is faked."""
    import types

    import dfs.net.server as server_mod

    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0])

    async def fake_sleep(delay: float) -> None:
        clock[0] += delay
        each_second(clock[0])
        if clock[0] >= 1000.0 + seconds:
            raise _StopSweep

    monkeypatch.setattr(server_mod, "time", fake_time)
    monkeypatch.setattr(server_mod, "asyncio", types.SimpleNamespace(sleep=fake_sleep))


def test_a_peer_without_hello_is_closed_after_the_hello_timeout(monkeypatch) -> None:
    from dfs import config
    closed_at: list[float] = []
    holder: dict[str, Any] = {}

    def tick(now: float) -> None:
        if holder["t"].closing and not closed_at:
            closed_at.append(now)

    sweep_with_fake_clock(monkeypatch, 60, tick)
    conn, t = connect()
    holder["t"] = t
    with pytest.raises(_StopSweep):
        asyncio.run(conn.server._sweep())
    # observed one tick after the sweep that closed it; the sweep runs once a second
    assert closed_at and closed_at[0] - 1000.0 <= config.HELLO_TIMEOUT + 2


def test_a_slow_drip_peer_cannot_hold_a_frame_open_forever(monkeypatch) -> None:
    """BUG: FRAME_TIMEOUT is measured from the last byte received (`last_data`), not from the
    start of the frame, so a peer that sends one byte of a frame every 20 s keeps it
    incomplete forever, holding the staging buffer (up to 1 MiB) or a pooled payload buffer
    (up to 8 MiB) per connection. INTERFACE.md: a connection that leaves a frame incomplete
    for 30 s is closed; a slow or idle peer never holds a server's memory."""
    from dfs import config
    frame = encode_frame({"op": "echo", "id": 2, "x": "y" * 100}, b"z" * 200_000)
    state = {"sent": 0, "closed_at": None}
    holder: dict[str, Any] = {}

    def tick(now: float) -> None:
        conn, t = holder["conn"], holder["t"]
        if t.closing:
            state["closed_at"] = state["closed_at"] or now
            return
        if int(now) % 20 == 0:  # one more byte every 20 s: never 30 s of silence
            send(conn, frame[state["sent"]:state["sent"] + 1])
            state["sent"] += 1

    sweep_with_fake_clock(monkeypatch, 300, tick)
    conn, t = connect()
    holder.update(conn=conn, t=t)
    hello(conn, t)
    send(conn, frame[:10])  # the frame starts at t=1000
    state["sent"] = 10
    with pytest.raises(_StopSweep):
        asyncio.run(conn.server._sweep())
    assert conn.reader.mid_frame or t.closing
    assert state["closed_at"] is not None, "a frame was left incomplete for 300 s"
    assert state["closed_at"] - 1000.0 <= config.FRAME_TIMEOUT + 2


# -- the client end --------------------------------------------------------------------------

def test_a_timed_out_request_does_not_leave_its_waiter_behind() -> None:
    """BUG: `wait_reply` cancels the future on timeout but `ClientProtocol.waiters` keeps it
    until a reply with that id arrives, which may be never: a long-lived connection (the
    client's meta connection, a chunkserver's pooled downstream connection) grows one entry
    per request that timed out."""
    from dfs.errors import Timeout
    from dfs.net.connection import ClientProtocol, Connection

    async def main() -> None:
        proto = ClientProtocol("127.0.0.1:5000")
        proto.connection_made(FakeTransport())  # type: ignore[arg-type]
        conn = Connection("127.0.0.1:5000", proto)
        for _ in range(3):
            with pytest.raises(Timeout):
                await conn.call("stat", timeout=0.001, path="/")
        assert proto.waiters == {}

    asyncio.run(main())


def test_client_matches_out_of_order_replies_and_maps_errors() -> None:
    from dfs.errors import NotFound as NF
    from dfs.net.connection import ClientProtocol, Connection

    async def main() -> None:
        proto = ClientProtocol("127.0.0.1:5000")
        t = FakeTransport()
        proto.connection_made(t)  # type: ignore[arg-type]
        conn = Connection("127.0.0.1:5000", proto)
        a = asyncio.ensure_future(conn.call("stat", path="/a"))
        b = asyncio.ensure_future(conn.call("stat", path="/b"))
        await asyncio.sleep(0)
        sent = FrameReader(BufferPool()).feed(bytes(t.out))
        assert [(f.header["op"], f.header["id"]) for f in sent] == [("stat", 1), ("stat", 2)]
        for data in (encode_frame({"id": 2, "type": "dir"}),
                     encode_frame({"id": 1, "err": "not_found", "msg": "/a"})):
            view = memoryview(data)
            buf = proto.get_buffer(len(view))
            buf[:len(view)] = view
            proto.buffer_updated(len(view))
        assert (await b).header == {"id": 2, "type": "dir"}
        with pytest.raises(NF, match="/a"):
            await a
        # An id-0 error fails everything still waiting and closes the connection.
        c = asyncio.ensure_future(conn.call("stat", path="/c"))
        await asyncio.sleep(0)
        data = encode_frame({"id": 0, "err": "too_large", "msg": "bye"})
        buf = proto.get_buffer(len(data))
        buf[:len(data)] = data
        proto.buffer_updated(len(data))
        from dfs.errors import TooLarge
        with pytest.raises(TooLarge):
            await c
        assert t.closing

    asyncio.run(main())


def test_within_returns_a_result_and_times_out_cancelling_what_it_waited_for() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        loop.call_soon(done.set_result, 7)
        assert await within(done, 5) == 7
        never: asyncio.Future[int] = loop.create_future()
        with pytest.raises(asyncio.TimeoutError):
            await within(never, 0.01)
        assert never.cancelled()

    asyncio.run(main())


def test_within_never_swallows_a_cancellation_that_lands_with_the_result() -> None:
    """A reply and a Ctrl-C in one loop iteration: asyncio.wait_for (before Python 3.12)
    returns the reply and drops the cancellation, and the command goes on."""
    async def main() -> None:
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        caller = asyncio.ensure_future(within(reply, 10))
        await asyncio.sleep(0)  # the caller now waits for the reply
        reply.set_result(1)
        caller.cancel()  # same iteration
        with pytest.raises(asyncio.CancelledError):
            await caller

    asyncio.run(main())


class HoldingTransport(FakeTransport):
    """A transport whose kernel takes nothing until told: what it was given stays in its
    write buffer (get_write_buffer_size) until `flush(n)`."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.hold = True  # False: the kernel takes every write at once

    def write(self, data: Any) -> None:
        super().write(data)
        if self.hold:
            self.held += len(data)

    def get_write_buffer_size(self) -> int:
        return self.held

    def flush(self, n: int) -> None:
        self.held -= n


def test_a_sent_hook_runs_once_the_transport_has_let_go_of_the_whole_payload() -> None:
    from dfs.net.connection import FrameProtocol
    proto = FrameProtocol()
    t = HoldingTransport()
    proto.connection_made(t)  # type: ignore[arg-type]
    called: list[str] = []
    proto.send({"id": 1}, b"x" * 1000, lambda: called.append("a"))
    first = t.held
    proto.send({"id": 2}, b"y" * 1000, lambda: called.append("b"))
    assert called == []
    t.flush(first - 10)  # a's frame has left but for its last 10 bytes
    proto.resume_writing()
    assert called == []
    t.flush(10)
    proto.resume_writing()
    assert called == ["a"]  # b is still held
    t.flush(t.held)
    proto.send({"id": 3})  # any later send (or incoming data) looks again
    assert called == ["a", "b"]
    t.flush(t.held)
    t.hold = False
    proto.send({"id": 4}, b"z", lambda: called.append("c"))  # taken at once: at once
    assert called == ["a", "b", "c"]
    t.hold = True
    proto.send({"id": 5}, b"w", lambda: called.append("d"))
    proto.connection_lost(None)
    assert called == ["a", "b", "c"]  # the connection went first: never called


def test_a_reply_in_a_pooled_buffer_goes_back_to_the_pool_once_sent() -> None:
    from dfs.protocol.buffers import Lease
    pool = BufferPool()
    server = Server("chunk", "127.0.0.1", 0)
    conn = ServerConnection(server)
    t = HoldingTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    buf = pool.get(200_000)
    buf[:5] = b"hello"
    conn.reply(7, ({"size": 5}, Lease(buf, 5, pool)))
    assert pool.free_bytes == 0  # still in the transport
    t.flush(t.held)
    conn.resume_writing()
    assert pool.free_bytes == len(buf)
    frames = FrameReader(BufferPool()).feed(bytes(t.out))
    assert frames[-1].header == {"id": 7, "size": 5} and bytes(frames[-1].payload) == b"hello"
