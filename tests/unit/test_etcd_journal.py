"""EtcdJournal against a stand-in for etcd's txn: batch numbering, the checkpointer's record
count, fencing. (tests/integration/test_ha.py runs it against a real etcd.)"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from dfs.errors import NotLeader
from dfs.ha.etcd import KV
from dfs.ha.journal import EtcdJournal
from dfs.ha.layout import Layout


class FakeEtcd:
    """Keeps what was put; `leader_rev` is the revision of the leader key it holds."""

    def __init__(self, leader_rev: int) -> None:
        self.leader_rev = leader_rev
        self.kv: dict[bytes, bytes] = {}
        self.revision = 10

    async def txn(self, compare: list[dict], success: list[dict],
                  failure: list[dict] | None = None) -> tuple[bool, list[dict], int]:
        self.revision += 1
        want = int(compare[0]["create_revision"])
        if want != self.leader_rev:
            leader = {"kvs": [{"key": "", "create_revision": str(self.leader_rev)}]}
            return False, [{"response_range": leader}, {"response_range": {}}], self.revision
        for op in success:
            put = op["request_put"]
            import base64
            self.kv[base64.b64decode(put["key"])] = base64.b64decode(put["value"])
        return True, [], self.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        self.kv[key] = value
        return self.revision

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> int:
        gone = [k for k in self.kv if key <= k < (range_end or key + b"\0")]
        for k in gone:
            del self.kv[k]
        return len(gone)

    async def compact(self, revision: int) -> None:
        return None


def batches(etcd: FakeEtcd, layout: Layout) -> list[tuple[int, int, list[Any]]]:
    out = []
    for key in sorted(k for k in etcd.kv if k.startswith(layout.journal)):
        u = msgpack.Unpacker(raw=False)
        u.feed(etcd.kv[key])
        first = u.unpack()
        out.append((layout.seq_of(key), first, list(u)))
    return out


def test_batches_are_numbered_and_count_restarts_with_each_checkpoint() -> None:
    async def main() -> None:
        layout, etcd = Layout(), FakeEtcd(leader_rev=7)
        lost: list[str] = []
        j = EtcdJournal(etcd, layout, 7, next_seq=3, total=100, on_lost=lost.append,  # type: ignore[arg-type]
                        since_checkpoint=10)
        await asyncio.gather(*(j.append(["touch", f"/f{i}", 1.0]) for i in range(5)))
        assert (j.total, j.count) == (105, 15)
        got = batches(etcd, layout)
        assert got[0][:2] == (3, 100) and sum(len(b[2]) for b in got) == 5
        assert [r[1] for b in got for r in b[2]] == [f"/f{i}" for i in range(5)]
        assert j.mark() == (0, 105)
        await j.rotate(b"a snapshot")
        assert j.count == 0 and j.total == 105  # the checkpointer counts from here again
        assert not batches(etcd, layout)  # every batch is covered by the checkpoint
        assert msgpack.unpackb(etcd.kv[layout.checkpoint])["count"] == 105
        assert not lost
    asyncio.run(main())


def test_a_fenced_batch_fails_with_not_leader_and_reports_the_loss() -> None:
    async def main() -> None:
        layout, etcd = Layout(), FakeEtcd(leader_rev=9)  # another meta's leader key
        lost: list[str] = []
        j = EtcdJournal(etcd, layout, 7, next_seq=0, total=0, on_lost=lost.append)  # type: ignore[arg-type]
        with pytest.raises(NotLeader):
            await j.append(["touch", "/f", 1.0])
        assert lost and not batches(etcd, layout)
        with pytest.raises(NotLeader):  # and everything after
            await j.append(["touch", "/g", 1.0])
    asyncio.run(main())


def test_kv_from_failed_txn_reads_the_gateway_shape() -> None:
    kv = KV.from_json({"key": "", "create_revision": "12"})
    assert kv.create_revision == 12 and kv.value == b""
