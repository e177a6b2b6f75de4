"""dfs.meta.placement (where new replicas go) and dfs.meta.cluster (liveness and block map).
Pure code: no clock (times are passed in), no sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dfs.meta.cluster import BlockInfo, Cluster
from dfs.meta.placement import Candidate, choose_targets

MiB = 1024 * 1024
GiB = 1024 * MiB
BS = 64 * MiB


def c(addr: str, free: int, writing: int = 0) -> Candidate:
    return Candidate(addr, free, writing)


def addrs(chosen: list[Candidate]) -> list[str]:
    return [x.addr for x in chosen]


# -- choose_targets -------------------------------------------------------------------------

def test_targets_are_distinct_and_most_free_first() -> None:
    cands = [c("a", 1 * GiB), c("b", 5 * GiB), c("c", 3 * GiB), c("d", 4 * GiB)]
    chosen = choose_targets(cands, 3, BS, rng=random.Random(1))
    assert addrs(chosen) == ["b", "d", "c"]
    assert len(set(addrs(chosen))) == 3


def test_exclusion() -> None:
    cands = [c("a", 1 * GiB), c("b", 5 * GiB), c("c", 3 * GiB)]
    assert addrs(choose_targets(cands, 2, BS, {"b"}, random.Random(1))) == ["c", "a"]
    assert choose_targets(cands, 2, BS, {"a", "b", "c"}, random.Random(1)) == []


@pytest.mark.parametrize("free,ok", [(BS - 1, False), (BS, True), (0, False), (-5, False)])
def test_servers_without_room_for_a_whole_block_are_skipped(free: int, ok: bool) -> None:
    cands = [c("small", free), c("big", 10 * GiB)]
    chosen = addrs(choose_targets(cands, 2, BS, rng=random.Random(1)))
    assert chosen == (["big", "small"] if ok else ["big"])


def test_count_larger_than_available_returns_fewer() -> None:
    cands = [c("a", GiB), c("b", GiB)]
    assert sorted(addrs(choose_targets(cands, 5, BS, rng=random.Random(1)))) == ["a", "b"]


@pytest.mark.parametrize("cands,count", [([], 3), ([c("a", 1)], 1), ([c("a", GiB)], 0)])
def test_empty_when_nothing_fits(cands, count: int) -> None:
    assert choose_targets(cands, count, BS, rng=random.Random(1)) == []


def test_fewer_blocks_being_written_breaks_a_free_space_tie() -> None:
    cands = [c("busy", 10 * GiB, writing=5), c("idle", 10 * GiB, writing=0),
             c("mid", 10 * GiB, writing=2)]
    assert addrs(choose_targets(cands, 3, BS, rng=random.Random(1))) == ["idle", "mid", "busy"]


def test_near_equal_free_space_counts_as_equal() -> None:
    # Within 1/8 of a block the servers tie, so the one writing less wins despite less space.
    cands = [c("a", 10 * GiB + BS // 16, writing=3), c("b", 10 * GiB, writing=0)]
    assert addrs(choose_targets(cands, 1, BS, rng=random.Random(1))) == ["b"]


def test_ties_spread_across_servers() -> None:
    rng = random.Random(42)
    cands = [c(f"s{i}", 10 * GiB) for i in range(4)]
    firsts = Counter(addrs(choose_targets(cands, 1, BS, rng=rng))[0] for _ in range(400))
    assert set(firsts) == {"s0", "s1", "s2", "s3"}
    assert min(firsts.values()) > 50  # roughly even, not always the same server


def test_seeded_choice_is_reproducible() -> None:
    cands = [c(f"s{i}", 10 * GiB) for i in range(6)]
    one = [addrs(choose_targets(cands, 3, BS, rng=random.Random(7))) for _ in range(3)]
    assert one[0] == one[1] == one[2]


def test_default_rng_works() -> None:
    assert len(choose_targets([c("a", GiB), c("b", GiB)], 2, BS)) == 2


# -- Cluster --------------------------------------------------------------------------------

def cluster_with(n: int = 3, dead_timeout: float = 30.0) -> Cluster:
    cl = Cluster(dead_timeout)
    for i in range(n):
        cs = cl.register(f"id{i}", f"h:{i}", now=100.0)
        cl.heartbeat(cs, capacity=10 * GiB, used=0, free=10 * GiB, load=0, writing=0, now=100.0)
    return cl


def test_register_and_heartbeat() -> None:
    cl = cluster_with(2)
    cs = cl.servers["id0"]
    assert cs.state == "live" and cl.by_addr["h:0"] is cs
    cs.pending = 5 * GiB
    cl.heartbeat(cs, capacity=20, used=5, free=15, load=7, writing=2, now=101.0)
    assert (cs.capacity, cs.used, cs.free, cs.load, cs.writing, cs.pending) == \
        (20, 5, 15, 7, 2, 0)
    assert cs.last_heartbeat == 101.0
    cands = {x.addr: x for x in cl.candidates()}
    assert cands["h:0"].free == 15 and cands["h:0"].writing == 2


def test_candidates_subtract_pending_space() -> None:
    cl = cluster_with(1)
    cl.servers["id0"].pending = 4 * GiB
    assert cl.candidates()[0].free == 6 * GiB


def test_expire_marks_dead_after_the_timeout_and_heartbeat_revives() -> None:
    cl = cluster_with(3, dead_timeout=30.0)
    cl.heartbeat(cl.servers["id1"], 1, 0, 1, 0, 0, now=120.0)
    assert cl.expire(130.0) == []  # exactly 30 s silent is not yet dead
    dead = cl.expire(130.5)
    assert sorted(cs.id for cs in dead) == ["id0", "id2"]
    assert {cs.id for cs in cl.live()} == {"id1"}
    assert cl.expire(131.0) == []  # reported once
    assert [x.addr for x in cl.candidates()] == ["h:1"]
    cl.heartbeat(cl.servers["id0"], 1, 0, 1, 0, 0, now=132.0)
    assert cl.servers["id0"].state == "live"


def test_block_report_keeps_good_replicas_and_queues_deletes() -> None:
    cl = cluster_with(1)
    cs = cl.servers["id0"]
    cl.add_block(1, BlockInfo(gen=1, size=10, replication=2))
    cl.add_block(2, BlockInfo(gen=3, size=10, replication=2))
    cl.add_block(3, BlockInfo(gen=1, size=10, replication=2))
    cl.block_report(cs, [[1, 1, 10], [2, 2, 10], [3, 5, 10], [99, 1, 10]])
    assert set(cl.blocks[1].replicas) == {"id0"}
    assert cs.blocks == {1}
    assert cs.deletes == [[2, 2]]  # stale generation: deleted at once
    assert cl.orphans == {("id0", 99): (1, cl.now)}  # unknown: only after a grace period
    assert cl.blocks[3].replicas == ()  # newer than expected: ignored, not deleted
    assert cl.live_replicas(1) == ["h:0"]
    cl.sweep_orphans(cl.now + 10, grace=30)
    assert cs.deletes == [[2, 2]] and cl.orphans
    cl.sweep_orphans(cl.now + 31, grace=30)
    assert cs.deletes == [[2, 2], [99, 1]] and not cl.orphans


def test_reregistering_forgets_old_replicas_until_reported_again() -> None:
    cl = cluster_with(1)
    cs = cl.servers["id0"]
    cl.add_block(1, BlockInfo(1, 10, 2))
    cl.block_report(cs, [[1, 1, 10]])
    cs.deletes.append([7, 1])
    again = cl.register("id0", "h:0", now=200.0)
    assert again is cs and cs.blocks == set() and cs.deletes == []
    assert cl.blocks[1].replicas == ()


def test_another_server_taking_an_address_replaces_the_old_one() -> None:
    cl = cluster_with(1)
    cl.add_block(1, BlockInfo(1, 10, 2))
    cl.block_report(cl.servers["id0"], [[1, 1, 10]])
    new = cl.register("fresh", "h:0", now=200.0)
    assert "id0" not in cl.servers and cl.by_addr["h:0"] is new
    assert cl.blocks[1].replicas == ()


def test_a_server_moving_to_a_new_address() -> None:
    cl = cluster_with(1)
    cs = cl.register("id0", "h:9", now=200.0)
    assert cs.addr == "h:9" and "h:0" not in cl.by_addr and cl.by_addr["h:9"] is cs


def test_commit_block_records_size_digest_and_the_acked_replicas_on_known_servers() -> None:
    cl = cluster_with(2)
    cl.add_block(1, BlockInfo(2, 0, 2, upload=9))
    cl.promise("h:0", 100)
    cl.commit_block(1, 10, 1234, ["h:0", "nowhere:1"], promised=100)
    info = cl.blocks[1]
    assert (info.size, info.digest, info.upload) == (10, 1234, 0)
    assert cl.live_replicas(1) == ["h:0"]
    assert cl.servers["id0"].pending == 10  # the unused part of the promise is given back


def test_a_reported_replica_that_is_not_the_committed_block_is_refused() -> None:
    cl = cluster_with(3)
    cl.add_block(1, BlockInfo(1, 10, 2, digest=1234))
    cl.block_report(cl.servers["id0"], [[1, 1, 10, 1234]])  # the block
    cl.block_report(cl.servers["id1"], [[1, 1, 10, 999]])  # same id and size, other bytes
    cl.block_report(cl.servers["id2"], [[1, 1, 11, 1234]])  # other length
    assert cl.live_replicas(1) == ["h:0"]
    assert cl.servers["id1"].deletes == [[1, 1]] and cl.servers["id2"].deletes == [[1, 1]]
    # Until those deletes are surely done, neither server is a target for a new copy.
    assert not cl.bad_copy_gone(cl.blocks[1], cl.servers["id1"])


def test_bump_generation_makes_old_replicas_stale() -> None:
    cl = cluster_with(2)
    cl.add_block(1, BlockInfo(1, 10, 2))
    cl.block_report(cl.servers["id0"], [[1, 1, 10]])
    cl.block_report(cl.servers["id1"], [[1, 1, 10]])
    assert cl.bump_generation(1) == 2
    assert cl.blocks[1].gen == 2 and cl.blocks[1].replicas == ()
    for sid in ("id0", "id1"):
        assert cl.servers[sid].deletes == [[1, 1]]
        assert 1 not in cl.servers[sid].blocks
    assert cl.bump_generation(1) == 3


def test_drop_block_queues_deletes_on_holders() -> None:
    cl = cluster_with(3)
    cl.add_block(1, BlockInfo(4, 10, 2))
    cl.block_report(cl.servers["id0"], [[1, 4, 10]])
    cl.block_report(cl.servers["id2"], [[1, 4, 10]])
    cl.drop_block(1)
    assert 1 not in cl.blocks
    assert cl.servers["id0"].deletes == [[1, 4]] and cl.servers["id2"].deletes == [[1, 4]]
    assert cl.servers["id1"].deletes == []
    cl.drop_block(1)  # unknown: nothing happens
    assert cl.servers["id0"].deletes == [[1, 4]]
    assert cl.live_replicas(1) == []


def test_live_replicas_excludes_dead_servers_and_is_sorted() -> None:
    cl = cluster_with(3)
    cl.add_block(1, BlockInfo(1, 10, 3))
    for sid in ("id2", "id0", "id1"):
        cl.block_report(cl.servers[sid], [[1, 1, 10]])
    assert cl.live_replicas(1) == ["h:0", "h:1", "h:2"]
    cl.servers["id1"].last_heartbeat = 0.0
    cl.expire(100.0)
    assert cl.live_replicas(1) == ["h:0", "h:2"]


def test_bad_replica() -> None:
    cl = cluster_with(2)
    cl.add_block(1, BlockInfo(3, 10, 2))
    cl.block_report(cl.servers["id0"], [[1, 3, 10]])
    assert cl.bad_replica(1, "h:0") is True
    assert cl.servers["id0"].deletes == []  # kept until the block is whole again
    assert cl.live_replicas(1) == []
    assert cl.health(1) == ("corrupt", [])
    cl.block_report(cl.servers["id0"], [[1, 3, 10]])  # reported again: still not served
    assert cl.live_replicas(1) == []
    cl.delete_corrupt(1)
    assert cl.servers["id0"].deletes == [[1, 3]]
    assert cl.bad_replica(1, "h:0") is False
    assert cl.bad_replica(1, "h:1") is False
    assert cl.bad_replica(2, "h:0") is False
    assert cl.bad_replica(1, "nowhere:1") is False


def test_block_info_replicas_behave_as_a_set() -> None:
    info = BlockInfo(1, 10, 2)
    assert info.replicas == ()
    info.add("a")
    info.add("b")
    info.add("a")
    assert info.replicas == ("a", "b")
    info.discard("zz")
    info.discard("a")
    assert info.replicas == ("b",)
