"""Cluster-side copies share blocks, and setrep changes replication, on real processes: what
is on the chunkservers' disks is the judge (block files), not what meta says."""

from __future__ import annotations

import re
import signal

from cli_runner import cli, ok
from cluster import Cluster, MiB, data_of, wait_until


def block_ids(client, path: str) -> list[int]:
    return [int(b["id"]) for b in client.stat(path)["blocks"]]


def on_disk(cluster: Cluster, ids: list[int]) -> dict[int, int]:
    """How many chunkservers hold a replica file of each block."""
    return {b: sum(1 for d in cluster.chunkservers if cluster.block_files(d.name, b))
            for b in ids}


def freed(cluster: Cluster, ids: list[int]) -> bool:
    return all(n == 0 for n in on_disk(cluster, ids).values())


def deletes_have_run(cluster: Cluster, client, path: str) -> None:
    """Remove an unrelated file and wait until its blocks are gone everywhere: every delete
    meta had decided before (same grace, same heartbeats) has been carried out by then."""
    marker = block_ids(client, path)
    client.rm(path)
    wait_until(lambda: freed(cluster, marker), 20, f"the blocks of {path} to be deleted")


def settled(cluster: Cluster) -> None:
    """Meta out of safe mode, every chunkserver live and its block report taken in whole:
    meta counts for each server the replicas it has on disk. (A file removed while a report
    is still arriving leaves its replicas to the orphan grace, 30 s, not the delete grace.)"""
    def reported() -> bool:
        status = cluster.status()
        blocks = {s["addr"]: (s["state"], s["blocks"]) for s in status["chunkservers"]}
        return not status["safe_mode"] and all(
            blocks.get(d.addr) == ("live", len(cluster.stored_block_ids(d.name)))
            for d in cluster.chunkservers)
    wait_until(reported, 20, "meta out of safe mode with every chunkserver's blocks reported")


def test_a_copy_moves_no_bytes_and_its_blocks_live_until_the_last_file(
        make_cluster) -> None:
    cluster = make_cluster(2)
    client = cluster.client()
    data = data_of(5 * MiB + 123, seed=7)
    client.put_bytes(data, "/orig", block_size=MiB)
    ids = block_ids(client, "/orig")
    before = {d.name: cluster.stored_block_ids(d.name) for d in cluster.chunkservers}
    run = ok(cli("cp", "/orig", "/copy", meta=cluster.meta_addr))
    assert run.out == b""
    assert block_ids(client, "/copy") == ids  # the same blocks ...
    assert {d.name: cluster.stored_block_ids(d.name) for d in cluster.chunkservers} == before
    assert client.du("/", summary=True)[0]["replicated"] == 2 * len(data)  # ... stored once
    assert client.checksum("/copy") == {**client.checksum("/orig"), "path": "/copy"}
    client.put_bytes(b"marker" * 100, "/marker1")
    client.rm("/orig")
    deletes_have_run(cluster, client, "/marker1")
    assert on_disk(cluster, ids) == {b: 2 for b in ids}  # the copy still uses them
    assert client.get_bytes("/copy") == data
    client.rm("/copy")
    wait_until(lambda: freed(cluster, ids), 20, "the shared blocks to be deleted everywhere")


def test_sharing_survives_meta_crash_and_checkpoint(make_cluster) -> None:
    cluster = make_cluster(2)
    client = cluster.client()
    data = data_of(3 * MiB, seed=8)
    client.put_bytes(data, "/d/orig", block_size=MiB)
    client.put_bytes(b"m" * 1000, "/marker1")
    client.put_bytes(b"n" * 1000, "/marker2")
    ids = block_ids(client, "/d/orig")
    ok(cli("cp", "-r", "/d", "/e", meta=cluster.meta_addr))
    cluster.kill("meta")  # a crash: the journal alone has the copy
    cluster.restart("meta")
    settled(cluster)
    client = cluster.client()
    assert block_ids(client, "/e/orig") == ids
    client.rm("/d", recursive=True)
    deletes_have_run(cluster, client, "/marker1")
    assert on_disk(cluster, ids) == {b: 2 for b in ids}
    cluster.kill("meta", signal.SIGTERM)  # a clean stop checkpoints the namespace
    cluster["meta"].wait(20)
    cluster.restart("meta")
    settled(cluster)
    client = cluster.client()
    assert client.get_bytes("/e/orig") == data
    deletes_have_run(cluster, client, "/marker2")
    assert on_disk(cluster, ids) == {b: 2 for b in ids}
    client.rm("/e", recursive=True)
    wait_until(lambda: freed(cluster, ids), 20, "the shared blocks to be deleted everywhere")


