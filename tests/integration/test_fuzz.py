"""A socket-level fuzzer against a real cluster (meta + 2 chunkservers, no secret).

Each connection goes to meta or a chunkserver and follows one strategy: random bytes; a good
hello and then garbage; frames of every op the servers answer (listed in ops.py, checked
against real servers below) with fields of random types and random payloads; the same frames
with random byte mutations; requests before hello or a broken hello; well-formed request
sequences (upload, pipeline write, read, phantom chunkserver) with one field type-confused;
frames cut short; huge declared lengths; a pipelined flood that the server must throttle and
then answer completely. Replies are read with a short timeout and checked against what the
bytes sent must get (docs/PROTOCOL.md sections 3 and 4: one reply per request, an error frame
and a close on a violation or a refused hello, nothing more).

Afterwards: every daemon is alive, a normal client still puts and gets (also every
CHECK_EVERY connections), no daemon log holds a traceback, no reply was an `internal` error,
each daemon's RSS is below RSS_LIMIT, and no file appeared outside the data dirs (client
strings never become paths). A summary line (seed, counts per strategy and per reply kind)
is printed. The seed is fixed (DFS_FUZZ_SEED); DFS_FUZZ_COUNT sets the number of connections
(default 1000: a few seconds). Round trips alternate between dfs.Client (uvloop) and an
AsyncClient on the standard asyncio loop, whose name resolution fails differently.

Also here: one small deterministic test per bug the fuzzer found, so each stays fixed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import select
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable

import crc32c
import msgpack
import pytest
from cluster import HOST, Cluster
from ops import CHUNK_OPS, META_OPS

from dfs import checksum
from dfs.client.async_client import AsyncClient
from dfs.config import MAX_HEADER, MAX_PAYLOAD, PROTOCOL_VERSION
from dfs.errors import ERROR_CODES, ProtocolViolation
from dfs.protocol import FrameReader
from dfs.protocol.buffers import BufferPool

SEED = int(os.environ.get("DFS_FUZZ_SEED", "1337"))
COUNT = int(os.environ.get("DFS_FUZZ_COUNT", "1000"))
if COUNT < 1:
    raise ValueError(f"DFS_FUZZ_COUNT={COUNT}: the fuzzer would run no connection at all")
CHECK_EVERY = 50  # a normal put/get round trip after this many connections
WAIT = 0.5  # seconds to wait for the replies of one connection
# ... when a reply that should come at once, or a close that must come, is still missing: a
# ceiling (a busy machine can be slow), spent only when something is late.
SLOW_WAIT = 10.0
RSS_LIMIT = 300 * 1024 * 1024
MARK = "dfsfuzz"  # in every path-like string sent; no file name may ever contain it
CHUNK = 64 * 1024
KiB, MiB = 1024, 1024 * 1024

# Ops whose reply may legitimately take longer than WAIT (a pipeline to a slow or unreachable
# server down the chain).
SLOW_OPS = {"write_block", "write_small", "packet"}

# The fields each op reads (docs/PROTOCOL.md sections 7 and 8). An op of ops.py without an
# entry here still gets fuzzed, with random fields only.
FIELDS: dict[str, tuple[str, ...]] = {
    "register": ("chunk_id", "addr", "cluster_id", "capacity", "used", "free", "load",
                 "writing", "blocks"),
    "heartbeat": ("chunk_id", "addr", "capacity", "used", "free", "load", "writing",
                  "received", "corrupt"),
    "block_report": ("chunk_id", "addr", "blocks", "full", "first", "last"),
    "poll_commands": ("chunk_id", "addr", "wait"),
    "create": ("path", "replication", "block_size", "first_block", "size", "exclusive"),
    "add_block": ("upload", "exclude"),
    "recover_block": ("upload", "block", "exclude", "keep"),
    "renew": ("upload",),
    "commit": ("upload", "blocks", "block_start", "mtime", "exclusive", "attrs"),
    "commit_part": ("upload", "block_start", "blocks"),
    "abort": ("upload",),
    "stat": ("path", "blocks", "block_start", "block_limit"),
    "ls": ("path", "start_after", "limit", "columns"),
    "mkdir": ("path", "parents", "attrs"),
    "rm": ("path", "recursive"),
    "mv": ("src", "dst"),
    "report_bad": ("block", "replica"),
    "status": (),
    "fsck": ("path",),
    "decommission": ("addr",),
    "cp": ("src", "dst", "recursive"),
    "setrep": ("path", "replication", "recursive"),
    "touch": ("path", "mtime"),
    "chattr": ("path", "mode", "uid", "gid"),
    "symlink": ("path", "target", "attrs"),
    "du": ("path", "children", "start_after", "limit"),
    "write_block": ("block", "gen", "targets", "token"),
    "packet": ("block", "offset", "crcs", "last", "size"),
    "write_small": ("block", "gen", "targets", "crcs", "size", "token"),
    "abort_block": ("block",),
    "read_block": ("block", "gen", "offset", "length", "token"),
    "block_info": ("block", "gen", "token"),
    "block_crcs": ("block", "gen", "token"),
    "hello": ("version", "role", "nonce"),
    "auth": ("proof",),
}
PATH_FIELDS = {"path", "src", "dst", "start_after"}
ADDR_FIELDS = {"addr", "replica"}
ADDR_LIST_FIELDS = {"targets", "exclude", "keep"}
REPORT_FIELDS = {"received", "corrupt"}  # and "blocks" of register and block_report
BOOL_FIELDS = {"first_block", "parents", "recursive", "last", "columns", "full", "first",
               "children"}
# Chunkserver identity fields never carry a real chunkserver's address: without a secret, a
# register or decommission naming a live server's address takes it over or drains it (by
# design), which would only test that the fuzzer can break the cluster on purpose.
NO_REAL_ADDR = {("register", "addr"), ("heartbeat", "addr"), ("decommission", "addr"),
                ("poll_commands", "addr")}

INTS = [0, 1, 2, -1, 7, 255, 256, 65535, CHUNK, CHUNK + 1, MiB, MAX_PAYLOAD, MAX_PAYLOAD + 1,
        2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
        2**63 + CHUNK, 2**64 - CHUNK, 2**64 - 1, -(2**31), -(2**63), 1 << 30]
FLOATS = [0.0, -0.0, 1.0, 0.5, -1.5, 65536.0, 1e308, -1e308, 5e-324, float("inf"),
          float("-inf"), float("nan")]
PATHS = [
    "/", "/.", "/..", f"/{MARK}", f"/{MARK}/", f"/{MARK}/./a/", f"//{MARK}",
    f"/../../etc/{MARK}_etc", f"/../../../../../../tmp/{MARK}_tmp", f"../{MARK}_rel",
    f"{MARK}_rel", f"./{MARK}_rel", f"/{MARK}/../../{MARK}_up", f"/{MARK}\x00/etc/passwd",
    f"/{MARK}/" + "a" * 255, f"/{MARK}/" + "a" * 256, "/" + f"{MARK}/" * 820,
    f"/{MARK}/" + "é" * 200, f"/{MARK}/ünïcødé/☃/𝄞", f"/{MARK}/%s%n%x", f"/{MARK}/\n\r\t",
    f"/{MARK}/a b/c", f"/{MARK}/...", f"/{MARK}/..a", f"/{MARK}/~", f"~/{MARK}_home",
    f"\\..\\..\\{MARK}_win", f"C:\\{MARK}_drive", "/etc/passwd", "/proc/self/environ",
    f"/{MARK}/\udcff", f"/{MARK}/\u202e\u0000x", "", " ", "\x00",
]
HOSTILE_STRS = ["", "\x00", "a" * 5000, "\udcff\ud800", "%s%s%s", "{0}", "$(id)", "' OR 1=1",
                "../" * 40, "\u202e", "\x7f\x80\xff", "NaN", "null", "127.0.0.1", ":",
                "x:99999", "x:-1", "x:0", "[::1", "[::1]:", "host:", ":5000", "a:b:c",
                "http://", f"../../etc/{MARK}", f"{MARK}.invalid", "²:²", "127.0.0.1:²",
                "localhost:1", "[::1]:1", "0.0.0.0:1", "256.1.1.1:80", "a\x00b:1"]


def now() -> float:
    return time.monotonic()


# -- what a byte stream must get back ---------------------------------------------------------

def expected_replies(sent: bytes) -> tuple[int, bool, list[dict[str, Any]]]:
    """(how many replies at most, whether the server must close, the requests it answers)
    for the bytes `sent`, by docs/PROTOCOL.md sections 3 and 4 and the server's own codec."""
    reader = FrameReader(BufferPool())
    violation = False
    try:
        frames = reader.feed(sent)
    except ProtocolViolation:
        frames = reader.pop_frames()
        violation = True
    answered: list[dict[str, Any]] = []
    helloed = False
    for f in frames:
        op, rid = f.header.get("op"), f.header.get("id")
        f.release()
        if not isinstance(op, str) or not isinstance(rid, int):
            return len(answered) + 1, True, answered  # the id-0 error, then close
        answered.append(f.header)
        if not helloed:
            if op != "hello" or f.header.get("version") != PROTOCOL_VERSION:
                return len(answered), True, answered  # refused with its id, then close
            helloed = True
    return len(answered) + violation, violation, answered


