"""Checkpoints: the namespace round-trips through one, the journal restarts after it, and a
crash at any step between the checkpoint and the journal rotation loses and repeats nothing."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from dfs.fsutil import CorruptFile
from dfs.meta import checkpoint
from dfs.meta.journal import FileJournal
from dfs.meta.journal_codec import JournalCorrupt, read_records

from ._meta import call, new_meta, put, walk


async def build(svc, tag: str) -> None:
    await call(svc, "mkdir", path=f"/{tag}/a/b", parents=True)
    await put(svc, f"/{tag}/a/f", [65536, 10])
    await put(svc, f"/{tag}/g", [5])
    await call(svc, "mv", src=f"/{tag}/g", dst=f"/{tag}/a/b")
    await put(svc, f"/{tag}/x", [7])
    await call(svc, "rm", path=f"/{tag}/x")


def paths(tmp_path) -> tuple[str, str]:
    return str(tmp_path / "journal"), str(tmp_path / "checkpoint")


def test_namespace_survives_checkpoint_rotation_and_restart(tmp_path) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        await svc.checkpoint()
        assert svc.journal.gen == 1 and os.path.exists(cpath)
        await build(svc, "two")
        want = await walk(svc)
        await svc.journal.close()  # a crash: no checkpoint at stop
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want
        assert again.ns.files == svc.ns.files and again.ns.blocks == svc.ns.blocks
        await again.stop()  # a clean stop checkpoints: the journal is then nearly empty
        assert read_records(open(jpath, "rb").read())[1] < 200
        third = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(third) == want
        await third.stop()

    asyncio.run(main())


def test_crash_after_the_checkpoint_before_the_rotation_repeats_nothing(tmp_path) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        gen, count = svc.journal.mark()
        checkpoint.write(cpath, checkpoint.snapshot(svc.ns, gen, count, svc.epoch, svc._digest))
        svc.journal.unmark()  # the process "dies" here: the journal still holds everything
        await build(svc, "two")
        want = await walk(svc)
        await svc.journal.close()
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want  # replaying records the checkpoint has would fail
        await again.stop()

    asyncio.run(main())


def test_appends_during_a_checkpoint_land_in_the_new_generation(tmp_path) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        task = asyncio.ensure_future(svc.checkpoint())
        await asyncio.sleep(0)  # the snapshot is taken; writes go on while it is saved
        await asyncio.gather(*(call(svc, "mkdir", path=f"/during/{i}", parents=True)
                               for i in range(50)))
        await task
        want = await walk(svc)
        await svc.journal.close()
        again = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert await walk(again) == want
        await again.stop()

    asyncio.run(main())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_stops_start_up(tmp_path, damage: str) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        await svc.stop()
        raw = bytearray(open(cpath, "rb").read())
        if damage == "flip":
            raw[-5] ^= 0xFF
        else:
            del raw[-5:]
        open(cpath, "wb").write(bytes(raw))
        with pytest.raises(CorruptFile) as ei:
            await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        assert cpath in str(ei.value) and str(ei.value).startswith("checkpoint ")

    asyncio.run(main())


def test_a_journal_from_another_generation_stops_start_up(tmp_path) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        await svc.checkpoint()
        await svc.checkpoint()  # generation 2 now
        await svc.journal.close()
        os.unlink(jpath)
        open(jpath, "wb").write(b"DFSJRNL1")  # a fresh journal: generation 0
        with pytest.raises(JournalCorrupt, match="does not follow"):
            await new_meta(FileJournal(jpath), checkpoint_path=cpath)

    asyncio.run(main())


def test_a_checkpoint_waits_until_the_journal_holds_what_it_covers(tmp_path,
                                                                   monkeypatch) -> None:
    """Were it written first, a crash before the journal's fsync would leave a checkpoint
    covering records the journal lost; records appended later would take their places and be
    skipped at the next start."""
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        flushed = asyncio.get_running_loop().create_future()
        asked = []
        monkeypatch.setattr(svc.journal, "synced", lambda: asked.append(1) or flushed)
        written = []
        monkeypatch.setattr(checkpoint, "write", lambda *a: written.append(a))
        task = asyncio.ensure_future(svc.checkpoint())
        for _ in range(1000):
            if asked:
                break
            await asyncio.sleep(0)
        assert asked, "the checkpoint never asked whether the journal was synced"
        for _ in range(100):
            await asyncio.sleep(0)
        assert not written, "the checkpoint was written before the journal was synced"
        flushed.set_result(None)
        await task
        assert written
        await svc.journal.close()

    asyncio.run(main())


def test_a_journal_shorter_than_its_checkpoint_stops_start_up(tmp_path) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        gen, count = svc.journal.mark()
        checkpoint.write(cpath, checkpoint.snapshot(svc.ns, gen, count + 3, svc.epoch))
        await svc.journal.close()
        with pytest.raises(JournalCorrupt, match=f"covers {count + 3} records of journal "
                                                 f"generation 0 but the journal holds "
                                                 f"{count}$"):
            await new_meta(FileJournal(jpath), checkpoint_path=cpath)

    asyncio.run(main())


def test_a_checkpoint_copied_before_an_interrupted_rotation_does_not_fit(tmp_path) -> None:
    """A backup that copies `checkpoint` (generation 0, count c) and later `journal`
    (generation 1, following a later checkpoint at record c2): replaying would skip the
    records between c and c2."""
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath)
        await build(svc, "one")
        gen, early = svc.journal.mark()
        svc.journal.unmark()
        old = checkpoint.snapshot(svc.ns, gen, early, svc.epoch)
        await build(svc, "two")
        await svc.checkpoint()
        later = svc.journal.base
        assert svc.journal.gen == 1 and later > early
        await svc.journal.close()
        checkpoint.write(cpath, old)
        with pytest.raises(JournalCorrupt, match=f"follows record {later} of generation 0 "
                                                 f"but the checkpoint covers {early}"):
            await new_meta(FileJournal(jpath), checkpoint_path=cpath)

    asyncio.run(main())


def test_a_failed_checkpoint_is_tried_again_later_not_every_second(tmp_path,
                                                                   monkeypatch) -> None:
    jpath, cpath = paths(tmp_path)

    async def main() -> None:
        svc = await new_meta(FileJournal(jpath), checkpoint_path=cpath, checkpoint_records=5)
        await build(svc, "one")
        now = time.monotonic()
        assert svc.checkpointer.due(now)

        def no_room(*_):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(checkpoint, "write", no_room)
        await svc.checkpoint()
        assert svc.journal.gen == 0  # the journal keeps everything
        assert not svc.checkpointer.due(time.monotonic())
        assert svc.checkpointer.due(time.monotonic() + 1.5)  # the first pause is 1 s
        await svc.checkpoint()
        assert not svc.checkpointer.due(time.monotonic() + 1.5)  # then 2 s, 4 s, ...
        monkeypatch.undo()
        await svc.checkpoint()
        assert svc.journal.gen == 1 and svc.checkpointer.due(time.monotonic()) is False
        await svc.stop()

    asyncio.run(main())


def test_a_checkpoint_that_fails_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    """atomic_write removes its temporary copy: on a full disk it would hold the room the
    journal needs."""
    cpath = str(tmp_path / "checkpoint")

    def fail(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        checkpoint.write(cpath, b"x" * 1000)
    assert os.listdir(tmp_path) == []
