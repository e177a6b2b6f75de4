"""AsyncClient across several metas (metadata HA): tiny fake metas on loopback ports, each a
`dfs.net.Server` whose service answers as an active meta, a standby (`not_leader`) or one that
dies with the request in flight. No real dfsd, no chunkserver."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Awaitable, Callable

import pytest

from dfs.client.async_client import AsyncClient, meta_address, meta_addresses
from dfs.errors import NotLeader, Unavailable
from dfs.fsspec import DFSFileSystem
from dfs.net.server import Server, ServerConnection


class FakeMeta:
    """Answers every op the tests send as `mode` says: "active" (a reply naming this meta),
    "standby" (NotLeader naming `leader`) or "drop" (hang up, the request unanswered)."""

    def __init__(self, mode: str, leader: str = "") -> None:
        self.mode, self.leader = mode, leader
        self.addr = ""
        self.calls: list[str] = []
        self.unknown_upload = False  # add_block: as a new active that never saw the upload

    def _answer(self, op: str, conn: ServerConnection) -> dict[str, Any] | None:
        self.calls.append(op)
        if self.mode == "standby":
            raise NotLeader("this meta is a standby", leader=self.leader)
        if self.mode == "drop":
            conn.close()
            return None
        if op == "add_block" and self.unknown_upload:
            raise Unavailable("the upload is no longer known to meta (it failed over?): "
                              "upload the file again")
        return {"by": self.addr, "path": "/f", "upload": 7, "files": 1}

    def handle_stat(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("stat", c)

    def handle_rm(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("rm", c)

    def handle_mkdir(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("mkdir", c)

    def handle_create(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("create", c)

    def handle_add_block(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("add_block", c)

    def handle_commit(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("commit", c)

    def handle_abort(self, h: dict[str, Any], p: memoryview, c: ServerConnection) -> Any:
        return self._answer("abort", c)


def closed_port_addr() -> str:
    """An address where nothing listens: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


Body = Callable[[list[FakeMeta], list[Server]], Awaitable[None]]


def run(metas: list[FakeMeta], body: Body) -> None:
    """Start a Server per fake meta, run `body`, stop them."""
    async def main() -> None:
        servers = []
        try:
            for meta in metas:
                server = Server("meta", "127.0.0.1", 0)
                await server.start(meta)
                servers.append(server)
                meta.addr = f"127.0.0.1:{server.port}"
            await body(metas, servers)
        finally:
            for server in servers:
                await server.close(grace=0)
    asyncio.run(main())


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFS_META", raising=False)
    monkeypatch.delenv("DFS_SECRET_FILE", raising=False)


def client(*addrs: str, wait: float = 5.0) -> AsyncClient:
    return AsyncClient(",".join(addrs), timeout=5.0, failover_wait=wait)


# -- addresses --------------------------------------------------------------------------------

def test_a_list_is_normalised_in_order_without_duplicates() -> None:
    text = "h1:5000, http://H2:5001/,h1:5000,[::1]:7,"
    assert meta_addresses(text) == ["h1:5000", "H2:5001", "[::1]:7"]
    assert meta_address(text) == "h1:5000,H2:5001,[::1]:7"
    c = AsyncClient(text)
    assert c.meta_addrs == ["h1:5000", "H2:5001", "[::1]:7"] and c.meta_addr == "h1:5000"
    assert AsyncClient("http://h1:5000/").meta_addrs == ["h1:5000"]


@pytest.mark.parametrize("bad", ["h1:5000,x:yy", ",", "h1:5000,host:99999"])
def test_a_bad_address_in_a_list_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="not an address"):
        AsyncClient(bad)


def test_fsspec_takes_the_list_from_the_url() -> None:
    url = "dfs://h1:5000,h2:5000/t/x.csv"
    kwargs = DFSFileSystem._get_kwargs_from_urls(url)
    assert kwargs == {"meta": "h1:5000,h2:5000"}
    fs = DFSFileSystem(**kwargs, skip_instance_cache=True)
    assert fs._strip_protocol(url) == "/t/x.csv"
    assert fs.unstrip_protocol("/t/x.csv") == url


# -- (a) a standby names the active one --------------------------------------------------------

def test_a_standby_sends_the_client_to_the_active_meta_which_it_then_sticks_to() -> None:
    active = FakeMeta("active")
    other = FakeMeta("standby")  # no hint: next in the list, which the named leader skips
    standby = FakeMeta("standby")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        standby.leader = active.addr
        async with client(standby.addr, other.addr, active.addr) as c:
            assert (await c.stat("/f"))["by"] == active.addr
            assert c.meta_addr == active.addr
            for _ in range(3):
                assert (await c.stat("/f"))["by"] == active.addr
        assert standby.calls == ["stat"] and other.calls == []
        assert active.calls == ["stat"] * 4
    run([active, other, standby], body)


def test_a_leader_named_outside_the_list_is_trusted() -> None:
    active, standby = FakeMeta("active"), FakeMeta("standby")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        standby.leader = active.addr
        async with client(standby.addr, closed_port_addr()) as c:
            assert (await c.stat("/f"))["by"] == active.addr
            assert c.meta_addr == active.addr
    run([active, standby], body)


# -- (b) a meta that is down ---------------------------------------------------------------------

