"""dfs.meta.service driven through its handle_<op> methods (no sockets): the request and reply
fields docs/PROTOCOL.md describes, and the rules that tie namespace, uploads and block map."""

from __future__ import annotations

import asyncio
import time

import pytest

from dfs.config import MAX_LS_PAGE
from dfs.errors import (
    AlreadyExists,
    BadRequest,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    Unavailable,
)
from dfs.meta.journal import MemoryJournal
from dfs.meta.namespace import File
from dfs.protocol import encode_header

from ._meta import BLOCK, GiB, KiB, addr, call, new_meta, put, register


def run(coro):
    return asyncio.run(coro)


async def beat(svc, i: int, received: list | None = None) -> dict:
    return await call(svc, "heartbeat", chunk_id=f"cs{i}", addr=addr(i), capacity=100 * GiB,
                      used=0, free=100 * GiB, load=0, writing=0, received=received or [])


def fits_in_a_frame(reply: dict) -> bool:
    try:
        encode_header({"id": 1, **reply})
    except ValueError:
        return False
    return True


def test_register_and_heartbeat_replies() -> None:
    async def main() -> None:
        svc = await new_meta(servers=0)
        reply = await register(svc, 0)
        assert reply == {"cluster_id": "cluster-1", "heartbeat_interval": 3.0}
        hb = await call(svc, "heartbeat", chunk_id="cs0", addr=addr(0), capacity=10, used=1,
                        free=9, load=0, writing=0, received=[])
        assert hb == {"commands": []}
        # An unknown server, or a known id at another address, must register again.
        assert await call(svc, "heartbeat", chunk_id="cs9", addr=addr(9)) == {"reregister": True}
        assert await call(svc, "heartbeat", chunk_id="cs0", addr=addr(5)) == {"reregister": True}
        with pytest.raises(BadRequest):
            await call(svc, "register", chunk_id="x", addr=addr(1), cluster_id="other")
        with pytest.raises(BadRequest):
            await call(svc, "register", chunk_id=7, addr=addr(1))
        await svc.stop()

    run(main())


def test_create_validates_its_fields() -> None:
    async def main() -> None:
        svc = await new_meta()
        reply = await call(svc, "create", path="/x/./y/", block_size=BLOCK)
        assert reply["path"] == "/x/y" and isinstance(reply["upload"], int)
        await call(svc, "mkdir", path="/d")
        for fields, exc in [
            ({"path": "/f", "replication": 0}, BadRequest),
            ({"path": "/f", "replication": 17}, BadRequest),
            ({"path": "/f", "replication": True}, BadRequest),
            ({"path": "/f", "block_size": BLOCK - 1}, BadRequest),
            ({"path": "/f", "block_size": BLOCK + 1}, BadRequest),
            ({"path": "/f", "block_size": 2 * GiB}, BadRequest),
            ({"path": "f"}, BadRequest),
            ({"path": "/d"}, IsADirectory),
            ({}, BadRequest),
        ]:
            with pytest.raises(exc):
                await call(svc, "create", **fields)
        await svc.stop()

    run(main())


def test_add_block_placement_errors() -> None:
    async def main() -> None:
        svc = await new_meta(servers=0)
        up = (await call(svc, "create", path="/f", block_size=BLOCK))["upload"]
        with pytest.raises(Unavailable):
            await call(svc, "add_block", upload=up)
        await register(svc, 0, free=BLOCK - 1)
        with pytest.raises(NoSpace):
            await call(svc, "add_block", upload=up)
        with pytest.raises(Unavailable):  # an unknown upload: start again
            await call(svc, "add_block", upload=12345)
        with pytest.raises(BadRequest):
            await call(svc, "add_block", upload="x")
        await svc.stop()

    run(main())


