"""Small blocks through real processes: the whole-block `write_small` frame, create's
`first_block`, and group-synced small replicas.

A block that ends within its first packet (at most PACKET_SIZE = 1 MiB: small files, and a
short last block that began in its packet) goes down the chain as one `write_small` frame; a
block of 1 MiB + 1 takes the streaming path (`write_block` + packets). A client-side spy on
`Connection.request` tells which path each block took. Faults are SIGKILL / SIGSTOP of real
chunkservers; hostile frames go straight to a chunkserver's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

import pytest
from cluster import HOST, Cluster, KiB, MiB, data_of, free_ports, wait_until

import dfs
from dfs.checksum import crcs_of
from dfs.config import PROTOCOL_VERSION
from dfs.net.connection import Connection
from dfs.protocol import FrameReader, encode_frame

PACKET = MiB  # config.PACKET_SIZE: the largest block that can travel as one write_small
SMALL_SIZES = [1, 4 * KiB, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, PACKET - 1, PACKET]
STREAMED_SIZES = [PACKET + 1, 2 * PACKET + 7]


# -- helpers ------------------------------------------------------------------------------
class Spy:
    """Records every request the in-process client sends: op -> block ids (or None)."""

    def __init__(self) -> None:
        self.ops: dict[str, list[Any]] = defaultdict(list)

    def by_block(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = defaultdict(set)
        for op in ("write_small", "write_block"):
            for block in self.ops[op]:
                out[int(block)].add(op)
        return out


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    s = Spy()
    original = Connection.request

    def request(self: Connection, op: str, payload: Any = None, **fields: Any) -> Any:
        s.ops[op].append(fields.get("block"))
        return original(self, op, payload, **fields)

    monkeypatch.setattr(Connection, "request", request)
    return s


def put_all(cluster: Cluster, blobs: dict[str, bytes], **kw: Any) -> list[dict[str, Any]]:
    """Put every blob at once through one AsyncClient."""
    async def main() -> list[dict[str, Any]]:
        async with dfs.AsyncClient(cluster.meta_addr, timeout=60) as ac:
            return list(await asyncio.gather(*(ac.put_bytes(b, p, **kw)
                                               for p, b in blobs.items())))
    return asyncio.run(main())


def get_all(cluster: Cluster, paths: list[str]) -> list[bytes]:
    async def main() -> list[bytes]:
        async with dfs.AsyncClient(cluster.meta_addr) as ac:
            return list(await asyncio.gather(*(ac.get_bytes(p) for p in paths)))
    return asyncio.run(main())


def assert_read_back(cluster: Cluster, blobs: dict[str, bytes]) -> None:
    got = get_all(cluster, list(blobs))
    bad = [p for (p, want), have in zip(blobs.items(), got, strict=True) if have != want]
    assert not bad, f"{len(bad)} files read back different, e.g. {bad[:5]}"


def replica_files(cluster: Cluster, block_id: int | str) -> dict[str, list[str]]:
    """chunkserver name -> names of its finalized replica files of this block."""
    out = {}
    for d in cluster.chunkservers:
        names = [p.name for p in cluster.block_files(d.name, block_id)]
        if names:
            out[d.name] = names
    return out


def all_tmp(cluster: Cluster) -> list[str]:
    return [str(p) for d in cluster.chunkservers for p in cluster.tmp_files(d.name)]


def assert_two_replicas_on_disk(cluster: Cluster, st: dict[str, Any]) -> None:
    """Every block of the file: exactly 2 replica files on disk, on 2 different servers,
    both of the committed generation, and they are the servers meta lists."""
    for b in st["blocks"]:
        files = replica_files(cluster, b["id"])
        want = f"blk_{int(b['id']):016x}_{b['gen']}"
        assert sorted(files.values()) == [[want], [want]], (st["path"], b, files)
        listed = {cluster.by_addr(a).name for a in b["replicas"]}
        assert listed == set(files), (st["path"], b, files)


def fsck_healthy(client: dfs.Client) -> bool:
    f = client.fsck("/")
    return f["blocks"] > 0 and f["healthy"] == f["blocks"]


class RawConn:
    """A hand-driven connection to one daemon: say hello, send frames, read replies by id."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.reader = FrameReader()
        self.replies: dict[int, dict[str, Any]] = {}
        self.ids = iter(range(1, 1 << 30))
        hello = self.call({"op": "hello", "version": PROTOCOL_VERSION, "role": "client"})
        assert "err" not in hello, hello

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, header: dict[str, Any], payload: bytes = b"") -> int:
        rid = next(self.ids)
        self.sock.sendall(encode_frame({**header, "id": rid}, payload))
        return rid

    def wait(self, rid: int, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while rid not in self.replies:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 20)
            assert chunk, f"server hung up instead of answering request {rid}"
            for f in self.reader.feed(chunk):
                self.replies[f.header.get("id")] = {**f.header, "_at": time.monotonic()}
        return self.replies.pop(rid)

    def call(self, header: dict[str, Any], payload: bytes = b"",
             timeout: float = 10.0) -> dict[str, Any]:
        return self.wait(self.send(header, payload), timeout)


