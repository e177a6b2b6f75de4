"""A socket-level fuzzer against running servers: random bytes, mutated and truncated frames,
absurd declared lengths, and every op of meta and chunkservers with fields of random types.

Fixed seed and a bounded count in the suite; run longer with
    DFS_FUZZ_COUNT=5000 DFS_FUZZ_SEED=7 \
        python3 -m pytest -q -s tests/integration/test_socket_fuzz.py
Afterwards every server must still be alive and serving (a client round trip), its log free
of tracebacks, its memory bounded, and no file may exist outside the data dirs: client strings
never become paths. The summary line (printed with -s) gives the counts per strategy and per
outcome, with the seed.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cluster import Cluster, data_of
from ops import CHUNK_OPS, META_OPS

import dfs
from dfs.config import PROTOCOL_VERSION

SEED = int(os.environ.get("DFS_FUZZ_SEED", "20261125"))
COUNT = int(os.environ.get("DFS_FUZZ_COUNT", "240"))
if COUNT < 1:
    raise ValueError(f"DFS_FUZZ_COUNT={COUNT}: the fuzzer would run no connection at all")
PREFIX = struct.Struct(">II")
ESCAPE = "fuzz-escape-" + str(SEED)  # a name that must never appear outside the data dirs

FIELDS = ["path", "upload", "block", "gen", "offset", "length", "crcs", "size", "targets",
          "token", "replication", "block_size", "start_after", "limit", "recursive",
          "parents", "src", "dst", "exclude", "keep", "blocks", "addr", "chunk_id",
          "cluster_id", "capacity", "used", "free", "received", "corrupt", "full_report",
          "replica", "last", "columns", "first_block", "nonce", "proof", "version", "role"]


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    body = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(len(body), len(payload)) + body + payload


def hello() -> bytes:
    return frame({"op": "hello", "id": 1, "version": PROTOCOL_VERSION, "role": "client"})


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(11 if depth < 2 else 8)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**31, 2**32 + 1, 2**63 - 1, -(2**63), 65536, 1 << 20])
    if kind == 1:
        return rng.randrange(-1000, 1 << 40)
    if kind == 2:
        return rng.choice(["", "/", "/a", "..", "/../../" + ESCAPE, "../" + ESCAPE,
                          "/x\x00y", "/" + "a" * 5000, "127.0.0.1:1", "é/ü", "//", "/./b/"])
    if kind == 3:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 4:
        return None
    if kind == 5:
        return rng.random() < 0.5
    if kind == 6:
        return rng.uniform(-1e9, 1e9)
    if kind == 7:
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(0, 20)))
    if kind == 8:
        return [value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if kind == 9:
        return {rng.choice(FIELDS): value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}
    return [[value(rng, depth + 2) for _ in range(3)] for _ in range(rng.randrange(0, 4))]


def random_request(rng: random.Random, ops: list[str], rid: int) -> bytes:
    header: dict[str, Any] = {"op": rng.choice(ops + ["nope", ""]), "id": rid}
    for _ in range(rng.randrange(0, 7)):
        header[rng.choice(FIELDS)] = value(rng)
    payload = rng.randbytes(rng.choice([0, 0, 1, 100, 65536, 70000, 1 << 20]))
    return frame(header, payload)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        i = rng.randrange(len(b))
        op = rng.randrange(3)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = rng.randbytes(rng.randrange(1, 5))
        else:
            del b[i:i + rng.randrange(1, 5)]
    return bytes(b)


def strategy(rng: random.Random, ops: list[str]) -> tuple[str, bytes]:
    name = rng.choice(["random", "requests", "mutated", "truncated", "huge", "no-hello"])
    if name == "random":
        return name, rng.randbytes(rng.randrange(1, 4096))
    reqs = b"".join(random_request(rng, ops, i + 2) for i in range(rng.randrange(1, 8)))
    if name == "requests":
        return name, hello() + reqs
    if name == "mutated":
        return name, hello() + mutate(rng, reqs)
    if name == "truncated":
        return name, hello() + reqs[:rng.randrange(1, len(reqs))]
    if name == "huge":
        return name, hello() + PREFIX.pack(rng.choice([2**31, 2**32 - 1, 1 << 21]),
                                           rng.choice([0, 2**32 - 1, 9 << 20]))
    return name, reqs  # requests without hello first


def exchange(addr: tuple[str, int], data: bytes, quiet: float = 0.1,
             linger: float = 0.0) -> str:
    """Send, then read until the server closes or goes quiet for `quiet` seconds (after a
    reply, for `linger` seconds more at least): the outcome in one word."""
    with socket.create_connection(addr, timeout=2) as s:
        try:
            s.sendall(data)
        except OSError:
            return "closed-while-sending"
        s.settimeout(quiet)
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return "closed" if got else "closed-silently"
                got += chunk
                s.settimeout(max(quiet, linger))
        except TimeoutError:
            return "replied-open" if got else "quiet-open"
        except OSError:
            return "reset"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def round_trip(cluster: Cluster, n: int) -> None:
    data = data_of(200_000 + n, n)
    with dfs.Client(cluster.meta_addr, timeout=20) as c:
        c.put_bytes(data, f"/fuzzcheck/f{n}")
        assert c.get_bytes(f"/fuzzcheck/f{n}") == data


@pytest.mark.timeout(max(120, int(60 + COUNT * 0.1)))
def test_servers_survive_a_seeded_socket_fuzzer(make_cluster, tmp_path: Path) -> None:
    assert COUNT >= 1, f"DFS_FUZZ_COUNT={COUNT}: nothing would be fuzzed"
    cluster: Cluster = make_cluster(2)
    rng = random.Random(SEED)
    targets = [("meta", META_OPS, cluster.meta)] + \
        [("chunk", CHUNK_OPS, d) for d in cluster.chunkservers]
    strategies: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(COUNT):
        role, ops, daemon = rng.choice(targets)
        name, data = strategy(rng, ops)
        strategies[f"{role}/{name}"] += 1
        host, port = daemon.addr.rsplit(":", 1)
        outcomes[exchange((host, int(port)), data)] += 1
        if i % 100 == 99:
            for d in cluster.daemons.values():
                assert d.running(), f"{d.name} died after {i + 1} fuzz connections"
            round_trip(cluster, i)
    for d in cluster.daemons.values():
        assert d.running(), f"{d.name} died"
        assert rss_mib(d.proc.pid) < 300, f"{d.name} grew to {rss_mib(d.proc.pid):.0f} MiB"
    round_trip(cluster, COUNT)
    for d in cluster.daemons.values():
        log = d.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"{d.name} logged a traceback:\n{log[-3000:]}"
    assert sum(strategies.values()) == sum(outcomes.values()) == COUNT, (strategies, outcomes)
    # No client string became a path: nothing named after ESCAPE under this test's own tmp
    # dir (the daemons' data dirs and working dir are in it), nor beside it or in the usual
    # places a path like "/../../NAME" or "../NAME" would land (one level each, no walk of
    # the whole, shared, system temp dir).
    hits = list(tmp_path.rglob(f"*{ESCAPE}*"))
    for root in {tmp_path.parent, tmp_path.parent.parent, Path("/tmp"), Path("/"),
                 Path.cwd()}:
        hits += [Path(e.path) for e in os.scandir(root) if ESCAPE in e.name]
    assert not hits, f"{ESCAPE} appeared: {hits}"
    for d in cluster.chunkservers:
        names = {p.name for p in (d.data_dir / "blocks").rglob("*") if p.is_file()}
        assert all(n.startswith("blk_") for n in names), names
    print(f"\nsocket fuzz: seed {SEED}, {COUNT} connections in "
          f"{time.monotonic() - started:.1f}s; strategies {dict(sorted(strategies.items()))}; "
          f"outcomes {dict(sorted(outcomes.items()))}")


def test_fuzzing_before_auth_never_reaches_a_handler(make_cluster, tmp_path: Path) -> None:
    """With a secret, nothing a fuzzer sends without the secret gets past hello: every
    connection is refused or closed, and the servers keep serving the real client."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(os.urandom(32).hex().encode())
    opts = ["--secret-file", str(secret_file)]
    cluster: Cluster = make_cluster(2, meta_args=opts, chunk_args=opts,
                                    client_options={"secret_file": str(secret_file)})
    rng = random.Random(SEED + 1)
    outcomes: Counter[str] = Counter()
    n = max(30, COUNT // 5)
    for _ in range(n):
        role, ops, daemon = rng.choice([("meta", META_OPS, cluster.meta)] +
                                       [("chunk", CHUNK_OPS, d) for d in cluster.chunkservers])
        _, data = strategy(rng, ops)
        host, port = daemon.addr.rsplit(":", 1)
        # After any reply, wait up to 5 s for the close that must follow it (a busy
        # machine may send the close a little after the refusal).
        outcomes[exchange((host, int(port)), data, linger=5.0)] += 1
    # Without the secret no connection is ever answered and left open: refused, then closed
    # (or, for bytes that never make a whole frame, left to the hello timeout).
    assert sum(outcomes.values()) == n, outcomes
    assert outcomes["replied-open"] == 0, outcomes
    # And most are refused outright: the check above is not satisfied vacuously.
    assert outcomes["closed"] + outcomes["reset"] + outcomes["closed-while-sending"] > 0, \
        outcomes
    for d in cluster.daemons.values():
        assert d.running()
        assert "Traceback" not in d.log_path.read_text(errors="replace")
    with dfs.Client(cluster.meta_addr, secret_file=str(secret_file)) as c:
        c.put_bytes(b"still here", "/ok")
        assert c.get_bytes("/ok") == b"still here"
        assert c.stat("/")["type"] == "dir"
        listed = [e["path"] for e in c.ls("/")]
    assert listed == ["/ok"], "a fuzzer without the secret changed the namespace"
