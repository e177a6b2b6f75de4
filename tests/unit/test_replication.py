"""dfs.meta.replication: which copies start, in what order, within which caps."""

from __future__ import annotations

from dfs.meta.cluster import BlockInfo, Cluster
from dfs.meta.replication import Replicator

MiB = 1 << 20


def make(n: int) -> Cluster:
    cluster = Cluster(dead_timeout=30.0)
    for i in range(n):
        cs = cluster.register(f"s{i}", f"127.0.0.1:{6000 + i}", now=0.0)
        cluster.heartbeat(cs, 100 * MiB * 1024, 0, 100 * MiB * 1024, 0, 0, now=0.0)
    return cluster


def add(cluster: Cluster, block_id: int, holders: list[str], replication: int = 2) -> None:
    cluster.add_block(block_id, BlockInfo(1, MiB, replication))
    for sid in holders:
        cluster.block_report(cluster.servers[sid], [[block_id, 1, MiB]])


def test_a_lost_server_makes_its_blocks_copied_from_a_survivor_to_a_spare() -> None:
    cluster = make(3)
    add(cluster, 1, ["s0", "s1"])
    add(cluster, 2, ["s0", "s2"])
    rep = Replicator(cluster)
    cluster.servers["s0"].state = "dead"
    rep.server_lost("s0")
    copies = {c.block: c for c in rep.schedule(now=1.0)}
    assert set(copies) == {1, 2}
    assert (copies[1].source, copies[1].target) == ("s1", "s2")
    assert (copies[2].source, copies[2].target) == ("s2", "s1")
    assert rep.schedule(now=2.0) == []  # in flight: not started twice


def test_fewest_live_replicas_first_and_caps_per_server() -> None:
    cluster = make(4)
    for b in range(10, 20):
        add(cluster, b, ["s0", "s1"], replication=3)  # one copy short each
    add(cluster, 99, ["s0"], replication=3)  # two copies short: most urgent
    rep = Replicator(cluster, max_copies=1)
    for b in list(range(10, 20)) + [99]:
        rep.check(b)
    started = rep.schedule(now=0.0)
    assert started[0].block == 99
    per_source: dict[str, int] = {}
    per_target: dict[str, int] = {}
    for c in started:
        per_source[c.source] = per_source.get(c.source, 0) + 1
        per_target[c.target] = per_target.get(c.target, 0) + 1
        assert c.target not in ("s0", "s1") or c.block == 99  # never onto a holder
    assert max(per_source.values()) == 1 and max(per_target.values()) == 1


def test_arrival_frees_the_slot_and_a_healthy_block_leaves_the_queue() -> None:
    cluster = make(3)
    add(cluster, 1, ["s0"])
    rep = Replicator(cluster)
    rep.check(1)
    (copy,) = rep.schedule(now=0.0)
    cluster.block_report(cluster.servers[copy.target], [[1, 1, MiB]])
    rep.arrived(1, copy.target)
    assert rep.inflight == {} and rep.sending[copy.source] == 0
    assert rep.schedule(now=1.0) == [] and rep.needy == set()


def test_a_copy_that_never_arrives_is_retried_after_its_deadline() -> None:
    cluster = make(3)
    add(cluster, 1, ["s0"])
    rep = Replicator(cluster, copy_timeout=10.0)
    rep.check(1)
    assert len(rep.schedule(now=0.0)) == 1
    assert rep.schedule(now=5.0) == []
    assert len(rep.schedule(now=11.0)) == 1


def test_missing_uncommitted_and_deleted_blocks_start_no_copy() -> None:
    cluster = make(2)
    add(cluster, 1, [])  # no live replica at all: nothing to copy from
    cluster.add_block(2, BlockInfo(1, MiB, 2, upload=7))  # still being written
    rep = Replicator(cluster)
    for b in (1, 2, 3):  # 3 does not exist
        rep.check(b)
    assert rep.schedule(now=0.0) == []
    assert rep.needy == {1}  # kept: a replica may come back


def test_a_returning_server_makes_extra_replicas_trimmed_back_to_r() -> None:
    cluster = make(3)
    add(cluster, 1, ["s0", "s1"])
    cluster.servers["s0"].state = "dead"
    rep = Replicator(cluster)
    rep.server_lost("s0")
    (copy,) = rep.schedule(now=0.0)
    cluster.block_report(cluster.servers[copy.target], [[1, 1, MiB]])
    assert len(cluster.live_replicas(1)) == 2
    cluster.servers["s2"].free -= 10 * MiB  # the fullest server loses its copy
    back = cluster.register("s0", "127.0.0.1:6000", now=5.0)  # s0 returns with its replica
    cluster.block_report(back, [[1, 1, MiB]])
    assert len(cluster.live_replicas(1)) == 2
    assert cluster.servers["s2"].deletes == [[1, 1]]
    assert "127.0.0.1:6002" not in cluster.live_replicas(1)


