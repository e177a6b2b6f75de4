"""dfs.chunk.blockstore on a temporary directory: writing, finalizing, reading with CRCs,
re-scanning, generations and deletes. No network."""

from __future__ import annotations

import os
import random
import struct

import pytest

from dfs import checksum
from dfs.checksum import crcs_of
from dfs.chunk.blockstore import (
    FOOTER,
    MAGIC,
    UNIT,
    BlockStore,
    Replica,
    block_file_size,
)
from dfs.errors import ChecksumError, NotFound, StaleGeneration


def write_block(store: BlockStore, block_id: int, gen: int, data: bytes,
                packet: int = 2 * UNIT) -> None:
    w = store.open_write(block_id, gen)
    for off in range(0, len(data), packet):
        piece = data[off:off + packet]
        w.write(off, memoryview(piece), crcs_of(piece))
    w.finalize(len(data))


def data_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def block_files(root) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(root, "blocks")):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted(out)


@pytest.mark.parametrize("size", [1, UNIT - 1, UNIT, UNIT + 1, 5 * UNIT + 123, 8 * UNIT])
def test_write_finalize_read_back(tmp_path, size: int) -> None:
    store = BlockStore(str(tmp_path))
    data = data_of(size, size)
    write_block(store, 0x1_0000_00AB, 1, data)
    assert store.index[0x1_0000_00AB] == Replica(1, size, checksum.digest(crcs_of(data)))
    assert store.lookup(0x1_0000_00AB, 1) == size
    assert store.used == block_file_size(size)
    assert block_files(tmp_path) == [f"blocks/ab/blk_{0x1_0000_00AB:016x}_1"]
    got, crcs, total = store.read(0x1_0000_00AB, 1, 0, size)
    assert got == data and crcs == crcs_of(data) and total == size
    # Unit-aligned range reads return the CRCs of exactly the units they cover.
    if size > UNIT:
        got, crcs, _ = store.read(0x1_0000_00AB, 1, UNIT, 10 * UNIT)
        assert got == data[UNIT:] and crcs == crcs_of(data)[1:]
    got, crcs, _ = store.read(0x1_0000_00AB, 1, checksum.units(size) * UNIT, UNIT)
    assert got == b"" and crcs == []