def test_a_refused_address_is_skipped() -> None:
    active = FakeMeta("active")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        async with client(closed_port_addr(), active.addr) as c:
            started = time.monotonic()
            assert (await c.stat("/f"))["by"] == active.addr
            assert time.monotonic() - started < 1.0  # no backoff before the first round ends
            assert c.meta_addr == active.addr
    run([active], body)


def test_the_active_meta_dying_between_requests_moves_the_client_on() -> None:
    old, new = FakeMeta("active"), FakeMeta("standby")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        new.leader = old.addr  # a stale hint, as a standby has before it takes over
        async with client(old.addr, new.addr) as c:
            assert (await c.stat("/f"))["by"] == old.addr
            await servers[0].close(grace=0)  # old dies; new takes over a moment later
            await asyncio.sleep(0.05)  # the client sees the hang-up
            asyncio.get_running_loop().call_later(0.3, setattr, new, "mode", "active")
            assert (await c.mkdir("/d", parents=False)) is None
            assert c.meta_addr == new.addr and new.calls[-1] == "mkdir"
    run([old, new], body)


# -- (c) no active meta at all ---------------------------------------------------------------

def test_no_active_meta_fails_after_failover_wait_naming_every_meta() -> None:
    a, b = FakeMeta("standby"), FakeMeta("standby")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        a.leader, b.leader = b.addr, a.addr  # each names the other: a stale view
        async with client(a.addr, b.addr, wait=0.5) as c:
            started = time.monotonic()
            with pytest.raises(Unavailable) as err:
                await c.stat("/f")
            took = time.monotonic() - started
        assert 0.5 <= took < 2.0, took
        msg = str(err.value)
        assert f"no active meta among {a.addr}, {b.addr} (tried for " in msg, msg
        assert "not the active meta" in msg, msg
        assert len(a.calls) >= 2 and len(b.calls) >= 2  # kept trying, with a backoff
        assert len(a.calls) + len(b.calls) < 20
    run([a, b], body)


# -- (d) a meta that goes away with the request in flight --------------------------------------

@pytest.mark.parametrize("op, fields, resent", [
    ("stat", {"path": "/f"}, True),
    ("commit", {"upload": 7, "blocks": []}, True),
    ("create", {"path": "/f", "replication": 1}, True),
    ("mkdir", {"path": "/d", "parents": True}, True),
    ("abort", {"upload": 7}, True),
    ("rm", {"path": "/f"}, False),
    ("mkdir", {"path": "/d", "parents": False}, False),
    ("add_block", {"upload": 7}, False),
])
def test_a_lost_request_is_resent_only_when_that_is_safe(op: str, fields: dict[str, Any],
                                                         resent: bool) -> None:
    dying, active = FakeMeta("drop"), FakeMeta("active")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        async with client(dying.addr, active.addr) as c:
            if resent:
                assert (await c.meta_call(op, **fields))["by"] == active.addr
                assert active.calls == [op]
            else:
                with pytest.raises(Unavailable, match="it may or may not have been done"):
                    await c.meta_call(op, **fields)
                assert active.calls == []
        assert dying.calls == [op]
    run([dying, active], body)


def test_an_upload_the_new_active_meta_does_not_know_fails_at_once() -> None:
    """Failover between create and add_block: the new active answers `unavailable`; the
    writer raises that (no waiting, no commit) and aborts."""
    old, new = FakeMeta("active"), FakeMeta("active")
    new.unknown_upload = True

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        async with client(old.addr, new.addr) as c:
            writer = await c.open_write("/f")
            await servers[0].close(grace=0)
            await asyncio.sleep(0.05)  # the client sees the hang-up
            started = time.monotonic()
            with pytest.raises(Unavailable, match="upload the file again"):
                await writer.write_packet(b"x" * 100)
            await writer.abort()
            assert time.monotonic() - started < 1.0
        assert old.calls == ["create"]
        assert new.calls == ["add_block", "abort"]
    run([old, new], body)


# -- (e) one address: as before HA ------------------------------------------------------------

def test_one_address_never_follows_a_leader_hint() -> None:
    active, standby = FakeMeta("active"), FakeMeta("standby")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        standby.leader = active.addr
        async with client(standby.addr) as c:
            with pytest.raises(NotLeader):
                await c.stat("/f")
        assert active.calls == []
    run([active, standby], body)


def test_one_refused_address_fails_at_once() -> None:
    async def main() -> None:
        async with client(closed_port_addr(), wait=30.0) as c:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="meta server: cannot connect"):
                await c.stat("/f")
            assert time.monotonic() - started < 1.0
    asyncio.run(main())


def test_one_address_retries_a_lost_read_once_and_a_lost_change_never() -> None:
    dying = FakeMeta("drop")

    async def body(metas: list[FakeMeta], servers: list[Server]) -> None:
        async with client(dying.addr) as c:
            with pytest.raises(Unavailable, match="lost") as err:
                await c.stat("/f")
            assert "may or may not" not in str(err.value)
            assert dying.calls == ["stat", "stat"]
            with pytest.raises(Unavailable, match="lost"):
                await c.rm("/f")
            assert dying.calls == ["stat", "stat", "rm"]
    run([dying], body)
