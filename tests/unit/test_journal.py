"""dfs.meta.journal and journal_codec: the record format, torn-tail recovery, room allocated
ahead, group commit, and replay.

read_records is fed truncated and corrupted images and the exact outcome is asserted (records
kept, length of the good prefix, why the tail was dropped, or JournalCorrupt and its offset),
in the style of etcd's wal tests: damage with no valid record after it is a torn tail, damage
followed by a valid record is corruption in the middle.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

import msgpack
import pytest

from dfs.meta.journal import FileJournal, MemoryJournal
from dfs.meta.journal_codec import (
    MAGIC,
    MAX_RECORD,
    RECORD,
    JournalCorrupt,
    encode_record,
    read_records,
    record_prefix,
)

from ._meta import BLOCK, call, digest_of, new_meta, put, register, row, walk

RECS: list[list[Any]] = [
    ["mkdir", "/a", False, 1.0],
    ["publish", "/a/f", [[4294967296, 1, 10]], 2, 65536, 2.5],
    ["mv", "/a/f", "/a/g", 3.0],
]
ENC = [encode_record(r) for r in RECS]
GOOD = MAGIC + b"".join(ENC)
OFF = [len(MAGIC) + sum(len(e) for e in ENC[:i]) for i in range(len(ENC) + 1)]  # OFF[3] = end
EXTRA = encode_record(["rm", "/a", True, 4.0])


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


def raw_record(body: bytes, crc: int | None = None, length: int | None = None) -> bytes:
    import crc32c
    return record_prefix(len(body) if length is None else length,
                         crc32c.crc32c(body) if crc is None else crc) + body


GARBAGE_37 = random.Random(37).randbytes(37)

# (image, records kept, good prefix length, words in the reason or None). A reason means a
# torn tail was dropped; None means nothing was (the end of the file, or zeros: room).
DROPPED = {
    "empty": (b"", 0, 0, None),
    "magic-only": (MAGIC, 0, 8, None),
    "all-zeros": (b"\0" * 4096, 0, 0, None),
    "torn-magic-1": (MAGIC[:1], 0, 0, "torn file header"),
    "torn-magic-7": (MAGIC[:7], 0, 0, "torn file header"),
    "all-good": (GOOD, 3, OFF[3], None),
    "prefix-cut-5": (GOOD + EXTRA[:5], 3, OFF[3], "prefix cut short"),
    "prefix-cut-7": (GOOD + EXTRA[:7], 3, OFF[3], "prefix cut short"),
    "prefix-cut-11": (GOOD + EXTRA[:11], 3, OFF[3], "prefix cut short"),
    "body-cut-0": (GOOD + EXTRA[:12], 3, OFF[3], "body cut short"),
    "body-cut-1": (GOOD + EXTRA[:13], 3, OFF[3], "body cut short"),
    "body-cut-last-byte": (GOOD + EXTRA[:-1], 3, OFF[3], "body cut short"),
    "second-record-cut": (MAGIC + ENC[0] + ENC[1][:14], 1, OFF[1], "body cut short"),
    "crc-last-body": (flip(GOOD, OFF[3] - 1), 2, OFF[2], "checksum mismatch"),
    "crc-last-crc-field": (flip(GOOD, OFF[2] + 5), 2, OFF[2], "checksum mismatch"),
    # Zeros after the last record are the room allocated ahead: nothing to drop or report.
    "zero-tail-1": (GOOD + b"\0", 3, OFF[3], None),
    "zero-tail-12": (GOOD + b"\0" * 12, 3, OFF[3], None),
    "zero-tail-4MiB": (GOOD + b"\0" * (4 << 20), 3, OFF[3], None),
    "zeros-after-magic": (MAGIC + b"\0" * 100, 0, 8, None),
    # A crash during one group-commit write on a file system that extends the size before the
    # data lands (XFS, ext4 data=writeback): the last real record is half zeros and the
    # records after it are all zeros. Nothing there was ever acknowledged. (Regression, fixed
    # in e3da029: this was JournalCorrupt, so meta refused to start after an ordinary crash.)
    "crc-last-then-zeros": (GOOD + EXTRA[:14] + b"\0" * (len(EXTRA) - 14) + b"\0" * 300,
                            3, OFF[3], "checksum mismatch"),
    # Garbage after the last record with no valid record after it: a sector the disk never
    # finished. (Regression: 37 random bytes appended to a journal stopped meta at start-up.)
    "garbage-37": (GOOD + GARBAGE_37, 3, OFF[3], "prefix checksum mismatch"),
    "garbage-37-in-room": (GOOD + GARBAGE_37 + b"\0" * 4096, 3, OFF[3], "prefix checksum"),
    "garbage-1": (GOOD + b"\x01", 3, OFF[3], "prefix cut short"),
    "garbage-after-magic": (MAGIC + GARBAGE_37, 0, 8, "prefix checksum mismatch"),
    # A damaged prefix in the last record: whatever its length claims, no valid record
    # follows, so it is the torn write, not damage to anything acknowledged after it.
    "absurd-length-last": (GOOD + record_prefix(MAX_RECORD + 1, 0) + b"x", 3, OFF[3],
                           "out of range"),
    "length-4GiB-last": (GOOD + record_prefix(0xFFFFFFFF, 0) + b"x", 3, OFF[3],
                         "out of range"),
    "zero-length-last": (GOOD + record_prefix(0, 1234), 3, OFF[3], "out of range"),
    "length-field-last": (flip(GOOD, OFF[2] + 1), 2, OFF[2], "prefix checksum mismatch"),
    "half-of-a-copy-of-the-last": (GOOD + ENC[2][:len(ENC[2]) // 2], 3, OFF[3],
                                   "body cut short"),
}


@pytest.mark.parametrize("name", list(DROPPED))
def test_read_records_keeps_the_good_prefix(name: str) -> None:
    image, n, good, why = DROPPED[name]
    records, good_len, reason = read_records(image)
    assert records == RECS[:n]
    assert good_len == good
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason


# (image, offset named by JournalCorrupt): damage with a valid record after it.
CORRUPT = {
    "bad-magic-short": (b"XY", 0),
    "bad-magic": (b"NOTJRNL1" + b"".join(ENC), 0),
    "old-version-magic": (b"DFSJRNL0" + b"".join(ENC), 0),
    "crc-first-of-three": (flip(GOOD, OFF[0] + 10), OFF[0]),
    "crc-middle": (flip(GOOD, OFF[1] + 10), OFF[1]),
    "crc-field-middle": (flip(GOOD, OFF[1] + 4), OFF[1]),
    "absurd-length-middle": (MAGIC + ENC[0] + record_prefix(MAX_RECORD + 1, 0) + ENC[2],
                             OFF[1]),
    "zero-length-middle": (MAGIC + ENC[0] + record_prefix(0, 1234) + ENC[1], OFF[1]),
    "length-field-middle": (flip(GOOD, OFF[1] + 2), OFF[1]),
    "zeros-then-records": (MAGIC + ENC[0] + b"\0" * 16 + ENC[1], OFF[1]),
    "garbage-then-a-record": (GOOD + GARBAGE_37 + EXTRA, OFF[3]),
    "garbage-then-zeros-then-a-record": (GOOD + GARBAGE_37 + b"\0" * 5000 + EXTRA, OFF[3]),
    "garbage-inside-the-room-then-a-record": (GOOD + b"\0" * 100 + GARBAGE_37 + EXTRA, OFF[3]),
    # Checksums that pass over a body that is not [op, ...]: exactly what was written, so no
    # crash explains it, wherever it is.
    "not-msgpack": (GOOD + raw_record(b"\xc1"), OFF[3]),
    "trailing-data-in-body": (GOOD + raw_record(msgpack.packb(["rm"]) + b"\x00"), OFF[3]),
    "a-map": (GOOD + raw_record(msgpack.packb({"op": "rm"})), OFF[3]),
    "empty-list": (GOOD + raw_record(msgpack.packb([])), OFF[3]),
    "op-not-a-string": (GOOD + raw_record(msgpack.packb([1, 2])), OFF[3]),
    "int-map-key": (GOOD + raw_record(msgpack.packb(["x", {1: 2}])), OFF[3]),
    # A damaged length field in the middle that points past the end of the file must not look
    # like a record cut short by a crash (regression: the records after it were dropped
    # silently, and FileJournal.load truncated them away). The prefix CRC covers the length.
    "length-past-eof-middle": (GOOD[:OFF[1]] + struct.pack(">I", len(ENC[1]) - 12 + 0x100000)
                               + GOOD[OFF[1] + 4:], OFF[1]),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_read_records_stops_at_corruption(name: str) -> None:
    image, offset = CORRUPT[name]
    with pytest.raises(JournalCorrupt) as ei:
        read_records(image, "/var/dfs/journal")
    assert ei.value.offset == offset
    assert ei.value.path == "/var/dfs/journal"
    assert f"offset {offset}" in str(ei.value) and "/var/dfs/journal" in str(ei.value)


def test_every_truncation_of_a_good_journal_is_a_clean_prefix() -> None:
    for cut in range(len(GOOD) + 1):
        records, good, _ = read_records(GOOD[:cut])
        whole = [i for i in range(len(OFF)) if OFF[i] <= cut]
        n = max(whole) if whole else 0
        assert records == RECS[:n], cut
        assert good == (OFF[n] if cut >= len(MAGIC) else 0), cut


def test_encode_record_layout() -> None:
    import crc32c
    body = msgpack.packb(["mkdir", "/a", False, 1.0], use_bin_type=True)
    head = struct.pack(">II", len(body), crc32c.crc32c(body))
    assert encode_record(["mkdir", "/a", False, 1.0]) == \
        head + struct.pack(">I", crc32c.crc32c(head)) + body
    assert RECORD.size == 12


# -- FileJournal ----------------------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


def test_file_journal_group_commit_and_read_back(tmp_path) -> None:
    path = str(tmp_path / "journal")

    async def main() -> FileJournal:
        j = FileJournal(path)
        assert j.load() == []
        records = [["mkdir", f"/d{i}", False, float(i)] for i in range(500)]
        await asyncio.gather(*(j.append(r) for r in records))
        await j.close()
        return j

    j = run(main())
    assert 1 <= j.syncs <= 10, j.syncs  # one fdatasync per batch, not per record
    fresh = FileJournal(path)
    assert fresh.load() == [["mkdir", f"/d{i}", False, float(i)] for i in range(500)]
    os.close(fresh._fd)


def test_file_journal_group_commit_under_staggered_writers(tmp_path) -> None:
    path = str(tmp_path / "journal")

    async def writer(j: FileJournal, w: int) -> None:
        for k in range(5):
            await j.append(["mkdir", f"/w{w}/{k}", True, 0.0])

    async def main() -> FileJournal:
        j = FileJournal(path)
        j.load()
        await asyncio.gather(*(writer(j, w) for w in range(100)))
        await j.close()
        return j

    j = run(main())
    assert j.syncs < 100, j.syncs  # 500 records, far fewer syncs
    fresh = FileJournal(path)
    got = fresh.load()
    os.close(fresh._fd)
    assert sorted(map(tuple, got)) == sorted(
        ("mkdir", f"/w{w}/{k}", True, 0.0) for w in range(100) for k in range(5))
    for w in range(100):  # each writer's records are in its own order
        mine = [r[1] for r in got if r[1].startswith(f"/w{w}/")]
        assert mine == [f"/w{w}/{k}" for k in range(5)]


def test_file_journal_load_creates_a_new_file_with_room_ahead(tmp_path) -> None:
    path = tmp_path / "journal"
    j = FileJournal(str(path), preallocate=65536)
    assert j.load() == [] and not j.full
    os.close(j._fd)
    data = path.read_bytes()
    assert data[:8] == MAGIC and len(data) == 8 + 65536 and data.count(0) == 65536


def test_appends_fill_the_room_and_more_is_allocated(tmp_path) -> None:
    path = tmp_path / "journal"

    async def main() -> None:
        j = FileJournal(str(path), preallocate=4096)
        j.load()
        for i in range(200):  # ~ 30 bytes each: beyond the first 4 KiB of room
            await j.append(["mkdir", f"/d{i}", False, float(i)])
        await j.close()

    run(main())
    data = path.read_bytes()
    records, good, why = read_records(data)
    assert records == [["mkdir", f"/d{i}", False, float(i)] for i in range(200)]
    assert why is None and len(data) - good >= 4096 and data.count(0, good) == len(data) - good


def file_journal(path, records: list[list[Any]]) -> None:
    async def write() -> None:
        j = FileJournal(str(path))
        j.load()
        for r in records:
            await j.append(r)
        await j.close()
    run(write())


@pytest.mark.parametrize("tail", [EXTRA[:15], GARBAGE_37, b"\x01" * 5],
                         ids=["torn-append", "garbage-37", "five-bytes"])
def test_file_journal_load_drops_a_torn_tail_keeps_it_aside_and_appends_after_the_good_prefix(
        tmp_path, tail: bytes) -> None:
    path = tmp_path / "journal"
    file_journal(path, RECS)
    assert read_records(path.read_bytes())[:2] == (RECS, len(GOOD))
    with open(path, "r+b") as f:  # the damage lands right after the last record
        f.seek(len(GOOD))
        f.write(tail)
    file_journal(path, [["rm", "/b", False, 9.0]])
    data = path.read_bytes()
    new = GOOD + encode_record(["rm", "/b", False, 9.0])
    assert data[:len(new)] == new
    assert read_records(data) == (RECS + [["rm", "/b", False, 9.0]], len(new), None)
    kept = [p for p in os.listdir(tmp_path) if p.startswith("journal.torn-")]
    assert len(kept) == 1 and kept[0].startswith(f"journal.torn-{len(GOOD)}-")
    assert (tmp_path / kept[0]).read_bytes() == tail.rstrip(b"\0")


def test_file_journal_load_fixes_a_torn_magic(tmp_path) -> None:
    path = tmp_path / "journal"
    path.write_bytes(MAGIC[:3])
    j = FileJournal(str(path))
    assert j.load() == []
    os.close(j._fd)
    assert path.read_bytes()[:8] == MAGIC


@pytest.mark.parametrize("image", [flip(GOOD, OFF[1] + 10), GOOD + GARBAGE_37 + EXTRA],
                         ids=["crc-middle", "garbage-then-a-record"])
def test_file_journal_load_refuses_corruption_and_leaves_the_file_alone(
        tmp_path, image: bytes) -> None:
    path = tmp_path / "journal"
    path.write_bytes(image)
    with pytest.raises(JournalCorrupt) as ei:
        FileJournal(str(path)).load()
    assert ei.value.offset in (OFF[1], OFF[3])
    assert path.read_bytes() == image
    assert [p.name for p in tmp_path.iterdir()] == ["journal"]


def test_a_full_disk_turns_the_journal_full_and_freed_space_ends_it(tmp_path,
                                                                     monkeypatch) -> None:
    import errno
    real = os.posix_fallocate
    disk_full = True

    def fallocate(fd: int, offset: int, length: int) -> None:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)
    monkeypatch.setattr(os, "posix_fallocate", fallocate)

    async def main() -> None:
        nonlocal disk_full
        j = FileJournal(str(tmp_path / "journal"), preallocate=4096)
        j.load()
        assert j.full  # no room could be allocated ahead
        assert not await j.make_room()
        disk_full = False
        assert await j.make_room() and not j.full
        await j.append(["mkdir", "/a", False, 0.0])
        await j.close()

    run(main())
    assert read_records((tmp_path / "journal").read_bytes())[0] == [["mkdir", "/a", False, 0.0]]


def test_file_journal_write_failure_fails_every_later_append(tmp_path) -> None:
    fatal: list[BaseException] = []

    async def main() -> None:
        j = FileJournal(str(tmp_path / "journal"), on_fatal=fatal.append)
        j.load()
        await j.append(["mkdir", "/ok", False, 0.0])
        real, j._fd = j._fd, -1  # every write now fails with EBADF
        os.close(real)
        with pytest.raises(OSError):
            await j.append(["mkdir", "/lost", False, 0.0])
        with pytest.raises(OSError, match="failed earlier"):
            await j.append(["mkdir", "/later", False, 0.0])
        await j.close()

    run(main())
    assert len(fatal) == 1


def test_memory_journal_has_the_same_interface() -> None:
    async def main() -> None:
        j = MemoryJournal()
        assert j.load() == []
        await asyncio.gather(*(j.append(r) for r in RECS))
        assert j.load() == RECS
        await j.close()

    run(main())


# -- replay: the journal rebuilds the same namespace ----------------------------------------

async def build_history(svc) -> None:
    await call(svc, "mkdir", path="/a/b", parents=True)
    await call(svc, "mkdir", path="/c")
    await call(svc, "mkdir", path="/a", parents=True)  # exists: not journaled
    await put(svc, "/a/b/f1", [BLOCK, BLOCK, 10])
    await put(svc, "/a/f2", [BLOCK, 5], replication=3, recover=1)
    await put(svc, "/c/empty", [])
    await put(svc, "/a/b/f1", [BLOCK, 1])  # replaces the first f1
    await call(svc, "mv", src="/a/b/f1", dst="/c")  # into a directory -> /c/f1
    await call(svc, "mv", src="/c", dst="/a/b")  # a directory into one -> /a/b/c
    await call(svc, "rm", path="/a/f2")
    await call(svc, "mkdir", path="/x/y/z", parents=True)
    await call(svc, "rm", path="/x/y", recursive=True)
    await put(svc, "/top", [77])
    await call(svc, "mv", src="/top", dst="/a/b/c/f1")  # replaces /a/b/c/f1
    await put(svc, "/implicit/parents/f", [3])  # publish creates parents
    up = (await call(svc, "create", path="/aborted", block_size=BLOCK))["upload"]
    await call(svc, "add_block", upload=up)
    await call(svc, "abort", upload=up)
    await call(svc, "create", path="/never-committed", block_size=BLOCK)
    await call(svc, "mv", src="/a/b/c/f1", dst="/a/b/c")  # a no-op, still journaled


EXPECTED_PATHS = {"/", "/a", "/a/b", "/a/b/c", "/a/b/c/empty", "/a/b/c/f1", "/x",
                  "/implicit", "/implicit/parents", "/implicit/parents/f"}


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_replay_rebuilds_the_same_namespace(kind: str, tmp_path) -> None:
    path = str(tmp_path / "journal")

    def journal():
        return FileJournal(path) if kind == "file" else shared

    shared = MemoryJournal()

    async def main() -> None:
        svc = await new_meta(journal())
        await build_history(svc)
        before = await walk(svc)
        status = await call(svc, "status")
        ids = {b["id"] for e in before.values() for b in e.get("blocks", [])}
        epoch = svc.epoch
        await svc.stop()
        assert set(before) == EXPECTED_PATHS
        assert before["/a/b/c/f1"]["size"] == 77
        assert [b["size"] for b in before["/implicit/parents/f"]["blocks"]] == [3]
        assert before["/a/b/c/empty"]["blocks"] == []

        again = await new_meta(journal(), servers=0)
        after = await walk(again)
        assert after == before
        status2 = await call(again, "status")
        assert (status2["files"], status2["blocks"]) == (status["files"], status["blocks"])
        assert (again.ns.files, again.ns.blocks) == (3, 2)
        assert again.epoch > epoch
        # The block map is rebuilt from the namespace: committed blocks only, right gens.
        assert {str(b) for b in again.cluster.blocks} == ids
        for entry in after.values():
            for b in entry.get("blocks", []):
                info = again.cluster.blocks[int(b["id"])]
                assert (info.gen, info.size, info.digest) == (b["gen"], b["size"],
                                                              digest_of(b["size"]))
        # Chunkservers re-register with their reports and replicas come back.
        report = [row(int(b["id"]), b["gen"], b["size"])
                  for e in after.values() for b in e.get("blocks", [])]
        await register(again, 0, blocks=report + [[12345, 1, 10, 0]])
        st = await call(again, "stat", path="/a/b/c/f1")
        assert st["blocks"][0]["replicas"] == ["127.0.0.1:6001"]
        # An orphan: remembered now, deleted once it has stayed one for the grace period.
        assert again.cluster.servers["cs0"].deletes == []
        assert ("cs0", 12345) in again.cluster.orphans
        again.cluster.sweep_orphans(again.cluster.now + again.orphan_grace + 1,
                                    again.orphan_grace)
        assert again.cluster.servers["cs0"].deletes == [[12345, 1]]
        # New block ids never collide with journaled ones.
        up = (await call(again, "create", path="/new", block_size=BLOCK))["upload"]
        b = await call(again, "add_block", upload=up)
        assert str(b["block"]) not in ids and b["block"] >> 32 == again.epoch
        await again.stop()

        third = await new_meta(journal(), servers=0)  # replay of a replay, plus two epochs
        assert await walk(third) == before
        assert third.epoch > again.epoch
        await third.stop()

    run(main())


@pytest.mark.parametrize("record", [["bogus", 1], ["mv", "/nowhere", "/x", 1.0],
                                    ["mkdir"], ["publish", "/f", [[1]], 2, 65536, 1.0]])
def test_a_well_framed_record_that_cannot_be_replayed_stops_start_up(record, tmp_path) -> None:
    """Its checksums pass, so it was written that way: one clear line naming the record, not
    a traceback."""
    jpath = str(tmp_path / "journal")
    with open(jpath, "wb") as f:
        f.write(MAGIC + encode_record(["mkdir", "/a", False, 1.0]) + encode_record(record))

    async def main() -> None:
        with pytest.raises(JournalCorrupt, match="record 1 after the checkpoint cannot be "
                                                 "replayed"):
            await new_meta(FileJournal(jpath), servers=0)

    asyncio.run(main())