def test_a_server_back_by_heartbeat_alone_makes_extra_replicas_trimmed_too() -> None:
    # Cut off from meta only (its TCP link held, so it never registers again): it comes back
    # with a heartbeat, and no block report follows for an hour.
    cluster = make(3)
    add(cluster, 1, ["s0", "s1"])
    s0 = cluster.servers["s0"]
    assert cluster.expire(now=31.0) == [s0, cluster.servers["s1"], cluster.servers["s2"]]
    for sid in ("s1", "s2"):
        cluster.heartbeat(cluster.servers[sid], 100 * MiB * 1024, 0, 100 * MiB * 1024, 0, 0,
                          now=31.0)
    rep = Replicator(cluster)
    rep.server_lost("s0")
    (copy,) = rep.schedule(now=31.0)
    cluster.block_report(cluster.servers[copy.target], [[1, 1, MiB]])
    cluster.servers["s2"].free -= 10 * MiB  # the fullest: its copy is the one to go
    cluster.heartbeat(s0, 100 * MiB * 1024, 0, 100 * MiB * 1024, 0, 0, now=32.0)
    assert cluster.live_replicas(1) == ["127.0.0.1:6000", "127.0.0.1:6001"]
    assert cluster.servers["s2"].deletes == [[1, 1]]
    assert s0.deletes == [] and cluster.servers["s1"].deletes == []


def test_the_queue_is_sorted_once_and_popped_until_every_slot_is_taken() -> None:
    """A schedule between sorts pops the queue's front only: after a lost server, copies
    fill every source's slots, and each arrival lets exactly the next queued block start."""
    cluster = make(3)
    for b in range(100):
        add(cluster, b, ["s0", "s1"])
    rep = Replicator(cluster, max_copies=2)
    cluster.servers["s0"].state = "dead"
    rep.server_lost("s0")
    first = rep.schedule(now=0.0)
    assert [(c.source, c.target) for c in first] == [("s1", "s2")] * 2  # s1's two slots
    assert len(rep._queue) == 98
    running, started = list(first), {c.block for c in first}
    for _ in range(3):
        done = running.pop(0)
        cluster.block_report(cluster.servers["s2"], [[done.block, 1, MiB]])
        rep.arrived(done.block, "s2")
        nxt = rep.schedule(now=0.1)  # well inside the sort interval: no re-sort
        assert len(nxt) == 1 and nxt[0].block not in started
        running += nxt
        started.add(nxt[0].block)
    assert len(rep._queue) == 95
    # A block checked again between sorts waits for the next sort to be queued.
    rep.arrived(first[0].block, "s2")
    assert first[0].block in rep.needy
    rep.schedule(now=5.0)
    assert first[0].block not in rep.needy  # found whole at the sort, and forgotten


def test_a_server_lost_between_sorts_has_its_blocks_queued_at_once() -> None:
    cluster = make(4)
    add(cluster, 1, ["s0", "s1"])
    add(cluster, 2, ["s2", "s3"])
    rep = Replicator(cluster)
    cluster.servers["s0"].state = "dead"
    rep.server_lost("s0")
    (copy,) = rep.schedule(now=0.0)
    assert copy.block == 1
    cluster.servers["s2"].state = "dead"
    rep.server_lost("s2")
    again = {1} if copy.target == "s2" else set()  # its copy was going to s2: lost, redone
    assert {c.block for c in rep.schedule(now=0.1)} == {2} | again  # not a second later


def beat(cluster: Cluster, sid: str, now: float) -> list[dict]:
    """One heartbeat of `sid` and the commands its reply carries."""
    cs = cluster.servers[sid]
    cluster.heartbeat(cs, cs.capacity, cs.used, cs.free, 0, 0, now)
    return cluster.take_commands(cs)


