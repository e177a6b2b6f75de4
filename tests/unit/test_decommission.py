"""Decommissioning is journaled: a restarted meta (from its journal, from a checkpoint, or an
HA standby applying the active's records) drains the same chunkservers again as soon as they
register, and `cancel` puts one back in service."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from dfs.errors import NotFound
from dfs.meta import checkpoint, records
from dfs.meta.journal import FileJournal
from dfs.meta.namespace import Namespace

from ._meta import addr, call, new_meta, put, register, row


def run(coro):
    return asyncio.run(coro)


def states(svc) -> dict[str, str]:
    return {c["addr"]: c["state"] for c in svc.handle_status({}, memoryview(b""), None)
            ["chunkservers"]}


async def beat(svc, i: int) -> None:
    await call(svc, "heartbeat", chunk_id=f"cs{i}", addr=addr(i), capacity=1 << 40, used=0,
               free=1 << 40, load=0, writing=0)


async def settle(svc, i: int, state: str) -> None:
    """Until meta's sweep (once a second) has moved server i to `state`."""
    for _ in range(40):
        if states(svc)[addr(i)] == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"server {i} is {states(svc)[addr(i)]}, not {state}")


def test_decommission_survives_a_restart_from_the_journal_and_a_checkpoint(tmp_path) -> None:
    jpath, cpath = str(tmp_path / "journal"), str(tmp_path / "checkpoint")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), servers=3, checkpoint_path=cpath)
        reply = await call(svc, "decommission", addr=addr(2))
        assert reply == {"addr": addr(2), "state": "decommissioning", "blocks": 0}
        assert svc.cluster.decommissions == {"cs2": addr(2)}
        again_reply = await call(svc, "decommission", addr=addr(2))  # the same again
        assert again_reply["state"] == "decommissioning"
        await svc.journal.close()  # a crash: the journal alone has it

        again = await new_meta(FileJournal(jpath), servers=0, checkpoint_path=cpath)
        assert again.cluster.decommissions == {"cs2": addr(2)}
        for i in range(3):
            await register(again, i)
        assert states(again) == {addr(0): "live", addr(1): "live", addr(2): "decommissioning"}
        await again.stop()  # a clean stop: a checkpoint, and the journal rotated past it

        third = await new_meta(FileJournal(jpath), servers=3, checkpoint_path=cpath)
        assert third.journal.gen == 1  # replayed from the checkpoint, not the old records
        assert states(third)[addr(2)] == "decommissioning"
        # New blocks avoid it, as before the restart.
        up = (await call(third, "create", path="/f", replication=2))["upload"]
        b = await call(third, "add_block", upload=up)
        assert addr(2) not in b["targets"]
        await third.stop()

    run(main())


def test_a_drained_server_is_decommissioned_again_once_its_blocks_are_reported(tmp_path) -> None:
    jpath = str(tmp_path / "journal")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), servers=3)
        r = await put(svc, "/f", [100], replication=2)
        assert not r["under_replicated"]
        holders = svc.cluster.live_replicas(next(iter(svc.cluster.blocks)))
        spare = next(i for i in range(3) if addr(i) not in holders)
        leaving = next(i for i in range(3) if addr(i) in holders)
        await call(svc, "decommission", addr=addr(leaving))
        await svc.journal.close()

        again = await new_meta(FileJournal(jpath), servers=0)
        (block_id,) = again.cluster.blocks
        rows = [row(block_id, 1, 100)]
        await register(again, leaving, blocks=rows)
        await register(again, spare, blocks=rows)  # its copy was made before the restart
        other = next(i for i in range(3) if i not in (leaving, spare))
        await register(again, other, blocks=rows)
        assert states(again)[addr(leaving)] == "decommissioning"
        await settle(again, leaving, "decommissioned")  # its block is on the two others
        await again.stop()

    run(main())


