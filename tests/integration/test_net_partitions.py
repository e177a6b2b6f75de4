"""Network partitions (issue 18): writers and readers run through each one, on hosts of
their own, and the history checker proves nothing acknowledged was lost.

1. a chunkserver cut off from everyone mid-upload, then back;
2. a chunkserver cut off from meta only (clients and peers still reach it) for longer than
   the dead timeout: declared dead, its blocks copied, and trimmed back to R once it returns;
3. one-way partitions between a chunkserver and meta, each direction;
4. meta cut off from every chunkserver for longer than the dead timeout: no repair storm
   once they return, and no good replica deleted.

Each fault is held for `seconds(short)` from its start (DFS_FAULTS_SECONDS for the long form)
and until clients' operations keep ending under it; then it heals and `Campaign.finish()`
checks the history (nothing acknowledged lost, no phantom, no torn read) once fsck is clean.
Every scenario then waits until each block has exactly its replication, in meta's view and
on disk, never fewer copies on disk at any look (extra replicas trimmed, stale ones deleted,
no good one lost), fails if any operation hung for a minute, and prints its figures (run
with -s): operations tried/acknowledged/failed/unknown per kind, the slowest of each, and
what meta and the chunkservers logged (deaths, copy orders, copies made, trims, deletes).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import history
import netns
import pytest
from campaign import Campaign, fault_cluster, seconds
from netns import Network

import dfs
from dfs.local_cluster import Cluster, wait_until

pytestmark = pytest.mark.skipif(netns.available() is not None,
                                reason=str(netns.available()))

CHUNKS = ["chunk0", "chunk1", "chunk2"]
# What meta and the chunkservers log when they repair, counted to tell a repair from a storm.
META_LINES = {"dead": "is dead: no heartbeat", "copy orders": "re-replicating block",
              "pipeline recoveries": "pipeline recovery of block",
              "trims": "wanted: deleting the one on", "back": "is live again",
              "registrations": "registered ("}
CHUNK_LINES = {"copies made": "copied block", "delete batches": "on the request of meta"}


def log_counts(cluster: Cluster, since: dict[str, int] | None = None) -> Counter[str]:
    """How often each repair line appears in the logs (after the offsets in `since`)."""
    out: Counter[str] = Counter()
    for name, lines in [("meta", META_LINES)] + [(c, CHUNK_LINES) for c in CHUNKS]:
        text = cluster[name].log_text()[(since or {}).get(name, 0):]
        for what, line in lines.items():
            out[what] += text.count(line)
    return out


def log_offsets(cluster: Cluster) -> dict[str, int]:
    return {name: cluster.log_size(name) for name in ["meta", *CHUNKS]}


def committed(cluster: Cluster) -> dict[int, tuple[int, list[str]]]:
    """Every block of every file under /hist -> (replication, live replicas per meta)."""
    client = cluster.admin()
    out: dict[int, tuple[int, list[str]]] = {}
    for d in client.ls("/hist"):
        try:
            files = client.ls(d["path"])
        except dfs.NotFound:
            continue
        for f in files:
            if f["type"] != "file":
                continue
            try:
                st = client.stat(f["path"])
            except dfs.NotFound:
                continue  # removed or renamed meanwhile, by a writer still running
            for b in st["blocks"]:
                out[int(b["id"])] = (st["replication"], list(b["replicas"]))
    return out


def on_disk(cluster: Cluster) -> dict[str, set[int]]:
    return {name: cluster.stored_block_ids(name) for name in CHUNKS}


def replication_settles(cluster: Cluster, timeout: float = 20.0) -> dict[int, int]:
    """Wait until every committed block has exactly its replication, in meta's view and on
    disk (an extra replica trimmed, a stale one deleted); returns block -> copies on disk.
    Fails, naming the blocks, if one has fewer than R copies on disk at any look."""
    short: dict[int, int] = {}

    def settled() -> dict[int, int]:
        blocks = committed(cluster)
        disk = on_disk(cluster)
        copies = {b: sum(b in ids for ids in disk.values()) for b in blocks}
        short.update({b: copies[b] for b, (r, _) in blocks.items() if copies[b] < r})
        off = {b: (r, live, copies[b]) for b, (r, live) in blocks.items()
               if len(live) != r or copies[b] != r}
        if off:
            raise ValueError(f"{len(off)} blocks off (replication, live, on disk): "
                             f"{dict(list(off.items())[:5])}")
        return copies
    copies = wait_until(settled, timeout, "every block at exactly its replication")
    assert not short, f"blocks with fewer copies on disk than their replication: {short}"
    return copies


def hold(camp: Campaign, secs: float, since: float, ops: int = 3) -> None:
    """Keep the fault until `secs` after it began (`since`, monotonic), and until clients
    ended `ops` more operations under it (whatever their outcome): the campaign must go on
    through the fault."""
    until = since + secs
    target = camp.ops(None) + ops
    wait_until(lambda: camp._check_alive() or (time.monotonic() >= until
                                                and camp.ops(None) >= target),
               secs + 60, f"{ops} client operations ended during a {secs:g}s fault")


def slowest(camp: Campaign) -> dict[str, float]:
    """The longest any operation of each kind took (seconds)."""
    out: dict[str, float] = {}
    for op in history.load(camp.history_file(n) for n in camp.names):
        out[op.kind] = round(max(out.get(op.kind, 0.0), op.end - op.start), 1)
    return out


def figures(name: str, camp: Campaign, counts: Counter[str], **extra: Any) -> None:
    """Print the scenario's figures, and fail if an operation hung: every one must end,
    one way or another, within its timeouts (a minute is far more than they add up to)."""
    assert camp.report is not None
    rep = camp.report.as_dict()
    slow = slowest(camp)
    print(f"FIGURES {name}: " + json.dumps({
        "tried": rep["tried"], "acked": rep["acked"], "failed": rep["failed"],
        "unknown": rep["unknown"], "lost": rep["lost"], "phantoms": rep["phantoms"],
        "bad_reads": rep["bad_reads"], "slowest_s": slow, "logs": dict(counts), **extra}))
    assert max(slow.values()) < 60, f"an operation hung: {slow}"


def repair_time(cluster: Cluster, until: float) -> float | None:
    """Seconds until fsck is clean (what a dead server held copied elsewhere), polled while
    the fault holds (until `until`, monotonic); None if it was not clean by then."""
    t = time.monotonic()
    client = cluster.admin()
    while time.monotonic() < until:
        f = client.fsck("/")
        if f["under_replicated"] + f["missing"] + f["corrupt"] == 0:
            return round(time.monotonic() - t, 1)
        time.sleep(0.1)
    return None


def start(net: Network, cluster: Cluster, tmp_path: Path) -> Campaign:
    # A client timeout of 5 s: a cut link is found by timeouts, and the suite is short.
    camp = Campaign(net, cluster, tmp_path, writers=2, readers=1, timeout=5.0)
    camp.start()
    camp.wait_ops(40)  # some hundreds of blocks on the chunkservers before the fault
    return camp


@pytest.mark.timeout(240)  # the long form holds the fault for DFS_FAULTS_SECONDS
def test_chunkserver_cut_off_mid_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chunk0's cable pulled while uploads stream through it: pipelines recover onto the
    others, and once it is back its stale and extra replicas go."""
    # A silent hop is found by the packet timeout (20 s, plus 5 s a hop): shorter here, for
    # the daemons and the clients alike, so the suite does not wait it out.
    monkeypatch.setenv("DFS_PACKET_TIMEOUT", "3")
    with fault_cluster(tmp_path) as (net, cluster):
        camp = start(net, cluster, tmp_path)
        # Two writers put all the time, and chunk0 is in most pipelines: catch one writing to
        # it if we can (blocks are small, so a replica is being written only for moments).
        try:
            wait_until(lambda: cluster.tmp_files("chunk0"), 10, "an upload streaming to chunk0",
                       interval=0.002)
        except AssertionError:
            print("no replica seen being written on chunk0: cut it anyway")
        net.cut("chunk0")
        t0 = time.monotonic()
        hold(camp, seconds(4), t0)
        camp.wait_ops(3)  # acknowledged puts go on without chunk0
        net.heal("chunk0")
        healed = time.monotonic()
        cluster.wait_state("chunk0", "live", 40)
        back = time.monotonic() - healed
        camp.finish()
        copies = replication_settles(cluster)
        counts = log_counts(cluster)
        figures("cut chunk0", camp, counts, fault_s=round(healed - t0, 1),
                back_live_s=round(back, 1), blocks=len(copies))
        assert counts["dead"] == 1, "chunk0 was declared dead again after it came back"


