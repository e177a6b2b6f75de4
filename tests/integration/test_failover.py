"""Reads survive a dead replica and a corrupt replica; meta learns about both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cluster import Cluster, MiB, data_of, wait_until

import dfs


def test_classic_workflow_get_after_sigkill_of_one_replica(make_cluster) -> None:
    """The classic three-process example: put with 2 replicas, SIGKILL one chunkserver, get
    from the other.
    (A 10 s dead timeout: the first reads must happen while meta still lists the dead
    server, which a busy machine must not turn into a race.)"""
    cluster = make_cluster(2, dead_timeout="10s")
    client = cluster.client()
    data = data_of(3 * MiB + 777)
    client.put_bytes(data, "/remote/sample.bin", replication=2, block_size=MiB)
    st = client.stat("/remote/sample.bin")
    assert all(len(b["replicas"]) == 2 for b in st["blocks"])

    cluster.kill("chunk0")
    # Immediately, while meta still lists chunk0 as live: the reader must skip it per block.
    t0 = time.monotonic()
    assert client.get_bytes("/remote/sample.bin") == data
    assert cluster.client().get_bytes("/remote/sample.bin") == data  # a client with no pool
    with client.open("/remote/sample.bin", "rb") as f:
        f.seek(2 * MiB - 10)
        assert f.read(20) == data[2 * MiB - 10:2 * MiB + 10]
    elapsed = time.monotonic() - t0
    # A refused connection is skipped at once; waiting for CONNECT_TIMEOUT (5 s) is the bug.
    assert elapsed < 5.0, f"reads took {elapsed:.1f}s to get around a dead replica"
    assert cluster.states()[cluster["chunk0"].addr] == "live", \
        "meta declared chunk0 dead already; this part must run before the dead timeout"

    # After meta declares it dead, it is no longer listed and reads go straight to chunk1.
    cluster.wait_state("chunk0", "dead", timeout=40)
    st = client.stat("/remote/sample.bin")
    assert all(b["replicas"] == [cluster["chunk1"].addr] for b in st["blocks"]), st
    assert client.get_bytes("/remote/sample.bin") == data
    local = cluster.base / "downloaded.bin"
    assert client.get("/remote/sample.bin", str(local)) == len(data)
    assert local.read_bytes() == data


def _corrupt(path: Path, how: str, size: int) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flip_data_byte":
        raw[size // 2] ^= 0x01
    elif how == "flip_checksum_byte":
        raw[size] ^= 0x80  # first byte of the CRC table, right after the data
    elif how == "truncate":
        raw = raw[:size // 3]
    elif how == "zero_data_chunk":
        raw[65536:2 * 65536] = bytes(65536)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["flip_data_byte", "flip_checksum_byte", "zero_data_chunk",
                                 "truncate"])
def test_corrupt_replica_is_skipped_and_reported(cluster: Cluster, how: str) -> None:
    client = cluster.client()
    data = data_of(2 * MiB + 4321, 1)
    client.put_bytes(data, "/c/file.bin", block_size=MiB)
    st = client.stat("/c/file.bin")
    block = st["blocks"][1]  # a full middle block
    # The reader tries replicas in a per-block rotation of the sorted list; corrupt both
    # blocks' first choice so the bad copy is certainly read (block i starts at i % n).
    victim_addr = sorted(block["replicas"])[1 % len(block["replicas"])]
    victim = cluster.by_addr(victim_addr)
    (path,) = cluster.block_files(victim.name, block["id"])
    _corrupt(path, how, block["size"])

    assert client.get_bytes("/c/file.bin") == data
    # The client told meta; meta stops listing the bad replica...
    wait_until(lambda: victim_addr not in client.stat("/c/file.bin")["blocks"][1]["replicas"],
               20, f"meta to drop the corrupt replica on {victim_addr}")
    after = client.stat("/c/file.bin")["blocks"]
    assert after[1]["replicas"] == [a for a in block["replicas"] if a != victim_addr]
    assert after[0]["replicas"] == st["blocks"][0]["replicas"]  # other blocks untouched
    # ...and the bad copy leaves the chunkserver's disk.
    wait_until(lambda: not cluster.block_files(victim.name, block["id"]), 20,
               "the corrupt replica file to be deleted")
    # Reads go on from the good replica, from a fresh client too.
    assert cluster.client().get_bytes("/c/file.bin") == data


def test_every_replica_corrupt_raises_instead_of_returning_bad_bytes(cluster: Cluster) -> None:
    client = cluster.client()
    data = data_of(MiB + 100, 2)
    client.put_bytes(data, "/c/bad.bin", block_size=MiB)
    block = client.stat("/c/bad.bin")["blocks"][0]
    for addr in block["replicas"]:
        (path,) = cluster.block_files(cluster.by_addr(addr).name, block["id"])
        _corrupt(path, "flip_data_byte", block["size"])
    with pytest.raises(dfs.DFSError):
        client.get_bytes("/c/bad.bin")
    with client.open("/c/bad.bin", "rb") as f:
        f.seek(MiB)  # the second block is intact and readable on its own
        assert f.read() == data[MiB:]


def test_get_with_every_replica_dead_fails_within_seconds(cluster: Cluster) -> None:
    client = cluster.client()
    client.put_bytes(b"q" * 1000, "/only-one", replication=1)
    (owner,) = client.stat("/only-one")["blocks"][0]["replicas"]
    cluster.kill(cluster.by_addr(owner).name)
    t0 = time.monotonic()
    with pytest.raises(dfs.Unavailable):
        client.get_bytes("/only-one")
    assert time.monotonic() - t0 < 15


def test_restarted_chunkserver_is_listed_again(cluster: Cluster) -> None:
    client = cluster.client()
    data = data_of(2 * MiB + 9, 4)
    client.put_bytes(data, "/back.bin", block_size=MiB)
    cluster.kill("chunk1")
    cluster.wait_state("chunk1", "dead", timeout=20)
    assert all(len(b["replicas"]) == 1 for b in client.stat("/back.bin")["blocks"])
    cluster.restart("chunk1")  # same port, same data dir: its block report brings them back
    wait_until(lambda: all(len(b["replicas"]) == 2
                           for b in client.stat("/back.bin")["blocks"]),
               20, "the restarted chunkserver's replicas to be listed again")
    cluster.kill("chunk0")
    assert client.get_bytes("/back.bin") == data


def replicas_per_server(st: dict) -> dict[str, int]:
    """How many of a file's replicas each chunkserver holds, from `stat`."""
    return dict(Counter(a for b in st["blocks"] for a in b["replicas"]))