# -- one fuzzing connection -------------------------------------------------------------------

class FuzzConn:
    """A raw, non-blocking connection that records everything sent and received."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.sock.setblocking(False)
        self.reader = FrameReader(BufferPool())
        self.sent = bytearray()
        self.replies: list[dict[str, Any]] = []
        self.by_id: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        # What the bytes sent must get (from `settle`): replies, a close, requests answered.
        self.expected, self.must_close = 0, False
        self.answered: list[dict[str, Any]] = []
        self.closed = False  # the server hung up (FIN or RST)
        self.reset = False
        self.bad_reply: str | None = None
        self.stalled = False  # the server stopped reading our bytes for a while

    # receiving ---------------------------------------------------------------------
    def _take(self, data: bytes) -> None:
        if self.bad_reply is not None:
            return
        try:
            frames = self.reader.feed(data)
        except ProtocolViolation as exc:
            self.bad_reply = f"server sent bytes that are not frames: {exc}"
            return
        for f in frames:
            self.replies.append(f.header)
            rid = f.header.get("id")
            if isinstance(rid, int):
                self.by_id[rid].append(f.header)
            f.release()

    def poll(self, timeout: float) -> bool:
        """Receive what is there within `timeout`; False once the server has closed."""
        if self.closed:
            return False
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return True
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return True
        except (ConnectionResetError, ConnectionAbortedError):
            self.closed = self.reset = True
            return False
        if not data:
            self.closed = True
            return False
        self._take(data)
        return True

    # sending -----------------------------------------------------------------------
    def send(self, data: bytes, stall: float = 3.0) -> None:
        """Send everything while reading replies (so a server that pushes back cannot
        deadlock us); give up if the server takes nothing for `stall` seconds."""
        view = memoryview(data)
        last = now()
        while view and not self.closed:
            r, w, _ = select.select([self.sock], [self.sock], [], 0.05)
            if r:
                self.poll(0)
            if w and not self.closed:
                try:
                    n = self.sock.send(view[:1 << 20])
                except BlockingIOError:
                    n = 0
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    self.closed = True
                    break
                if n:
                    self.sent += view[:n]
                    view = view[n:]
                    last = now()
            if view and now() - last > stall:
                self.stalled = True
                break

    def request(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.send(frame_bytes(header, payload))

    def call(self, header: dict[str, Any], payload: bytes = b"",
             timeout: float = WAIT * 2) -> dict[str, Any] | None:
        """Send one request and wait for the reply with its id (None: none came)."""
        rid = header.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):  # a fuzzed id: no reply to match
            self.request(header, payload)
            return None
        before = len(self.by_id.get(rid, []))
        self.request(header, payload)
        deadline = now() + timeout
        while len(self.by_id.get(rid, [])) == before and now() < deadline:
            if not self.poll(deadline - now()):
                break
        got = self.by_id.get(rid, [])
        return got[-1] if len(got) > before else None

    def settle(self) -> None:
        """Wait (briefly) for whatever the bytes sent must get."""
        self.expected, self.must_close, self.answered = expected_replies(bytes(self.sent))
        deadline, extended = now() + WAIT, False
        while not self.closed:
            if not self.must_close and len(self.replies) >= self.expected:
                break
            if now() >= deadline:
                if extended or not ((self.must_close and not self.stalled)
                                    or self.missing_prompt()):
                    break
                extended, deadline = True, now() + SLOW_WAIT  # owed: wait longer
            self.poll(min(deadline - now(), 0.1))

    def missing_prompt(self) -> list[str]:
        """Ops of requests answered at once (or after a journal fsync) still unanswered."""
        owed = collections.Counter(h["id"] for h in self.answered)
        got = collections.Counter(h.get("id") for h in self.replies)
        return [str(h["op"]) for h in self.answered
                if got[h["id"]] < owed[h["id"]] and h["op"] not in SLOW_OPS]

    def request_for(self, rid: Any) -> dict[str, Any] | None:
        for h in reversed(self.answered):
            if h["id"] == rid:
                return h
        return None

    def close(self, how: str) -> None:
        with contextlib.suppress(OSError):
            if how == "rst":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            elif how == "half":
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.setblocking(True)
                self.sock.settimeout(0.3)
                with contextlib.suppress(OSError):
                    while self.sock.recv(65536):
                        pass
        self.sock.close()


def frame_bytes(header: Any, payload: bytes = b"") -> bytes:
    """A frame around any msgpack value, with true lengths (our encoder would refuse
    headers that are not maps, or that break the limits). Lone surrogates in a str go out
    as the invalid UTF-8 they stand for."""
    body = msgpack.packb(header, use_bin_type=True, unicode_errors="surrogatepass")
    return struct.pack(">II", len(body), len(payload)) + body + payload


def crcs_of(data: bytes) -> list[int]:
    return [crc32c.crc32c(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]


# -- random values ----------------------------------------------------------------------------

class Gen:
    """Random field values of random types, biased toward what each field expects."""

    def __init__(self, rng: random.Random, pools: dict[str, list[Any]]) -> None:
        self.rng = rng
        self.pools = pools  # real block ids, gens, chunkserver addrs, upload ids seen
        self.next_id = 1

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def int_(self) -> int:
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(INTS)
        if r < 0.55 and self.pools["blocks"]:
            return self.rng.choice(self.pools["blocks"])
        if r < 0.65 and self.pools["uploads"]:
            return self.rng.choice(self.pools["uploads"])
        if r < 0.8:
            return self.rng.randrange(-(2**63), 2**64)
        if r < 0.9:
            return self.rng.randrange(0, 64) * CHUNK
        return self.rng.randrange(-10, 1000)

    def str_(self) -> str:
        r = self.rng.random()
        if r < 0.35:
            return self.rng.choice(PATHS)
        if r < 0.6:
            return self.rng.choice(HOSTILE_STRS)
        if r < 0.7:
            return self.rng.choice(["hello", "client", "chunk", "meta", "op", "id"])
        n = self.rng.choice([0, 1, 3, 8, 40, 300])
        return "".join(chr(self.rng.choice([self.rng.randrange(32, 127),
                                            self.rng.randrange(0, 0x2FFFF)]))
                       for _ in range(n)).encode("utf-8", "replace").decode("utf-8", "replace")

    def bytes_(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 16, 32, 100, 4096]))

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3:
            r *= 0.7  # no more containers
        if r < 0.25:
            return self.int_()
        if r < 0.45:
            return self.str_()
        if r < 0.52:
            return self.rng.choice(FLOATS + [self.rng.uniform(-1e9, 1e9)])
        if r < 0.58:
            return self.bytes_()
        if r < 0.64:
            return self.rng.choice([None, True, False])
        if r < 0.70:
            return self.rng.choice([[], {}, [None], [[]], {"": None}])
        if r < 0.85:
            return [self.value(depth + 1) for _ in range(self.rng.choice([1, 2, 3, 5, 17]))]
        return {self.str_()[:20]: self.value(depth + 1)
                for _ in range(self.rng.choice([1, 2, 4]))}

    def addr(self, real: bool = True) -> str:
        r = self.rng.random()
        if real and r < 0.35 and self.pools["addrs"]:
            return self.rng.choice(self.pools["addrs"])
        if r < 0.7:
            return self.rng.choice(HOSTILE_STRS)
        return f"127.0.0.1:{self.rng.choice([1, 9, 65535, 0, 70000])}"

    def report(self, width: int = 4) -> list[list[Any]]:
        out = []
        for _ in range(self.rng.choice([0, 1, 2, 5, 50])):
            e = [self.int_() for _ in range(width)]
            if self.chance(0.3) and self.pools["blocks"]:
                e[0] = self.rng.choice(self.pools["blocks"])
                if width > 1:
                    e[1] = self.rng.choice([1, 2, 0, 2**63])
            if self.chance(0.1):
                e = self.value()
            out.append(e)
        return out

    def field(self, op: str, name: str) -> Any:
        """A value for one field: 70% of the kind it should be, else anything."""
        if self.chance(0.3):
            return self.value()
        if name in PATH_FIELDS:
            return self.rng.choice(PATHS) if self.chance(0.8) else self.str_()
        if name in ADDR_FIELDS:
            return self.addr(real=(op, name) not in NO_REAL_ADDR)
        if name in ADDR_LIST_FIELDS:
            return [self.addr() for _ in range(self.rng.choice([0, 1, 2, 3, 16, 17]))]
        if name in REPORT_FIELDS or (op == "register" and name == "blocks"):
            return self.report(2 if name == "corrupt" else 4)
        if op == "commit" and name == "blocks":
            return [[self.int_(), self.int_(), self.int_(), [self.addr()]]
                    for _ in range(self.rng.choice([0, 1, 2]))]
        if name in BOOL_FIELDS or (op == "stat" and name == "blocks"):
            return self.rng.choice([True, False, None, 0, 1, "yes"])
        if name == "crcs":
            return [self.int_() for _ in range(self.rng.choice([0, 1, 2, 16, 200]))]
        if name in ("chunk_id", "cluster_id", "role"):
            return f"{MARK}-{self.rng.randrange(1 << 30)}" if self.chance(0.5) else self.str_()
        if name == "version":
            return self.rng.choice([1, 1, 1, 0, 2, -1, 1.0, True, "1", None, 2**64 - 1])
        if name in ("token", "nonce", "proof"):
            return self.rng.choice([None, self.bytes_(), [2**40, self.bytes_()], "x"])
        if name == "gen" and self.pools["gens"] and self.chance(0.5):
            return self.rng.choice(self.pools["gens"])
        return self.int_()

    def rid(self) -> int:
        r = self.rng.random()
        if r < 0.9:
            self.next_id += 1
            return self.next_id
        return self.rng.choice([0, -1, 2**64 - 1, -(2**63), self.next_id])

    def request(self, op: str) -> dict[str, Any]:
        h: dict[str, Any] = {"op": op, "id": self.rid()}
        for name in FIELDS.get(op, ()):
            if self.chance(0.85):
                h[name] = self.field(op, name)
        for _ in range(self.rng.choice([0, 0, 0, 1, 2])):
            h[self.rng.choice(["x", "", "op ", "ID", "\x00", "__class__", "payload",
                               self.str_()[:12]])] = self.value()
        return h

    def payload(self, op: str) -> bytes:
        if op in ("packet", "write_small") and self.chance(0.7):
            n = self.rng.choice([0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 200_000, MiB])
            return self.rng.randbytes(n)
        if self.chance(0.08):
            return self.rng.randbytes(self.rng.choice([1, 1000, CHUNK + 1]))
        return b""

    def op(self, ops: list[str]) -> str:
        r = self.rng.random()
        if r < 0.9:
            return self.rng.choice(ops)
        return self.rng.choice(["hello", "auth", "", "HELLO", "handle_stat", "__init__",
                                "_upload", "format_disk", "status\x00", "register"])

    def hello(self) -> dict[str, Any]:
        h: dict[str, Any] = {"op": "hello", "id": self.rid(), "version": PROTOCOL_VERSION,
                             "role": "client"}
        if self.chance(0.2):
            h["role"] = self.value()
        if self.chance(0.15):
            h[self.str_()[:10] or "k"] = self.value()
        if self.chance(0.05):
            h["nonce"] = self.bytes_()
        return h


def confuse(rng: random.Random, v: Any) -> Any:
    """The same value in another type or an edge of its range: what a sloppy or hostile
    client sends in a field the server expects to be well typed."""
    if isinstance(v, bool):
        return rng.choice([int(v), str(v), None, [v]])
    if isinstance(v, int) and rng.random() < 0.4:
        # Aliases Python compares equal to v (1.0 == 1 == True): the ones a check by `==`
        # or isinstance(x, int) lets through.
        return rng.choice([float(v), float(v), bool(v) if v in (0, 1) else float(v)])
    if isinstance(v, int):
        # (Kept inside msgpack's integer range: v may itself be an edge from an earlier round.)
        return rng.choice([float(v), str(v), [v], None, max(-v - 1, -(2**63)),
                           (v + 2**63) % 2**64, 2**64 - 1,
                           -(2**63), bool(v & 1), {"v": v}, v.to_bytes(8, "big", signed=True)
                           if -(2**63) <= v < 2**63 else b"\xff" * 8])
    if isinstance(v, str):
        return rng.choice([v.encode("utf-8", "surrogatepass"), v + "\x00", "", [v], 0, v * 3,
                           "/" + v])
    if isinstance(v, list):
        if v and rng.random() < 0.5:  # confuse one element, however deep
            i = rng.randrange(len(v))
            return v[:i] + [confuse(rng, v[i])] + v[i + 1:]
        if v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return rng.choice([[float(x) for x in v], [str(x) for x in v], [x + 2**32 for x in v],
                               v + v, v[:-1], [[x] for x in v], tuple(v), None,
                               [bool(x & 1) for x in v]])
        return rng.choice([[], None, {"0": v}, v + v, [v], "x"])
    return rng.choice([None, 0, "", [], {}])


# -- strategies -------------------------------------------------------------------------------

class Ctx:
    """What a strategy needs: the target, the random source, the connection."""

    def __init__(self, gen: Gen, conn: FuzzConn, target: str, ops: list[str],
                 notes: list[str]) -> None:
        self.gen, self.rng, self.conn = gen, gen.rng, conn
        self.target, self.ops = target, ops
        self.notes = notes  # invariant breaches seen by a strategy itself

    @property
    def is_meta(self) -> bool:
        return self.target == "meta"

    def hello(self) -> dict[str, Any] | None:
        return self.conn.call(self.gen.hello())

    def fresh_block(self) -> int:
        return self.rng.randrange(1 << 62, 1 << 63)


def s_random_bytes(c: Ctx) -> None:
    data = c.rng.randbytes(c.rng.choice([0, 1, 7, 8, 9, 100, 2000]))
    if c.rng.random() < 0.4:  # a prefix that passes the length checks, then noise
        data = struct.pack(">II", c.rng.randrange(1, 200), c.rng.randrange(0, 100)) + data
    c.conn.send(data)


def s_garbage_after_hello(c: Ctx) -> None:
    c.hello()
    c.conn.send(c.rng.randbytes(c.rng.choice([1, 8, 9, 64, 1000, 5000])))


def s_ops(c: Ctx) -> None:
    if c.rng.random() < 0.9:
        c.hello()
    for _ in range(c.rng.choice([1, 2, 3, 5, 8])):
        op = c.gen.op(c.ops)
        c.conn.request(c.gen.request(op), c.gen.payload(op))


def s_no_hello(c: Ctx) -> None:
    for _ in range(c.rng.choice([1, 2])):
        op = c.gen.op(c.ops)
        c.conn.request(c.gen.request(op), c.gen.payload(op))
    if c.rng.random() < 0.5:
        c.conn.request(c.gen.hello())


def s_bad_hello(c: Ctx) -> None:
    h = c.gen.hello()
    k = c.rng.choice(["version", "op", "id", "role", "extra", "twice", "auth", "notmap"])
    if k == "version":
        h["version"] = confuse(c.rng, 1)
    elif k == "op":
        h["op"] = c.rng.choice(["Hello", "hello\x00", "", 1, None, ["hello"]])
    elif k == "id":
        h["id"] = c.rng.choice(["1", 1.0, True, None, [1], 2**64 - 1, -(2**63)])
    elif k == "role":
        h["role"] = c.gen.value()
    elif k == "extra":
        h.update({c.gen.str_()[:8] or "e": c.gen.value() for _ in range(5)})
    elif k == "twice":
        c.conn.request(dict(h))
    elif k == "auth":
        h = {"op": "auth", "id": c.gen.rid(), "proof": c.gen.bytes_()}
    else:
        c.conn.send(frame_bytes(c.rng.choice([[h], "hello", 1, None, b"hello", [1, 2]])))
        return
    c.conn.send(frame_bytes(h))
    for _ in range(c.rng.choice([0, 1, 2])):
        op = c.gen.op(c.ops)
        c.conn.request(c.gen.request(op))


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3, 8])):
        if not b:
            break
        i = rng.randrange(len(b))
        kind = rng.choice(["flip", "set", "insert", "delete", "truncate", "length"])
        if kind == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "set":
            b[i] = rng.choice([0, 0xFF, 0xC1, 0xC0, 0xDD, 0xDF, 0xD4, 0x80, 0x90])
        elif kind == "insert":
            b[i:i] = rng.randbytes(rng.choice([1, 2, 4, 9]))
        elif kind == "delete":
            del b[i:i + rng.choice([1, 2, 4, 9])]
        elif kind == "truncate":
            del b[i:]
        else:
            b[i:i + 4] = rng.choice([0, 1, 8, MAX_HEADER, MAX_HEADER + 1, MAX_PAYLOAD,
                                     MAX_PAYLOAD + 1, 2**32 - 1]).to_bytes(4, "big")
    return bytes(b)


def s_mutated(c: Ctx) -> None:
    frames = b"".join(frame_bytes(c.gen.request(op), c.gen.payload(op))
                      for op in (c.gen.op(c.ops) for _ in range(c.rng.choice([1, 2, 4]))))
    if c.rng.random() < 0.85:
        c.hello()
        c.conn.send(mutate(c.rng, frames))
    else:
        c.conn.send(mutate(c.rng, frame_bytes(c.gen.hello()) + frames))


def s_truncated(c: Ctx) -> None:
    op = c.gen.op(c.ops)
    whole = frame_bytes(c.gen.request(op), c.gen.payload(op) or c.rng.randbytes(300))
    if c.rng.random() < 0.8:
        c.hello()
    else:
        whole = frame_bytes(c.gen.hello()) + whole
    c.conn.send(whole[:c.rng.randrange(0, len(whole))])


def s_huge_lengths(c: Ctx) -> None:
    if c.rng.random() < 0.7:
        c.hello()
    kind = c.rng.choice(["header", "payload", "over", "over", "zero"])
    if kind == "header":  # a full-size header announced, part of it sent
        data = struct.pack(">II", c.rng.choice([MAX_HEADER, MAX_HEADER - 1, 300_000]), 0) + \
            b"\xde\xff\xff" + c.rng.randbytes(c.rng.choice([0, 100, 70_000]))
    elif kind == "payload":  # a real request announcing a maximal payload, part of it sent
        body = msgpack.packb(c.gen.request(c.gen.op(c.ops)), use_bin_type=True,
                             unicode_errors="surrogatepass")
        data = struct.pack(">II", len(body), c.rng.choice([MAX_PAYLOAD, MAX_PAYLOAD - 1,
                                                           CHUNK + 1])) + body + \
            c.rng.randbytes(c.rng.choice([0, 1000, 300_000]))
    elif kind == "over":
        data = struct.pack(">II", c.rng.choice([MAX_HEADER + 1, 2**31, 2**32 - 1, 5]),
                           c.rng.choice([0, MAX_PAYLOAD + 1, 2**32 - 1])) + b"\x80" * 5
    else:
        data = struct.pack(">II", 0, c.rng.choice([0, 1, MAX_PAYLOAD]))
    c.conn.send(data)


def s_flood(c: Ctx) -> None:
    """Many requests pipelined without reading: the server throttles (back-pressure), then
    must answer every one."""
    if not ok(c.hello()):  # (the fuzzed hello may have lost its op: then it is refused)
        return
    n = c.rng.choice([100, 300, 600])
    if c.is_meta:
        reqs = [{"op": c.rng.choice(["status", "stat", "ls", "fsck"]), "id": 1000 + i,
                 "path": "/"} for i in range(n)]
    elif c.gen.pools["blocks"]:
        block, gen = c.gen.pools["block_gen"][-1]
        reqs = [{"op": "read_block", "id": 1000 + i, "block": block, "gen": gen,
                 "offset": 0, "length": CHUNK} for i in range(n)]
    else:
        reqs = [{"op": "block_info", "id": 1000 + i, "block": 5, "gen": 1} for i in range(n)]
    data = b"".join(frame_bytes(h) for h in reqs)
    t0 = now()
    c.conn.send(data, stall=10.0)
    deadline = now() + 60  # a ceiling: all replies normally come within a second or two
    while len(c.conn.replies) < n + 1 and now() < deadline and c.conn.poll(0.2):
        pass
    if len(c.conn.replies) < n + 1:
        c.notes.append(f"flood of {n} {reqs[0]['op']} to {c.target}: "
                       f"{len(c.conn.replies) - 1} replies in {now() - t0:.1f}s, "
                       f"{len(c.conn.sent)} bytes sent in all, "
                       f"closed={c.conn.closed}, stalled={c.conn.stalled}, "
                       f"first={reqs[0]!r:.120}, last reply={c.conn.replies[-1]!r:.200}")


# Well-formed sequences with one step or one field confused -------------------------------

def step(c: Ctx, header: dict[str, Any], payload: bytes = b"",
         confuse_it: bool = False) -> dict[str, Any] | None:
    """Send one request of a sequence, maybe with one of its fields confused."""
    if confuse_it:
        keys = [k for k in header if k not in ("op", "id")]
        if keys and c.rng.random() < 0.85:
            k = c.rng.choice(keys)
            header[k] = confuse(c.rng, header[k])
        elif c.rng.random() < 0.5:
            header[c.rng.choice(FIELDS.get(header["op"], ("x",)) or ("x",))] = c.gen.value()
        else:
            payload = mutate(c.rng, payload) if payload else c.rng.randbytes(10)
    return c.conn.call(header, payload)


def ok(reply: dict[str, Any] | None) -> bool:
    return reply is not None and "err" not in reply


def seq_upload(c: Ctx, bad: int) -> None:
    g = c.gen
    path = f"/{MARK}/up/{c.rng.randrange(1000)}" if c.rng.random() < 0.8 else \
        c.rng.choice(PATHS)
    bs = c.rng.choice([CHUNK, 2 * CHUNK, MiB])
    r = step(c, {"op": "create", "id": g.rid(), "path": path, "replication": 2,
                 "block_size": bs, "first_block": c.rng.random() < 0.5}, confuse_it=bad == 0)
    if not ok(r):
        return
    assert r is not None
    upload = r["upload"]
    g.pools["uploads"].append(upload)
    first = r.get("first")
    if not first or c.rng.random() < 0.3:
        first = step(c, {"op": "add_block", "id": g.rid(), "upload": upload, "exclude": []},
                     confuse_it=bad == 1)
        if not ok(first):
            return
    assert first is not None
    if c.rng.random() < 0.3:
        rec = step(c, {"op": "recover_block", "id": g.rid(), "upload": upload,
                       "block": first["block"], "exclude": first["targets"][:1],
                       "keep": first["targets"][1:]}, confuse_it=bad == 2)
        if ok(rec):
            assert rec is not None
            first = rec
    if c.rng.random() < 0.2:
        step(c, {"op": "renew", "id": g.rid(), "upload": upload}, confuse_it=bad == 3)
    if c.rng.random() < 0.15:
        step(c, {"op": "abort", "id": g.rid(), "upload": upload}, confuse_it=bad == 4)
    size = c.rng.choice([1, 100, bs])
    entry = [first["block"], first["gen"], size, list(first["targets"]),
             c.rng.choice([0, 1, 2**32 - 1])]
    commit = {"op": "commit", "id": g.rid(), "upload": upload, "blocks": [entry]}
    if size == bs and c.rng.random() < 0.3:  # a whole block may go ahead in a commit_part
        part = step(c, {"op": "commit_part", "id": g.rid(), "upload": upload,
                        "block_start": 0, "blocks": [list(entry)]}, confuse_it=bad == 5)
        if ok(part):
            commit.update(blocks=[], block_start=1)
    r = step(c, commit, confuse_it=bad >= 6)  # (confuses `commit` in place)
    if ok(r):
        assert r is not None
        check_published(c, r.get("path"), commit)


def check_published(c: Ctx, path: Any, commit: dict[str, Any] | None) -> None:
    """Invariant: whatever meta accepted, it publishes only well-typed block lists (ids as
    strings, gen and size plain non-negative ints), or no reader could read the file."""
    paged = {"block_start": 0} if c.rng.random() < 0.5 else {}
    st = c.conn.call({"op": "stat", "id": c.gen.rid(), "path": path, **paged})
    if not ok(st):
        return
    assert st is not None
    problems = []
    if type(st.get("size")) is not int:
        problems.append(f"size {st.get('size')!r}")
    for b in st.get("blocks", []):
        for k in ("gen", "size"):
            if type(b.get(k)) is not int or b[k] < 0:
                problems.append(f"block {k} {b.get(k)!r}")
    if problems:
        c.notes.append(f"meta published {path!r} with {', '.join(problems)} "
                       f"(commit request: {commit!r:.300})")


def seq_namespace(c: Ctx, bad: int) -> None:
    g = c.gen
    a = f"/{MARK}/ns/{c.rng.randrange(100)}"
    b = c.rng.choice([f"/{MARK}/ns/{c.rng.randrange(100)}", c.rng.choice(PATHS),
                      f"{a}/sub", a, f"{a}/.", "/", f"/{MARK}/ns", f"/{MARK}"])  # into itself
    steps = [
        {"op": "mkdir", "id": g.rid(), "path": a, "parents": True},
        {"op": "ls", "id": g.rid(), "path": a, "start_after": "", "limit": 10,
         "columns": c.rng.random() < 0.5},
        {"op": "mv", "id": g.rid(), "src": a, "dst": b},
        {"op": "stat", "id": g.rid(), "path": b, "blocks": True},
        {"op": "fsck", "id": g.rid(), "path": c.rng.choice([b, "/"])},
        {"op": "rm", "id": g.rid(), "path": c.rng.choice([a, b]), "recursive": True},
    ]
    for i, h in enumerate(steps):
        step(c, h, confuse_it=bad == i)


def seq_phantom(c: Ctx, bad: int) -> None:
    """A chunkserver nobody runs registers and reports blocks (real ones among them)."""
    g = c.gen
    sid = f"{MARK}-phantom-{c.rng.randrange(1 << 20)}"
    addr = c.rng.choice([f"127.0.0.1:{c.rng.choice([1, 9])}", f"{MARK}.invalid:1"])
    # Now and then it has room, so clients' writes go to a server that is not there and
    # must recover (pipeline recovery excludes it).
    stats = {"capacity": 1 << 40, "used": 0, "free": c.rng.choice([0, CHUNK - 1, 1 << 40]),
             "load": 0, "writing": 0}
    blocks = [[b, gen, c.rng.choice([0, 1, CHUNK]), c.rng.choice([0, 2**32 - 1])]
              for b, gen in g.pools["block_gen"][-3:]]
    r = step(c, {"op": "register", "id": g.rid(), "chunk_id": sid, "addr": addr,
                 "cluster_id": "", **stats, "blocks": blocks}, confuse_it=bad == 0)
    if not ok(r):
        return
    for i in range(c.rng.choice([1, 2, 3])):
        h = {"op": "heartbeat", "id": g.rid(), "chunk_id": sid, "addr": addr, **stats,
             "received": g.report(), "corrupt": [e[:2] for e in blocks]}
        step(c, h, confuse_it=bad == i + 1)
        if c.rng.random() < 0.5:  # a full block report, in one or two pages
            pages = [blocks[:1], blocks[1:]] if c.rng.random() < 0.5 else [blocks]
            for k, page in enumerate(pages):
                step(c, {"op": "block_report", "id": g.rid(), "chunk_id": sid, "addr": addr,
                         "blocks": page, "full": True, "first": k == 0,
                         "last": k == len(pages) - 1}, confuse_it=bad == i + 1)


def seq_meta_misc(c: Ctx, bad: int) -> None:
    g = c.gen
    if g.pools["block_gen"]:
        block, _ = c.rng.choice(g.pools["block_gen"])
        step(c, {"op": "report_bad", "id": g.rid(), "block": block,
                 "replica": c.rng.choice(g.pools["addrs"])}, confuse_it=bad == 0)
    step(c, {"op": "decommission", "id": g.rid(), "addr": f"127.0.0.1:{c.rng.randrange(1, 9)}"},
         confuse_it=bad == 1)
    step(c, {"op": "status", "id": g.rid()}, confuse_it=bad == 2)


def seq_pipeline(c: Ctx, bad: int) -> None:
    """write_block, packets with the right CRCs, the empty last packet; one step confused."""
    g = c.gen
    block, gen = c.fresh_block(), c.rng.choice([1, 2, 7])
    others = [a for a in g.pools["addrs"] if a != g.pools["self_addr"].get(c.target)]
    targets = c.rng.choice([[], [], others[:1], [f"127.0.0.1:{1}"]])
    r = step(c, {"op": "write_block", "id": g.rid(), "block": block, "gen": gen,
                 "targets": targets}, confuse_it=bad == 0)
    if not ok(r):
        return
    sizes = [c.rng.choice([CHUNK, 2 * CHUNK, 4 * CHUNK]) for _ in range(c.rng.choice([0, 1, 3]))]
    if c.rng.random() < 0.7:
        sizes.append(c.rng.choice([1, 100, CHUNK - 1, CHUNK + 5]))
    offset = 0
    for i, n in enumerate(sizes):
        data = c.rng.randbytes(n)
        step(c, {"op": "packet", "id": g.rid(), "block": block, "offset": offset,
                 "crcs": crcs_of(data)}, data, confuse_it=bad == i + 1)
        offset += n
    step(c, {"op": "packet", "id": g.rid(), "block": block, "offset": offset, "crcs": [],
             "last": True, "size": offset}, confuse_it=bad >= len(sizes) + 1)
    if c.rng.random() < 0.3:
        step(c, {"op": "abort_block", "id": g.rid(), "block": block})


def seq_write_small(c: Ctx, bad: int) -> None:
    g = c.gen
    others = [a for a in g.pools["addrs"] if a != g.pools["self_addr"].get(c.target)]
    data = c.rng.randbytes(c.rng.choice([1, 100, CHUNK, CHUNK + 1, 3 * CHUNK + 7]))
    step(c, {"op": "write_small", "id": g.rid(), "block": c.fresh_block(),
             "gen": c.rng.choice([1, 3]), "targets": c.rng.choice([[], others[:1]]),
             "crcs": crcs_of(data), "size": len(data)}, data, confuse_it=bad < 6)


def seq_read(c: Ctx, bad: int) -> None:
    g = c.gen
    pairs = g.pools["block_gen"] or [(c.fresh_block(), 1)]
    block, gen = c.rng.choice(pairs)
    step(c, {"op": "read_block", "id": g.rid(), "block": block, "gen": gen,
             "offset": c.rng.choice([0, CHUNK]), "length": c.rng.choice([CHUNK, MiB, 0])},
         confuse_it=bad < 5)
    step(c, {"op": "block_info", "id": g.rid(), "block": block, "gen": gen},
         confuse_it=bad >= 5)


META_SEQS = [seq_upload, seq_upload, seq_namespace, seq_phantom, seq_meta_misc]
CHUNK_SEQS = [seq_pipeline, seq_pipeline, seq_write_small, seq_read]


def s_semi_valid(c: Ctx) -> None:
    if not ok(c.hello()):
        return
    seq = c.rng.choice(META_SEQS if c.is_meta else CHUNK_SEQS)
    seq(c, c.rng.randrange(8))


STRATEGIES: dict[str, tuple[int, Callable[[Ctx], None]]] = {
    "random_bytes": (9, s_random_bytes),
    "garbage_after_hello": (5, s_garbage_after_hello),
    "ops_random_fields": (24, s_ops),
    "mutated_frames": (14, s_mutated),
    "no_hello": (5, s_no_hello),
    "bad_hello": (6, s_bad_hello),
    "semi_valid": (28, s_semi_valid),
    "truncated": (7, s_truncated),
    "huge_lengths": (5, s_huge_lengths),
    "flood": (1, s_flood),
}


# -- checks on the daemons --------------------------------------------------------------------

def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tracebacks(log_path: Path) -> list[str]:
    """Each traceback in a daemon log (a chained one counts once), with the log line that
    introduced it, the innermost frame of the last exception, and that exception."""
    lines = log_path.read_text(errors="replace").splitlines()
    found = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("Traceback"):
            i += 1
            continue
        start, j = i, i + 1
        while j < len(lines):
            line = lines[j]
            if line.startswith((" ", "\t", "Traceback", "During handling",
                                "The above exception")) or line == "":
                j += 1
            elif j + 2 < len(lines) and lines[j + 1] == "" and \
                    lines[j + 2].startswith(("During handling", "The above exception")):
                j += 1  # the exception line of a link in a chain
            else:
                break
        where = [x.strip() for x in lines[start:j] if x.strip().startswith("File ")]
        last = lines[j] if j < len(lines) else "?"
        intro = lines[start - 1] if start else ""
        intro = re.sub(r"^\S+ \S+ \S+ ", "", intro)  # drop the timestamp and role:port
        intro = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDR", intro)
        found.append(f"{intro} | {where[-1] if where else '?'} | {last}")
        i = j + 1
    return found


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


BLOCK_FILE = re.compile(r"^blocks(/[0-9a-f]{2}(/blk_[0-9a-f]{16}_\d+(\.tmp)?)?)?$")


def stray_files(cluster: Cluster, before: dict[str, set[str]]) -> list[str]:
    """Files that are not what a dfsd writes, or that carry the fuzzer's mark."""
    problems = []
    base = cluster.base
    data_dirs = {d.data_dir.name for d in cluster.daemons.values()}
    outside = {p for p in tree(base) if p.split("/")[0] not in data_dirs}
    for p in sorted(outside - before["base"]):
        problems.append(f"new file outside the data dirs: {base / p}")
    for d in cluster.daemons.values():
        for p in sorted(tree(d.data_dir) - before[d.name]):
            if d.role == "chunk" and BLOCK_FILE.match(p):
                continue
            if d.role == "meta" and re.match(r"^(journal|checkpoint)[\w.-]*$", p):
                continue
            problems.append(f"unexpected file in {d.name}'s data dir: {p}")
    look = [base.parent, base.parent.parent, Path("/tmp"), Path("/etc"), Path("/"),
            Path.cwd(), Path.home()]
    for root in look:
        with contextlib.suppress(OSError):
            for entry in os.scandir(root):
                if MARK in entry.name:
                    problems.append(f"file named by a client string: {entry.path}")
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            if MARK in name:
                problems.append(f"file named by a client string: {os.path.join(root, name)}")
    return problems


