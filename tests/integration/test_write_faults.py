"""Uploads under fire: a chunkserver or the client dies mid-upload, writers race on one path,
and no chunkserver is there at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from cluster import Cluster, MiB, connected_ports, data_of, wait_until

import dfs

BLOCK = 4 * MiB
SIZE = 24 * MiB  # 6 blocks
CUT = 2 * MiB  # bytes sent before the fault: two packets into the first block


def upload_and_fault_a_chain_server(cluster: Cluster, position: str,
                                    sig: int = signal.SIGKILL, size: int = SIZE,
                                    block_size: int = BLOCK, ceiling: float = 90.0
                                    ) -> tuple[dict[str, Any], bytes, str]:
    """Upload `size` bytes through put_stream from a pipe we feed. Once the first CUT bytes
    are in, the first block's pipeline is open (both servers of its chain hold its .tmp) and
    the upload waits for more input: send `sig` (SIGKILL: it dies; SIGSTOP: it hangs) to the
    chain's `position` ("head": the server the client streams to; "tail": the one the head
    forwards to), then feed the rest. No race with the upload: it cannot finish early.
    Returns (put result, data, that server's name)."""
    assert size > CUT and CUT % MiB == 0 and block_size > CUT
    client = cluster.client()
    data = os.urandom(size)
    rfd, wfd = os.pipe()
    outcome: dict[str, Any] = {}

    def upload() -> None:
        try:
            with os.fdopen(rfd, "rb") as src:
                outcome["result"] = client.put_stream(src, "/big/file.bin",
                                                      block_size=block_size)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = exc

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    sink = os.fdopen(wfd, "wb")

    def feed(part: bytes) -> None:
        try:
            sink.write(part)
            sink.flush()
        except BrokenPipeError:
            pass  # the upload gave up early: its error is reported below

    def feed_rest() -> None:
        feed(data[CUT:])
        with contextlib.suppress(BrokenPipeError):
            sink.close()

    try:
        feed(data[:CUT])

        def chain() -> list[str]:
            names = [d.name for d in cluster.chunkservers if cluster.tmp_files(d.name)]
            return names if len(names) == 2 else []
        names = wait_until(chain, 30, "the first block's pipeline open on two servers")
        # The client's only chunkserver connection so far is the one to the head.
        head = [n for n in names if cluster[n].port in connected_ports()]
        assert len(head) == 1, (names, head, connected_ports())
        victim = head[0] if position == "head" else next(n for n in names if n != head[0])
        assert t.is_alive() and not outcome, outcome
        cluster.kill(victim, sig)
    except BaseException:
        sink.close()  # EOF: the upload ends (and commits a short file nobody checks)
        raise
    # Fed from a thread: a client that stops reading its source must not hang the test.
    threading.Thread(target=feed_rest, daemon=True).start()
    t.join(ceiling)
    assert not t.is_alive(), \
        f"upload still running {ceiling:g}s after the {position} ({victim}) got signal {sig}"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], data, victim


def assert_replicas_on_disk(cluster: Cluster, st: dict[str, Any]) -> None:
    """Every replica meta lists really holds that block's generation on its disk (a SIGKILLed
    server's disk is still there to look at)."""
    for b in st["blocks"]:
        for addr in b["replicas"]:
            names = [p.name for p in cluster.block_files(cluster.by_addr(addr).name, b["id"])]
            assert f"blk_{int(b['id']):016x}_{b['gen']}" in names, (b, addr, names)


POSITIONS = ["head", "tail"]


