"""The work counters of /metrics on real dfsd processes: bytes written (pipelines and small
writes) and read on the chunkservers, block stream times, journal records and group commits
on meta, checksum failures found by the scrubber and by a read of a truncated replica, and the
copies (and their bytes) that repair a dead chunkserver's blocks."""

from __future__ import annotations

from typing import Callable

from cluster import Cluster, data_of
from web_probe import scrape, url

from dfs.local_cluster import wait_until

MiB = 1 << 20
FAST_SCRUB = ["--scrub-rate", "64MiB", "--scrub-interval", "1s"]


def chunk_total(c: Cluster, name: str) -> float:
    """A chunk metric summed over the chunkservers that are running."""
    return sum(scrape(url(c, "/metrics", d.name))[name] for d in c.chunkservers if d.running())


def test_bytes_written_and_read_streams_and_journal_commits_are_counted(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True)
    client = c.client()
    meta_before = scrape(url(c, "/metrics"))
    big, small = data_of(5 * MiB + 5, 1), data_of(1000, 2)
    client.put_bytes(big, "/w/big", replication=2, block_size=2 * MiB)  # 3 block streams
    client.put_bytes(small, "/w/small", replication=2)  # one write_small frame per replica
    # Every replica is counted before its ack leaves its server: no waiting needed.
    assert chunk_total(c, "dfs_chunk_written_bytes_total") >= 2 * (len(big) + len(small))
    assert chunk_total(c, "dfs_chunk_pipeline_duration_seconds_count") >= 2 * 3
    assert chunk_total(c, "dfs_chunk_checksum_failures_total") == 0

    meta = scrape(url(c, "/metrics"))
    assert meta["dfs_journal_records_total"] >= meta_before["dfs_journal_records_total"] + 2
    assert meta["dfs_journal_sync_duration_seconds_count"] > \
        meta_before["dfs_journal_sync_duration_seconds_count"]
    assert meta['dfs_journal_sync_duration_seconds_bucket{le="+Inf"}'] == \
        meta["dfs_journal_sync_duration_seconds_count"]

    read_before = chunk_total(c, "dfs_chunk_read_bytes_total")
    assert client.get_bytes("/w/big") == big and client.get_bytes("/w/small") == small
    assert chunk_total(c, "dfs_chunk_read_bytes_total") >= read_before + len(big) + len(small)


def test_the_scrubber_counts_what_it_checks_and_the_rot_it_finds(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True, chunk_args=FAST_SCRUB)
    client = c.client()
    client.put_bytes(data_of(MiB + 7, 3), "/s/rot.bin", replication=2)
    block = client.stat("/s/rot.bin")["blocks"][0]
    holder = c.by_addr(block["replicas"][0])
    m = url(c, "/metrics", holder.name)
    wait_until(lambda: scrape(m)["dfs_chunk_scrubbed_bytes_total"] >= block["size"], 20,
               "a scrub pass over the new replica")
    assert scrape(m)["dfs_chunk_checksum_failures_total"] == 0
    c.flip_byte(holder.name, block["id"], 1000)
    wait_until(lambda: scrape(m)["dfs_chunk_checksum_failures_total"] >= 1, 30,
               "the scrubber to find the flipped byte")


def test_a_read_of_a_truncated_replica_counts_a_checksum_failure(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True)  # default scrub interval: only the read can find it
    client = c.client()
    data = data_of(2 * MiB + 11, 4)
    client.put_bytes(data, "/t/file.bin", replication=2, block_size=4 * MiB)
    block = client.stat("/t/file.bin")["blocks"][0]
    # The reader starts block i at replica i % n of the sorted list (see test_failover.py).
    victim = c.by_addr(sorted(block["replicas"])[0])
    (path,) = c.block_files(victim.name, block["id"])
    path.write_bytes(path.read_bytes()[:block["size"] // 3])
    assert client.get_bytes("/t/file.bin") == data  # from the other replica
    assert scrape(url(c, "/metrics", victim.name))["dfs_chunk_checksum_failures_total"] >= 1


def test_repair_after_a_death_counts_its_copies_and_bytes(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(3, http=True)
    client = c.client()
    for i in range(4):
        client.put_bytes(data_of(300_000, seed=i), f"/r/f{i}", replication=2)
    before = scrape(url(c, "/metrics"))
    assert before['dfs_replication_copies_total{result="ok"}'] == 0
    assert before["dfs_replication_bytes_total"] == 0
    blocks = [client.stat(f"/r/f{i}")["blocks"][0] for i in range(4)]
    victim = max(c.chunkservers, key=lambda d: sum(d.addr in b["replicas"] for b in blocks))
    lost = [b for b in blocks if victim.addr in b["replicas"]]
    assert lost
    c.kill(victim.name)

    def repaired() -> bool:
        return all(len(client.stat(f"/r/f{i}")["blocks"][0]["replicas"]) == 2
                   and victim.addr not in client.stat(f"/r/f{i}")["blocks"][0]["replicas"]
                   for i in range(4))
    wait_until(repaired, 40, "every block back at two live replicas")

    def counted() -> bool:  # a copy counts when its target's heartbeat reports it received,
        m = scrape(url(c, "/metrics"))  # which a full block report may precede by a beat
        return m['dfs_replication_copies_total{result="ok"}'] >= len(lost) and \
            m["dfs_replication_bytes_total"] >= sum(b["size"] for b in lost)
    wait_until(counted, 10, "every repair copy counted with its bytes")
    assert scrape(url(c, "/metrics"))['dfs_replication_copies_total{result="timeout"}'] == 0