def round_trip(cluster: Cluster, tag: str, size: int, stdlib_loop: bool = False) -> None:
    """put then get with a normal client: dfs.Client (uvloop), or an AsyncClient on the
    standard asyncio loop (whose getaddrinfo fails differently on odd host names)."""
    data = random.Random(tag).randbytes(size)
    path = f"/fuzzcheck/{tag}"
    if stdlib_loop:
        assert asyncio.run(async_round_trip(cluster, path, data)) == data, f"{tag} differs"
        return
    client = dfs_client(cluster)
    try:
        client.put_bytes(data, path)
        assert client.get_bytes(path) == data, f"round trip {tag} differs"
    finally:
        client.close()


async def async_round_trip(cluster: Cluster, path: str, data: bytes) -> bytes:
    client = AsyncClient(cluster.meta_addr, timeout=20)
    try:
        await client.put_bytes(data, path)
        return await client.get_bytes(path)
    finally:
        await client.close()


def dfs_client(cluster: Cluster) -> Any:
    import dfs
    return dfs.Client(cluster.meta_addr, timeout=20)


def refresh_pools(cluster: Cluster, pools: dict[str, Any]) -> None:
    """Real block ids and generations (from files the round trips wrote) for the fuzzer."""
    client = dfs_client(cluster)
    try:
        for entry in client.ls("/fuzzcheck"):
            st = client.stat(entry["path"])
            for b in st.get("blocks", []):
                pair = (int(b["id"]), b["gen"])
                if pair not in pools["block_gen"]:
                    pools["block_gen"].append(pair)
                    pools["blocks"].append(pair[0])
                    pools["gens"].append(pair[1])
    finally:
        client.close()