def test_write_read_lifecycle_fields() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        up = (await call(svc, "create", path="/d/f", replication=2, block_size=BLOCK))["upload"]
        b1 = await call(svc, "add_block", upload=up)
        assert b1["gen"] == 1 and len(b1["targets"]) == 2 and len(set(b1["targets"])) == 2
        assert b1["block"] >> 32 == svc.epoch
        b2 = await call(svc, "add_block", upload=up, exclude=[addr(0)])
        assert addr(0) not in b2["targets"] and b2["block"] == b1["block"] + 1
        assert await call(svc, "renew", upload=up) == {}
        # Not visible before commit.
        with pytest.raises(NotFound):
            await call(svc, "stat", path="/d/f")
        # Wrong gen, wrong size, not a list: refused, the upload survives.
        for blocks in ([[b1["block"], 2, BLOCK, b1["targets"], 0]],
                       [[b1["block"], 1, BLOCK + 1, b1["targets"], 0]],
                       [[b1["block"], 1, 10, b1["targets"], 0], [b2["block"], 1, 10, [], 0]],
                       [[b1["block"], 1, 0, [], 0]],
                       [[b1["block"], 1, 10, b1["targets"]]],
                       [[b1["block"], 1, 10, b1["targets"], -1]],
                       [[b1["block"], 1, 10, b1["targets"], 1 << 32]],
                       [[b1["block"], 1, 10, b1["targets"], 1.0]],
                       "nope"):
            with pytest.raises(BadRequest):
                await call(svc, "commit", upload=up, blocks=blocks)
        reply = await call(svc, "commit", upload=up, blocks=[
            [b1["block"], 1, BLOCK, b1["targets"], 7], [b2["block"], 1, 10, b2["targets"][:1], 8]])
        published = reply.pop("mtime")
        assert reply == {"path": "/d/f", "under_replicated": [str(b2["block"])]}
        st = await call(svc, "stat", path="/d/f")
        assert st["type"] == "file" and st["size"] == BLOCK + 10
        assert st["mtime"] == published  # the reply says what the file was published with
        assert st["replication"] == 2 and st["block_size"] == BLOCK
        assert [b["id"] for b in st["blocks"]] == [str(b1["block"]), str(b2["block"])]
        assert st["blocks"][0]["replicas"] == sorted(b1["targets"])
        assert st["blocks"][1]["replicas"] == b2["targets"][:1]
        assert await call(svc, "stat", path="/d/f", blocks=False) == {
            k: v for k, v in st.items() if k != "blocks"}
        ls = await call(svc, "ls", path="/d")
        assert ls["more"] is False and [e["path"] for e in ls["entries"]] == ["/d/f"]
        assert "blocks" not in ls["entries"][0]
        d = await call(svc, "stat", path="/d")
        assert d["type"] == "dir" and "blocks" not in d and d["entries"] == 1
        # The upload is gone after commit.
        # The same commit again (its reply was lost): the same answer, nothing changes.
        again = await call(svc, "commit", upload=up, blocks=[])
        assert again == {"path": "/d/f", "under_replicated": [], "mtime": published}
        with pytest.raises(Unavailable):  # an upload meta never saw: start again
            await call(svc, "commit", upload=up + 1, blocks=[])
        status = await call(svc, "status")
        assert (status["files"], status["blocks"], status["uploads"]) == (1, 2, 0)
        assert [c["addr"] for c in status["chunkservers"]] == [addr(i) for i in range(3)]
        assert set(status["chunkservers"][0]) >= {"id", "addr", "state", "blocks", "used",
                                                  "capacity", "last_heartbeat_s"}
        await svc.stop()

    run(main())


def test_recover_block_keeps_no_server_that_is_being_drained() -> None:
    async def main() -> None:
        svc = await new_meta(servers=4)
        up = (await call(svc, "create", path="/f", replication=2, block_size=BLOCK))["upload"]
        b = await call(svc, "add_block", upload=up)
        bad, draining = b["targets"]
        await call(svc, "decommission", addr=draining)
        r = await call(svc, "recover_block", upload=up, block=b["block"], exclude=[bad],
                       keep=[draining])
        assert bad not in r["targets"] and draining not in r["targets"], r
        assert len(r["targets"]) == 2
        await svc.stop()

    run(main())