def small_frame(block: Any, data: bytes, targets: Any = (), **over: Any) -> dict[str, Any]:
    """A well-formed write_small header for `data` (fields overridable)."""
    h = {"op": "write_small", "block": block, "gen": 1,
         "targets": list(targets) if isinstance(targets, tuple) else targets,
         "crcs": crcs_of(data), "size": len(data)}
    h.update(over)
    return h


def fresh_ids(n: int) -> list[int]:
    """Block ids meta will never hand out in a test (63-bit, high bit pattern of our own)."""
    rng = random.Random()
    return [(0x5A5A << 47) | rng.getrandbits(47) for _ in range(n)]


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """An address that accepts TCP connections (the kernel completes them) but never says a
    word: a hung peer without SIGSTOPping one of ours."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    s.listen(64)
    try:
        yield f"{HOST}:{s.getsockname()[1]}"
    finally:
        s.close()


def expected_paths(size: int, block_size: int) -> list[str]:
    """How put_bytes sends each block: it cuts the data into PACKET-sized packets and those at
    block boundaries; a block whose first piece is the whole block goes as one write_small."""
    out, offset = [], 0
    while offset < size:
        block_end = min(offset + block_size, size)
        first_piece_end = min(block_end, (offset // PACKET + 1) * PACKET)
        out.append("write_small" if first_piece_end == block_end else "write_block")
        offset = block_end
    return out


# -- round trips --------------------------------------------------------------------------
def test_small_files_concurrently_take_write_small_and_read_back(cluster: Cluster,
                                                                 spy: Spy) -> None:
    """Many files of edge sizes at once. Every block of at most 1 MiB went down the chain as one
    write_small (never write_block), larger ones streamed; create placed every first block
    (no add_block at all); 2 replica files of each block on disk; no .tmp left anywhere."""
    blobs: dict[str, bytes] = {}
    for size in SMALL_SIZES + STREAMED_SIZES:
        for k in range(6):
            blobs[f"/small/{size}/{k}"] = data_of(size, k)
    results = put_all(cluster, blobs)
    assert [r["size"] for r in results] == [len(b) for b in blobs.values()]
    assert all(r["blocks"] == 1 and not r["under_replicated"] for r in results), results
    assert not spy.ops["add_block"], "create's first block was not used"
    assert not spy.ops["recover_block"], "no fault, yet a pipeline was rebuilt"
    assert_read_back(cluster, blobs)

    client = cluster.client()
    paths = spy.by_block()
    for path, data in blobs.items():
        st = client.stat(path)
        assert st["size"] == len(data)
        (b,) = st["blocks"]
        want = {"write_small"} if len(data) <= PACKET else {"write_block"}
        assert paths[int(b["id"])] == want, (path, len(data), paths[int(b["id"])])
        assert_two_replicas_on_disk(cluster, st)
    assert not all_tmp(cluster)
    assert fsck_healthy(client)


def test_empty_and_streamed_writers_of_small_files(cluster: Cluster, spy: Spy,
                                                   tmp_path: Any) -> None:
    """Other ways in: an empty file (no block placed or written), put() of a local file (its
    first block comes with create but an empty one is dropped), and open("wb") fed in small
    writes (buffered into one packet, so one write_small at close)."""
    client = cluster.client()
    r = client.put_bytes(b"", "/e/bytes")
    assert (r["size"], r["blocks"], r["under_replicated"]) == (0, 0, []), r
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    r = client.put(str(empty), "/e/file")
    assert (r["size"], r["blocks"], r["under_replicated"]) == (0, 0, []), r
    local = tmp_path / "small"
    local.write_bytes(data_of(5000, 1))
    r = client.put(str(local), "/e/small")
    assert (r["size"], r["blocks"], r["under_replicated"]) == (5000, 1, []), r
    with client.open("/e/written", "wb") as f:
        for i in range(50):
            f.write(data_of(999, i))
    want_written = b"".join(data_of(999, i) for i in range(50))
    for path in ("/e/bytes", "/e/file"):
        assert client.get_bytes(path) == b""
        assert client.stat(path)["blocks"] == []
    assert client.get_bytes("/e/small") == data_of(5000, 1)
    assert client.get_bytes("/e/written") == want_written
    assert not spy.ops["write_block"] and not spy.ops["packet"], spy.ops.keys()
    assert len(spy.ops["write_small"]) == 2
    for path in ("/e/small", "/e/written"):
        assert_two_replicas_on_disk(cluster, client.stat(path))
    # The unused first block of the empty put() never reached a disk.
    assert sum(len(cluster.block_files(d.name)) for d in cluster.chunkservers) == 4
    assert not all_tmp(cluster)


@pytest.mark.parametrize("block_size,size,last_path", [
    (128 * KiB, 300 * KiB, "write_small"),  # 128 + 128 + 44 KiB, every block whole
    (192 * KiB, MiB, "write_small"),  # one packet cut into 5 blocks + a 64 KiB tail
    (2 * MiB, 4 * MiB + 3, "write_small"),  # streamed blocks, then a 3-byte last block
    (2 * MiB, 5 * MiB + 100 * KiB, "write_block"),  # last block 1.1 MiB: streamed
    (1536 * KiB, 4 * MiB, "write_small"),  # blocks straddle packets; last is one whole 1 MiB
], ids=["128K-300K", "192K-1M", "2M-4M+3", "2M-5.1M", "1.5M-4M"])
def test_multi_block_file_with_short_last_block(cluster: Cluster, spy: Spy, block_size: int,
                                                size: int, last_path: str) -> None:
    client = cluster.client()
    data = data_of(size, block_size)
    r = client.put_bytes(data, "/multi", block_size=block_size)
    nblocks = -(-size // block_size)
    assert r["blocks"] == nblocks and r["size"] == size
    assert client.get_bytes("/multi") == data
    st = client.stat("/multi")
    assert [b["size"] for b in st["blocks"]] == \
        [min(block_size, size - i * block_size) for i in range(nblocks)]
    paths = spy.by_block()
    want = expected_paths(size, block_size)
    assert [paths[int(b["id"])] for b in st["blocks"]] == [{p} for p in want]
    assert paths[int(st["blocks"][-1]["id"])] == {last_path}
    assert_two_replicas_on_disk(cluster, st)
    # Reads that cross block boundaries, from the middle of the last block, and past the end.
    with client.open("/multi") as f:
        for off in (0, block_size - 5, size - (size % block_size or block_size) + 1,
                    size - 1):
            f.seek(off)
            assert f.read(block_size + 10) == data[off:off + block_size + 10], off
        f.seek(size)
        assert f.read(10) == b""
    assert not all_tmp(cluster)


# -- faults -------------------------------------------------------------------------------
def fault_blobs(n: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    sizes = [1, 4 * KiB, 64 * KiB - 1, 200 * KiB, PACKET]
    return {f"/f{seed}/{i}": data_of(max(1, rng.choice(sizes) - rng.randrange(3)),
                                     seed * 1000 + i)
            for i in range(n)}


def committed_files(cluster: Cluster, client: dfs.Client,
                    paths: list[str]) -> dict[str, list[Any]]:
    """path -> [(server name, replica file name) for each replica meta lists]."""
    out = {}
    for path in paths:
        (b,) = client.stat(path)["blocks"]
        name = f"blk_{int(b['id']):016x}_{b['gen']}"
        out[path] = [(cluster.by_addr(a).name, name) for a in b["replicas"]]
    return out


def missing_committed(cluster: Cluster, committed: dict[str, list[Any]]) -> list[Any]:
    return [(path, srv, name) for path, reps in committed.items() for srv, name in reps
            if name not in {p.name for p in cluster.block_files(srv)}]


def leftovers(cluster: Cluster, client: dfs.Client, paths: list[str]) -> list[Any]:
    """Blocks of these files with any replica file besides their committed ones."""
    extra = []
    for path, reps in committed_files(cluster, client, paths).items():
        block_id = int(reps[0][1].split("_")[1], 16)
        on_disk = sorted((srv, n) for srv, names in replica_files(cluster, block_id).items()
                         for n in names)
        if on_disk != sorted(reps):
            extra.append((path, sorted(reps), on_disk))
    return extra


def test_sigkilled_chunkserver_small_puts_recover(make_cluster: Any, spy: Spy) -> None:
    """3 chunkservers, one SIGKILLed just before 50 concurrent small puts: meta still places
    blocks on it for a dead-timeout, so some write_small chains fail (connection refused) and
    are resent whole, as a new generation, to a chain without it. Every put succeeds with 2
    replicas that exclude the dead server. The copies of the failed first generation (a head
    wrote its own copy before its downstream refused) are indexed and reported, so meta
    deletes them as stale: soon each block has exactly its 2 committed replica files on disk.
    After the restart fsck is healthy and no .tmp is left."""
    cluster = make_cluster(3)
    client = cluster.client()
    cluster.kill("chunk0")
    blobs = fault_blobs(50, 1)
    t0 = time.monotonic()
    results = put_all(cluster, blobs)
    assert time.monotonic() - t0 < 20, "a refused connection should fail over at once"
    assert not any(r["under_replicated"] for r in results), results
    assert spy.ops["recover_block"], "no chain ever named the dead server: nothing was tested"
    assert not spy.ops["write_block"], "a small block was streamed"
    assert_read_back(cluster, blobs)
    committed = committed_files(cluster, client, list(blobs))
    for path, reps in committed.items():
        assert len({srv for srv, _ in reps}) == 2 and "chunk0" not in dict(reps), (path, reps)
    assert not missing_committed(cluster, committed)
    wait_until(lambda: not leftovers(cluster, client, list(blobs)), 10,
               "only the committed replica files of each block on disk "
               f"(now: {leftovers(cluster, client, list(blobs))[:3]})")
    cluster.restart("chunk0")
    wait_until(lambda: fsck_healthy(client), 20, "fsck healthy after the restart")
    assert not all_tmp(cluster)
    assert_read_back(cluster, blobs)


@pytest.mark.timeout(120)
def test_sigstopped_chunkserver_small_puts_recover(make_cluster: Any, spy: Spy,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung (SIGSTOPped) chunkserver met on open connections, as in a busy cluster: write_small
    chains through it time out (at the server above it first, then at the client: 8 and 13 s
    here, 20 and 25 s by default), the hung server is named and excluded, and each block is
    resent whole to a chain without it.

    After SIGCONT the hung server works through the write_small frames queued in its socket:
    it writes first-generation copies and forwards them down their old chains. Those copies
    are stale; they must never replace the committed (newer) replicas, which stay on disk the
    whole time, and meta deletes the stale ones, leaving each block exactly its 2 replicas."""
    monkeypatch.setenv("DFS_PACKET_TIMEOUT", "6")  # for the daemons and this process
    cluster = make_cluster(3)
    client = cluster.client()
    blobs = fault_blobs(50, 3)
    took = 0.0

    # Every server -> server connection open first (a busy cluster's are): one whole-block
    # write from each server to each other (fresh ids: orphans meta deletes later).
    data = data_of(1000, 0)
    for head in cluster.chunkservers:
        with RawConn(head.port) as conn:
            for other in cluster.chunkservers:
                if other is not head:
                    reply = conn.call(small_frame(fresh_ids(1)[0], data, targets=[other.addr]),
                                      data)
                    assert "err" not in reply, reply

    async def main() -> None:
        nonlocal took
        async with dfs.AsyncClient(cluster.meta_addr, timeout=60) as ac:
            for d in cluster.chunkservers:  # and this client's connection to each server
                await ac.pool.get(d.addr)
            for p, b in fault_blobs(10, 2).items():
                r = await ac.put_bytes(b, f"/warm{p}")
                assert r["size"] == len(b) and not r["under_replicated"], r
            cluster.kill("chunk0", signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                await asyncio.gather(*(ac.put_bytes(b, p) for p, b in blobs.items()))
            finally:
                took = time.monotonic() - t0
    try:
        asyncio.run(main())
        assert took < 45, f"puts took {took:.0f}s with one server hung"
        assert spy.ops["recover_block"], "no chain went through the hung server"
        assert_read_back(cluster, blobs)
        committed = committed_files(cluster, client, list(blobs))
        odd = {p: reps for p, reps in committed.items()
               if "chunk0" in dict(reps) or len(reps) != 2}
        assert not odd, f"replicas on the hung server or not 2: {odd}"
        assert not missing_committed(cluster, committed)
    finally:
        cluster.kill("chunk0", signal.SIGCONT)
    # The committed replicas must survive the hung server's late, stale writes: checked
    # all along, from SIGCONT until its stale copies have been written and deleted again.
    lost: list[Any] = []

    def settled(done: Callable[[], bool]) -> bool:
        lost.extend(missing_committed(cluster, committed))
        return bool(lost) or done()
    wait_until(lambda: settled(lambda: cluster.states()[cluster["chunk0"].addr] == "live"),
               30, "chunk0 live again")
    wait_until(lambda: settled(lambda: fsck_healthy(client)), 30, "fsck healthy after SIGCONT")
    wait_until(lambda: settled(lambda: not leftovers(cluster, client, list(blobs))
                               and not all_tmp(cluster)),
               30, "only the committed replicas on disk")
    assert not lost, f"committed replicas vanished after SIGCONT: {lost[:5]}"


def test_acknowledged_small_files_survive_sigkill_of_every_chunkserver(
        cluster: Cluster) -> None:
    """200 small puts, both chunkservers SIGKILLed the moment the last put returns, restarted:
    every file reads back identical (acknowledged means durable on every listed replica; a
    SIGKILL keeps the page cache, so this checks the seal + rename + index order, not the
    syncfs itself)."""
    rng = random.Random(7)
    blobs = {f"/d/{i:03d}": data_of(rng.choice([1, 777, 4 * KiB, 64 * KiB + 3, 300 * KiB,
                                                PACKET]), i) for i in range(200)}
    put_all(cluster, blobs)
    for d in cluster.chunkservers:
        cluster.kill(d.name)
    for d in cluster.chunkservers:
        cluster.restart(d.name)
    assert not all_tmp(cluster), "start-up did not clean .tmp files"
    assert_read_back(cluster, blobs)
    client = cluster.client()
    wait_until(lambda: fsck_healthy(client), 15, "fsck healthy after the restarts")
    for path in list(blobs)[:: 20]:
        assert_two_replicas_on_disk(cluster, client.stat(path))


# -- hostile frames -----------------------------------------------------------------------
def test_hostile_write_small_frames_are_refused(cluster: Cluster) -> None:
    """Malformed write_small frames straight to a chunkserver: each gets an error reply on a
    connection that stays open, the server keeps serving, nothing is written for those ids."""
    chunk = cluster["chunk0"]
    ids = fresh_ids(20)
    data = data_of(200 * KiB, 5)  # 4 checksum chunks
    good = crcs_of(data)
    cases: list[tuple[str, dict[str, Any], bytes, set[str]]] = [
        ("size larger than payload", small_frame(ids[0], data, size=len(data) + 1), data,
         {"bad_request"}),
        ("size smaller than payload", small_frame(ids[1], data, size=len(data) - 1), data,
         {"bad_request"}),
        ("size 0, no payload", small_frame(ids[2], b"", size=0, crcs=[]), b"",
         {"bad_request"}),
        ("size missing", {k: v for k, v in small_frame(ids[3], data).items() if k != "size"},
         data, {"bad_request"}),
        ("size a string", small_frame(ids[4], data, size=str(len(data))), data,
         {"bad_request"}),
        ("wrong crc", small_frame(ids[5], data, crcs=[good[0], good[1] ^ 1, *good[2:]]), data,
         {"checksum"}),
        ("crc of other bytes", small_frame(ids[6], data, crcs=crcs_of(data[::-1])), data,
         {"checksum"}),
        ("too few crcs", small_frame(ids[7], data, crcs=good[:2]), data, {"bad_request"}),
        ("no crcs", small_frame(ids[8], data, crcs=[]), data, {"bad_request"}),
        ("too many crcs", small_frame(ids[9], data, crcs=[*good, 0]), data, {"bad_request"}),
        ("crcs not a list", small_frame(ids[10], data, crcs="abcd"), data, {"bad_request"}),
        ("crcs of strings", small_frame(ids[11], data, crcs=["x"] * 4), data,
         {"bad_request", "checksum"}),
        ("targets a string", small_frame(ids[12], data, targets="everyone"), data,
         {"bad_request"}),
        ("targets a map", small_frame(ids[13], data, targets={"a": 1}), data, {"bad_request"}),
        ("targets of ints", small_frame(ids[14], data, targets=[1, 2]), data,
         {"bad_request"}),
        ("17 targets", small_frame(ids[15], data, targets=[f"{HOST}:1"] * 17), data,
         {"bad_request"}),
        ("negative block", small_frame(-ids[16], data), data, {"bad_request"}),
        ("block a string", small_frame(str(ids[17]), data), data, {"bad_request"}),
        ("block a path", small_frame("../../etc/passwd", data), data, {"bad_request"}),
        ("negative gen", small_frame(ids[18], data, gen=-1), data, {"bad_request"}),
        ("gen a bool", small_frame(ids[19], data, gen=True), data, {"bad_request"}),
    ]
    with RawConn(chunk.port) as conn:
        for what, header, payload, codes in cases:
            reply = conn.call(header, payload)
            assert reply.get("err") in codes, (what, reply)
            assert "replicas" not in reply, (what, reply)
        # The same connection still takes a good frame (control): one replica, here.
        ok_id = fresh_ids(1)[0]
        reply = conn.call(small_frame(ok_id, data), data)
        assert reply.get("replicas") == [chunk.addr], reply
    assert chunk.running(), chunk.tail()
    # Each refused frame was answered before the next was read, and its handler is done:
    # the server's index knows none of those ids, and neither does any disk.
    with RawConn(chunk.port) as conn:
        for i in ids:
            reply = conn.call({"op": "block_info", "block": i, "gen": 1})
            assert reply.get("err") == "not_found", (i, reply)
    for d in cluster.chunkservers:
        left = cluster.stored_block_ids(d.name) & {abs(i) for i in ids}
        assert not left, (d.name, left)
    assert cluster.stored_block_ids("chunk0") >= {ok_id}
    assert not all_tmp(cluster)
    assert not list(chunk.data_dir.rglob("*passwd*"))
    client = cluster.client()
    client.put_bytes(b"still serving", "/after-hostile")
    assert client.get_bytes("/after-hostile") == b"still serving"


@pytest.mark.parametrize("chain", [["self"] * 3, ["other", "other"], ["other", "self"]],
                         ids=["itself-3x", "one-server-twice", "back-to-itself"])
def test_write_small_whose_chain_loops_or_repeats_is_refused(cluster: Cluster,
                                                            chain: list[str]) -> None:
    """A hostile chain that names the receiver, or one server twice, would have one server
    write the block several times and report one replica as several. It is refused before
    anything is written; the server survives and leaves no file of the block behind."""
    chunk, other = cluster["chunk0"], cluster["chunk1"]
    targets = [chunk.addr if name == "self" else other.addr for name in chain]
    (bid,) = fresh_ids(1)
    data = data_of(300 * KiB, 9)
    with RawConn(chunk.port) as conn:
        reply = conn.call(small_frame(bid, data, targets=targets), data, timeout=40)
    assert reply.get("err") == "bad_request" and "distinct" in reply.get("msg", ""), reply
    assert chunk.running(), chunk.tail()
    assert not all_tmp(cluster)
    assert cluster.block_files("chunk0", bid) == [] and cluster.block_files("chunk1", bid) == []
    client = cluster.client()
    client.put_bytes(b"x" * 5000, "/after-loop")
    assert client.get_bytes("/after-loop") == b"x" * 5000


# -- a failing chain, straight to the head ------------------------------------------------
@pytest.mark.parametrize("depth", [1, 2], ids=["head->dead", "head->chunk1->dead"])
def test_write_small_to_a_dead_downstream_names_it(make_cluster: Any, depth: int) -> None:
    """A chain whose last server is a free port nothing listens on. The error reply is
    `unavailable` and its `bad` field names that dead address (not a live server in between),
    so a writer would rebuild the chain around the right server. The live servers' own copies
    were written meanwhile; they are indexed and reported to meta, which knows no such block
    and deletes them as orphans after --orphan-grace: none stays as a permanent replica."""
    cluster = make_cluster(2, meta_args=["--orphan-grace", "1s"])
    (dead,) = free_ports(1)
    dead_addr = f"{HOST}:{dead}"
    (bid,) = fresh_ids(1)
    data = data_of(100 * KiB, 3)
    targets = [dead_addr] if depth == 1 else [cluster["chunk1"].addr, dead_addr]
    t0 = time.monotonic()
    with RawConn(cluster["chunk0"].port) as conn:
        reply = conn.call(small_frame(bid, data, targets=targets), data)
        assert time.monotonic() - t0 < 5, "a refused connection should fail at once"
        assert reply.get("err") == "unavailable", reply
        assert reply.get("bad") == dead_addr, reply
        assert dead_addr in reply.get("msg", ""), reply
        # The connection and the server are fine afterwards.
        ok = conn.call(small_frame(fresh_ids(1)[0], data), data)
        assert ok.get("replicas") == [cluster["chunk0"].addr], ok
    wait_until(lambda: not any(replica_files(cluster, bid).values()), 15,
               "the failed block's copies deleted as orphans")
    assert not all_tmp(cluster)
    assert all(d.running() for d in cluster.chunkservers)


def test_write_small_to_a_silent_downstream_leaves_no_unreported_copy(
        make_cluster: Any) -> None:
    """The next server accepts TCP but never answers hello (a hung peer the head has no open
    connection to): the head's connect times out (CONNECT_TIMEOUT, 5 s) and the error names
    that address. The head's own copy has long been written and sealed by then. It must be
    indexed and reported like the copy of a refused downstream (so meta deletes it as an
    orphan) or removed, never left on disk unknown to the chunkserver's index and to meta:
    such a file is not in any block report, so nothing would ever delete it until a restart
    rescans the disk."""
    cluster = make_cluster(2, meta_args=["--orphan-grace", "1s"])
    (bid,) = fresh_ids(1)
    data = data_of(100 * KiB, 4)
    with silent_listener() as silent, RawConn(cluster["chunk0"].port) as conn:
        reply = conn.call(small_frame(bid, data, targets=[silent]), data, timeout=20)
        assert reply.get("err") in ("unavailable", "timeout"), reply
        assert reply.get("bad") == silent, reply
    wait_until(lambda: not any(replica_files(cluster, bid).values()), 10,
               "the failed block's head copy indexed and deleted as an orphan "
               f"(files on disk: {replica_files(cluster, bid)})")
    assert not all_tmp(cluster)


def test_concurrent_write_smalls_to_a_silent_downstream_fail_together(
        cluster: Cluster) -> None:
    """Four write_small frames at once, all chained to the same silent peer (it accepts TCP,
    never answers hello). Each should fail once the head's connect times out (CONNECT_TIMEOUT,
    5 s), all at about the same time. If the head's connection pool makes every waiter open its
    own connection in turn behind one lock, the k-th frame fails only after k * 5 s: with a few
    dozen small files in flight to a hung server, the client's own 25 s timeout fires first
    and it blames (and excludes) the healthy head instead of the hung server."""
    data = data_of(10 * KiB, 6)
    with silent_listener() as silent, RawConn(cluster["chunk0"].port) as conn:
        t0 = time.monotonic()
        rids = [conn.send(small_frame(bid, data, targets=[silent]), data)
                for bid in fresh_ids(4)]
        replies = [conn.wait(rid, timeout=30) for rid in rids]
    assert all(r.get("err") and r.get("bad") == silent for r in replies), replies
    times = sorted(round(r["_at"] - t0, 1) for r in replies)
    # Together: one shared connect attempt, not one CONNECT_TIMEOUT (5 s) after another
    # (the spread, unlike the absolute times, does not grow on a busy machine).
    assert times[-1] - times[0] < 4, f"replies came one connect timeout after another: {times} s"


def test_late_older_generation_does_not_replace_a_newer_replica(cluster: Cluster) -> None:
    """A write_small of an older generation of a block reaching a server that already holds a
    newer one (a hung head that resumes and forwards its stale frame, or a whole-block write
    that lands after the pipeline was rebuilt through the same server) must not replace the
    newer replica: the committed copy stays on disk and readable under its generation, as at
    start-up, where of two generations only the newest is kept (docs/STORAGE.md), and as for
    deletes ("a chunkserver that already has the new generation ignores a delete of an older
    one", docs/PROTOCOL.md)."""
    client = cluster.client()
    data = data_of(100 * KiB, 8)
    client.put_bytes(data, "/gen")
    (b,) = client.stat("/gen")["blocks"]
    bid, gen = int(b["id"]), b["gen"]
    newer = f"blk_{bid:016x}_{gen}"
    chunk = cluster["chunk0"]
    stale = data_of(100 * KiB, 9)
    with RawConn(chunk.port) as conn:
        reply = conn.call(small_frame(bid, stale, gen=gen - 1), stale)
        assert reply.get("err") == "stale", reply
        names = [p.name for p in cluster.block_files("chunk0", bid)]
        assert newer in names, f"the committed replica was replaced (reply {reply}): {names}"
        read = conn.call({"op": "read_block", "block": bid, "gen": gen, "offset": 0,
                          "length": 128 * KiB})
        assert "err" not in read and read["size"] == len(data), read
    assert client.get_bytes("/gen") == data


def test_a_last_packet_whose_size_differs_from_the_bytes_sent_is_a_bad_request(
        cluster: Cluster) -> None:
    """The writer's mistake is its own: `bad_request`, not `unavailable` blaming the server
    (which would make a writer exclude a healthy chunkserver)."""
    (block,) = fresh_ids(1)
    data = data_of(2 * 64 * 1024, 9)
    with RawConn(cluster["chunk0"].port) as conn:
        assert "err" not in conn.call({"op": "write_block", "block": block, "gen": 1,
                                       "targets": []})
        assert "err" not in conn.call({"op": "packet", "block": block, "offset": 0,
                                       "crcs": crcs_of(data)}, data)
        reply = conn.call({"op": "packet", "block": block, "offset": len(data), "crcs": [],
                           "last": True, "size": len(data) + 1})
    assert reply.get("err") == "bad_request" and "bad" not in reply, reply
    assert not cluster.block_files("chunk0", block) and not cluster.tmp_files("chunk0")
