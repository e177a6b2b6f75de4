"""A minimal asyncio etcd v3 client over etcd's HTTP/JSON gateway (POST /v3/...).

Why not gRPC: grpcio is a large C extension whose asyncio support is shaky under uvloop, and
metadata HA needs only kv, txn, lease and watch. The gateway serves the same API as JSON over
HTTP/1.1: keys and values are base64, int64 fields are strings, and proto3 leaves out zero
values (no `succeeded` is False, no `kvs` is empty, no event `type` is PUT, no `TTL` is 0).
Streaming calls (watch, lease keepalive) answer with chunked bodies of newline-separated
`{"result": ...}` objects.

Owns its HTTP connections to etcd and nothing else: one connection per request in flight, idle
ones kept for reuse, one of its own per watch. A failed connection, a timeout, an HTTP 5xx
without a gRPC code, or gRPC UNAVAILABLE moves on to the next endpoint; any other answer from
etcd is final. A write that timed out and is retried may have been applied once already, which
is why dfs fences its writes with txn compares.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")
PAGE_SIZE = 1000  # keys per request when range() pages through a large result
POOL_IDLE = 4  # idle connections kept per endpoint
_UNAVAILABLE = 14  # gRPC: this member cannot serve right now; another one may
_NOT_FOUND = 5
_OUT_OF_RANGE = 11  # gRPC: compacted or future revision
_RESULT = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}


class EtcdError(Exception):
    """etcd could not be reached or refused the request (one clear line)."""

    compacted = False

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the gRPC status code when etcd answered with one


class EtcdCompacted(EtcdError):
    """A watch asked for history that compaction has dropped: read the current state again,
    then watch from its revision."""

    compacted = True

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message, _OUT_OF_RANGE)
        self.compact_revision = compact_revision


class _Garbled(Exception):
    """The peer did not speak the HTTP we expect (counts as a broken connection)."""


class _Stale(Exception):
    """A kept-alive connection that etcd had closed before our request: use a fresh one."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


@dataclass
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KV:
        """A gateway mvccpb.KeyValue (also found in txn range responses)."""
        return cls(_unb64(d.get("key")), _unb64(d.get("value")), int(d.get("create_revision", 0)),
                   int(d.get("mod_revision", 0)), int(d.get("version", 0)),
                   int(d.get("lease", 0)))


@dataclass
class Event:
    type: str  # "PUT" | "DELETE"
    kv: KV  # for DELETE: the key and the deleting revision, value b""


def parse_url(url: str) -> list[str]:
    """"etcd://h1:2379,h2:2379", "http://h:p" or bare "h:p[,h:p]" -> ["h1:2379", "h2:2379"]."""
    endpoints = []
    for part in url.strip().removeprefix("etcd://").split(","):
        part = part.strip().removeprefix("http://").rstrip("/")
        host, sep, port = part.rpartition(":")
        if (not sep or not host or "/" in part or not port.isdigit()
                or not 0 < int(port) < 65536):
            raise ValueError(f"bad etcd address {url!r}: expected etcd://host:port[,host:port...]")
        endpoints.append(part)
    return endpoints


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix": the prefix with its last byte
    below 0xff incremented; b"\\0" (to the end of the keyspace) when there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _cmp(key: bytes, op: str, target: str, field: str, value: str) -> dict:
    if op not in _RESULT:
        raise ValueError(f"bad compare {op!r}: expected one of {' '.join(_RESULT)}")
    return {"key": _b64(key), "result": _RESULT[op], "target": target, field: value}


def cmp_create_revision(key: bytes, op: str, value: int) -> dict:
    return _cmp(key, op, "CREATE", "create_revision", str(value))


def cmp_mod_revision(key: bytes, op: str, value: int) -> dict:
    return _cmp(key, op, "MOD", "mod_revision", str(value))


def cmp_value(key: bytes, op: str, value: bytes) -> dict:
    return _cmp(key, op, "VALUE", "value", _b64(value))


def cmp_lease(key: bytes, op: str, lease: int) -> dict:
    return _cmp(key, op, "LEASE", "lease", str(lease))


def _span(key: bytes, range_end: bytes | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return body


def op_put(key: bytes, value: bytes, lease: int = 0) -> dict:
    return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}


def op_delete(key: bytes, range_end: bytes | None = None) -> dict:
    return {"request_delete_range": _span(key, range_end)}


def op_range(key: bytes, range_end: bytes | None = None) -> dict:
    return {"request_range": _span(key, range_end)}


def _revision(obj: dict) -> int:
    return int(obj.get("header", {}).get("revision", 0))


def _unwrap(obj: Any) -> dict:
    """The message in one gateway JSON object; EtcdError when it carries an error. Unary errors
    are {"error", "code", "message"}; stream errors {"error": {"grpc_code", "message"}}."""
    if not isinstance(obj, dict):
        raise _Garbled(f"etcd sent {type(obj).__name__} where a JSON object belongs")
    err = obj.get("error")
    if isinstance(err, dict):
        raise EtcdError(f"etcd: {err.get('message', err)}", err.get("grpc_code"))
    if err:
        raise EtcdError(f"etcd: {obj.get('message') or err}", obj.get("code"))
    result = obj.get("result", obj)
    return result if isinstance(result, dict) else {}