def test_lost_replicas_are_re_replicated(make_cluster) -> None:
    """A dead chunkserver's blocks are copied from the surviving replica to the spare server,
    so that after the dead timeout every block has 2 live replicas again and losing a second
    original server loses nothing."""
    cluster = make_cluster(3)
    client = cluster.client()
    data = data_of(12 * MiB + 3, 3)
    client.put_bytes(data, "/r/file.bin", block_size=MiB)
    counts = replicas_per_server(client.stat("/r/file.bin"))
    victim = cluster.by_addr(max(counts, key=lambda a: counts[a]))
    cluster.kill(victim.name)
    cluster.wait_state(victim.name, "dead", timeout=20)

    def healed() -> bool:
        blocks = client.stat("/r/file.bin")["blocks"]
        return all(len(b["replicas"]) == 2 and victim.addr not in b["replicas"]
                   for b in blocks)
    wait_until(healed, 30, "every block back to 2 live replicas after a chunkserver died")
    st = client.stat("/r/file.bin")
    for b in st["blocks"]:  # the new copies are real, complete files on disk
        for addr in b["replicas"]:
            names = [p.name for p in cluster.block_files(cluster.by_addr(addr).name, b["id"])]
            assert f"blk_{int(b['id']):016x}_{b['gen']}" in names, (b, addr, names)
    # The dead server comes back with its old replicas: the extra copies are trimmed to 2.
    cluster.restart(victim.name)

    def trimmed() -> bool:
        blocks = client.stat("/r/file.bin")["blocks"]
        on_disk = sum(len(cluster.block_files(d.name)) for d in cluster.chunkservers)
        return all(len(b["replicas"]) == 2 for b in blocks) and on_disk == 2 * len(blocks)
    wait_until(trimmed, 30, "extra replicas deleted after the dead server came back")
    assert client.get_bytes("/r/file.bin") == data
    cluster.kill(victim.name)
    cluster.wait_state(victim.name, "dead", timeout=20)
    wait_until(healed, 30, "every block back to 2 live replicas after the second loss")
    # Kill one of the two original holders that are left: the third server has every block.
    second = next(d for d in cluster.chunkservers
                  if d.name != victim.name and d.addr in counts)
    cluster.kill(second.name)
    assert client.get_bytes("/r/file.bin") == data