@pytest.mark.timeout(240)  # the long form holds the fault for DFS_FAULTS_SECONDS
def test_chunkserver_cut_off_from_meta(tmp_path: Path) -> None:
    """chunk0 cannot reach meta (nor meta it) but serves clients and peers: meta declares
    it dead and copies its blocks; once back it is live, and the extra replicas are trimmed
    without ever taking a block below its replication on disk."""
    with fault_cluster(tmp_path) as (net, cluster):
        camp = start(net, cluster, tmp_path)
        net.block("chunk0", ["meta"])
        t0 = time.monotonic()
        cluster.wait_state("chunk0", "dead", 15)
        dead_after = time.monotonic() - t0
        held = cluster.stored_block_ids("chunk0")
        repaired_in = repair_time(cluster, t0 + seconds(4))
        hold(camp, seconds(4), t0)
        if held & set(committed(cluster)):
            # its blocks were copied elsewhere while it was dead
            wait_until(lambda: log_counts(cluster)["copy orders"], 10, "re-replication")
        camp.wait_ops(3)
        net.heal("chunk0")
        healed = time.monotonic()
        cluster.wait_state("chunk0", "live", 40)
        back = time.monotonic() - healed
        camp.finish()
        copies = replication_settles(cluster)
        counts = log_counts(cluster)
        figures("chunk0 cut from meta", camp, counts,
                dead_after_s=round(dead_after, 1), repaired_after_dead_s=repaired_in,
                fault_s=round(healed - t0, 1),
                back_live_s=round(back, 1), blocks=len(copies))
        assert counts["dead"] == 1, "chunk0 was declared dead again after it came back"