# -- the fuzzer -------------------------------------------------------------------------------

@pytest.mark.timeout(max(120, int(60 + COUNT * 0.3)))
def test_socket_fuzzer(cluster: Cluster) -> None:
    assert COUNT >= 1, f"DFS_FUZZ_COUNT={COUNT}: nothing would be fuzzed"
    t_start = now()
    rng = random.Random(SEED)
    names = ["meta", "chunk0", "chunk1"]
    pools: dict[str, Any] = {"blocks": [], "gens": [], "block_gen": [], "uploads": [],
                             "addrs": [cluster[n].addr for n in ("chunk0", "chunk1")],
                             "self_addr": {n: cluster[n].addr for n in names}}
    round_trip(cluster, "setup-small", 100 * KiB)
    round_trip(cluster, "setup-large", 3 * MiB + 5)
    refresh_pools(cluster, pools)
    before = {"base": {p for p in tree(cluster.base)
                       if p.split("/")[0] not in {d.data_dir.name
                                                  for d in cluster.daemons.values()}}}
    before.update({d.name: tree(d.data_dir) for d in cluster.daemons.values()})
    rss0 = {n: rss(cluster[n].pid) for n in names}
    gen = Gen(rng, pools)

    per_strategy: collections.Counter[str] = collections.Counter()
    per_target: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    internal: list[str] = []
    anomalies: list[str] = []
    notes: list[str] = []
    outages: list[str] = []  # round trips that failed once, then worked
    lingering: list[FuzzConn] = []
    rss_max = dict(rss0)
    weights = [w for w, _ in STRATEGIES.values()]
    strategies = list(STRATEGIES)

    def fail_report() -> str:
        return "\n".join([summary(), *outages, *anomalies[:40], *internal[:40], *notes[:40],
                           cluster.log_tail(30)])

    def summary() -> str:
        return (f"FUZZ seed={SEED} connections={sum(per_strategy.values())} "
                f"duration={now() - t_start:.1f}s targets={dict(sorted(per_target.items()))} "
                f"strategies={dict(sorted(per_strategy.items()))} "
                f"replies={dict(sorted(kinds.items()))}")

    for i in range(COUNT):
        target = rng.choice(names)
        name = rng.choices(strategies, weights)[0]
        per_strategy[name] += 1
        per_target[target] += 1
        ops = META_OPS if target == "meta" else CHUNK_OPS
        try:
            conn = FuzzConn(cluster[target].port)
        except OSError as exc:
            pytest.fail(f"cannot connect to {target} (#{i}): {exc!r}\n{fail_report()}")
        ctx = Ctx(gen, conn, target, ops, notes)
        try:
            STRATEGIES[name][1](ctx)
            conn.settle()
        except OSError as exc:
            anomalies.append(f"#{i} {name}->{target}: client-side socket error {exc!r}")
        expected, must_close = conn.expected, conn.must_close
        sent_ids = {h["id"] for h in conn.answered}
        for h in conn.replies:
            rid, err = h.get("id"), h.get("err")
            if err is None:
                kinds["ok"] += 1
                continue
            kinds[f"{err}@conn" if rid == 0 and 0 not in sent_ids else str(err)] += 1
            if err not in ERROR_CODES or not isinstance(h.get("msg"), str):
                anomalies.append(f"#{i} {name}->{target}: malformed error reply {h!r:.300}")
            if err == "internal":
                internal.append(f"#{i} {name}->{target}: internal error {h.get('msg')!r:.200} "
                                f"for {conn.request_for(rid)!r:.400}")
        for h in conn.replies:
            if h.get("id") not in sent_ids and h.get("id") != 0:
                anomalies.append(f"#{i} {name}->{target}: a reply to no request: {h!r:.200}")
        if len(conn.replies) > expected:
            anomalies.append(f"#{i} {name}->{target}: {len(conn.replies)} replies to "
                             f"{expected} requests")
        if conn.bad_reply:
            anomalies.append(f"#{i} {name}->{target}: {conn.bad_reply}")
        if conn.closed:
            kinds["close(reset)" if conn.reset else "close"] += 1
            if not must_close and not conn.stalled:
                anomalies.append(f"#{i} {name}->{target}: the server hung up on a well-formed "
                                 f"stream ({len(conn.replies)}/{expected} replies); "
                                 f"sent {bytes(conn.sent[:200])!r}")
        else:
            if must_close:
                kinds["no_close"] += 1
                anomalies.append(f"#{i} {name}->{target}: no close after a violation or a "
                                 f"refused hello; sent {bytes(conn.sent[:120])!r}")
            missing = conn.missing_prompt()
            if missing:
                kinds["no_reply"] += 1
                anomalies.append(f"#{i} {name}->{target}: no reply within {WAIT + SLOW_WAIT}s "
                                 f"to {missing}")
            elif len(conn.replies) < expected:
                kinds["slow_reply"] += 1  # a pipeline op still waiting on a downstream server
        if conn.stalled:
            kinds["send_stalled"] += 1
        if not conn.closed and len(lingering) < 20 and rng.random() < 0.05:
            lingering.append(conn)  # left open (some mid-frame) until the end
        else:
            conn.close(rng.choice(["close", "close", "rst", "half"]))

        if (i + 1) % CHECK_EVERY == 0 or i + 1 == COUNT:
            for n in names:
                if not cluster[n].running():
                    pytest.fail(f"{n} died after connection #{i}\n{fail_report()}")
                rss_max[n] = max(rss_max[n], rss(cluster[n].pid))
            size = rng.choice([10 * KiB, 300 * KiB])
            stdlib = (i + 1) // CHECK_EVERY % 2 == 1
            try:
                round_trip(cluster, f"after-{i + 1}", size, stdlib)
            except Exception as exc:  # noqa: BLE001 - reported with everything we know
                # Maybe an outage that heals (a phantom chunkserver is declared dead after
                # DEAD_TIMEOUT): note it, wait that long, and insist the second time.
                outages.append(f"put/get after connection #{i} failed "
                               f"({'asyncio' if stdlib else 'uvloop'} client): "
                               f"{type(exc).__name__}: {exc}")
                time.sleep(4)
                try:
                    round_trip(cluster, f"after-{i + 1}-retry", size, stdlib)
                except Exception as exc2:  # noqa: BLE001
                    pytest.fail(f"put/get still fails after connection #{i}: {exc2!r}\n"
                                f"{fail_report()}")
            if len(pools["block_gen"]) < 40:
                refresh_pools(cluster, pools)

    for conn in lingering:
        conn.close("close")
    round_trip(cluster, "final-large", 3 * MiB + 5)
    for n in names:
        assert cluster[n].running(), f"{n} died\n{fail_report()}"
    rss1 = {n: rss(cluster[n].pid) for n in names}
    for n in names:
        rss_max[n] = max(rss_max[n], rss1[n])

    line = summary()
    print("\n" + line)
    assert sum(per_strategy.values()) == COUNT >= 1, line
    print(f"FUZZ rss_mib start={_mib(rss0)} max={_mib(rss_max)} end={_mib(rss1)}")
    traces: collections.Counter[str] = collections.Counter()
    for d in cluster.daemons.values():
        for t in tracebacks(d.log_path):
            traces[f"{d.name}: {t}"] += 1
    strays = stray_files(cluster, before)
    for title, items in (("internal errors", internal), ("anomalies", anomalies),
                         ("round-trip outages", outages),
                         ("strategy notes", notes), ("stray files", strays),
                         ("tracebacks", [f"{n}x {t}" for t, n in traces.most_common()])):
        print(f"FUZZ {title}: {len(items)}")
        for item in items[:25]:
            print(f"  {item}")

    problems = []
    if traces:
        problems.append(f"{sum(traces.values())} tracebacks in daemon logs "
                        f"({len(traces)} kinds)")
    if internal:
        problems.append(f"{len(internal)} internal-error replies")
    if anomalies:
        problems.append(f"{len(anomalies)} protocol anomalies")
    if notes:
        problems.append(f"{len(notes)} invariant breaches seen by the strategies")
    if outages:
        problems.append(f"{len(outages)} put/get round trips failed (then worked)")
    if strays:
        problems.append(f"{len(strays)} stray files")
    too_big = {n: v for n, v in rss1.items() if v > RSS_LIMIT}
    if too_big:
        problems.append(f"RSS over {RSS_LIMIT >> 20} MiB: {_mib(too_big)}")
    assert not problems, "; ".join(problems) + " (details above)"