def test_a_replica_being_trimmed_never_takes_the_copy_its_delete_would_remove(
        make_cluster) -> None:
    """The trim-delete vs new-copy race with real processes. A file at replication 3 on
    three servers is set to 2: meta trims the replica on the fullest server, chunk2, by
    queueing a delete for its next heartbeat (2 s apart here). At once a second replica is
    reported bad, leaving one good copy, and chunk2 is the only server not holding the block:
    were it the copy target, the copy would land (and be reported) and the queued delete,
    same block and generation, would remove it right after, leaving meta counting a replica
    that is gone. Meta waits until chunk2's delete has surely run, then copies; every replica
    meta lists is a file on its server's disk."""
    cluster = make_cluster(2, heartbeat="2s", dead_timeout="60s")
    trimmed = cluster.add_chunkserver(chunk_args=["--capacity", "1GiB"])  # the fullest
    client = cluster.client()
    data = data_of(300 * 1024, 31)
    client.put_bytes(data, "/trim.bin", replication=3)
    (block,) = client.stat("/trim.bin")["blocks"]
    assert len(block["replicas"]) == 3, block
    bad = cluster["chunk0"]

    def beat_age() -> float:
        (row,) = [r for r in cluster.status()["chunkservers"] if r["addr"] == trimmed.addr]
        return float(row["last_heartbeat_s"])
    # Start right after chunk2's heartbeat: its next one, the one whose reply carries the
    # delete, is then about 2 s away, and everything below happens well before it.
    wait_until(lambda: beat_age() > 0.7, 10, "chunk2's heartbeat to age")
    wait_until(lambda: beat_age() < 0.5, 10, "chunk2's next heartbeat")
    client.setrep("/trim.bin", 2)
    assert trimmed.addr not in client.stat("/trim.bin")["blocks"][0]["replicas"]

    async def report_bad() -> None:
        async with dfs.AsyncClient(cluster.meta_addr) as c:
            await c.meta_call("report_bad", block=int(block["id"]), replica=bad.addr)
    asyncio.run(report_bad())

    def whole() -> bool:
        return len(client.stat("/trim.bin")["blocks"][0]["replicas"]) == 2
    wait_until(whole, 40, "the block back at 2 replicas")
    cluster.wait_log(trimmed.name, "on the request of meta", 20)  # the trim's delete ran
    b = client.stat("/trim.bin")["blocks"][0]
    assert len(b["replicas"]) == 2, b
    for addr in b["replicas"]:
        names = [p.name for p in cluster.block_files(cluster.by_addr(addr).name, b["id"])]
        assert f"blk_{int(b['id']):016x}_{b['gen']}" in names, (b, addr, names)
    assert client.fsck("/")["healthy"] == 1
    cluster.kill("chunk1")  # the one good copy the repair started from
    assert client.get_bytes("/trim.bin") == data


def test_scrubber_finds_rot_nobody_reads_and_it_is_repaired(make_cluster) -> None:
    """Flip a byte in one replica on disk and read nothing: the scrubber finds it, meta stops
    listing it, a good copy is made on the spare server, and the bad file is deleted."""
    cluster = make_cluster(3, chunk_args=["--scrub-rate", "64MiB", "--scrub-interval", "1s"])
    client = cluster.client()
    data = data_of(3 * MiB + 5, 8)
    client.put_bytes(data, "/rot.bin", block_size=MiB)
    block = client.stat("/rot.bin")["blocks"][1]
    holder = cluster.by_addr(block["replicas"][0])
    (path,) = cluster.block_files(holder.name, block["id"])
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF
    path.write_bytes(bytes(raw))

    def repaired() -> bool:
        b = client.stat("/rot.bin")["blocks"][1]
        return (len(b["replicas"]) == 2 and holder.addr not in b["replicas"]
                and not cluster.block_files(holder.name, block["id"]))
    wait_until(repaired, 40, "the rotten replica to be found, replaced and deleted")
    assert client.fsck("/")["healthy"] == 4
    cluster.kill(next(d.name for d in cluster.chunkservers if d.name != holder.name
                      and d.addr in client.stat("/rot.bin")["blocks"][1]["replicas"]))
    assert client.get_bytes("/rot.bin") == data