def test_a_server_told_to_drop_an_extra_replica_is_no_copy_target_until_it_has() -> None:
    """The trim-delete vs new-copy race: meta trims an extra replica by queueing a delete on
    s2, then the block loses another replica before s2 has carried the delete out. Were s2
    the copy target, the copy would land on s2 and the delete (same block, same generation)
    would remove it after, while meta counted it. s2 takes the copy only once a heartbeat
    proves the delete ran; a report of the doomed replica meanwhile is not believed."""
    cluster = make(3)
    cluster.servers["s2"].free -= 10 * MiB  # the fullest: trimmed first
    add(cluster, 1, ["s0", "s1", "s2"])  # one more than the 2 asked: s2's goes
    assert cluster.servers["s2"].deletes == [[1, 1]]
    assert cluster.live_replicas(1) == ["127.0.0.1:6000", "127.0.0.1:6001"]
    rep = Replicator(cluster)
    cluster.servers["s0"].state = "dead"  # before s2's next heartbeat
    rep.server_lost("s0")
    assert rep.schedule(now=1.0) == []  # s2 is the only spare, and it is deleting the block
    cluster.block_report(cluster.servers["s2"], [[1, 1, MiB]])  # a full report, before it ran
    assert cluster.live_replicas(1) == ["127.0.0.1:6001"]
    assert beat(cluster, "s2", now=2.0) == [{"op": "delete", "blocks": [[1, 1]]}]
    assert rep.schedule(now=2.0) == []  # handed out, not known to be carried out yet
    assert beat(cluster, "s2", now=3.0) == []  # sent after the delete ran: s2 is free again
    (copy,) = rep.schedule(now=3.0)
    assert (copy.source, copy.target) == ("s1", "s2")
    cluster.block_report(cluster.servers["s2"], [[1, 1, MiB]])
    assert rep.arrived(1, "s2")
    assert cluster.live_replicas(1) == ["127.0.0.1:6001", "127.0.0.1:6002"]


def test_a_delete_held_back_by_an_unsure_meta_keeps_its_server_out() -> None:
    """Heartbeats whose replies carry no commands (an HA meta that just took over, or is
    unsure of its lease) prove nothing: the server stays no target until a reply that
    carried the delete has been followed by a beat."""
    cluster = make(3)
    cluster.servers["s2"].free -= 10 * MiB
    add(cluster, 1, ["s0", "s1", "s2"])
    rep = Replicator(cluster)
    cs = cluster.servers["s2"]
    for t in range(1, 5):
        cluster.heartbeat(cs, cs.capacity, cs.used, cs.free, 0, 0, float(t))  # no commands
    cluster.servers["s0"].state = "dead"
    rep.server_lost("s0")
    assert rep.schedule(now=5.0) == []
    assert beat(cluster, "s2", now=6.0)[0]["op"] == "delete"
    assert beat(cluster, "s2", now=7.0) == []
    assert [c.target for c in rep.schedule(now=7.0)] == ["s2"]


def test_a_server_that_registers_again_before_its_trim_was_sent_is_trimmed_afresh() -> None:
    """Registration drops the queued deletes (the report that comes with it is the truth):
    the replica is believed again and trimmed again, never left uncounted on disk."""
    cluster = make(3)
    cluster.servers["s2"].free -= 10 * MiB
    add(cluster, 1, ["s0", "s1", "s2"])
    back = cluster.register("s2", "127.0.0.1:6002", now=1.0)  # restarted before its beat
    assert back.deletes == [] and back.deleting == set()
    cluster.heartbeat(back, back.capacity, back.used, back.free - 10 * MiB, 0, 0, 1.0)
    cluster.block_report(back, [[1, 1, MiB]])
    assert back.deletes == [[1, 1]] and len(cluster.live_replicas(1)) == 2


def test_a_corrupt_copys_delete_held_back_keeps_its_server_out_too() -> None:
    """The same race for a corrupt replica: its delete is queued the same way, and a few
    heartbeats whose replies carried no commands do not make the server a target."""
    cluster = make(3)
    add(cluster, 1, ["s0", "s2"])
    cluster.servers["s1"].state = "dead"  # s2 is the only server that could take a copy
    assert cluster.bad_replica(1, "127.0.0.1:6002")
    assert cluster.servers["s2"].deletes == [[1, 1]]
    rep = Replicator(cluster)
    rep.check(1)
    cs = cluster.servers["s2"]
    for t in range(1, 5):
        cluster.heartbeat(cs, cs.capacity, cs.used, cs.free, 0, 0, float(t))  # no commands
    assert rep.schedule(now=5.0) == []
    assert beat(cluster, "s2", now=6.0)[0]["op"] == "delete"
    assert rep.schedule(now=6.0) == []
    assert beat(cluster, "s2", now=7.0) == []
    assert [c.target for c in rep.schedule(now=7.0)] == ["s2"]
