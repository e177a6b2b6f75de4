"""dfs.chunk.heartbeat with several metas (HA): every meta hears of every replica, but commands
(deletes, copies) are carried out only from the active meta at the highest election term seen,
so a deposed active that resumes still believing it leads cannot order a delete.

No sockets: the fence is a plain object, and the links talk to fake connections."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from dfs import config, daemon
from dfs.chunk.blockstore import Replica
from dfs.chunk.heartbeat import CommandFence, MetaLink, MetaLinks
from dfs.errors import Unavailable


def ha(active: bool, term: int) -> dict[str, Any]:
    return {"ha": {"active": active, "term": term, "leader": "m1:5000" if active else ""}}


# -- the fence, reply by reply -----------------------------------------------------------------

def test_a_meta_not_in_ha_mode_is_obeyed() -> None:
    fence = CommandFence()
    assert fence.admit({})
    assert fence.admit({"commands": []})
    assert fence.admit({"ha": None})  # a nil field reads as no field, as elsewhere in headers
    assert fence.term == 0


def test_a_standby_is_not_obeyed_but_its_term_counts() -> None:
    fence = CommandFence()
    assert not fence.admit(ha(False, 3))
    assert fence.term == 3


def test_the_active_at_the_highest_term_is_obeyed() -> None:
    fence = CommandFence()
    assert fence.admit(ha(True, 1))
    assert fence.admit(ha(True, 1))  # the same term again: still the active
    assert fence.admit(ha(True, 2))  # a newer election
    assert fence.term == 2


def test_an_active_at_a_term_older_than_one_seen_is_not_obeyed() -> None:
    fence = CommandFence()
    assert fence.admit(ha(True, 5))
    assert not fence.admit(ha(True, 4))
    assert fence.term == 5  # an older reply never lowers the term


def test_a_higher_term_from_a_standby_fences_off_the_older_active() -> None:
    fence = CommandFence()
    assert fence.admit(ha(True, 1))  # meta A leads at term 1
    assert not fence.admit(ha(False, 2))  # meta B, a standby, reports the term-2 election
    assert not fence.admit(ha(True, 1))  # A resumes after a pause, still believing it leads
    assert fence.admit(ha(True, 2))  # the new active


@pytest.mark.parametrize("bad", ["yes", {"active": True}, {"active": True, "term": "7"},
                                 {"active": True, "term": -1}, {"active": True, "term": True}],
                         ids=["string", "no term", "term as text", "negative term",
                              "term as bool"])
def test_a_malformed_ha_field_is_not_obeyed(bad: Any) -> None:
    fence = CommandFence()
    assert not fence.admit({"ha": bad})
    assert fence.term == 0


# -- the links, with fake connections -----------------------------------------------------------

class FakeStore:
    server_id = "c1"

    def __init__(self) -> None:
        self.index: dict[int, Any] = {}
        self.deleted: list[tuple[int, int]] = []

    def stats(self) -> tuple[int, int, int]:
        return (0, 0, 0)

    def dirs(self) -> list[dict[str, Any]]:
        return [{"path": "/d", "state": "ok"}]

    def delete(self, block_id: int, gen: int) -> bool:
        self.deleted.append((block_id, gen))
        return True


class FakeReply:
    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header

    def release(self) -> None:
        pass


class FakeConn:
    """Answers each call with the next queued header; Unavailable once none is left."""

    closed = False

    def __init__(self, *headers: dict[str, Any]) -> None:
        self.headers = list(headers)
        self.calls: list[str] = []

    async def call(self, op: str, **kw: Any) -> FakeReply:
        self.calls.append(op)
        if not self.headers:
            raise Unavailable("gone")
        return FakeReply(self.headers.pop(0))


def links(store: FakeStore, n: int = 2) -> tuple[MetaLinks, list[tuple[int, int, str, Any]]]:
    copies: list[tuple[int, int, str, Any]] = []
    ml = MetaLinks(store, [f"m{i}:5000" for i in range(n)], 1.0,  # type: ignore[arg-type]
                   advertise=lambda conn: "c1:6000", writing=lambda: 0,
                   replicate=lambda b, g, target, token: copies.append((b, g, target, token)),
                   block_report_interval=3600.0)
    for link in ml.links:
        link._last_full_report = time.monotonic()  # no periodic full report in these beats
    return ml, copies


def beat(link: MetaLink, header: dict[str, Any]) -> None:
    link.conn = FakeConn(header)  # type: ignore[assignment]
    asyncio.run(link._beat())


DELETE = {"commands": [{"op": "delete", "blocks": [[7, 1]]}]}
COPY = {"commands": [{"op": "replicate", "blocks": [[8, 1, "c2:6000", None]]}]}


def test_a_heartbeat_reply_from_a_standby_deletes_nothing() -> None:
    store = FakeStore()
    ml, _ = links(store)
    beat(ml.links[1], {**ha(False, 1), **DELETE})
    assert store.deleted == []
    beat(ml.links[0], {**ha(True, 1), **DELETE})
    assert store.deleted == [(7, 1)]


def test_a_non_ha_meta_is_obeyed_as_before() -> None:
    store = FakeStore()
    ml, _ = links(store, 1)
    beat(ml.links[0], DELETE)
    assert store.deleted == [(7, 1)]


def test_a_deposed_active_cannot_order_a_copy_through_its_poll() -> None:
    """The old active answers a held poll_commands after a standby's reply showed a newer term:
    the links share one fence, so the copy is not made."""
    store = FakeStore()
    ml, copies = links(store)
    old, other = ml.links
    beat(old, ha(True, 1))
    beat(other, ha(False, 2))  # an election happened elsewhere
    old.conn = FakeConn({**ha(True, 1), **COPY})  # type: ignore[assignment]
    old.registered = True
    asyncio.run(old._poll_commands(old.conn))  # type: ignore[arg-type]
    assert copies == []
    other.conn = FakeConn({**ha(True, 2), **COPY})  # type: ignore[assignment]
    other.registered = True
    asyncio.run(other._poll_commands(other.conn))  # type: ignore[arg-type]
    assert copies == [(8, 1, "c2:6000", None)]


def test_register_and_block_report_replies_raise_the_term_too() -> None:
    store = FakeStore()
    ml, _ = links(store)
    ml.links[0].conn = FakeConn(ha(False, 4))  # type: ignore[assignment]
    assert asyncio.run(ml.links[0]._report_page([]))
    assert ml.fence.term == 4
    beat(ml.links[1], {**ha(True, 3), **DELETE})
    assert store.deleted == []


def test_received_and_corrupt_blocks_go_to_every_meta() -> None:
    store = FakeStore()
    ml, _ = links(store)
    for link in ml.links:
        link.conn = FakeConn()  # type: ignore[assignment]
    ml.block_received(5, Replica(2, 4096, 99))
    ml.block_corrupt(6, 3)
    for link in ml.links:
        assert link._received == [[5, 2, 4096, 99]]
        assert link._corrupt == [[6, 3]]
    assert ml.addrs == ["m0:5000", "m1:5000"]


def test_a_meta_that_is_down_gets_the_blocks_with_its_next_registration() -> None:
    """No pending list grows while a meta is unreachable: registering again sends a full
    block report, which covers every replica finalized meanwhile."""
    store = FakeStore()
    ml, _ = links(store)
    up, down = ml.links
    up.conn = FakeConn()  # type: ignore[assignment]
    ml.block_received(5, Replica(2, 4096, 99))
    assert up._received == [[5, 2, 4096, 99]]
    assert down._received == []


class TimedConn(FakeConn):
    """Records the timeout of each call."""

    def __init__(self, *headers: dict[str, Any]) -> None:
        super().__init__(*headers)
        self.timeouts: list[float] = []

    async def call(self, op: str, **kw: Any) -> FakeReply:
        self.timeouts.append(kw.get("timeout", config.RPC_TIMEOUT))
        return await super().call(op, **kw)


@pytest.mark.parametrize("interval", [0.5, config.DEFAULT_HEARTBEAT_INTERVAL])
def test_a_heartbeat_gives_up_on_its_reply_well_within_the_dead_timeout(interval: float) -> None:
    """A reply held up (a partition healed while TCP's retransmission timer backs off) must
    not keep the server from heartbeating until meta declares it dead again."""
    store = FakeStore()
    ml, _ = links(store, n=1)
    (link,) = ml.links
    link.interval = interval
    link.conn = conn = TimedConn({})  # type: ignore[assignment]
    asyncio.run(link._beat())
    assert conn.calls == ["heartbeat"]
    dead_timeout = 10 * interval  # meta's default is ten heartbeats
    assert conn.timeouts[0] <= dead_timeout / 2.5


# -- dfsd --role chunk --meta A,B -------------------------------------------------------------

@pytest.mark.parametrize("meta, why", [("m1:5000,,m2:5000", "not an address"),
                                       ("m1:5000,m2:x", "not an address"),
                                       (f"m1:{config.DEFAULT_META_PORT},m1", "listed twice")])
def test_a_bad_meta_list_is_refused_before_anything_starts(meta: str, why: str) -> None:
    """A bare HOST means HOST:DEFAULT_META_PORT, so "m1" repeats the first address."""
    args = daemon.build_parser().parse_args(["--role", "chunk", "--meta", meta])
    with pytest.raises(daemon.StartupError, match=why):
        asyncio.run(daemon.run_chunk(args, asyncio.Event()))