def test_decommission_drains_a_server_before_it_is_taken_away(make_cluster) -> None:
    cluster = make_cluster(3)
    client = cluster.client()
    data = data_of(10 * MiB + 1, 9)
    client.put_bytes(data, "/d/file.bin", block_size=MiB)
    counts = replicas_per_server(client.stat("/d/file.bin"))
    leaving = cluster.by_addr(max(counts, key=lambda a: counts[a]))
    run = subprocess.run([sys.executable, "-m", "dfs.cli", "--meta", cluster.meta_addr,
                          "decommission", leaving.addr], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0 and "decommissioning" in run.stdout, run
    deadline = time.monotonic() + 60  # a ceiling; the drain takes a few seconds
    while True:  # at every moment of the drain, nothing is under-replicated
        assert client.fsck("/")["healthy"] == 11
        if cluster.states()[leaving.addr] == "decommissioned":
            break
        assert time.monotonic() < deadline, "the drain did not finish in 60 s"
        time.sleep(0.1)
    others = [d for d in cluster.chunkservers if d.name != leaving.name]
    for b in client.stat("/d/file.bin")["blocks"]:
        assert sum(a in {d.addr for d in others} for a in b["replicas"]) == 2, b
    client.put_bytes(b"new", "/d/new.bin")  # new blocks avoid the drained server
    assert leaving.addr not in client.stat("/d/new.bin")["blocks"][0]["replicas"]
    cluster.kill(leaving.name)
    assert client.get_bytes("/d/file.bin") == data
    assert client.fsck("/")["healthy"] == 12
    bad = subprocess.run([sys.executable, "-m", "dfs.cli", "--meta", cluster.meta_addr,
                          "decommission", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode != 0 and bad.stderr.startswith("dfs-cli: error:"), bad


def test_copy_orders_reach_chunkservers_without_waiting_for_heartbeats(make_cluster) -> None:
    """Heartbeats a minute apart, and still a drain of 8 blocks finishes at once: meta hands
    each copy order to its source through the source's held poll_commands request, and orders
    the next copy as each one arrives. Carried by heartbeat replies, the first order alone
    would wait up to a minute. `status` shows repair's progress."""
    cluster = make_cluster(3, heartbeat="60s", dead_timeout="180s")
    client = cluster.client()
    data = data_of(8 * MiB, 21)
    client.put_bytes(data, "/d/file.bin", block_size=MiB)
    counts = replicas_per_server(client.stat("/d/file.bin"))
    leaving = cluster.by_addr(max(counts, key=lambda a: counts[a]))
    before = client.status()["repair"]
    client.decommission(leaving.addr)
    wait_until(lambda: cluster.states()[leaving.addr] == "decommissioned", 40,
               "the drain to finish long before the next heartbeat")
    after = client.status()["repair"]
    assert after["copies"]["ok"] - before["copies"]["ok"] == counts[leaving.addr]
    assert after["copied_bytes"] - before["copied_bytes"] == counts[leaving.addr] * MiB
    assert after["needy"] == 0 and after["copying"] == 0
    cluster.kill(leaving.name)
    assert client.get_bytes("/d/file.bin") == data


def test_full_block_report_finds_a_replica_gone_from_disk(make_cluster) -> None:
    """A replica file removed behind the chunkserver's back is noticed at its next full
    block report, and meta has the replica made again (on any server without one)."""
    cluster = make_cluster(3, chunk_args=["--block-report-interval", "1s"])
    client = cluster.client()
    data = data_of(2 * MiB + 7, 10)
    client.put_bytes(data, "/gone.bin", block_size=MiB)
    block = client.stat("/gone.bin")["blocks"][0]
    holder = cluster.by_addr(block["replicas"][0])
    for p in cluster.block_files(holder.name, block["id"]):
        p.unlink()

    def repaired() -> bool:  # two listed replicas, each a real file again
        b = client.stat("/gone.bin")["blocks"][0]
        return len(b["replicas"]) == 2 and all(
            cluster.block_files(cluster.by_addr(a).name, b["id"]) for a in b["replicas"])
    wait_until(repaired, 30, "the vanished replica to be noticed and re-created")
    assert client.fsck("/")["healthy"] == 3
    assert client.get_bytes("/gone.bin") == data


def test_meta_restart_waits_in_safe_mode_for_block_reports(make_cluster) -> None:
    # Safe mode lasts one dead timeout: 10 s here, so that the first status below is surely
    # asked within it, even on a busy machine.
    cluster = make_cluster(2, dead_timeout="10s")
    client = cluster.client()
    client.put_bytes(data_of(100_000, 11), "/safe.bin")
    for d in cluster.chunkservers:
        cluster.kill(d.name)
    cluster.restart("meta")
    status = cluster.client().status()
    assert status["safe_mode"] is True and status["safe_mode_s"] > 0, status
    wait_until(lambda: not cluster.client().status()["safe_mode"], 40,
               "safe mode to end when its bounded wait is over")
    assert cluster.client().fsck("/")["missing"] == 1


def test_corrupt_replica_is_replaced_even_with_no_spare_server(cluster: Cluster) -> None:
    """Two chunkservers, R=2: the bad copy is deleted first, then a good copy is made on the
    same server again (never before its delete has run), and fsck is healthy."""
    client = cluster.client()
    data = data_of(MiB + 3, 12)
    client.put_bytes(data, "/fix.bin", block_size=MiB)
    block = client.stat("/fix.bin")["blocks"][0]
    holder = cluster.by_addr(block["replicas"][0])
    (path,) = cluster.block_files(holder.name, block["id"])
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0x01
    path.write_bytes(bytes(raw))
    assert client.get_bytes("/fix.bin") == data  # reads the other copy, reports this one

    def whole_again() -> bool:
        b = client.stat("/fix.bin")["blocks"][0]
        files = cluster.block_files(holder.name, block["id"])
        return (len(b["replicas"]) == 2 and len(files) == 1
                and files[0].read_bytes()[:MiB] == data[:MiB])
    wait_until(whole_again, 30, "a good copy back on the server whose copy was corrupt")
    assert client.fsck("/")["healthy"] == 2  # both blocks


def test_a_brief_absence_copies_nothing(make_cluster) -> None:
    """A chunkserver restarted within the dead timeout is never declared dead, so none of
    its blocks is copied: no replication storm for a quick restart.

    Event-driven: the dead timeout is 8 s here (a restart takes ~1 s, several on a busy
    machine), and instead of sleeping past it, a sentinel chunkserver holding no block is
    SIGKILLed once meta has heard from it after the victim's kill: when meta declares the
    sentinel dead, it has checked past the moment it would have declared the victim dead."""
    dead_timeout = 8.0
    cluster = make_cluster(3, dead_timeout=f"{dead_timeout:g}s")
    client = cluster.client()
    client.put_bytes(data_of(8 * MiB, 13), "/brief.bin", block_size=MiB)
    blocks = client.stat("/brief.bin")["blocks"]
    on_disk = sum(len(cluster.block_files(d.name)) for d in cluster.chunkservers)
    assert on_disk == 2 * len(blocks)
    sentinel = cluster.add_chunkserver()  # joins after the put: holds nothing
    assert not cluster.block_files(sentinel.name)
    victim = cluster.by_addr(blocks[0]["replicas"][0])
    meta_log = cluster.meta.log_path

    def registrations() -> int:
        return meta_log.read_text().count(f"chunkserver {victim.addr} registered")
    before = registrations()
    cluster.kill(victim.name)
    killed = time.monotonic()  # the victim's last heartbeat was before this
    cluster.restart(victim.name, wait=False)
    wait_until(lambda: registrations() > before, 30, "the restarted victim to register")
    back = time.monotonic() - killed
    assert back < dead_timeout - 1, \
        f"the restart took {back:.1f}s, not a brief absence: no conclusion possible"

    def sentinel_heard_after_kill() -> bool:
        asked = time.monotonic()  # meta's clock reads at least this when it answers
        age = next(cs["last_heartbeat_s"] for cs in cluster.status()["chunkservers"]
                   if cs["addr"] == sentinel.addr)
        return asked - age > killed
    wait_until(sentinel_heard_after_kill, 30, "a heartbeat of the sentinel after the kill")
    cluster.kill(sentinel.name)
    cluster.wait_state(sentinel.name, "dead", timeout=dead_timeout + 30)

    assert cluster.states()[victim.addr] == "live"
    log = meta_log.read_text()
    dead_lines = [ln for ln in log.splitlines() if "is dead" in ln]
    assert all(victim.addr not in ln for ln in dead_lines), dead_lines
    assert any(sentinel.addr in ln for ln in dead_lines), dead_lines  # the control worked
    assert sum(len(cluster.block_files(d.name)) for d in cluster.chunkservers) == on_disk
    assert "re-replicating" not in log
    assert all(len(b["replicas"]) == 2 for b in client.stat("/brief.bin")["blocks"])
