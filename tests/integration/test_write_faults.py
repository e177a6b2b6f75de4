"""Uploads under fire: a chunkserver or the client dies mid-upload, writers race on one path,
and no chunkserver is there at all."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from cluster import Cluster, MiB, data_of, wait_until

import dfs

BIG = 40 * MiB


def upload_and_kill_a_chain_server(cluster: Cluster, tmp_size: int = BIG,
                                   sig: int = signal.SIGKILL
                                   ) -> tuple[dict[str, Any], bytes, str]:
    """Upload `tmp_size` bytes from a thread; once 8 MiB are through, send `sig` (SIGKILL:
    it dies; SIGSTOP: it hangs) to a chunkserver that has a replica being written at that
    moment (so it is in the current chain). Returns (put result, data, that server's name)."""
    client = cluster.client()
    data = os.urandom(tmp_size)
    local = cluster.base / "upload.bin"
    local.write_bytes(data)
    sent = [0]
    started = threading.Event()
    outcome: dict[str, Any] = {}

    def progress(n: int) -> None:
        sent[0] += n
        if sent[0] >= 8 * MiB:
            started.set()

    def upload() -> None:
        try:
            outcome["result"] = client.put(str(local), "/big/file.bin", block_size=MiB,
                                           progress=progress)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            outcome["error"] = exc
        finally:
            started.set()

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert started.wait(30), "upload made no progress"
    victim = None
    deadline = time.monotonic() + 10
    while victim is None and time.monotonic() < deadline and t.is_alive():
        for d in cluster.chunkservers:
            if d.running() and cluster.tmp_files(d.name):
                victim = d.name
                break
        else:
            time.sleep(0.001)
    assert victim is not None, "never caught a block being written (upload too fast?)"
    cluster.kill(victim, sig)
    t.join(90)
    assert not t.is_alive(), "upload hung after a chunkserver died"
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


def test_chunkserver_killed_mid_upload_with_a_spare(make_cluster) -> None:
    cluster = make_cluster(3)
    result, data, victim = upload_and_kill_a_chain_server(cluster)
    assert result["size"] == len(data)
    assert result["blocks"] == 40
    assert result["under_replicated"] == []
    client = cluster.client()
    got = client.get_bytes("/big/file.bin")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    st = client.stat("/big/file.bin")
    assert [b["size"] for b in st["blocks"]] == [MiB] * 40
    for b in st["blocks"]:
        assert len(set(b["replicas"])) == 2, b
    assert_replicas_on_disk(cluster, st)
    # The block in flight when the server died was rewritten under a new generation.
    assert any(b["gen"] > 1 for b in st["blocks"]), st["blocks"]

    # The victim comes back with whatever it had: stale or partial replicas are never listed,
    # and they leave its disk.
    cluster.restart(victim)
    current = {int(b["id"]): b["gen"] for b in st["blocks"]}

    def no_stale_left() -> bool:
        for p in cluster.block_files(victim):
            _, hexid, gen = p.name.split("_")
            if int(gen) != current.get(int(hexid, 16)):
                return False
        return True
    wait_until(no_stale_left, 5, "stale replicas on the restarted server to be deleted")
    assert not cluster.tmp_files(victim)
    st = client.stat("/big/file.bin")
    assert_replicas_on_disk(cluster, st)
    cluster.kill(next(d.name for d in cluster.chunkservers if d.name != victim))
    assert client.get_bytes("/big/file.bin") == data


def test_chunkserver_killed_mid_upload_without_a_spare(make_cluster) -> None:
    cluster = make_cluster(2)
    result, data, victim = upload_and_kill_a_chain_server(cluster)
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
    assert any(b["gen"] > 1 for b in st["blocks"]), st["blocks"]
    assert client.get_bytes("/big/file.bin") == data
    cluster.wait_state(victim, "dead", timeout=8)
    assert cluster.client().get_bytes("/big/file.bin") == data


@pytest.mark.timeout(150)
def test_chunkserver_hung_mid_upload_is_timed_out_and_replaced(make_cluster) -> None:
    """A server that stops answering (SIGSTOP) without closing its sockets: the packet
    timeouts of the chain name it, the block is rewritten around it, the upload succeeds."""
    cluster = make_cluster(3)
    t0 = time.monotonic()
    result, data, victim = upload_and_kill_a_chain_server(cluster, 24 * MiB, signal.SIGSTOP)
    try:
        assert time.monotonic() - t0 < 80, "the hung server was not given up on in time"
        assert result["size"] == len(data)
        client = cluster.client()
        st = client.stat("/big/file.bin")
        hung = cluster[victim].addr
        assert any(b["gen"] > 1 for b in st["blocks"]), "no block was rewritten"
        assert client.get_bytes("/big/file.bin") == data
        cluster.wait_state(victim, "dead", timeout=10)
        st = client.stat("/big/file.bin")
        assert all(len(b["replicas"]) == 2 and hung not in b["replicas"]
                   for b in st["blocks"] if b["gen"] > 1), st["blocks"]
    finally:
        cluster.kill(victim, signal.SIGCONT)


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
            barrier.wait(10)
            clients[i].put_bytes(contents[i], "/race/file.bin", block_size=MiB)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    def read() -> None:
        barrier.wait(10)
        while not done.is_set():
            try:
                got = clients[writers].get_bytes("/race/file.bin")
            except (dfs.NotFound, dfs.Unavailable):
                continue  # not committed yet, or a version replaced while being read
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            i = digests.get(hashlib.sha256(got).digest())
            if i is None:
                errors.append(AssertionError(f"a reader saw {len(got)} bytes matching no put"))
                return
            seen.append(i)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
    reader = threading.Thread(target=read)
    for t in threads + [reader]:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    reader.join(30)
    assert not errors, errors
    final = cluster.client().get_bytes("/race/file.bin")
    assert hashlib.sha256(final).digest() in digests
    winner = digests[hashlib.sha256(final).digest()]
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
