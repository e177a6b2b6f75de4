"""dfs.meta.hold: most chunkservers silent at once hold repair until they are back."""

from __future__ import annotations

from dfs.meta.cluster import BlockInfo, Cluster
from dfs.meta.hold import RepairHold, quiet_after
from dfs.meta.replication import Replicator

MiB = 1 << 20
DEAD = 3.0


def make(n: int) -> Cluster:
    cluster = Cluster(dead_timeout=DEAD)
    for i in range(n):
        beat(cluster, cluster.register(f"s{i}", f"127.0.0.1:{6000 + i}", now=0.0).id, 0.0)
    return cluster


def beat(cluster: Cluster, sid: str, now: float) -> None:
    cluster.heartbeat(cluster.servers[sid], 100 * MiB * 1024, 0, 100 * MiB * 1024, 0, 0, now)


def add(cluster: Cluster, block_id: int, holders: list[str]) -> None:
    cluster.add_block(block_id, BlockInfo(1, MiB, 2))
    for sid in holders:
        cluster.block_report(cluster.servers[sid], [[block_id, 1, MiB]])


def tick(cluster: Cluster, hold: RepairHold, rep: Replicator, now: float) -> list[int]:
    """One liveness tick of the service: expire, hold, then copies unless held."""
    dead = cluster.expire(now)
    for cs in dead:
        rep.server_lost(cs.id)
    hold.update(now, dead)
    return [] if hold.held else [c.block for c in rep.schedule(now)]


def test_servers_silent_together_order_no_copies_and_none_when_they_return() -> None:
    # Meta cut off from all three: s0's last beat was a little earlier, so it is declared dead
    # one tick before the others, while they still count as live. Without the hold, that tick
    # orders s0's blocks copied between s1 and s2, and trims them once all are back.
    cluster = make(3)
    add(cluster, 1, ["s0", "s1"])
    add(cluster, 2, ["s0", "s2"])
    for sid in ("s1", "s2"):
        beat(cluster, sid, 0.3)
    hold = RepairHold(cluster, stale_after=DEAD / 2, hold_max=10 * DEAD)
    rep = Replicator(cluster)
    assert tick(cluster, hold, rep, 3.1) == []  # s0 dead, s1 and s2 silent for 2.8 s
    assert hold.held == {"s0", "s1", "s2"}
    assert tick(cluster, hold, rep, 3.4) == []  # the rest are dead too
    assert tick(cluster, hold, rep, 60.0) == []  # long after hold_max: nobody live to use
    for sid in ("s1", "s0", "s2"):  # back one by one, by heartbeat
        beat(cluster, sid, 61.0)
        assert tick(cluster, hold, rep, 61.0) == []
    assert not hold.held and rep.schedule(61.5) == []
    for sid in ("s0", "s1", "s2"):
        assert cluster.servers[sid].deletes == [] and cluster.servers[sid].copies == []
    assert cluster.live_replicas(1) == ["127.0.0.1:6000", "127.0.0.1:6001"]


def test_one_server_dying_alone_is_repaired_at_once() -> None:
    cluster = make(3)
    add(cluster, 1, ["s0", "s1"])
    for sid in ("s1", "s2"):
        beat(cluster, sid, 2.9)
    hold = RepairHold(cluster, stale_after=DEAD / 2, hold_max=10 * DEAD)
    rep = Replicator(cluster)
    assert tick(cluster, hold, rep, 3.1) == [1]
    assert not hold.held and hold.holds == 0


def test_the_ones_that_stay_silent_are_repaired_a_dead_timeout_after_the_first_returns() -> None:
    cluster = make(4)
    add(cluster, 1, ["s0", "s3"])
    hold = RepairHold(cluster, stale_after=DEAD / 2, hold_max=10 * DEAD)
    rep = Replicator(cluster)
    assert tick(cluster, hold, rep, 3.1) == [] and len(hold.held) == 4
    for sid in ("s1", "s2", "s3"):  # s0 really died
        beat(cluster, sid, 10.0)
    assert tick(cluster, hold, rep, 10.0) == []
    beat(cluster, "s1", 12.0)
    beat(cluster, "s2", 12.0)
    beat(cluster, "s3", 12.0)
    assert tick(cluster, hold, rep, 12.0) == []
    beat(cluster, "s1", 13.1)
    beat(cluster, "s2", 13.1)
    beat(cluster, "s3", 13.1)
    assert tick(cluster, hold, rep, 13.1) == [1]  # a dead timeout after the first came back
    assert not hold.held


def test_a_real_mass_death_is_repaired_after_hold_max_from_the_survivors() -> None:
    cluster = make(4)
    add(cluster, 1, ["s0", "s3"])
    for sid in ("s2", "s3"):
        beat(cluster, sid, 2.0)
    hold = RepairHold(cluster, stale_after=DEAD / 2, hold_max=10 * DEAD)
    rep = Replicator(cluster)
    assert tick(cluster, hold, rep, 3.1) == [] and hold.held == {"s0", "s1"}
    for now in (4.0, 20.0, 33.0):
        for sid in ("s2", "s3"):
            beat(cluster, sid, now)
        assert tick(cluster, hold, rep, now) == []
    for sid in ("s2", "s3"):
        beat(cluster, sid, 33.2)
    assert tick(cluster, hold, rep, 33.2) == [1]


def test_servers_between_two_slow_beats_are_not_quiet() -> None:
    # dfs-bench repair runs a 3.5 s dead timeout with dfsd's default 3 s heartbeat: half the
    # dead timeout (1.75 s) would count every healthy server as silent between two beats,
    # and hold repair when one server alone died (seen: repair started 3.3 s late).
    dead, hb = 3.5, 3.0
    cluster = Cluster(dead_timeout=dead)
    for i in range(3):
        cluster.register(f"s{i}", f"127.0.0.1:{6000 + i}", now=0.0)
    for sid in ("s0", "s1", "s2"):
        beat(cluster, sid, 0.0)
    add(cluster, 1, ["s0", "s1"])
    rep = Replicator(cluster)
    hold = RepairHold(cluster, stale_after=quiet_after(dead, hb), hold_max=10 * dead)
    beat(cluster, "s1", 1.0)  # s1 and s2 beat on their own 3 s rhythm; s0 dies after 0.0
    beat(cluster, "s2", 1.5)
    assert tick(cluster, hold, rep, 3.6) == [1]  # s0 dead, s1/s2 unheard 2.6/2.1 s: normal
    assert not hold.held


def test_quiet_after_is_half_the_dead_timeout_within_two_beats_and_the_timeout() -> None:
    assert quiet_after(30.0, 3.0) == 15.0
    assert quiet_after(3.5, 3.0) == 3.5
    assert quiet_after(3.0, 0.5) == 1.5
    assert quiet_after(10.0, 3.0) == 6.0
