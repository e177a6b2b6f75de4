"""Block files on a chunkserver's local disk. Never does network I/O.

Layout under the data dir::

    chunkserver.id                 this server's id (uuid4 hex), made at first start
    cluster.id                     the cluster id of the meta it first registered with
    blocks/XX/blk_<id:016x>_<gen>      a finalized replica, XX = low byte of the id in hex
    blocks/XX/blk_<id:016x>_<gen>.tmp  a replica being written (removed at start-up)

A finalized block file (integers big-endian)::

    0          size      data        the block's bytes, so a read at offset k is a pread at k
    size       4*n       crc table   u32 CRC32C of each CHECKSUM_UNIT of data, n = ceil(size/unit)
    size+4n    4         magic       b"DFSB"
               4         unit        u32 checksum unit size (65536)
               8         size        u64 data size

Block file names come from the block id and generation only: no client string is ever a path.
A replica is written to .tmp and renamed into place; before the write is acknowledged the file
and its directory are fsynced (or, for a small block, one group syncfs covers both: see
groupsync.py), so an acknowledged block survives a crash.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import uuid
from typing import NamedTuple

from .. import checksum, config
from ..errors import ChecksumError, NoSpace, NotFound, StaleGeneration
from ..fsutil import atomic_write, fsync_dir, pwrite_all, read_text
from ..protocol.buffers import Buffer
from .groupsync import GroupSync

log = logging.getLogger(__name__)

# Direct I/O: offsets, lengths and buffer addresses in multiples of this (a page is safe for
# every device); only packets this large bother (a small block's one write is not worth it).
DIRECT_ALIGN = 4096
DIRECT_MIN = 256 * 1024
FOOTER = struct.Struct(">4sIQ")
MAGIC = b"DFSB"
UNIT = config.CHECKSUM_UNIT


def block_file_size(size: int) -> int:
    return size + 4 * checksum.units(size) + FOOTER.size


class Replica(NamedTuple):
    """What the index knows of one stored replica (a plain tuple in memory)."""

    gen: int
    size: int
    digest: int  # checksum.digest of its CRC table: meta compares it with the committed one


class BlockWriter:
    """One replica being written: data goes to the .tmp file at the packet's offset."""

    def __init__(self, store: "BlockStore", block_id: int, gen: int) -> None:
        self.store, self.block_id, self.gen = store, block_id, gen
        self.tmp = store.path(block_id, gen) + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self.fd = os.open(self.tmp, flags, 0o644)
        except FileNotFoundError:  # its sub-directory was removed under us: make it again
            os.makedirs(os.path.dirname(self.tmp), exist_ok=True)
            self.fd = os.open(self.tmp, flags, 0o644)
        # Whole aligned packets bypass the page cache through a second, O_DIRECT descriptor
        # (see `pwrite`); None when the store or its filesystem cannot do direct I/O.
        self.direct_fd = store.open_direct(self.tmp)
        self.crcs: list[int] = []
        self.written = 0
        self.claimed = 0  # bytes counted in the store's `inflight` until sealed or aborted
        self.unsynced = 0
        self.closed = False
        # Guards `closed` and the fds between the loop (abort) and disk threads.
        self.lock = threading.Lock()

    def accept(self, offset: int, length: int, crcs: list[int]) -> None:
        """Take one packet's place and checksums, in order, on the event loop (offset is a
        multiple of UNIT; crcs already verified). The bytes follow through `pwrite`."""
        if offset != self.written:
            raise ValueError(f"packet at {offset} out of order (have {self.written})")
        if length and offset % UNIT:
            raise ValueError(f"packet at {offset} follows a packet that was not whole units")
        self.store.claim(length)
        self.claimed += length
        self.crcs.extend(crcs)
        self.written += length
        self.unsynced += length

    def pwrite(self, offset: int, data: memoryview) -> None:
        """Write accepted bytes at their offset. Blocking: runs in a disk thread, so the
        event loop keeps receiving and forwarding while the page cache or disk is slow.

        A packet that is whole aligned pages at an aligned offset, in a page-aligned buffer
        (the pooled receive buffers are), goes through O_DIRECT: straight from our buffer to
        the device, no copy into the page cache and no dirty pages to write back later. On
        this machine that is the difference between ~3 s and ~0.1 s of kernel time per GiB
        per replica (docs/PERFORMANCE.md). Anything else, or a buffer the kernel refuses
        (EINVAL), is written through the page cache. The seal's fsync covers both."""
        direct = self.direct_fd is not None and len(data) >= DIRECT_MIN and \
            not offset % DIRECT_ALIGN and not len(data) % DIRECT_ALIGN
        try:
            if direct:
                try:
                    self._pwrite_all(self._dup(direct=True), offset, data)
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.store.direct_refused += 1  # an unaligned buffer: use the cache
            self._pwrite_all(self._dup(), offset, data)
        except OSError as exc:
            raise self.store.disk_error(exc) from None

    @staticmethod
    def _pwrite_all(fd: int, offset: int, data: memoryview) -> None:
        """Write all of data into (and then close) fd, a duplicate for this one write."""
        try:
            pwrite_all(fd, data, offset)
        finally:
            os.close(fd)

    def _dup(self, direct: bool = False) -> int:
        """A private descriptor for one blocking call in a worker thread: abort() may close
        ours meanwhile without the number being reused under that call."""
        with self.lock:
            if self.closed:
                raise ValueError("block write was aborted")
            fd = self.direct_fd if direct and self.direct_fd is not None else self.fd
            return os.dup(fd)

    def _close_fds(self) -> None:
        """Close our descriptors and give back our claim on space; the caller holds the lock."""
        self.store.unclaim(self.claimed)
        self.claimed = 0
        self.closed = True
        os.close(self.fd)
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def write(self, offset: int, data: memoryview, crcs: list[int]) -> None:
        """accept + pwrite in one call (tests and simple callers)."""
        self.accept(offset, len(data), crcs)
        if data:
            self.pwrite(offset, data)

    def sync_some(self) -> None:
        """Flush what has been written so far (called from a worker thread while writes go
        on), so the final fsync at the end of the block has little left to do."""
        try:
            fd = self._dup()
        except ValueError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def finalize(self, size: int) -> Replica:
        """seal + index the replica, for callers without an event loop (tests, tools)."""
        replica = self.seal(size)
        self.store.added(self.block_id, replica)
        return replica

    def seal(self, size: int) -> Replica:
        """Append checksums and footer, make the replica durable under its final name.
        Blocking: call from a worker thread, then `BlockStore.added` on the event loop.

        A large block: fsync the file, rename it into place, fsync the directory. A small one
        (up to GROUP_SYNC_MAX_BYTES, when the store has a GroupSync): rename first, then one
        syncfs shared with every other seal in flight (see groupsync.py). Either way nothing
        returns, so nothing is acknowledged, before data, checksums and name are on disk."""
        if size != self.written:
            raise ValueError(f"block ends at {size} but {self.written} bytes were written")
        table = checksum.pack_table(self.crcs)
        trailer = table + FOOTER.pack(MAGIC, UNIT, size)
        group = self.store.group if size <= config.GROUP_SYNC_MAX_BYTES else None
        final = self.store.path(self.block_id, self.gen)
        with self.lock:
            if self.closed:
                raise ValueError("block write was aborted")
            try:
                os.pwrite(self.fd, trailer, size)
                if group is None:
                    os.fsync(self.fd)
                self._close_fds()
                os.rename(self.tmp, final)
                if group is None:
                    fsync_dir(os.path.dirname(final))
            except OSError as exc:
                raise self.store.disk_error(exc) from None
        if group is not None:
            try:
                group.sync()
            except OSError as exc:
                try:  # not durable, never indexed: do not leave it to look like a replica
                    os.unlink(final)
                except OSError:
                    pass
                raise self.store.disk_error(exc) from None
        return Replica(self.gen, size, checksum.digest_of_table(table))

    def abort(self) -> None:
        with self.lock:
            if self.closed:
                return
            self._close_fds()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class BlockStore:
    def __init__(self, root: str, capacity: int = 0, group_sync: bool = True,
                 direct_io: bool = True, reserve: int | None = None) -> None:
        """reserve: disk space never used for blocks (--reserve); None: the default for
        this disk's size (config.default_reserve)."""
        self.root = root
        self.inflight = 0  # bytes claimed by replicas being written
        self._space = threading.Lock()
        self.direct_io = direct_io and hasattr(os, "O_DIRECT")
        self.direct_refused = 0  # packets the kernel would not take directly (for tests)
        self.blocks_dir = os.path.join(root, "blocks")
        for i in range(256):  # made once here, not checked on every block write
            os.makedirs(os.path.join(self.blocks_dir, f"{i:02x}"), exist_ok=True)
        if reserve is None:
            st = os.statvfs(self.blocks_dir)
            reserve = config.default_reserve(st.f_blocks * st.f_frsize)
        self.reserve = reserve
        self.group = GroupSync.create(self.blocks_dir) if group_sync else None
        self.index: dict[int, Replica] = {}  # block id -> its replica here
        self.used = 0
        self.capacity_flag = capacity
        self.server_id = self.read_identity("chunkserver.id")
        if not self.server_id:
            self.server_id = uuid.uuid4().hex
            self.write_identity("chunkserver.id", self.server_id)
        self._scan()

    def write_identity(self, name: str, value: str) -> None:
        """Durably store one of the identity files (chunkserver.id, cluster.id)."""
        atomic_write(os.path.join(self.root, name), (value + "\n").encode())

    def read_identity(self, name: str) -> str:
        """An identity file's value, or "" before it exists."""
        return read_text(os.path.join(self.root, name))

    def path(self, block_id: int, gen: int) -> str:
        return os.path.join(self.blocks_dir, f"{block_id & 0xff:02x}",
                            f"blk_{block_id:016x}_{gen}")

    def _scan(self) -> None:
        """Index finalized replicas; remove leftovers of writes that never finished."""
        for sub in sorted(os.listdir(self.blocks_dir)):
            d = os.path.join(self.blocks_dir, sub)
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                full = os.path.join(d, name)
                if name.endswith(".tmp"):
                    os.unlink(full)
                    continue
                try:
                    _, hexid, gen_s = name.split("_")
                    block_id, gen = int(hexid, 16), int(gen_s)
                    replica = self._read_trailer(full, gen)
                except (ValueError, OSError) as exc:
                    log.warning("ignoring unreadable block file %s: %s", full, exc)
                    continue
                prev = self.index.get(block_id)
                if prev is not None and prev.gen >= gen:
                    os.unlink(full)  # an older generation that was never cleaned up
                    continue
                if prev is not None:
                    os.unlink(self.path(block_id, prev.gen))
                    self.used -= block_file_size(prev.size)
                self.index[block_id] = replica
                self.used += block_file_size(replica.size)

    @staticmethod
    def _read_trailer(path: str, gen: int) -> Replica:
        """Size and digest of a finalized block file, from its footer and CRC table."""
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            total = f.tell()
            if total < FOOTER.size:
                raise ValueError("too short for a footer")
            f.seek(total - FOOTER.size)
            magic, unit, size = FOOTER.unpack(f.read(FOOTER.size))
            if magic != MAGIC or unit != UNIT or block_file_size(size) != total:
                raise ValueError("bad footer")
            f.seek(size)
            table = f.read(4 * checksum.units(size))
        return Replica(gen, size, checksum.digest_of_table(table))

    # stats ----------------------------------------------------------------------------
    def stats(self) -> tuple[int, int, int]:
        """(capacity, used, free) in bytes. Free respects the capacity flag, the disk's real
        free space less the reserve, and bytes of writes still in progress."""
        st = os.statvfs(self.blocks_dir)
        disk_free = st.f_bavail * st.f_frsize
        capacity = self.capacity_flag or (self.used + disk_free)
        free = min(capacity - self.used - self.inflight, disk_free - self.reserve)
        return capacity, self.used, max(0, free)

    def claim(self, n: int) -> None:
        """Room for n more bytes of a replica being written, or NoSpace. Called for every
        packet before its bytes touch the disk, so a full disk (less the reserve) fails the
        write cleanly instead of in the middle of a pwrite, and never eats the reserve."""
        with self._space:
            if n > self.stats()[2]:
                raise NoSpace(f"chunkserver disk is full ({self.root}: less than "
                              f"{n} bytes free above the {self.reserve}-byte reserve)")
            self.inflight += n

    def unclaim(self, n: int) -> None:
        """The bytes of a write that finished (now counted in `used`) or was dropped."""
        with self._space:
            self.inflight = max(0, self.inflight - n)

    def find_missing(self) -> list[tuple[int, int]]:
        """Replicas whose files have vanished from the disk (an operator, a failed disk).
        Blocking and read-only (one stat per replica): run it in a worker thread, then
        `forget` each on the event loop."""
        return [(bid, r.gen) for bid, r in list(self.index.items())
                if not os.path.exists(self.path(bid, r.gen))]

    def forget(self, block_id: int, gen: int) -> None:
        have = self.index.get(block_id)
        if have is not None and have.gen == gen and \
                not os.path.exists(self.path(block_id, gen)):
            del self.index[block_id]
            self.used -= block_file_size(have.size)
            log.warning("replica of block %d gen %d has vanished from %s", block_id, gen,
                        self.root)

    def report(self) -> list[list[int]]:
        """A full block report: [id, gen, size, digest] for every replica held."""
        return [[bid, *r] for bid, r in self.index.items()]

    def disk_error(self, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"disk full on chunkserver ({self.root})")
        return exc

    # writes and reads -----------------------------------------------------------------
    def open_write(self, block_id: int, gen: int) -> BlockWriter:
        have = self.index.get(block_id)
        if have is not None and have.gen > gen:
            raise StaleGeneration(f"block {block_id} has gen {have.gen} here, newer than {gen}")
        try:
            return BlockWriter(self, block_id, gen)
        except OSError as exc:
            raise self.disk_error(exc) from None

    def open_direct(self, path: str) -> int | None:
        """A second, O_DIRECT descriptor of a file being written, or None. A filesystem that
        refuses O_DIRECT (tmpfs) turns direct I/O off for this store."""
        if not self.direct_io:
            return None
        try:
            return os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                log.info("%s does not support O_DIRECT; writing through the page cache",
                         self.root)
                self.direct_io = False
            return None

    def write_whole(self, block_id: int, gen: int, data: memoryview,
                    crcs: list[int]) -> Replica:
        """A whole small block in one blocking call (one disk-thread hop, not three): create,
        write, seal. Then `added` on the event loop. Nothing is left behind on failure."""
        writer = self.open_write(block_id, gen)
        try:
            writer.write(0, data, crcs)
            return writer.seal(len(data))
        except BaseException:
            writer.abort()
            raise

    def added(self, block_id: int, replica: Replica) -> None:
        """A replica was finalized: index it and drop older generations of it. A late
        replica of an older generation than the one indexed is dropped instead (a hung
        server's queued write that arrives after the pipeline was rebuilt)."""
        prev = self.index.get(block_id)
        if prev is not None and prev.gen > replica.gen:
            try:
                os.unlink(self.path(block_id, replica.gen))
            except FileNotFoundError:
                pass
            return
        if prev is not None and prev.gen != replica.gen:
            try:
                os.unlink(self.path(block_id, prev.gen))
            except FileNotFoundError:
                pass
        if prev is not None:
            self.used -= block_file_size(prev.size)
        self.index[block_id] = replica
        self.used += block_file_size(replica.size)

    def lookup(self, block_id: int, gen: int) -> int:
        """Size of the replica; NotFound or StaleGeneration if we cannot serve that gen."""
        have = self.index.get(block_id)
        if have is None:
            raise NotFound(f"block {block_id} is not on this chunkserver")
        if have.gen != gen:
            raise StaleGeneration(f"block {block_id} has gen {have.gen} here, not {gen}")
        return have.size

    def read(self, block_id: int, gen: int, offset: int, length: int
             ) -> tuple[bytes, list[int], int]:
        """Data at [offset, offset+length) clipped to the block, the CRCs of the chunks it
        covers, and the block size. `offset` must be unit-aligned."""
        size = self.lookup(block_id, gen)
        length = max(0, min(length, size - offset))
        first, count = offset // UNIT, checksum.units(length)
        fd = os.open(self.path(block_id, gen), os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
            table = os.pread(fd, 4 * count, size + 4 * first)
        finally:
            os.close(fd)
        if len(data) != length or len(table) != 4 * count:
            # The file lost bytes under us: to the reader this is a corrupt replica, so it
            # reports it to meta and moves to another one.
            raise ChecksumError(f"block {block_id} replica file is shorter than its index says")
        return data, list(struct.unpack(f">{count}I", table)), size

    def read_into(self, block_id: int, gen: int, offset: int, length: int, buf: Buffer,
                  around_cache: bool = False) -> tuple[memoryview, list[int], int]:
        """What `read` returns, but the data lands in `buf`, a page-aligned
        buffer with room for `length` rounded up to DIRECT_ALIGN, which the caller reuses:
        no fresh 1 MiB allocation, so no page faults, per read.

        With `around_cache` the data comes through O_DIRECT where it may: for
        re-replication, whose reads must neither evict what clients read from the page cache
        nor fill it with bytes nobody here reads again (on the project's VM, filling fresh
        page-cache pages cost about 2.5 s of kernel time per GiB). `offset` must be
        DIRECT_ALIGN-aligned for that; otherwise, or where the filesystem refuses O_DIRECT,
        the read goes through the cache."""
        size = self.lookup(block_id, gen)
        length = max(0, min(length, size - offset))
        first, count = offset // UNIT, checksum.units(length)
        view = memoryview(buf)
        path = self.path(block_id, gen)
        got = -1
        if around_cache and self.direct_io and not offset % DIRECT_ALIGN:
            want = -(-length // DIRECT_ALIGN) * DIRECT_ALIGN  # the CRC table follows the data
            try:
                dfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            else:
                try:
                    got = os.preadv(dfd, [view[:want]], offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                finally:
                    os.close(dfd)
        fd = os.open(path, os.O_RDONLY)
        try:
            if got < 0:
                got = os.preadv(fd, [view[:length]], offset)
            table = os.pread(fd, 4 * count, size + 4 * first)
        finally:
            os.close(fd)
        if got < length or len(table) != 4 * count:  # as in `read`: a corrupt replica
            raise ChecksumError(f"block {block_id} replica file is shorter than its index says")
        return view[:length], list(struct.unpack(f">{count}I", table)), size

    def crc_table(self, block_id: int, gen: int) -> bytes:
        """The replica's whole packed CRC table, as stored after its data: what a file
        checksum combines without reading the data. Blocking (one pread)."""
        size = self.lookup(block_id, gen)
        want = 4 * checksum.units(size)
        fd = os.open(self.path(block_id, gen), os.O_RDONLY)
        try:
            table = os.pread(fd, want, size)
        finally:
            os.close(fd)
        if len(table) != want:  # as in `read`: a corrupt replica, try another
            raise ChecksumError(f"block {block_id} replica file is shorter than its index says")
        return table

    def delete(self, block_id: int, gen: int) -> bool:
        """Delete the replica if its generation is `gen` or older."""
        have = self.index.get(block_id)
        if have is None or have.gen > gen:
            return False
        try:
            os.unlink(self.path(block_id, have.gen))
        except FileNotFoundError:
            pass
        del self.index[block_id]
        self.used -= block_file_size(have.size)
        return True