@pytest.mark.timeout(300)
def test_one_way_partitions(tmp_path: Path) -> None:
    """What chunk0 sends to meta lost, then what meta sends to chunk0 lost: either way it
    is declared dead or not, no acknowledged write is lost, and it heals cleanly."""
    with fault_cluster(tmp_path) as (net, cluster):
        camp = start(net, cluster, tmp_path)
        outcome = {}
        for direction in ("out", "in"):
            since = log_offsets(cluster)
            net.block("chunk0", ["meta"], direction)
            t0 = time.monotonic()
            hold(camp, seconds(4), t0)
            camp.wait_ops(3)
            declared = log_counts(cluster, since)["dead"] > 0
            net.heal("chunk0")
            healed = time.monotonic()
            cluster.wait_state("chunk0", "live", 40)
            outcome[direction] = {"declared_dead": declared,
                                  "fault_s": round(healed - t0, 1),
                                  "back_live_s": round(time.monotonic() - healed, 1),
                                  "logs": dict(log_counts(cluster, since))}
            print(f"one-way {direction}: {json.dumps(outcome[direction])}")
        camp.finish()
        copies = replication_settles(cluster)
        counts = log_counts(cluster)
        figures("one-way chunk0/meta", camp, counts, blocks=len(copies), **outcome)
        assert counts["dead"] <= 2, "chunk0 was declared dead again after it came back"


@pytest.mark.timeout(240)
def test_meta_cut_off_from_every_chunkserver(tmp_path: Path) -> None:
    """Meta loses every chunkserver at once for longer than the dead timeout while clients
    still reach it. Meanwhile uploads are refused at once ("no live chunkservers"). Once
    healed: no storm of copies and trims (the servers did not lose a byte: no block that was
    on disk before is copied, nothing is trimmed), and every replica that was on disk before
    is still there if its block is."""
    with fault_cluster(tmp_path) as (net, cluster):
        camp = start(net, cluster, tmp_path)
        before = on_disk(cluster)
        net.block("meta", CHUNKS)
        t0 = time.monotonic()
        since = log_offsets(cluster)
        for name in CHUNKS:
            cluster.wait_state(name, "dead", 15)
        hold(camp, seconds(4), t0)
        net.heal("meta")
        healed = time.monotonic()
        cluster.wait_live(40)
        back = time.monotonic() - healed
        camp.finish()
        copies = replication_settles(cluster)
        after = on_disk(cluster)
        blocks = committed(cluster)
        gone = {name: sorted(b for b in before[name] - after[name] if b in blocks)
                for name in CHUNKS}
        # Copies only for blocks written while meta counted a single server live (placed on
        # it alone: the last one before all were dead, the first one back): none of the
        # blocks that were on disk before the partition is copied.
        copied = {int(m) for m in re.findall(r"re-replicating block (\d+)",
                                              cluster["meta"].log_text()[since["meta"]:])}
        existing = set().union(*before.values())
        counts = log_counts(cluster, since)
        figures("meta cut from all chunkservers", camp, counts,
                fault_s=round(healed - t0, 1), back_live_s=round(back, 1), blocks=len(copies),
                copied_blocks_new=len(copied - existing),
                copied_blocks_old=len(copied & existing))
        assert not any(gone.values()), f"replicas of live blocks deleted: {gone}"
        refused = Counter(op.error for op in history.load(camp.history_file(n)
                                                          for n in camp.names)
                          if op.kind == "put" and op.outcome != "ok")
        print("puts refused during the partition:", dict(refused))
        assert all("no live chunkservers" in e for e in refused), \
            f"uploads failed for another reason than no live chunkservers: {dict(refused)}"
        assert not copied & existing, \
            f"meta re-replicated {len(copied & existing)} blocks that lost no replica"
        assert counts["trims"] == 0, f"meta trimmed replicas after the partition: {dict(counts)}"
        assert counts["dead"] == 3, "a chunkserver was declared dead again after it came back"