def _mib(d: dict[str, int]) -> dict[str, int]:
    return {k: v >> 20 for k, v in d.items()}


# -- regressions: one deterministic test per bug the fuzzer found ---------------------------

def rpc(port: int, *requests: tuple[dict[str, Any], bytes]) -> list[dict[str, Any] | None]:
    """hello, then each request in turn; the reply to each (None: no reply within 15 s)."""
    conn = FuzzConn(port)
    try:
        assert ok(conn.call({"op": "hello", "id": 1, "version": PROTOCOL_VERSION,
                             "role": "client"}))
        return [conn.call(h, p, timeout=15.0) for h, p in requests]
    finally:
        conn.close("close")


def test_every_listed_op_is_answered_by_a_real_server(shared_cluster: Cluster) -> None:
    """The fuzzers' op lists (ops.py) are written out, not taken from the servers' handler
    names: each listed op, sent bare to a real server, must reach a handler (any reply but
    "unknown op"), so a renamed or removed op fails here instead of silently leaving the
    fuzzers sending frames every server refuses alike."""
    unknown = re.compile(r"unknown op")
    for name, ops in (("meta", META_OPS), ("chunk0", CHUNK_OPS)):
        control = f"no_such_op_{MARK}"
        requests = [({"op": op, "id": 2 + i}, b"") for i, op in enumerate([control, *ops])]
        replies = rpc(shared_cluster[name].port, *requests)
        # The control shows what "unknown" looks like, so the check below can tell.
        ctl = replies[0]
        assert ctl is not None and ctl.get("err") == "bad_request" and \
            unknown.search(str(ctl.get("msg"))), ctl
        wrong = [f"{op}: {reply!r}" for op, reply in zip(ops, replies[1:], strict=True)
                 if reply is None or unknown.search(str(reply.get("msg", "")))]
        assert not wrong, f"{name} does not answer these listed ops:\n" + "\n".join(wrong)