def test_recovery_with_servers_left_but_no_room_is_no_space() -> None:
    """The writer's one target ran out of space and the other server has no room either: the
    user must read "no space", not "no chunkserver left" (which means every server failed)."""
    async def main() -> None:
        svc = await new_meta(servers=2, free=BLOCK + BLOCK // 2)  # room for one block each
        up = (await call(svc, "create", path="/f", replication=2, block_size=BLOCK))["upload"]
        b = await call(svc, "add_block", upload=up)
        first, second = b["targets"]
        with pytest.raises(NoSpace):  # `second` is promised this block already: no room
            await call(svc, "recover_block", upload=up, block=b["block"], exclude=[first],
                       keep=[])
        with pytest.raises(Unavailable, match="no chunkserver left"):
            await call(svc, "recover_block", upload=up, block=b["block"],
                       exclude=[first, second], keep=[])
        await svc.stop()

    run(main())


def test_sizes_the_writer_announces_decide_how_much_room_placement_needs() -> None:
    async def main() -> None:
        svc = await new_meta(servers=2, free=10 * KiB * 64)  # 640 KiB each: < one 1 MiB block
        big = 16 * BLOCK  # 1 MiB blocks
        with pytest.raises(NoSpace):
            up = (await call(svc, "create", path="/a", block_size=big))["upload"]
            await call(svc, "add_block", upload=up)
        up = (await call(svc, "create", path="/b", block_size=big, size=100 * KiB,
                         first_block=True))
        assert len(up["first"]["targets"]) == 2  # 100 KiB fits where 1 MiB would not
        await svc.stop()

    run(main())


def test_recover_block_bumps_the_generation_and_replaces_the_failed_server() -> None:
    async def main() -> None:
        svc = await new_meta(servers=3)
        up = (await call(svc, "create", path="/f", replication=2, block_size=BLOCK))["upload"]
        b = await call(svc, "add_block", upload=up)
        bad, good = b["targets"]
        r = await call(svc, "recover_block", upload=up, block=b["block"], exclude=[bad],
                       keep=[good])
        assert r["block"] == b["block"] and r["gen"] == 2
        assert r["targets"][0] == good and bad not in r["targets"] and len(r["targets"]) == 2
        # The old generation can no longer be committed; the new one can.
        with pytest.raises(BadRequest):
            await call(svc, "commit", upload=up, blocks=[[b["block"], 1, 5, [good], 5]])
        await call(svc, "commit", upload=up, blocks=[[b["block"], 2, 5, r["targets"], 5]])
        with pytest.raises(Unavailable):  # an unknown upload: start again
            await call(svc, "recover_block", upload=up, block=b["block"])
        await svc.stop()

    run(main())


async def epoch_after_reports(svc, *epochs: int) -> int:
    """Register a server holding one block id of each epoch; the epoch meta then allocates."""
    await register(svc, 7, blocks=[[e << 32, 1, 10, 10] for e in epochs])
    if svc._epoch_task is not None:
        await svc._epoch_task
    b = await call(svc, "add_block",
                   upload=(await call(svc, "create", path=f"/e{len(epochs)}"))["upload"])
    return b["block"] >> 32


def test_ids_of_a_newer_epoch_on_a_chunkserver_move_meta_past_it() -> None:
    async def main() -> None:
        svc = await new_meta()
        now = svc.epoch
        assert await epoch_after_reports(svc, now) == now  # its own epoch: nothing to do
        assert await epoch_after_reports(svc, now + 10**6, now + 5) == now + 10**6 + 1
        await svc.stop()

    run(main())


def test_an_epoch_with_no_room_after_it_is_ignored() -> None:
    """Ids must fit in 64 bits: one report of 2**64-1 must not stop allocation for good."""
    async def main() -> None:
        svc = await new_meta()
        now = svc.epoch
        assert await epoch_after_reports(svc, (1 << 32) - 1) == now
        await svc.stop()

    run(main())


def test_a_read_only_meta_remembers_newer_epochs_for_its_first_one() -> None:
    async def main() -> None:
        journal = MemoryJournal()
        journal.full = True
        svc = await new_meta(journal, servers=2)
        assert svc.epoch == 0
        future = int(time.time()) + 10**6
        await register(svc, 7, blocks=[[future << 32, 1, 10, 10]])
        journal.full = False
        svc._roll_epoch()  # what the sweep does once the journal has room again
        await svc._epoch_task
        assert svc.epoch == future + 1
        await svc.stop()

    run(main())


def test_recover_block_of_a_block_not_in_the_upload() -> None:
    async def main() -> None:
        svc = await new_meta(servers=2)
        up = (await call(svc, "create", path="/f", block_size=BLOCK))["upload"]
        with pytest.raises(BadRequest):
            await call(svc, "recover_block", upload=up, block=99)
        b = await call(svc, "add_block", upload=up)
        with pytest.raises(Unavailable):
            await call(svc, "recover_block", upload=up, block=b["block"],
                       exclude=[addr(0), addr(1)], keep=[])
        await svc.stop()

    run(main())


def test_abort_and_replace_queue_deletes_through_heartbeats() -> None:
    async def main() -> None:
        svc = await new_meta(servers=2)
        up = (await call(svc, "create", path="/f", block_size=BLOCK))["upload"]
        b = await call(svc, "add_block", upload=up)
        # The chunkservers report the finalized replicas in their heartbeats.
        for i in range(2):
            await beat(svc, i, received=[[b["block"], 1, 10, 10]])
        assert await call(svc, "abort", upload=up) == {}
        assert await call(svc, "abort", upload=up) == {}  # idempotent
        for i in range(2):
            hb = await beat(svc, i)
            assert hb == {"commands": [{"op": "delete", "blocks": [[b["block"], 1]]}]}
            assert await beat(svc, i) == {"commands": []}
        # Replacing a file garbage-collects the old file's blocks, after the delete grace
        # (readers that opened the old version may still be reading them).
        await put(svc, "/g", [10])
        old = int((await call(svc, "stat", path="/g"))["blocks"][0]["id"])
        await put(svc, "/g", [20])
        assert old not in svc.cluster.blocks
        assert [(await beat(svc, i))["commands"] for i in range(2)] == [[], []]
        svc.cluster.sweep_doomed(time.monotonic() + svc.delete_grace)
        deletes = [cmd for i in range(2) for cmd in (await beat(svc, i))["commands"]]
        assert [c["blocks"] for c in deletes] == [[[old, 1]], [[old, 1]]]
        await svc.stop()

    run(main())


def test_report_bad_removes_the_replica() -> None:
    async def main() -> None:
        svc = await new_meta(servers=2)
        await put(svc, "/f", [10])
        blk = (await call(svc, "stat", path="/f"))["blocks"][0]
        victim = blk["replicas"][0]
        assert await call(svc, "report_bad", block=int(blk["id"]), replica=victim) == \
            {"removed": True}
        assert await call(svc, "report_bad", block=int(blk["id"]), replica=victim) == \
            {"removed": False}
        st = await call(svc, "stat", path="/f")
        assert victim not in st["blocks"][0]["replicas"]
        await svc.stop()

    run(main())


def test_namespace_ops_through_handlers() -> None:
    async def main() -> None:
        svc = await new_meta()
        assert await call(svc, "mkdir", path="/a/b", parents=True) == \
            {"path": "/a/b", "created": True}
        assert await call(svc, "mkdir", path="/a/b", parents=True) == \
            {"path": "/a/b", "created": False}
        with pytest.raises(AlreadyExists):
            await call(svc, "mkdir", path="/a/b")
        with pytest.raises(NotFound):
            await call(svc, "mkdir", path="/q/r")
        await put(svc, "/a/b/f", [10])
        with pytest.raises(NotADirectory):
            await call(svc, "mkdir", path="/a/b/f/g", parents=True)
        assert await call(svc, "mv", src="/a/b/f", dst="/a") == {"path": "/a/f"}
        assert await call(svc, "rm", path="/a", recursive=True) == {"files": 1}
        with pytest.raises(NotFound):
            await call(svc, "rm", path="/a")
        with pytest.raises(BadRequest):
            await call(svc, "ls", path="/", limit=0)
        with pytest.raises(BadRequest):
            await call(svc, "ls", path="/", start_after=5)
        with pytest.raises(BadRequest):
            await call(svc, "stat", path=None)
        await svc.stop()

    run(main())


def test_a_failed_commit_does_not_leak_the_uploads_blocks() -> None:
    """Regression (fixed in e3da029): handle_commit deleted the upload and marked its blocks
    committed (upload=0) *before* `ns.publish` ran. If publish then failed (a directory was
    made at the path, or a parent became a file, after create), the blocks stayed in the
    block map forever: no file owned them, `abort` could no longer find the upload, and
    chunkservers kept the replicas (block reports match a known block at the right
    generation)."""
    async def main() -> None:
        svc = await new_meta(servers=2)
        up = (await call(svc, "create", path="/a/f", block_size=BLOCK))["upload"]
        b = await call(svc, "add_block", upload=up)
        await call(svc, "mkdir", path="/a/f", parents=True)  # someone takes the name
        with pytest.raises(IsADirectory):
            await call(svc, "commit", upload=up, blocks=[[b["block"], 1, 10, b["targets"], 10]])
        await call(svc, "abort", upload=up)  # what the client does after a failed commit
        assert b["block"] not in svc.cluster.blocks
        await svc.stop()

    run(main())


@pytest.mark.parametrize("name_len", [20, 100, 255])
def test_an_ls_page_always_fits_in_one_frame(name_len: int) -> None:
    """Regression (fixed in e3da029): the client asks for pages of MAX_LS_PAGE (10,000)
    entries and handle_ls returned that many whatever their size. With full paths of ~30+
    characters the reply header passed MAX_HEADER (1 MiB); `encode_header` raised ValueError
    in the server's reply path, which closed the connection, so `ls` of a large directory
    failed with `unavailable` (INTERFACE.md: 100,000 entries list in one command)."""
    async def main() -> None:
        svc = await new_meta(servers=0)
        await call(svc, "mkdir", path="/big")
        for i in range(MAX_LS_PAGE):
            svc.ns.publish(f"/big/{i:06d}" + "x" * (name_len - 6),
                           File([], 2, BLOCK, 1763977200.0))
        reply = await call(svc, "ls", path="/big", limit=MAX_LS_PAGE)
        assert reply["entries"], "a page must make progress"
        assert fits_in_a_frame(reply), "ls reply exceeds MAX_HEADER"
        await svc.stop()

    run(main())


@pytest.mark.parametrize("name", ["x" * 20, "x" * 255, "\u00e9" * 200, "\U0001d11e" * 63])
def test_an_ls_page_in_columns_always_fits_in_one_frame(name: str) -> None:
    """The columns page is cut where its names (in bytes: some take 4 a character) and
    values would outgrow the frame, and the next page starts right after the cut."""
    async def main() -> None:
        svc = await new_meta(servers=0)
        await call(svc, "mkdir", path="/big")
        for i in range(MAX_LS_PAGE):
            svc.ns.publish("/big/" + (f"{i:06d}" + name)[:255],
                           File([], 2, BLOCK, 1763977200.0))
        names: list[str] = []
        start_after = ""
        while True:
            page = await call(svc, "ls", path="/big", limit=MAX_LS_PAGE, columns=True,
                              start_after=start_after)
            assert page["names"], "a page must make progress"
            assert fits_in_a_frame(page), "ls reply exceeds MAX_HEADER"
            assert len(page["size"]) == len(page["mtime"]) == len(page["names"])
            names += page["names"]
            if not page["more"]:
                break
            start_after = page["names"][-1]
        assert names == sorted(svc.ns.lookup("/big").children)  # type: ignore[union-attr]
        await svc.stop()

    run(main())


def test_ls_in_columns_matches_the_list_of_maps() -> None:
    """The client asks for columns (fewer bytes, faster to build); rebuilt into rows they
    are exactly the entries of the map form, page by page."""
    from dfs.client.async_client import _ls_rows

    async def main() -> None:
        svc = await new_meta(servers=2)
        for i in range(30):
            await put(svc, f"/d/f{i:02d}", [10 + i])
        await call(svc, "mkdir", path="/d/sub/x", parents=True)
        maps = await call(svc, "ls", path="/d", limit=1000)
        cols = await call(svc, "ls", path="/d", limit=1000, columns=True)
        assert cols["more"] is False and _ls_rows(cols) == maps["entries"]
        page = await call(svc, "ls", path="/d", limit=7, start_after="f05", columns=True)
        assert page["names"] == [f"f{i:02d}" for i in range(6, 13)] and page["more"] is True
        root = await call(svc, "ls", path="/", limit=1000, columns=True)
        assert _ls_rows(root) == (await call(svc, "ls", path="/", limit=1000))["entries"]
        await svc.stop()

    run(main())


def test_a_record_too_large_for_the_journal_is_refused_before_anything_changes() -> None:
    """An HA meta's journal (etcd) takes records up to a size: a file whose publish record
    would be larger is refused before the namespace changes, not stalled in the journal."""
    async def main() -> None:
        journal = MemoryJournal()
        journal.max_record = 2000  # type: ignore[attr-defined]
        svc = await new_meta(journal)
        await put(svc, "/small", [BLOCK] * 10)  # ~250 bytes of record
        records_before = len(journal.records)
        from dfs.errors import TooLarge
        with pytest.raises(TooLarge, match="journal record"):
            await put(svc, "/big", [BLOCK] * 200)  # ~5 KB
        assert len(journal.records) == records_before
        with pytest.raises(NotFound):
            await call(svc, "stat", path="/big")
        await svc.stop()
    run(main())


def test_a_chunkserver_that_registers_again_has_the_copies_of_its_old_process_forgotten() -> None:
    """A chunkserver restarted within the dead timeout (a power cut, a SIGKILL) registers
    again: copies to or from its old process died with it. They must not hold its copy slots
    until their deadline (COPY_TIMEOUT, minutes), which stalled repair in the power-loss test."""
    from dfs.meta.replication import Copy

    async def go() -> None:
        svc = await new_meta(servers=3)
        rep = svc.replicator
        for block, (src, dst) in enumerate([("cs0", "cs2"), ("cs2", "cs1"), ("cs0", "cs1")]):
            rep.inflight[block] = Copy(block, 1, src, dst, time.monotonic() + 120)
            rep.sending[src] = rep.sending.get(src, 0) + 1
            rep.receiving[dst] = rep.receiving.get(dst, 0) + 1
        await register(svc, 2)  # cs2 again
        assert set(rep.inflight) == {2}  # only the copy cs2 has no part in is still running
        assert rep.receiving["cs2"] == 0 and rep.sending["cs2"] == 0
        assert rep.outcomes["lost"] == 2
        assert {0, 1} <= rep.needy  # checked again, so copied again if still short
    run(go())