def test_block_file_layout(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    data = data_of(UNIT + 10)
    write_block(store, 7, 3, data)
    raw = open(store.path(7, 3), "rb").read()
    assert len(raw) == block_file_size(len(data)) == len(data) + 8 + FOOTER.size
    assert raw[:len(data)] == data
    assert list(struct.unpack(">2I", raw[len(data):len(data) + 8])) == crcs_of(data)
    assert FOOTER.unpack(raw[-FOOTER.size:]) == (MAGIC, UNIT, len(data))


def test_rescan_finds_finalized_blocks(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    blocks = {bid: data_of(1000 + bid % 5000, bid % 97) for bid in (1, 2, 0x1FF, 2**40 + 3)}
    for bid, data in blocks.items():
        write_block(store, bid, 2, data)
    again = BlockStore(str(tmp_path))
    assert again.server_id == store.server_id  # the id file persists
    assert again.index == store.index and again.used == store.used
    assert sorted(map(tuple, again.report())) == sorted(
        (b, 2, len(d), checksum.digest(crcs_of(d))) for b, d in blocks.items())
    for bid, data in blocks.items():
        assert again.read(bid, 2, 0, len(data))[0] == data


def test_tmp_leftovers_are_removed_at_scan(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    write_block(store, 1, 1, b"done")
    w = store.open_write(2, 1)  # a write that never finished (crash)
    w.write(0, memoryview(b"partial"), crcs_of(b"partial"))
    assert os.path.exists(store.path(2, 1) + ".tmp")
    again = BlockStore(str(tmp_path))
    assert not os.path.exists(store.path(2, 1) + ".tmp")
    assert set(again.index) == {1}


def test_abort_removes_the_tmp_file(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    w = store.open_write(5, 1)
    w.write(0, memoryview(b"x" * 10), crcs_of(b"x" * 10))
    w.abort()
    w.abort()  # idempotent
    assert block_files(tmp_path) == []
    with pytest.raises(ValueError):
        w.finalize(10)
    assert 5 not in store.index


def test_out_of_order_and_unaligned_packets_are_refused(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    w = store.open_write(5, 1)
    with pytest.raises(ValueError):
        w.write(UNIT, memoryview(b"x"), crcs_of(b"x"))
    w.write(0, memoryview(b"x" * 10), crcs_of(b"x" * 10))
    with pytest.raises(ValueError):  # follows a packet that was not whole chunks
        w.write(10, memoryview(b"y"), crcs_of(b"y"))
    with pytest.raises(ValueError):
        w.finalize(11)
    w.abort()


def test_a_newer_generation_replaces_the_older(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    write_block(store, 9, 1, b"old" * 100)
    write_block(store, 9, 2, b"new" * 10)
    assert store.index[9][:2] == (2, 30)
    assert store.used == block_file_size(30)
    assert block_files(tmp_path) == [f"blocks/09/blk_{9:016x}_2"]
    with pytest.raises(StaleGeneration):
        store.lookup(9, 1)
    with pytest.raises(NotFound):
        store.lookup(10, 1)
    assert store.read(9, 2, 0, 100)[0] == b"new" * 10


@pytest.mark.parametrize("first,second", [(3, 1), (1, 3)])
def test_scan_keeps_only_the_newest_of_two_generations_on_disk(tmp_path, first: int,
                                                               second: int) -> None:
    """Two generations of one block on disk, as a crash between a rename and the unlink of
    the older generation leaves them: the scan keeps the newest and removes the other."""
    store = BlockStore(str(tmp_path))
    write_block(store, 9, first, bytes([first]) * (100 * first))
    other = BlockStore(str(tmp_path / "other"))
    write_block(other, 9, second, bytes([second]) * (100 * second))
    os.rename(other.path(9, second), store.path(9, second))
    again = BlockStore(str(tmp_path))
    assert again.index[9][:2] == (3, 300)
    assert again.used == block_file_size(300)
    assert block_files(tmp_path) == [f"blocks/09/blk_{9:016x}_3"]
    assert again.read(9, 3, 0, 300)[0] == b"\x03" * 300


def test_delete_honours_the_generation(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    write_block(store, 4, 5, b"data")
    assert store.delete(4, 4) is False  # an older generation: ours is newer, keep it
    assert 4 in store.index
    assert store.delete(4, 5) is True
    assert 4 not in store.index and store.used == 0
    assert block_files(tmp_path) == []
    assert store.delete(4, 5) is False
    write_block(store, 6, 2, b"data")
    assert store.delete(6, 3) is True  # anything up to the named generation goes


@pytest.mark.parametrize("damage", ["bad-magic", "bad-chunk", "bad-size", "truncated",
                                    "too-short", "bad-name", "bad-gen"])
def test_unreadable_block_files_are_ignored(tmp_path, damage: str) -> None:
    store = BlockStore(str(tmp_path))
    write_block(store, 1, 1, b"good")
    write_block(store, 2, 1, b"victim" * 100)
    path = store.path(2, 1)
    raw = bytearray(open(path, "rb").read())
    if damage == "bad-magic":
        raw[-FOOTER.size] ^= 0xFF
    elif damage == "bad-chunk":
        raw[-FOOTER.size + 4:-8] = struct.pack(">I", 4096)
    elif damage == "bad-size":
        raw[-8:] = struct.pack(">Q", 601)
    elif damage == "truncated":
        raw = raw[:100] + raw[-FOOTER.size:]
    elif damage == "too-short":
        raw = raw[:5]
    open(path, "wb").write(raw)
    if damage == "bad-name":
        os.rename(path, os.path.join(os.path.dirname(path), "blk_zz_1"))
    elif damage == "bad-gen":
        os.rename(path, path[:-2] + "_x")
    again = BlockStore(str(tmp_path))
    assert set(again.index) == {1}
    assert again.used == block_file_size(4)


def test_stats_respect_the_capacity_flag(tmp_path) -> None:
    store = BlockStore(str(tmp_path), capacity=10 * UNIT)
    write_block(store, 1, 1, b"x" * UNIT)
    capacity, used, free = store.stats()
    assert capacity == 10 * UNIT and used == block_file_size(UNIT)
    assert free == 10 * UNIT - used
    cap2, used2, free2 = BlockStore(str(tmp_path / "unbounded")).stats()
    assert used2 == 0 and free2 > 0 and cap2 >= free2


def test_block_ids_never_come_from_strings(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    p = store.path(2**64 - 1, 7)
    assert p == os.path.join(str(tmp_path), "blocks", "ff", "blk_ffffffffffffffff_7")


def test_small_files(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    assert store.read_identity("cluster.id") == ""
    store.write_identity("cluster.id", "abc")
    assert store.read_identity("cluster.id") == "abc"
    assert len(store.server_id) == 32


def _aligned(data: bytes) -> memoryview:
    import mmap
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return memoryview(buf)


def test_aligned_packets_go_direct_and_read_back(tmp_path) -> None:
    """Whole aligned packets in page-aligned buffers bypass the page cache (O_DIRECT); an
    unaligned buffer is refused by the kernel and written through the cache instead; the
    short tail always is. Either way the block reads back whole."""
    store = BlockStore(str(tmp_path))
    if not store.direct_io:
        pytest.skip("this filesystem has no O_DIRECT")  # tmpfs; the suite's tmp is ext4
    packet = 4 * UNIT  # 256 KiB: the smallest packet worth a direct write
    data = data_of(3 * packet + 5000, 7)
    w = store.open_write(9, 1)
    assert w.direct_fd is not None
    w.write(0, _aligned(data[:packet]), crcs_of(data[:packet]))
    assert store.direct_refused == 0
    # One byte past a page boundary: misaligned for O_DIRECT whatever the allocator does.
    odd = _aligned(b"\0" + data[packet:2 * packet])[1:]
    w.write(packet, odd, crcs_of(data[packet:2 * packet]))
    assert store.direct_refused == 1
    w.write(2 * packet, _aligned(data[2 * packet:3 * packet]), crcs_of(data[2 * packet:3 * packet]))
    w.write(3 * packet, memoryview(data[3 * packet:]), crcs_of(data[3 * packet:]))
    w.finalize(len(data))
    assert w.direct_fd is None  # closed with the file
    assert store.read(9, 1, 0, len(data))[0] == data
    assert BlockStore(str(tmp_path)).read(9, 1, 0, len(data))[0] == data


def test_without_direct_io_everything_goes_through_the_cache(tmp_path) -> None:
    store = BlockStore(str(tmp_path), direct_io=False)
    w = store.open_write(1, 1)
    assert w.direct_fd is None
    data = data_of(8 * UNIT, 1)
    w.write(0, _aligned(data), crcs_of(data))
    w.finalize(len(data))
    assert store.read(1, 1, 0, len(data))[0] == data


def test_abort_closes_the_direct_descriptor_too(tmp_path) -> None:
    store = BlockStore(str(tmp_path))
    w = store.open_write(2, 1)
    fds = [fd for fd in (w.fd, w.direct_fd) if fd is not None]
    w.abort()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_claims_respect_capacity_and_reserve(tmp_path) -> None:
    from dfs.errors import NoSpace
    store = BlockStore(str(tmp_path), capacity=4 * UNIT)
    w = store.open_write(1, 1)
    data = data_of(3 * UNIT, 1)
    w.write(0, memoryview(data), crcs_of(data))
    assert store.inflight == 3 * UNIT and store.stats()[2] == UNIT
    with pytest.raises(NoSpace):  # refused before any byte is written
        w.accept(3 * UNIT, 2 * UNIT, [0, 0])
    w.abort()
    assert store.inflight == 0 and store.stats()[2] == 4 * UNIT
    assert not block_files(tmp_path)
    huge = BlockStore(str(tmp_path / "r"), reserve=1 << 62)  # more than any disk
    assert huge.stats()[2] == 0
    with pytest.raises(NoSpace):
        huge.open_write(2, 1).write(0, memoryview(b"x"), crcs_of(b"x"))


def test_a_real_enospc_is_no_space_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    import errno as errno_mod

    from dfs.errors import NoSpace
    store = BlockStore(str(tmp_path), direct_io=False)
    w = store.open_write(3, 1)

    def full(*args: object) -> int:
        raise OSError(errno_mod.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "pwrite", full)
    data = data_of(UNIT, 2)
    with pytest.raises(NoSpace):
        w.write(0, memoryview(data), crcs_of(data))
    monkeypatch.undo()
    w.abort()
    assert not block_files(tmp_path) and store.inflight == 0


@pytest.mark.parametrize("around", [True, False])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [1, UNIT + 7, 16 * UNIT + 4095])
def test_reads_into_a_buffer_return_what_read_does(tmp_path, size: int, direct: bool,
                                                   around: bool) -> None:
    """Reads into the caller's pooled buffer, and re-replication's reads around the page cache
    (O_DIRECT, through the cache where the filesystem or the offset does not allow it), give
    the same bytes and CRCs as a plain read, at the block's unaligned end too."""
    import mmap
    store = BlockStore(str(tmp_path), direct_io=direct)
    data = data_of(size, size)
    write_block(store, 77, 1, data)
    buf = mmap.mmap(-1, 2 * 1024 * 1024)
    for offset in range(0, size, 2 * UNIT):
        want, want_crcs, _ = store.read(77, 1, offset, 2 * UNIT)
        got, crcs, _ = store.read_into(77, 1, offset, 2 * UNIT, buf, around)
        assert bytes(got) == want and crcs == want_crcs
    got, crcs, total = store.read_into(77, 1, 0, size, buf, around)
    assert bytes(got) == data and crcs == crcs_of(data) and total == size
    del got
    os.truncate(store.path(77, 1), size // 2)  # the file lost bytes: a corrupt replica
    with pytest.raises(ChecksumError):
        store.read_into(77, 1, 0, size, buf, around)