def test_a_lost_shared_block_is_repaired_once(make_cluster) -> None:
    cluster = make_cluster(3)
    client = cluster.client()
    client.put_bytes(data_of(2 * MiB, seed=9), "/a", replication=2, block_size=MiB)
    client.cp("/a", "/b")
    client.cp("/a", "/c")
    ids = block_ids(client, "/a")
    victim = cluster.by_addr(client.stat("/a")["blocks"][0]["replicas"][0])
    lost = [b for b in ids if cluster.block_files(victim.name, b)]
    cluster.kill(victim.name)
    cluster.wait_state(victim.name, "dead", 20)
    wait_until(lambda: all(client.fsck(p)["healthy"] == len(ids) for p in ("/a", "/b", "/c")),
               30, "every copy healthy again after the chunkserver loss")
    log = cluster["meta"].log_text()
    for b in lost:
        assert len(re.findall(rf"re-replicating block {b}:", log)) == 1, log[-3000:]
    live = [d for d in cluster.chunkservers if d is not victim]
    assert all(sum(1 for d in live if cluster.block_files(d.name, b)) == 2 for b in ids)


def test_setrep_adds_and_trims_replicas_on_disk(make_cluster) -> None:
    cluster = make_cluster(3)
    client = cluster.client()
    client.put_bytes(data_of(3 * MiB + 5, seed=10), "/f", replication=2, block_size=MiB)
    ids = block_ids(client, "/f")
    m = cluster.meta_addr
    run = ok(cli("setrep", "3", "/f", "--wait", meta=m))
    assert "replication 3 set on 1 file" in run.text, run
    st = client.stat("/f")
    assert st["replication"] == 3
    assert [len(b["replicas"]) for b in st["blocks"]] == [3] * len(ids)
    assert on_disk(cluster, ids) == {b: 3 for b in ids}
    ok(cli("setrep", "1", "/", "-R", "--wait", meta=m))
    assert [len(b["replicas"]) for b in client.stat("/f")["blocks"]] == [1] * len(ids)
    wait_until(lambda: on_disk(cluster, ids) == {b: 1 for b in ids}, 20,
               "the extra replicas to be deleted from disk")
    assert client.get_bytes("/f") == data_of(3 * MiB + 5, seed=10)
    run = cli("setrep", "1", "/", meta=m)  # a directory needs -R
    assert run.code == 1 and "-R" in run.err, run
    run = cli("setrep", "4", "/f", "--wait", meta=m)  # more than there are servers
    assert run.code == 1 and "waiting would never end" in run.err, run


def test_checksum_is_the_same_for_the_same_bytes_whatever_the_block_size(
        cluster: Cluster, tmp_path) -> None:
    m = cluster.meta_addr
    data = data_of(3 * MiB + 77, seed=11)
    (tmp_path / "a").write_bytes(data)
    ok(cli("put", str(tmp_path / "a"), "/small-blocks", "--block-size", "64KiB", meta=m))
    ok(cli("put", str(tmp_path / "a"), "/big-blocks", "--block-size", "2MiB", meta=m))
    sums = ok(cli("checksum", "/small-blocks", "/big-blocks", meta=m)).text.split()
    local = ok(cli("checksum", "--local", str(tmp_path / "a"), meta=m)).text.split()
    assert sums[0] == sums[2] == local[0] and len(sums[0]) == 8, (sums, local)
    flipped = bytearray(data)
    flipped[2 * MiB + 3] ^= 1
    (tmp_path / "b").write_bytes(flipped)
    ok(cli("put", str(tmp_path / "b"), "/flipped", meta=m))
    assert ok(cli("checksum", "/flipped", meta=m)).text.split()[0] != sums[0]
    stat = ok(cli("stat", "--json", "/big-blocks", meta=m)).json()
    assert stat["checksum"] == sums[0] and stat["checksum_algorithm"] == "COMPOSITE-CRC32C"