@pytest.mark.parametrize("position", POSITIONS)
def test_chunkserver_killed_mid_upload_with_a_spare(make_cluster, position: str) -> None:
    cluster = make_cluster(3)
    result, data, victim = upload_and_fault_a_chain_server(cluster, position)
    assert result["size"] == len(data)
    assert result["blocks"] == SIZE // BLOCK
    assert result["under_replicated"] == []
    client = cluster.client()
    got = client.get_bytes("/big/file.bin")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    st = client.stat("/big/file.bin")
    assert [b["size"] for b in st["blocks"]] == [BLOCK] * (SIZE // BLOCK)
    for b in st["blocks"]:
        assert len(set(b["replicas"])) == 2, b
        assert cluster[victim].addr not in b["replicas"], b
    assert_replicas_on_disk(cluster, st)
    # The block in flight when the server died was rewritten under a new generation.
    assert st["blocks"][0]["gen"] > 1, st["blocks"]

    # The victim comes back with whatever it had: stale or partial replicas are never listed,
    # and they leave its disk.
    cluster.restart(victim)
    current = {int(b["id"]): b["gen"] for b in st["blocks"]}

    def no_stale_left() -> bool:
        for p in cluster.block_files(victim):
            _, hexid, gen = p.name.split("_")
            if int(gen) != current.get(int(hexid, 16)):
                return False
        return not cluster.tmp_files(victim)
    wait_until(no_stale_left, 20, "stale replicas on the restarted server to be deleted")
    st = client.stat("/big/file.bin")
    assert_replicas_on_disk(cluster, st)
    cluster.kill(next(d.name for d in cluster.chunkservers if d.name != victim))
    assert client.get_bytes("/big/file.bin") == data


@pytest.mark.parametrize("position", POSITIONS)
def test_chunkserver_killed_mid_upload_without_a_spare(make_cluster, position: str) -> None:
    cluster = make_cluster(2)
    result, data, victim = upload_and_fault_a_chain_server(cluster, position)
    survivor = next(d for d in cluster.chunkservers if d.name != victim)
    assert result["size"] == len(data)
    assert result["under_replicated"], "blocks written after the kill have one replica"
    client = cluster.client()
    st = client.stat("/big/file.bin")
    ids = [b["id"] for b in st["blocks"]]
    assert set(result["under_replicated"]) <= set(ids)
    for b in st["blocks"]:
        if b["id"] in result["under_replicated"]:
            assert b["replicas"] == [survivor.addr], b
    assert_replicas_on_disk(cluster, st)
    assert st["blocks"][0]["gen"] > 1, st["blocks"]
    assert client.get_bytes("/big/file.bin") == data
    cluster.wait_state(victim, "dead", timeout=30)
    assert cluster.client().get_bytes("/big/file.bin") == data


# The hung-server tests wait out packet timeouts; a shorter base (6 s instead of 20 s, the
# 5 s per hop kept, so each hop still gives up before the one above it) for the test process
# and the daemons it starts keeps the same order of events in less time.
SHORT_PACKET_TIMEOUT = "6"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("position", POSITIONS)
def test_chunkserver_hung_mid_upload_is_timed_out_and_replaced(make_cluster, monkeypatch,
                                                               position: str) -> None:
    """A server that stops answering (SIGSTOP) without closing its sockets: the packet
    timeouts of the chain name it (the client's own for a hung head, the head's for a hung
    tail), the block is rewritten around it, the upload succeeds."""
    monkeypatch.setenv("DFS_PACKET_TIMEOUT", SHORT_PACKET_TIMEOUT)
    cluster = make_cluster(3)
    stopped: list[str] = []
    try:
        result, data, victim = upload_and_fault_a_chain_server(cluster, position,
                                                               signal.SIGSTOP)
        stopped.append(victim)
        assert result["size"] == len(data)
        client = cluster.client()
        hung = cluster[victim].addr
        st = client.stat("/big/file.bin")
        assert st["blocks"][0]["gen"] > 1, "the block in flight was not rewritten"
        assert client.get_bytes("/big/file.bin") == data
        cluster.wait_state(victim, "dead", timeout=30)
        st = client.stat("/big/file.bin")
        assert all(len(b["replicas"]) == 2 and hung not in b["replicas"]
                   for b in st["blocks"]), st["blocks"]
        assert_replicas_on_disk(cluster, st)
    finally:
        for d in cluster.chunkservers:  # whichever it was, even if the helper failed
            cluster.kill(d.name, signal.SIGCONT)


@pytest.mark.timeout(150)
def test_hung_head_with_a_large_block_in_flight_is_timed_out(make_cluster, monkeypatch) -> None:
    """As above with a hung head, but the block (32 MiB) is larger than the loopback socket
    buffers, so the client's writes to the hung head back up: the packet timeouts (shortened
    here) must still name the head; the upload must not wait for the hung server forever.
    (Regression: the writer waited for the socket to drain with no timeout, forever.)"""
    monkeypatch.setenv("DFS_PACKET_TIMEOUT", SHORT_PACKET_TIMEOUT)
    cluster = make_cluster(3)
    try:
        result, data, victim = upload_and_fault_a_chain_server(
            cluster, "head", signal.SIGSTOP, size=40 * MiB, block_size=32 * MiB,
            ceiling=60)
        assert result["size"] == len(data)
        assert cluster.client().stat("/big/file.bin")["blocks"][0]["gen"] > 1
    finally:
        for d in cluster.chunkservers:
            cluster.kill(d.name, signal.SIGCONT)


CLIENT_SCRIPT = r"""
import os, sys, time
import dfs
meta, path = sys.argv[1], sys.argv[2]
MiB = 1024 * 1024

class Source:
    # An endless, slow source: the upload is still running when the parent kills us.
    sent = 0
    def read(self, n):
        if self.sent >= 6 * MiB:
            if self.sent == 6 * MiB:
                print("STARTED", flush=True)
            time.sleep(0.05)
        self.sent += n
        return os.urandom(n)

dfs.Client(meta).put_stream(Source(), path, block_size=MiB)
print("FINISHED?!", flush=True)
"""


def test_client_killed_mid_upload_leaves_nothing(make_cluster) -> None:
    cluster = make_cluster(2, meta_args=["--upload-lease", "2s"])
    client = cluster.client()
    client.put_bytes(b"keep me", "/keep.txt")
    keep_ids = {int(b["id"]) for b in client.stat("/keep.txt")["blocks"]}
    proc = cluster.track(subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, cluster.meta_addr, "/up/file.bin"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != b"STARTED\n":
        proc.kill()
        _, err = proc.communicate(10)
        pytest.fail(f"the uploading client did not start: {line!r}\n{err.decode()}")
    assert cluster.status()["uploads"] == 1
    proc.kill()
    proc.wait(10)

    with pytest.raises(dfs.NotFound):
        client.stat("/up/file.bin")
    # The dead upload's lease runs out and its blocks are reclaimed from every disk.
    wait_until(lambda: cluster.status()["uploads"] == 0, 10, "the dead upload to expire")
    wait_until(lambda: all(cluster.stored_block_ids(d.name) <= keep_ids and
                           not cluster.tmp_files(d.name) for d in cluster.chunkservers),
               10, "the dead upload's blocks to be deleted")
    with pytest.raises(dfs.NotFound):
        client.stat("/up/file.bin")

    data = data_of(3 * MiB + 1)
    client.put_bytes(data, "/up/file.bin", block_size=MiB)
    assert client.get_bytes("/up/file.bin") == data
    assert client.get_bytes("/keep.txt") == b"keep me"


def test_concurrent_puts_to_one_path_never_mix(make_cluster) -> None:
    cluster = make_cluster(2)
    writers = 6
    contents = [data_of(3 * MiB + 1000 * i, i) for i in range(writers)]
    digests = {hashlib.sha256(c).digest(): i for i, c in enumerate(contents)}
    clients = [cluster.client() for _ in range(writers + 1)]
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def put(i: int) -> None:
        try:
            barrier.wait(30)
            clients[i].put_bytes(contents[i], "/race/file.bin", block_size=MiB)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    def read() -> None:
        try:
            barrier.wait(30)
            # Read while the puts race, and at least once after the last put returned.
            while True:
                last = done.is_set()
                try:
                    got = clients[writers].get_bytes("/race/file.bin")
                except (dfs.NotFound, dfs.Unavailable):
                    if last:
                        raise
                    continue  # not committed yet, or a version replaced while being read
                i = digests.get(hashlib.sha256(got).digest())
                if i is None:
                    raise AssertionError(f"a reader saw {len(got)} bytes matching no put")
                seen.append(i)
                if last:
                    return
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
    reader = threading.Thread(target=read)
    for t in threads + [reader]:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a put hung"
    done.set()
    reader.join(30)
    assert not reader.is_alive(), "the reader hung"
    assert not errors, errors
    final = cluster.client().get_bytes("/race/file.bin")
    assert hashlib.sha256(final).digest() in digests
    winner = digests[hashlib.sha256(final).digest()]
    # Every read saw one whole put (checked as it read); the read made after every put had
    # returned saw the final version, the one a fresh client sees.
    assert seen and seen[-1] == winner, (seen, winner)
    st = cluster.client().stat("/race/file.bin")
    assert st["size"] == len(contents[winner])
    # The losers' blocks are garbage: only the winner's stay on disk.
    final_ids = {int(b["id"]) for b in st["blocks"]}
    wait_until(lambda: all(cluster.stored_block_ids(d.name) == final_ids
                           for d in cluster.chunkservers),
               10, "replaced uploads' blocks to be deleted")


def test_put_with_no_chunkserver_at_all_is_unavailable(make_cluster) -> None:
    cluster = make_cluster(0)
    client = cluster.client()
    t0 = time.monotonic()
    with pytest.raises(dfs.Unavailable):
        client.put_bytes(b"x" * 100, "/nowhere.bin")
    assert time.monotonic() - t0 < 5
    with pytest.raises(dfs.NotFound):
        client.stat("/nowhere.bin")


def test_put_after_every_chunkserver_died_is_unavailable(make_cluster) -> None:
    cluster = make_cluster(2)
    client = cluster.client()
    client.put_bytes(b"warm up the connection pool", "/warm")
    for d in cluster.chunkservers:
        cluster.kill(d.name)
    # Meta still believes they are live: the client must find out by itself, quickly.
    t0 = time.monotonic()
    with pytest.raises(dfs.Unavailable):
        client.put_bytes(data_of(2 * MiB), "/nowhere.bin", block_size=MiB)
    assert time.monotonic() - t0 < 5
    # Once meta knows, it refuses at once.
    for d in cluster.chunkservers:
        cluster.wait_state(d.name, "dead", timeout=8)
    t0 = time.monotonic()
    with pytest.raises(dfs.Unavailable):
        client.put_bytes(b"y", "/nowhere.bin")
    assert time.monotonic() - t0 < 5
    with pytest.raises(dfs.NotFound):
        client.stat("/nowhere.bin")