def test_listed_ops_match_the_protocol_document() -> None:
    """ops.py and the message summary of docs/PROTOCOL.md (section 11) name the same ops for
    each receiver: an op documented later is added to the fuzzers too."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
    rows = re.findall(r"^\| `(\w+)` \| [^|]*→ (meta|chunk) \|", doc.read_text(), re.M)
    assert rows, f"no message summary table found in {doc}"
    documented = {role: sorted(op for op, r in rows if r == role) for role in ("meta", "chunk")}
    assert documented == {"meta": META_OPS, "chunk": CHUNK_OPS}, documented


def traceback_count(cluster: Cluster) -> int:
    return sum(len(tracebacks(d.log_path)) for d in cluster.daemons.values())


def a_real_block(cluster: Cluster) -> tuple[int, int]:
    client = dfs_client(cluster)
    try:
        client.put_bytes(b"r" * 200_000, "/regress/real")
        b = client.stat("/regress/real")["blocks"][0]
        return int(b["id"]), b["gen"]
    finally:
        client.close()


@pytest.mark.parametrize("offset,length", [(2**63, 0), (2**64 - CHUNK, MiB)],
                         ids=["2**63-at-once", "2**64-64KiB-disk-thread"])
def test_read_block_at_an_offset_past_2_63_is_a_bad_request(shared_cluster: Cluster,
                                                            offset: int, length: int) -> None:
    """Found by the fuzzer: os.pread raised OverflowError for offsets >= 2**63 (blockstore.py
    read), which `_read` did not catch: an `internal` reply and a traceback in the log."""
    block, gen = a_real_block(shared_cluster)
    holder = next(n for n in ("chunk0", "chunk1") if block in
                  shared_cluster.stored_block_ids(n))
    before = traceback_count(shared_cluster)
    [reply] = rpc(shared_cluster[holder].port,
                  ({"op": "read_block", "id": 2, "block": block, "gen": gen, "offset": offset,
                    "length": length}, b""))
    assert reply is not None, "no reply"
    # Refused, or answered like any read past the end (no bytes, no CRCs): not `internal`.
    assert reply.get("err") == "bad_request" or ("err" not in reply and reply["crcs"] == []), \
        reply
    assert traceback_count(shared_cluster) == before


BAD_TARGETS = ["127.0.0.1:0", "127.0.0.1:70000", ":5000", "[::1]:", "127.0.0.1:²",
               f"../../etc/{MARK}", "\x7f\x80\xff", "\u202e", "a" * 300]


@pytest.mark.parametrize("op", ["write_block", "write_small"])
def test_a_pipeline_target_that_is_no_address_is_unavailable(shared_cluster: Cluster,
                                                             op: str) -> None:
    """Found by the fuzzer: Connection.open let ValueError (config.parse_addr) and UnicodeError
    (IDNA encoding in getaddrinfo) escape, where an unreachable target is `unavailable` naming
    it (`bad`): the chunkserver answered `internal` and logged a traceback instead."""
    before = traceback_count(shared_cluster)
    data = b"d" * 1000
    wrong = []
    for k, target in enumerate(BAD_TARGETS):
        header: dict[str, Any] = {"op": op, "id": 2, "block": 77_000 + k, "gen": 1,
                                  "targets": [target]}
        if op == "write_small":
            header.update(crcs=crcs_of(data), size=len(data))
        [reply] = rpc(shared_cluster["chunk0"].port,
                      (header, data if op == "write_small" else b""))
        if reply is None or reply.get("err") != "unavailable" or reply.get("bad") != target:
            wrong.append(f"{target!r}: {reply}")
    assert not wrong, "\n".join(wrong)
    assert traceback_count(shared_cluster) == before


def test_crcs_must_be_integers(shared_cluster: Cluster) -> None:
    """Found by the fuzzer: verify_crcs compared with `!=`, so 12345.0 passed as the CRC 12345;
    the block's seal then failed in struct.pack (struct.error, not caught): `internal` replies
    and tracebacks on every server of the chain."""
    before = traceback_count(shared_cluster)
    data = b"f" * 1000
    crcs = [float(c) for c in crcs_of(data)]
    small = {"op": "write_small", "id": 2, "block": 88_001, "gen": 1, "targets": [],
             "crcs": crcs, "size": len(data)}
    block = 88_002
    replies = rpc(shared_cluster["chunk0"].port, (small, data),
                  ({"op": "write_block", "id": 3, "block": block, "gen": 1, "targets": []}, b""),
                  ({"op": "packet", "id": 4, "block": block, "offset": 0, "crcs": crcs}, data),
                  ({"op": "packet", "id": 5, "block": block, "offset": len(data), "crcs": [],
                    "last": True, "size": len(data)}, b""))
    errs = [r.get("err") if r else "no reply" for r in replies]
    assert errs[0] == "bad_request", replies[0]
    assert errs[2] == "bad_request", replies[2]  # refused when the CRCs arrive ...
    assert errs[3] == "bad_request", replies[3]  # ... so the block cannot be sealed
    assert traceback_count(shared_cluster) == before


@pytest.mark.parametrize("field,value", [("gen", 1.0), ("gen", True), ("size", True)])
def test_commit_refuses_non_integer_gen_and_size(shared_cluster: Cluster, field: str,
                                                 value: Any) -> None:
    """Found by the fuzzer's check of published files: commit compared `info.gen != gen` and
    checked the size with isinstance(size, int), so gen 1.0 or True and size True passed;
    meta journaled and published them, and every chunkserver refuses to read a block of gen
    1.0/True: the file could never be read (and the journal kept it that way)."""
    meta = shared_cluster["meta"].port
    path = f"/regress/commit-{field}-{value!r}"
    create, = rpc(meta, ({"op": "create", "id": 2, "path": path, "replication": 1,
                          "block_size": CHUNK, "first_block": True}, b""))
    assert ok(create), create
    assert create is not None
    first = create["first"]
    data = b"c" * 100
    [written] = rpc(shared_cluster.by_addr(first["targets"][0]).port,
                    ({"op": "write_small", "id": 2, "block": first["block"], "gen": 1,
                      "targets": [], "crcs": crcs_of(data), "size": len(data)}, data))
    assert ok(written), written
    entry = {"id": first["block"], "gen": 1, "size": len(data), field: value}
    [commit] = rpc(meta, ({"op": "commit", "id": 3, "upload": create["upload"],
                           "blocks": [[entry["id"], entry["gen"], entry["size"],
                                       first["targets"][:1], checksum.digest(crcs_of(data))]]},
                          b""))
    assert commit is not None, "no reply"
    if commit.get("err") == "bad_request":
        return
    # Accepted: then what meta publishes must be plain integers, and the file readable.
    [st] = rpc(meta, ({"op": "stat", "id": 4, "path": path}, b""))
    assert st is not None and ok(st), st
    b = st["blocks"][0]
    assert type(b["gen"]) is int and type(b["size"]) is int and type(st["size"]) is int, st
    client = dfs_client(shared_cluster)
    try:
        assert client.get_bytes(path) == data
    finally:
        client.close()


# A chunkserver address meta accepts (a HOST alone means port 5000) that no connection can
# use: IDNA cannot encode it, so getaddrinfo raises UnicodeError, not OSError.
UNRESOLVABLE = f"../../{MARK}"


def register_unresolvable(cluster: Cluster, free: int,
                          blocks: list[list[int]] | None = None) -> bool:
    """Register a chunkserver at UNRESOLVABLE; False if meta refuses the address (a fix)."""
    [reply] = rpc(cluster["meta"].port,
                  ({"op": "register", "id": 2, "chunk_id": f"{MARK}-bad-addr",
                    "addr": UNRESOLVABLE, "cluster_id": "", "capacity": 1 << 50, "used": 0,
                    "free": free, "load": 0, "writing": 0, "blocks": blocks or []}, b""))
    assert reply is not None
    if reply.get("err") == "bad_request":
        return False
    assert ok(reply), reply
    return True


def test_writes_survive_a_chunkserver_at_an_unresolvable_address(cluster: Cluster) -> None:
    """Found by the fuzzer (a failed round trip): Connection.open (net/connection.py) turned only
    timeouts, SSL and OSError into DFSErrors; the UnicodeError of an address IDNA cannot
    encode went through raw, so pipeline recovery never excluded the server: every put meta
    placed on it failed (until meta declared it dead), where a dead server is just skipped. A
    chunkserver started with a bad --advertise would do this to a real cluster."""
    if not register_unresolvable(cluster, free=1 << 50):  # the emptiest: chosen first
        return
    client = dfs_client(cluster)
    try:
        client.put_bytes(b"w" * 1000, "/regress/after-bad-addr")
        assert client.get_bytes("/regress/after-bad-addr") == b"w" * 1000
    finally:
        client.close()


def test_reads_survive_a_replica_at_an_unresolvable_address(cluster: Cluster) -> None:
    """Same cause: a replica list naming such a server made `get` fail with UnicodeError
    instead of reading another replica."""
    client = dfs_client(cluster)
    try:
        data = random.Random(5).randbytes(4 * CHUNK)
        client.put_bytes(data, "/regress/read", replication=3, block_size=CHUNK)
        report = [[int(b["id"]), b["gen"], b["size"]]
                  for b in client.stat("/regress/read")["blocks"]]
        if not register_unresolvable(cluster, free=0, blocks=report):
            return
        replicas = client.stat("/regress/read")["blocks"][0]["replicas"]
        assert UNRESOLVABLE in replicas, replicas
        assert client.get_bytes("/regress/read") == data
    finally:
        client.close()


def test_a_copy_to_a_chunkserver_at_an_unresolvable_address_fails_cleanly(
        cluster: Cluster) -> None:
    """Same cause: meta picks such a server as the target of a re-replication; the source's
    ChunkService._copy caught only DFSError and OSError, so the task died with "Task
    exception was never retrieved" and a traceback in the chunkserver's log."""
    client = dfs_client(cluster)
    try:
        client.put_bytes(b"c" * 1000, "/regress/copy", replication=2)
        b = client.stat("/regress/copy")["blocks"][0]
    finally:
        client.close()
    if not register_unresolvable(cluster, free=1 << 50):
        return
    before = traceback_count(cluster)
    # One replica reported bad: meta deletes it and has the other copied, to the emptiest
    # server that lacks the block, ours. Keep ours alive meanwhile.
    rpc(cluster["meta"].port, ({"op": "report_bad", "id": 3, "block": int(b["id"]),
                                "replica": b["replicas"][0]}, b""))
    beat = {"op": "heartbeat", "id": 4, "chunk_id": f"{MARK}-bad-addr", "addr": UNRESOLVABLE,
            "capacity": 1 << 50, "used": 0, "free": 1 << 50, "load": 0, "writing": 0}
    def copies() -> list[str]:
        return [line for d in cluster.chunkservers for line in
                d.log_path.read_text(errors="replace").splitlines()
                if f"copy of block {int(b['id'])} to {UNRESOLVABLE}" in line]
    # Until the source has tried (and failed) the copy: the event, not a fixed wait. The
    # beats (every 0.5 s, as a real chunkserver's here) keep our server alive meanwhile.
    deadline = time.monotonic() + 30
    while not copies():
        assert time.monotonic() < deadline, "no copy to the unresolvable server was tried " \
            f"in 30 s:\n{cluster.log_tail(20)}"
        rpc(cluster["meta"].port, (beat, b""))
        time.sleep(0.5)
    assert any("failed" in line for line in copies()), copies()
    assert traceback_count(cluster) == before, "\n".join(copies())


def test_writes_survive_a_chunkserver_whose_address_holds_a_nul(cluster: Cluster) -> None:
    """Left open by the fix of the UnicodeError case: meta accepts "a\\x00b:1" as a chunkserver
    address, and on the standard asyncio loop (no uvloop: an AsyncClient in an application's
    own loop) getaddrinfo raises a plain ValueError ("embedded null character"), which
    Connection.open does not turn into Unavailable (it catches UnicodeError only), so every
    put placed on that server fails with ValueError."""
    [reply] = rpc(cluster["meta"].port,
                  ({"op": "register", "id": 2, "chunk_id": f"{MARK}-nul-addr",
                    "addr": "a\x00b:1", "cluster_id": "", "capacity": 1 << 50, "used": 0,
                    "free": 1 << 50, "load": 0, "writing": 0}, b""))
    assert reply is not None
    if reply.get("err") == "bad_request":
        return  # meta refusing such an address is a fix too
    data = b"n" * 1000
    assert asyncio.run(async_round_trip(cluster, "/regress/after-nul-addr", data)) == data
