"""The compact records meta keeps a million of: a block is one BlockInfo (the namespace's Block
and the block map's record at once), a file one small File. Their fields behave as plain
attributes, and their sizes are guarded here: docs/PERFORMANCE.md counts on them."""

from __future__ import annotations

import sys

import pytest

from dfs.meta.cluster import BlockInfo, Cluster
from dfs.meta.namespace import Block, File


def test_size_and_digest_share_one_int_and_read_back() -> None:
    b = BlockInfo(1, 0, 2, upload=7)
    assert (b.size, b.digest, b.upload) == (0, None, 7)
    b.size, b.digest, b.upload = 64 << 20, 0xFFFF_FFFF, 0
    assert (b.size, b.digest, b.upload) == (64 << 20, 0xFFFF_FFFF, 0)
    b.digest = 0
    assert (b.size, b.digest) == (64 << 20, 0)
    b.digest = None
    assert (b.size, b.digest) == (64 << 20, None)
    assert Block(5, 1, 1 << 40, 3).size == 1 << 40
    for size, digest in ((-1, None), (5, 1 << 32), (5, -1)):
        with pytest.raises(ValueError):
            Block(1, 1, size, digest)


def test_rare_fields_cost_nothing_until_set() -> None:
    b = BlockInfo(1, 10, 2)
    assert (b.upload, b.corrupt, b.refs, b._rare) == (0, None, 1, None)
    b.refs += 1
    assert b.refs == 2 and b._rare is not None
    b.refs -= 1
    assert b._rare is None  # back to the defaults: the extra object goes
    if b.corrupt is None:
        b.corrupt = {}
    b.corrupt["cs1"] = -1  # the dict handed out is the one kept
    assert b.corrupt == {"cs1": -1}
    del b.corrupt["cs1"]
    b.corrupt = None
    assert b._rare is None


def test_equal_replica_sets_are_one_tuple() -> None:
    cluster = Cluster(3)
    infos = [BlockInfo(1, 10, 2) for _ in range(3)]
    for i, info in enumerate(infos):
        cluster.add_block(100 + i, info)
        info.add("cs1")
        info.add("cs2")
    assert infos[0].replicas == ("cs1", "cs2")
    assert infos[0].replicas is infos[1].replicas is infos[2].replicas
    infos[0].discard("cs1")
    infos[1].discard("cs1")
    assert infos[0].replicas == ("cs2",) and infos[0].replicas is infos[1].replicas


def test_a_file_holds_its_blocks_compactly() -> None:
    one = BlockInfo(1, 10, 2, id=1)
    f = File([one], 2, 1 << 20, 5.0)
    assert f.blocks == [one] and f.size == 10 and (f.replication, f.block_size) == (2, 1 << 20)
    assert File([], 3, 1 << 20, 5.0).blocks == [] and File([], 3, 1 << 20, 5.0).size == 0
    many = File([BlockInfo(1, 1 << 20, 2, id=i) for i in range(3)], 2, 1 << 20, 5.0)
    assert many.size == 3 << 20 and [b.id for b in many.blocks] == [0, 1, 2]
    f.replication = 4
    f.attrs = (0o644, None, None)
    assert (f.replication, f.block_size, f.attrs) == (4, 1 << 20, (0o644, None, None))
    g = File([BlockInfo(1, 10, 2, id=2)], 4, 1 << 20, 6.0, (0o644, None, None))
    assert g.kind is f.kind  # equal (replication, block size, attrs): one shared tuple


def test_the_records_stay_small() -> None:
    """What a one-block file costs meta: a File of 64 bytes and a BlockInfo of 80 (with
    the GC's header; see docs/PERFORMANCE.md, "Meta memory, start-up and ls")."""
    b = BlockInfo(1, 4096, 2, digest=5, id=1 << 32)
    assert sys.getsizeof(b) <= 80
    assert sys.getsizeof(File([b], 2, 64 << 20, 1.0)) <= 64
    assert sys.getsizeof(b._sd) <= 32  # size and digest in one int