def test_cancel_puts_a_server_back_in_service_and_is_journaled(tmp_path) -> None:
    jpath = str(tmp_path / "journal")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), servers=3)
        await put(svc, "/f", [100], replication=2)
        (block_id,) = svc.cluster.blocks
        holders = svc.cluster.live_replicas(block_id)
        leaving = next(i for i in range(3) if addr(i) in holders)
        await call(svc, "decommission", addr=addr(leaving))
        # The drain copies the block to the third server ...
        spare = next(i for i in range(3) if addr(i) not in holders)
        await call(svc, "heartbeat", chunk_id=f"cs{spare}", addr=addr(spare), capacity=1,
                   used=0, free=1, load=0, writing=0, received=[row(block_id, 1, 100)])
        assert len(svc.cluster.live_replicas(block_id)) == 3
        # ... and the cancel makes it one replica too many: one is trimmed.
        reply = await call(svc, "decommission", addr=addr(leaving), cancel=True)
        assert reply == {"addr": addr(leaving), "state": "live", "blocks": 1}
        assert svc.cluster.decommissions == {}
        assert len(svc.cluster.live_replicas(block_id)) == 2
        assert sum(len(cs.deletes) for cs in svc.cluster.servers.values()) == 1
        again_reply = await call(svc, "decommission", addr=addr(leaving), cancel=True)
        assert again_reply["state"] == "live"  # nothing to cancel: the same answer
        with pytest.raises(NotFound):
            await call(svc, "decommission", addr="127.0.0.1:1", cancel=True)
        await svc.journal.close()

        again = await new_meta(FileJournal(jpath), servers=3)
        assert again.cluster.decommissions == {}
        assert set(states(again).values()) == {"live"}
        await again.stop()

    run(main())


def test_cancel_by_address_for_a_server_that_never_came_back(tmp_path) -> None:
    """After a restart the decommissioned server may never register again (it was taken
    away): its decommission can still be cancelled by the address it had."""
    jpath = str(tmp_path / "journal")

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), servers=2)
        await call(svc, "decommission", addr=addr(1))
        await svc.journal.close()
        again = await new_meta(FileJournal(jpath), servers=1)
        assert again.cluster.decommissions == {"cs1": addr(1)}
        with pytest.raises(NotFound):  # not registered: nothing to start draining
            await call(again, "decommission", addr=addr(1))
        reply = await call(again, "decommission", addr=addr(1), cancel=True)
        assert reply == {"addr": addr(1), "state": "unknown", "blocks": 0}
        assert again.cluster.decommissions == {}
        await again.journal.close()
        third = await new_meta(FileJournal(jpath), servers=2)
        assert set(states(third).values()) == {"live"}
        await third.stop()

    run(main())


def test_replay_and_checkpoints_carry_the_state(tmp_path) -> None:
    """records.apply (what an HA standby runs on each record) and the checkpoint round trip;
    a checkpoint without the field (written before it existed) loads with none."""
    ns, out = Namespace(0.0), records.Restored()
    for rec in (records.decommission("a", "h:1"), records.decommission("b", "h:2"),
                records.recommission("a"), records.recommission("zz")):
        records.apply(ns, rec, out)
    assert out.decommission == {"b": "h:2"}
    path = str(tmp_path / "checkpoint")
    checkpoint.write(path, checkpoint.snapshot(ns, 0, 4, 7, decommission=out.decommission))
    cp = checkpoint.load(path, Namespace(0.0))
    assert cp is not None and cp.decommission == {"b": "h:2"} and cp.count == 4
    old = checkpoint.snapshot(ns, 0, 4, 7)
    body = msgpack.unpackb(old[len(checkpoint.MAGIC) + checkpoint.HEAD.size:])
    assert "decommission" not in body  # the bytes as before when nobody is decommissioned
    checkpoint.write(path, old)
    cp = checkpoint.load(path, Namespace(0.0))
    assert cp is not None and cp.decommission == {}