class _Conn:
    """One HTTP/1.1 connection to one endpoint, carrying one request at a time."""

    def __init__(self, endpoint: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.endpoint, self.reader, self.writer = endpoint, reader, writer
        self.reused = False

    @classmethod
    async def open(cls, endpoint: str) -> _Conn:
        host, _, port = endpoint.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        return cls(endpoint, reader, writer)

    async def send(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        """POST body, then read the status and headers of the answer."""
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.endpoint}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                          "\r\n".encode() + body)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("etcd closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _Garbled(f"not an HTTP status line: {line[:80]!r}")
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n"):
            if not line:
                raise ConnectionResetError("etcd closed the connection")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body; b"" after the last one."""
        line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("etcd closed the connection")
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            raise _Garbled(f"bad chunk size line {line[:80]!r}") from None
        if size == 0:
            while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b""
        data = await self.reader.readexactly(size)
        if await self.reader.readexactly(2) != b"\r\n":
            raise _Garbled("chunk not followed by CRLF")
        return data

    async def body(self, headers: dict[str, str]) -> tuple[bytes, bool]:
        """The whole body, and whether the connection can carry another request."""
        keep = headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while part := await self.chunk():
                parts.append(part)
            return b"".join(parts), keep
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"])), keep
        return await self.reader.read(), False

    def close(self) -> None:
        self.writer.close()


class Etcd:
    """A client for one etcd cluster. `timeout` bounds each attempt at one endpoint, so a call
    that finds every endpoint dead fails within len(endpoints) * timeout."""

    def __init__(self, endpoints: list[str], timeout: float = 3.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._current = 0  # the endpoint that answered last: tried first
        self._idle: dict[str, list[_Conn]] = {}
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()

    async def _rotate(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        """attempt(endpoint) on each endpoint in turn, from the last one that worked."""
        reasons = []
        for i in range(len(self.endpoints)):
            index = (self._current + i) % len(self.endpoints)
            endpoint = self.endpoints[index]
            try:
                result = await asyncio.wait_for(attempt(endpoint), self.timeout)
            except asyncio.TimeoutError:
                reasons.append(f"{endpoint}: no answer within {self.timeout:g}s")
            except EtcdError as exc:
                if exc.code != _UNAVAILABLE:
                    raise
                reasons.append(f"{endpoint}: {exc}")
            except (OSError, EOFError, _Garbled) as exc:
                reasons.append(f"{endpoint}: {exc or type(exc).__name__}")
            else:
                self._current = index
                return result
        raise EtcdError(f"etcd at {','.join(self.endpoints)} unreachable: {'; '.join(reasons)}")

    async def _call(self, path: str, request: dict) -> dict:
        body = json.dumps(request).encode()
        return await self._rotate(lambda endpoint: self._exchange(endpoint, path, body))

    async def _exchange(self, endpoint: str, path: str, body: bytes) -> dict:
        idle = self._idle.get(endpoint, [])
        while idle:
            conn = idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()  # etcd closed it while it sat idle
                continue
            with contextlib.suppress(_Stale):
                return await self._roundtrip(conn, path, body)
        return await self._roundtrip(await _Conn.open(endpoint), path, body)

    async def _roundtrip(self, conn: _Conn, path: str, body: bytes) -> dict:
        keep = False
        try:
            try:
                status, headers = await conn.send(path, body)
            except (ConnectionError, EOFError) as exc:
                if conn.reused:
                    raise _Stale() from exc
                raise
            data, keep = await conn.body(headers)
        finally:
            idle = self._idle.setdefault(conn.endpoint, [])
            if keep and len(idle) < POOL_IDLE:
                conn.reused = True
                idle.append(conn)
            else:
                conn.close()
        try:
            obj, _ = json.JSONDecoder().raw_decode(data.decode("utf-8", "replace").lstrip())
        except ValueError:
            if status >= 500:
                raise _Garbled(f"HTTP {status}: {data[:200]!r}") from None
            raise EtcdError(f"etcd answered HTTP {status}: {data[:200]!r}") from None
        return _unwrap(obj)

    async def get(self, key: bytes) -> KV | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def range(self, key: bytes, range_end: bytes | None = None, limit: int = 0,
                    keys_only: bool = False) -> tuple[list[KV], int]:
        """(kvs sorted by key, header revision). Without a limit, a large result comes in pages
        of PAGE_SIZE, all read at the first page's revision (one consistent snapshot)."""
        request = _span(key, range_end)
        request["limit"] = str(limit or PAGE_SIZE)
        if keys_only:
            request["keys_only"] = True
        kvs: list[KV] = []
        revision = 0
        while True:
            obj = await self._call("/v3/kv/range", request)
            page = [KV.from_json(d) for d in obj.get("kvs", [])]
            kvs += page
            if not revision:
                revision = _revision(obj)
                request["revision"] = str(revision)
            if limit or not obj.get("more") or not page:
                return kvs, revision
            request["key"] = _b64(page[-1].key + b"\0")

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        obj = await self._call("/v3/kv/put", op_put(key, value, lease)["request_put"])
        return _revision(obj)

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> int:
        obj = await self._call("/v3/kv/deleterange", _span(key, range_end))
        return int(obj.get("deleted", 0))

    async def txn(self, compare: list[dict], success: list[dict],
                  failure: list[dict] | None = None) -> tuple[bool, list[dict], int]:
        """(succeeded, the raw responses of the branch taken, header revision)."""
        obj = await self._call("/v3/kv/txn", {"compare": compare, "success": success,
                                              "failure": failure or []})
        return bool(obj.get("succeeded", False)), obj.get("responses", []), _revision(obj)

    async def lease_grant(self, ttl: int) -> int:
        return int((await self._call("/v3/lease/grant", {"TTL": str(ttl)}))["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """One keepalive; the lease's remaining TTL, 0 once it has expired or been revoked
        (the stream answers an unknown lease with TTL 0, not an error)."""
        return int((await self._call("/v3/lease/keepalive", {"ID": str(lease)})).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.code != _NOT_FOUND:
                raise

    async def compact(self, revision: int) -> None:
        try:
            await self._call("/v3/kv/compaction", {"revision": str(revision)})
        except EtcdError as exc:
            if exc.code != _OUT_OF_RANGE or "compacted" not in str(exc):
                raise

    def watch(self, key: bytes, range_end: bytes | None = None,
              start_revision: int = 0) -> Watch:
        """Events on [key, range_end) from start_revision (0: from now on)."""
        request = _span(key, range_end)
        if start_revision:
            request["start_revision"] = str(start_revision)
        w = Watch(self, request)
        self._watches.add(w)
        return w

    async def close(self) -> None:
        conns = [c for idle in self._idle.values() for c in idle]
        self._idle.clear()
        for c in conns:
            c.close()
        await asyncio.gather(*(w.close() for w in list(self._watches)),
                             *(c.writer.wait_closed() for c in conns), return_exceptions=True)


class Watch:
    """One watch stream on a connection of its own. Iterating yields the events of each gateway
    message; it raises EtcdError once the stream ends or breaks (EtcdCompacted when the start
    revision is gone), and stops after close()."""

    def __init__(self, etcd: Etcd, request: dict[str, Any]) -> None:
        self._etcd, self._request = etcd, request
        self._conn: _Conn | None = None
        self._buf = bytearray()
        self._error: EtcdError | None = None
        self._closed = False

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> list[Event]:
        if self._closed:
            raise StopAsyncIteration
        if self._error is not None:
            raise self._error
        try:
            if self._conn is None:
                self._conn = await self._etcd._rotate(self._open)
            while True:
                msg = _unwrap(json.loads(await self._line()))
                if msg.get("canceled"):
                    compacted = int(msg.get("compact_revision", 0))
                    if compacted:
                        raise EtcdCompacted(
                            f"etcd compacted history up to revision {compacted}, past watch "
                            f"start {self._request.get('start_revision', 0)}", compacted)
                    raise EtcdError(f"etcd canceled the watch: {msg.get('cancel_reason', '')}")
                events = [Event("DELETE" if e.get("type") == "DELETE" else "PUT",
                                KV.from_json(e.get("kv", {}))) for e in msg.get("events", [])]
                if events:  # else the "created" answer or a progress notification
                    return events
        except EtcdError as exc:
            self._error = exc
        except (OSError, EOFError, ValueError, _Garbled) as exc:  # JSON errors are ValueError
            where = self._conn.endpoint if self._conn else "etcd"
            self._error = EtcdError(f"etcd watch stream from {where} broke: {exc}")
        except asyncio.CancelledError:  # a cut mid-chunk leaves the stream unreadable
            self._error = EtcdError("etcd watch interrupted")
            raise
        finally:
            if self._error is not None and self._conn is not None:
                self._conn.close()
        if self._closed:
            raise StopAsyncIteration
        assert self._error is not None
        raise self._error

    async def _open(self, endpoint: str) -> _Conn:
        conn = await _Conn.open(endpoint)
        try:
            body = json.dumps({"create_request": self._request}).encode()
            status, headers = await conn.send("/v3/watch", body)
            if status != 200:
                data, _ = await conn.body(headers)
                with contextlib.suppress(ValueError):
                    _unwrap(json.loads(data))  # raises etcd's own error when there is one
                raise _Garbled(f"HTTP {status} for a watch: {data[:200]!r}")
            if "chunked" not in headers.get("transfer-encoding", "").lower():
                raise _Garbled("the watch answer is not a chunked stream")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _line(self) -> bytes:
        """The next newline-terminated JSON message; chunk edges need not match messages."""
        assert self._conn is not None
        while (end := self._buf.find(b"\n")) < 0:
            more = await self._conn.chunk()
            if not more:
                raise EtcdError(f"etcd at {self._conn.endpoint} ended the watch stream")
            self._buf += more
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return line if line.strip() else await self._line()

    async def close(self) -> None:
        self._closed = True
        self._error = self._error or EtcdError("etcd watch closed")
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(OSError):
                await self._conn.writer.wait_closed()
