"""A chunkserver registers again on every new connection to meta, so a heartbeat or report
that arrives over an older one was held up in a cut link (TCP delivers it once the path
heals). Seen in the one-way partition test: such a heartbeat re-added a replica meta had
since trimmed and the server had deleted, and meta then trimmed a good copy elsewhere,
leaving one. Meta must believe nothing such a message says."""

from __future__ import annotations

import asyncio
from typing import Any

from ._meta import addr, call, new_meta, put, row


class Link:
    """Stands for a ServerConnection: meta only compares them by identity."""


async def beat_over(svc: Any, link: Link, i: int, received: list[list[int]]) -> dict[str, Any]:
    result = svc.reports.handle_heartbeat(
        {"chunk_id": f"cs{i}", "addr": addr(i), "capacity": 1 << 40, "used": 0,
         "free": 1 << 40, "load": 0, "writing": 0, "received": received, "corrupt": []},
        memoryview(b""), link)
    return await result if asyncio.iscoroutine(result) else result


def test_a_heartbeat_over_an_older_connection_adds_no_replica_and_proves_nothing() -> None:
    async def go() -> None:
        svc = await new_meta(servers=3)
        old, new = Link(), Link()
        for link in (old, new):  # cs0 registers, its link is cut, it registers again
            svc.reports.handle_register(
                {"chunk_id": "cs0", "addr": addr(0), "cluster_id": "cluster-1",
                 "capacity": 1 << 40, "used": 0, "free": 1 << 40, "load": 0, "writing": 0,
                 "blocks": []}, memoryview(b""), link)
        await put(svc, "/f", [1000], replication=2)
        (block_id, info), = svc.cluster.blocks.items()
        gen = info.gen
        holders = set(svc.cluster.blocks[block_id].replicas)
        cs0 = svc.cluster.servers["cs0"]
        beats = cs0.beats
        reply = await beat_over(svc, old, 0, [row(block_id, gen, 1000)])
        assert reply == {"reregister": True}
        assert set(svc.cluster.blocks[block_id].replicas) == holders
        assert cs0.beats == beats  # it proves no delete was carried out
        reply = await beat_over(svc, new, 0, [])  # the current link is served
        assert "commands" in reply and cs0.beats == beats + 1
        await call(svc, "status")
    asyncio.run(go())
