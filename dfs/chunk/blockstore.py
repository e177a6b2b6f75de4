"""Block files on a chunkserver's local disks. Never does network I/O.

Layout under each data dir (one or several, `--data-dir a,b`: see volumes.py)::

    chunkserver.id                 this server's id (uuid4 hex), made at first start; the
                                   same in every dir (a dir holding another id is refused)
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
import random
import struct
import threading
import uuid
from typing import Any, NamedTuple, Sequence

from .. import checksum, config
from ..errors import ChecksumError, NoSpace, NotFound, StaleGeneration, Unavailable
from ..fsutil import atomic_write, fsync_dir, pwrite_all, read_text
from ..protocol.buffers import Buffer
from .groupsync import GroupSync
from .volumes import Volume, Volumes, choose

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
    volume: int = 0  # which data dir holds it (Volume.number); never sent to meta


class BlockWriter:
    """One replica being written: data goes to the .tmp file at the packet's offset."""

    def __init__(self, store: "BlockStore", volume: Volume, block_id: int, gen: int) -> None:
        self.store, self.block_id, self.gen = store, block_id, gen
        self.volume = volume  # the data dir it is written in
        self.tmp = volume.path(block_id, gen) + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            self.fd = os.open(self.tmp, flags, 0o644)
        except FileNotFoundError:  # its sub-directory was removed under us: make it again
            os.makedirs(os.path.dirname(self.tmp), exist_ok=True)
            fsync_dir(os.path.dirname(os.path.dirname(self.tmp)))  # and its name durable
            self.fd = os.open(self.tmp, flags, 0o644)
        # Whole aligned packets bypass the page cache through a second, O_DIRECT descriptor
        # (see `pwrite`); None when the store or its filesystem cannot do direct I/O.
        self.direct_fd = store.open_direct(self.tmp, volume)
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
        self.store.claim(length, self.volume)
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
            raise self.store.disk_error(exc, self.volume) from None

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
        self.store.unclaim(self.claimed, self.volume)
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
        except OSError as exc:
            self.store.volumes.check_error(self.volume, exc)
            raise
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
        vol = self.volume
        group = vol.group if size <= config.GROUP_SYNC_MAX_BYTES else None
        final = vol.path(self.block_id, self.gen)
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
                raise self.store.disk_error(exc, self.volume) from None
        if group is not None:
            try:
                group.sync()
            except OSError as exc:
                try:  # not durable, never indexed: do not leave it to look like a replica
                    os.unlink(final)
                except OSError:
                    pass
                raise self.store.disk_error(exc, self.volume) from None
        if vol.failed:  # durable on a disk that failed meanwhile: no replica to count on
            raise self.store.failed_error(vol)
        return Replica(self.gen, size, checksum.digest_of_table(table), vol.number)

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
    def __init__(self, root: str | Sequence[str], capacity: int = 0, group_sync: bool = True,
                 direct_io: bool = True, reserve: int | None = None,
                 failed: dict[str, str] | None = None,
                 rng: random.Random | None = None) -> None:
        """root: the data dir, or several (each holds its own blocks: volumes.py).
        capacity: bytes this server may use across all of them (--capacity; 0: what the
        disks have). reserve: space never used for blocks on each disk (--reserve); None:
        the default for each disk's size (config.default_reserve). failed: dirs found
        unusable before (path -> why): they start failed."""
        roots = [root] if isinstance(root, str) else list(root)
        self.volumes = Volumes(roots)
        self.root = roots[0]
        self.inflight = 0  # bytes claimed by replicas being written, in every dir
        self._space = threading.Lock()
        self._direct = direct_io and hasattr(os, "O_DIRECT")
        self.direct_refused = 0  # packets the kernel would not take directly (for tests)
        self.rng = rng
        self.index: dict[int, Replica] = {}  # block id -> its replica here
        self.used = 0  # bytes of the replica files indexed, in every dir
        self.capacity_flag = capacity
        first: OSError | None = None
        for vol in self.volumes.all:
            if failed and vol.root in failed:
                self.volumes.fail(vol, failed[vol.root])
                continue
            try:
                self._prepare(vol, group_sync, reserve)
                self._scan(vol)
            except OSError as exc:
                first = first or exc
                self.volumes.fail(vol, f"unusable at start: {exc.strerror or exc}")
        self.drop_failed()
        if not self.volumes.healthy():
            if first is not None:
                raise first
            raise OSError(errno.EIO, "every data dir has failed")
        self.server_id = self._identity("chunkserver.id", make=True)
        self._identity("cluster.id")

    def _prepare(self, vol: Volume, group_sync: bool, reserve: int | None) -> None:
        for i in range(256):  # made once here, not checked on every block write
            os.makedirs(os.path.join(vol.blocks_dir, f"{i:02x}"), exist_ok=True)
        # A new directory's name is durable only once its parent is fsynced: without these a
        # power cut could take blocks/XX (and every replica sealed in it) away.
        fsync_dir(vol.blocks_dir)
        fsync_dir(vol.root)
        vol.reserve = config.default_reserve(vol.disk()[0]) if reserve is None else reserve
        vol.dev = os.stat(vol.blocks_dir).st_dev
        vol.direct_io = self._direct
        vol.group = GroupSync.create(vol.blocks_dir) if group_sync else None

    # the first dir, as a single-dir store had them (tests, tools, log lines)
    @property
    def blocks_dir(self) -> str:
        return self.volumes.all[0].blocks_dir

    @property
    def group(self) -> GroupSync | None:
        return self.volumes.all[0].group

    @group.setter
    def group(self, group: GroupSync | None) -> None:
        self.volumes.all[0].group = group

    @property
    def direct_io(self) -> bool:
        return self.volumes.all[0].direct_io

    @direct_io.setter
    def direct_io(self, on: bool) -> None:
        for vol in self.volumes.all:
            vol.direct_io = on

    @property
    def reserve(self) -> int:
        return self.volumes.all[0].reserve

    # identity -------------------------------------------------------------------------
    def _identity(self, name: str, make: bool = False) -> str:
        """One identity file's value, the same in every healthy dir: written where it is
        missing (a new, empty dir), refused where it differs (a disk of another server)."""
        found: dict[str, str] = {}
        for vol in self.volumes.healthy():
            try:
                found[vol.root] = read_text(os.path.join(vol.root, name))
            except OSError as exc:
                self.volumes.check_error(vol, exc)
        values = {v for v in found.values() if v}
        if len(values) > 1:
            where = ", ".join(f"{root} has {v}" for root, v in found.items() if v)
            raise ValueError(f"data dirs disagree about {name}: {where} (a dir of another "
                             "chunkserver, or of another cluster?)")
        value = values.pop() if values else (uuid.uuid4().hex if make else "")
        missing = [root for root, v in found.items() if not v]
        if value and missing:
            self.write_identity(name, value, only=missing)
        return value

    def write_identity(self, name: str, value: str, only: list[str] | None = None) -> None:
        """Durably store one of the identity files (chunkserver.id, cluster.id) in every
        healthy dir (or those named in `only`)."""
        wrote = 0
        error: OSError | None = None
        for vol in self.volumes.healthy():
            if only is not None and vol.root not in only:
                continue
            try:
                atomic_write(os.path.join(vol.root, name), (value + "\n").encode())
                wrote += 1
            except OSError as exc:
                error = exc
                self.volumes.check_error(vol, exc)
        if not wrote and error is not None:
            raise error

    def read_identity(self, name: str) -> str:
        """An identity file's value, or "" before it exists."""
        for vol in self.volumes.healthy():
            try:
                value = read_text(os.path.join(vol.root, name))
            except OSError as exc:
                self.volumes.check_error(vol, exc)
                continue
            if value:
                return value
        return ""

    def path(self, block_id: int, gen: int) -> str:
        """The file of the replica (block_id, gen): in the dir holding the block, or, for one
        not indexed here (being written), in the first dir."""
        have = self.index.get(block_id)
        vol = self.volumes.all[have.volume if have is not None else 0]
        return vol.path(block_id, gen)

    def _scan(self, vol: Volume) -> None:
        """Index a dir's finalized replicas; remove leftovers of writes that never finished,
        and older generations (or second copies) of a block also held in another dir."""
        for sub in sorted(os.listdir(vol.blocks_dir)):
            d = os.path.join(vol.blocks_dir, sub)
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
                    replica = self._read_trailer(full, gen)._replace(volume=vol.number)
                except OSError as exc:
                    if self.volumes.check_error(vol, exc):
                        raise
                    log.warning("ignoring unreadable block file %s: %s", full, exc)
                    continue
                except ValueError as exc:
                    log.warning("ignoring unreadable block file %s: %s", full, exc)
                    continue
                prev = self.index.get(block_id)
                if prev is not None and prev.gen >= gen:
                    os.unlink(full)  # an older generation that was never cleaned up
                    continue
                if prev is not None:
                    os.unlink(self.volumes.all[prev.volume].path(block_id, prev.gen))
                    self._unindex(block_id, prev)
                self._index(block_id, replica)

    def _index(self, block_id: int, replica: Replica) -> None:
        self.index[block_id] = replica
        vol = self.volumes.all[replica.volume]
        n = block_file_size(replica.size)
        self.used += n
        vol.used += n
        vol.count += 1

    def _unindex(self, block_id: int, replica: Replica) -> None:
        del self.index[block_id]
        vol = self.volumes.all[replica.volume]
        n = block_file_size(replica.size)
        self.used -= n
        vol.used -= n
        vol.count -= 1

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

    # failed dirs ----------------------------------------------------------------------
    def drop_failed(self) -> list[Volume]:
        """Forget the replicas of dirs that failed since the last call (on the event loop:
        the index is the loop's); returns those dirs. Their replicas are lost: the next full
        block report tells meta, which re-replicates them from other servers."""
        dropped = [v for v in self.volumes.all if v.failed and not v.dropped]
        for vol in dropped:
            vol.dropped = True
            gone = [(bid, r) for bid, r in self.index.items() if r.volume == vol.number]
            for block_id, replica in gone:
                self._unindex(block_id, replica)
            vol.lost = len(gone)
            log.error("data dir %s failed (%s): %d replicas lost from this chunkserver; "
                      "%d of %d data dirs still in service", vol.root, vol.failed, len(gone),
                      len(self.volumes.healthy()), len(self.volumes.all))
        return dropped

    def failed_error(self, vol: Volume) -> Unavailable:
        if not self.volumes.healthy():
            return Unavailable("every data dir of this chunkserver has failed: it takes no "
                               "writes")
        return Unavailable(f"data dir {vol.root} of this chunkserver has failed "
                           f"({vol.failed})")

    @property
    def writable(self) -> bool:
        """False once every data dir has failed: this server then takes no writes."""
        return bool(self.volumes.healthy())

    def dirs(self) -> list[dict[str, Any]]:
        """Each data dir and its state, as heartbeats carry them to meta (and status shows
        them): path, state "ok" or "failed", error, blocks, used, capacity, free, lost."""
        out: list[dict[str, Any]] = []
        rooms = self._rooms()
        for vol in self.volumes.all:
            d: dict[str, Any] = {"path": vol.root, "state": "failed" if vol.failed else "ok",
                                    "error": vol.failed, "blocks": vol.count, "used": vol.used,
                                    "capacity": 0, "free": 0, "lost": vol.lost}
            if not vol.failed and vol.dev in rooms:
                avail, room = rooms[vol.dev]
                d["capacity"], d["free"] = vol.used + avail, room
            out.append(d)
        return out

    # stats ----------------------------------------------------------------------------
    def _rooms(self) -> dict[int, tuple[int, int]]:
        """For the filesystem of each healthy dir (by st_dev): (bytes available, room for
        blocks: less the reserve and the bytes being written to it). Dirs on one filesystem
        share its space: it is looked at and counted once."""
        by_dev: dict[int, list[Volume]] = {}
        for vol in self.volumes.healthy():
            by_dev.setdefault(vol.dev, []).append(vol)
        out: dict[int, tuple[int, int]] = {}
        for dev, vols in by_dev.items():
            try:
                avail = vols[0].disk()[1]
            except OSError as exc:
                self.volumes.check_error(vols[0], exc)
                continue
            inflight = sum(v.inflight for v in vols)
            reserve = max(v.reserve for v in vols)
            out[dev] = (avail, max(0, min(avail - inflight, avail - reserve)))
        return out

    def stats(self) -> tuple[int, int, int]:
        """(capacity, used, free) in bytes. Free respects the capacity flag, the disks' real
        free space less the reserve, and bytes of writes still in progress; failed dirs
        count for nothing."""
        rooms = self._rooms()
        avail = sum(a for a, _ in rooms.values())
        room = sum(r for _, r in rooms.values() if r > 0)
        capacity = self.capacity_flag or (self.used + avail)
        if not rooms:
            return capacity, self.used, 0
        free = min(capacity - self.used - self.inflight, room)
        return capacity, self.used, max(0, free)

    @staticmethod
    def _room(vol: Volume, rooms: dict[int, tuple[int, int]]) -> int:
        return 0 if vol.failed else rooms.get(vol.dev, (0, 0))[1]

    def claim(self, n: int, vol: Volume | None = None) -> None:
        """Room for n more bytes of a replica being written in `vol` (default: the first
        dir), or NoSpace. Called for every packet before its bytes touch the disk, so a full
        disk (less the reserve) fails the write cleanly instead of in the middle of a pwrite,
        and never eats the reserve. A dir that failed refuses at once."""
        vol = vol or self.volumes.all[0]
        with self._space:
            if vol.failed:
                raise self.failed_error(vol)
            rooms = self._rooms()
            room = self._room(vol, rooms)
            if self.capacity_flag:
                room = min(room, self.capacity_flag - self.used - self.inflight)
            if n > room:
                raise NoSpace(f"chunkserver disk is full ({vol.root}: less than "
                              f"{n} bytes free above the {vol.reserve}-byte reserve)")
            self.inflight += n
            vol.inflight += n

    def unclaim(self, n: int, vol: Volume | None = None) -> None:
        """The bytes of a write that finished (now counted in `used`) or was dropped."""
        vol = vol or self.volumes.all[0]
        with self._space:
            self.inflight = max(0, self.inflight - n)
            vol.inflight = max(0, vol.inflight - n)

    def find_missing(self) -> list[tuple[int, int]]:
        """Replicas whose files have vanished from the disk (an operator, a failed disk).
        Blocking and read-only (one stat per replica): run it in a worker thread, then
        `forget` each on the event loop."""
        vols = self.volumes.all
        return [(bid, r.gen) for bid, r in list(self.index.items())
                if not vols[r.volume].failed and
                not os.path.exists(vols[r.volume].path(bid, r.gen))]

    def forget(self, block_id: int, gen: int) -> None:
        have = self.index.get(block_id)
        if have is not None and have.gen == gen and \
                not os.path.exists(self.volumes.all[have.volume].path(block_id, gen)):
            self._unindex(block_id, have)
            log.warning("replica of block %d gen %d has vanished from %s", block_id, gen,
                        self.volumes.all[have.volume].root)

    def report(self) -> list[list[int]]:
        """A full block report: [id, gen, size, digest] for every replica held."""
        return [[bid, r.gen, r.size, r.digest] for bid, r in self.index.items()]

    def disk_error(self, exc: OSError, vol: Volume) -> Exception:
        """What an OSError met in `vol` means to a writer: no space, a failed dir (which it
        marks failed), or itself."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"disk full on chunkserver ({vol.root})")
        if self.volumes.check_error(vol, exc):
            return self.failed_error(vol)
        return exc

    # writes and reads -----------------------------------------------------------------
    def open_write(self, block_id: int, gen: int) -> BlockWriter:
        """A writer for a new replica, in the healthy dir `volumes.choose` picks; a dir that
        fails as the file is created is marked failed and the next one is tried."""
        have = self.index.get(block_id)
        if have is not None and have.gen > gen:
            raise StaleGeneration(f"block {block_id} has gen {have.gen} here, newer than {gen}")
        while True:
            with self._space:
                rooms = self._rooms()
                vol = choose([(v, self._room(v, rooms)) for v in self.volumes.healthy()],
                             self.rng)
            if vol is None:
                raise self.failed_error(self.volumes.all[0])
            try:
                return BlockWriter(self, vol, block_id, gen)
            except OSError as exc:
                err = self.disk_error(exc, vol)
                if not vol.failed:
                    raise err from None

    def open_direct(self, path: str, vol: Volume) -> int | None:
        """A second, O_DIRECT descriptor of a file being written, or None. A filesystem that
        refuses O_DIRECT (tmpfs) turns direct I/O off for that dir."""
        if not vol.direct_io:
            return None
        try:
            return os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                log.info("%s does not support O_DIRECT; writing through the page cache",
                         vol.root)
                vol.direct_io = False
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

    def _unlink(self, vol: Volume, block_id: int, gen: int) -> None:
        """Remove a replica file; a missing one is fine, a failing dir is marked failed."""
        try:
            os.unlink(vol.path(block_id, gen))
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not self.volumes.check_error(vol, exc):
                raise

    def added(self, block_id: int, replica: Replica) -> bool:
        """A replica was finalized: index it and drop older generations of it. A late
        replica of an older generation than the one indexed is dropped instead (a hung
        server's queued write that arrives after the pipeline was rebuilt), and so is one in
        a dir that failed meanwhile. False when it was not indexed."""
        vol = self.volumes.all[replica.volume]
        prev = self.index.get(block_id)
        if vol.failed or (prev is not None and prev.gen > replica.gen):
            if not vol.failed:
                self._unlink(vol, block_id, replica.gen)
            return False
        if prev is not None:
            if (prev.gen, prev.volume) != (replica.gen, replica.volume):
                self._unlink(self.volumes.all[prev.volume], block_id, prev.gen)
            self._unindex(block_id, prev)
        self._index(block_id, replica)
        return True

    def _locate(self, block_id: int, gen: int) -> tuple[int, Volume]:
        have = self.index.get(block_id)
        if have is None:
            raise NotFound(f"block {block_id} is not on this chunkserver")
        if have.gen != gen:
            raise StaleGeneration(f"block {block_id} has gen {have.gen} here, not {gen}")
        vol = self.volumes.all[have.volume]
        if vol.failed:
            raise NotFound(f"block {block_id} was in data dir {vol.root}, which has failed")
        return have.size, vol

    def lookup(self, block_id: int, gen: int) -> int:
        """Size of the replica; NotFound or StaleGeneration if we cannot serve that gen."""
        return self._locate(block_id, gen)[0]

    def read(self, block_id: int, gen: int, offset: int, length: int
             ) -> tuple[bytes, list[int], int]:
        """Data at [offset, offset+length) clipped to the block, the CRCs of the chunks it
        covers, and the block size. `offset` must be unit-aligned. An OSError that says the
        disk is broken marks its dir failed (and is raised)."""
        size, vol = self._locate(block_id, gen)
        length = max(0, min(length, size - offset))
        first, count = offset // UNIT, checksum.units(length)
        try:
            fd = os.open(vol.path(block_id, gen), os.O_RDONLY)
            try:
                data = os.pread(fd, length, offset)
                table = os.pread(fd, 4 * count, size + 4 * first)
            finally:
                os.close(fd)
        except OSError as exc:
            self.volumes.check_error(vol, exc)
            raise
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
        size, vol = self._locate(block_id, gen)
        try:
            return self._read_into(block_id, gen, offset, length, buf, around_cache, size,
                                   vol)
        except OSError as exc:
            self.volumes.check_error(vol, exc)
            raise

    def _read_into(self, block_id: int, gen: int, offset: int, length: int, buf: Buffer,
                   around_cache: bool, size: int, vol: Volume
                   ) -> tuple[memoryview, list[int], int]:
        length = max(0, min(length, size - offset))
        first, count = offset // UNIT, checksum.units(length)
        view = memoryview(buf)
        path = vol.path(block_id, gen)
        got = -1
        if around_cache and vol.direct_io and not offset % DIRECT_ALIGN:
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
        size, vol = self._locate(block_id, gen)
        want = 4 * checksum.units(size)
        try:
            fd = os.open(vol.path(block_id, gen), os.O_RDONLY)
            try:
                table = os.pread(fd, want, size)
            finally:
                os.close(fd)
        except OSError as exc:
            self.volumes.check_error(vol, exc)
            raise
        if len(table) != want:  # as in `read`: a corrupt replica, try another
            raise ChecksumError(f"block {block_id} replica file is shorter than its index says")
        return table

    def delete(self, block_id: int, gen: int) -> bool:
        """Delete the replica if its generation is `gen` or older. A dir that fails to
        delete it is marked failed (the replica is lost with it)."""
        have = self.index.get(block_id)
        if have is None or have.gen > gen:
            return False
        try:
            self._unlink(self.volumes.all[have.volume], block_id, have.gen)
        except OSError as exc:
            log.warning("cannot delete replica of block %d gen %d: %s", block_id, have.gen,
                        exc)
            return False
        self._unindex(block_id, have)
        return True
