"""A chunkserver that registers again (its link to meta broke and was made anew) may have lost
the copy orders meta handed it or queued for it: repair must order them again at once, not
wait out the copy timeout with the block short and the copy slots taken."""

from __future__ import annotations

import asyncio
import time

import pytest

from ._meta import call, new_meta, put, register, row


@pytest.mark.parametrize("who", ["source", "target"])
def test_a_copy_involving_a_server_that_registers_again_is_ordered_again(who: str) -> None:
    async def scenario() -> None:
        svc = await new_meta(servers=3)
        try:
            await put(svc, "/f", [1000])
            (block_id,) = svc.cluster.blocks
            info = svc.cluster.blocks[block_id]
            await call(svc, "setrep", path="/f", replication=3)
            svc._schedule_copies(time.monotonic())
            (copy,) = svc.replicator.inflight.values()
            cs = svc.cluster.servers[getattr(copy, who)]
            held = [row(block_id, info.gen, 1000)] if cs.id in info.replicas else []
            await register(svc, int(cs.id[2:]), blocks=held)
            svc._schedule_copies(time.monotonic())
            again = svc.replicator.inflight.get(block_id)
            assert again is not None and again is not copy, "the lost copy was not re-ordered"
            assert svc.replicator.outcomes["lost"] == 1
            source = svc.cluster.servers[again.source]
            assert [block_id, info.gen] == source.copies[-1][:2]
        finally:
            await svc.stop()
    asyncio.run(scenario())


def test_a_replica_a_server_no_longer_reports_when_it_registers_again_is_repaired() -> None:
    async def scenario() -> None:
        svc = await new_meta(servers=3)
        try:
            await put(svc, "/f", [1000])
            (block_id,) = svc.cluster.blocks
            holder = svc.cluster.servers[svc.cluster.blocks[block_id].replicas[0]]
            await register(svc, int(holder.id[2:]), blocks=[])  # it lost the replica
            assert len(svc.cluster.live_replicas(block_id)) == 1
            svc._schedule_copies(time.monotonic() + 5)
            assert block_id in svc.replicator.inflight, "the short block is not repaired"
        finally:
            await svc.stop()
    asyncio.run(scenario())
