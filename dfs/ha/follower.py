"""A standby's copy of the namespace, rebuilt from a checkpoint and kept current by applying
the active's journal batches as etcd delivers them (a watch on the journal keys).

Records are numbered from the cluster's first change on; a checkpoint covers the first `count`
of them and each batch says the number of its first record, so a record is applied exactly
once whatever order the checkpoint, the range reads and the watch deliver them in, and a gap
(batches deleted by a newer checkpoint while this meta was away) is noticed, never skipped:
the follower then starts again from the newest checkpoint.

The local checkpoint file (`checkpoint.ha` in the data dir, written by this meta while it was
active) is used when the batches after it are still in etcd; otherwise the one in etcd is
fetched. The local-journal mode's `checkpoint` file is never read here: its record numbers
mean something else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from typing import Any

import msgpack

from ..fsutil import CorruptFile, atomic_write
from ..meta import checkpoint, records
from ..meta.namespace import Namespace
from .etcd import Etcd, EtcdCompacted, EtcdError, prefix_end
from .layout import Layout

log = logging.getLogger(__name__)


class Gap(Exception):
    """The next batch etcd holds does not follow the last one applied."""


class Follower:
    def __init__(self, etcd: Etcd, layout: Layout, checkpoint_path: str) -> None:
        self.etcd, self.layout = etcd, layout
        self.checkpoint_path = checkpoint_path
        self.ns = Namespace(time.time())
        self.restored = records.Restored()
        self.count = 0  # records applied (the number of the next one)
        self.last_seq = -1  # the last batch applied
        self.revision = 0  # etcd revision the namespace is current to
        self.covered = 0  # records the checkpoint it was loaded from covers
        self.loaded = asyncio.Event()

    # loading ----------------------------------------------------------------------------
    async def load(self) -> None:
        """Checkpoint (local or etcd's) plus every batch after it. Raises EtcdError, or
        CorruptFile when what etcd holds does not fit together."""
        self.loaded.clear()
        first = await self._first_batch()
        pointer_kv = await self.etcd.get(self.layout.checkpoint)
        pointer = msgpack.unpackb(pointer_kv.value) if pointer_kv is not None else None
        ns, out = Namespace(time.time()), records.Restored()
        loop = asyncio.get_running_loop()
        cp = await loop.run_in_executor(None, _load_local, self.checkpoint_path, ns)
        if cp is not None:  # usable only if etcd still holds every batch after it
            needed = first if first is not None else (pointer["count"] if pointer else 0)
            if needed > cp.count:
                cp, ns = None, Namespace(time.time())
        if cp is None and pointer is not None:
            data = await self._fetch(pointer)
            await loop.run_in_executor(None, atomic_write, self.checkpoint_path, data)
            cp = await loop.run_in_executor(None, _load_local, self.checkpoint_path, ns)
        covered = cp.count if cp is not None else 0
        self.covered = covered
        if cp is not None:
            out.epoch = cp.epoch
            out.decommission = dict(cp.decommission)
        if first is not None and first > covered:
            raise CorruptFile("etcd", 0, f"the journal in etcd starts at record {first} but "
                              f"the newest checkpoint covers only {covered}", "journal")
        self.ns, self.restored, self.count, self.last_seq = ns, out, covered, -1
        kvs, self.revision = await self.etcd.range(self.layout.journal,
                                                   prefix_end(self.layout.journal))
        for kv in kvs:
            self._apply(self.layout.seq_of(kv.key), kv.value)
        self.loaded.set()
        log.info("standby loaded %d files from etcd (%d records, batch %d, revision %d)",
                 self.ns.files, self.count, self.last_seq, self.revision)

    async def _first_batch(self) -> int | None:
        kvs, _ = await self.etcd.range(self.layout.journal, prefix_end(self.layout.journal),
                                       limit=1)
        if not kvs:
            return None
        return _batch_first(kvs[0].value)

    async def _fetch(self, pointer: dict[str, Any]) -> bytes:
        seq = pointer["seq"]
        kvs, _ = await self.etcd.range(self.layout.piece_dir(seq),
                                       prefix_end(self.layout.piece_dir(seq)))
        data = b"".join(kv.value for kv in kvs)
        if len(kvs) != pointer["parts"] or len(data) != pointer["size"] or \
                zlib.crc32(data) != pointer["crc"]:
            raise CorruptFile("etcd", 0, f"checkpoint {seq} in etcd is incomplete or damaged",
                              "checkpoint")
        return data

    # following --------------------------------------------------------------------------
    def _apply(self, seq: int, value: bytes) -> None:
        """Apply one batch's records not applied yet; Gap if it starts past the next one."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
        unpacker.feed(value)
        first = unpacker.unpack()
        if first > self.count:
            raise Gap(f"batch {seq} starts at record {first}, the next one is {self.count}")
        for i, rec in enumerate(unpacker, first):
            if i < self.count:
                continue
            try:
                records.apply(self.ns, rec, self.restored)
            except Exception as exc:  # a record the active made cannot fail here
                raise CorruptFile("etcd", 0, f"record {i} (batch {seq}) cannot be applied: "
                                  f"{exc!r}", "journal") from None
            self.count = i + 1
        self.last_seq = max(self.last_seq, seq)

    async def catch_up(self) -> None:
        """Apply every batch etcd holds after the last one applied (reloading from the
        checkpoint if some were deleted meanwhile)."""
        start = self.layout.batch(self.last_seq + 1)
        kvs, revision = await self.etcd.range(start, prefix_end(self.layout.journal))
        try:
            for kv in kvs:
                self._apply(self.layout.seq_of(kv.key), kv.value)
        except Gap as exc:
            log.warning("standby fell behind a checkpoint (%s): loading it again", exc)
            await self.load()
            return
        self.revision = revision

    async def follow(self) -> None:
        """Apply batches as they are written, for as long as the task runs."""
        pause = 0.1
        while True:
            try:
                await self.catch_up()
                watch = self.etcd.watch(self.layout.journal, prefix_end(self.layout.journal),
                                        start_revision=self.revision + 1)
                try:
                    async for events in watch:
                        for ev in events:
                            if ev.type == "PUT":
                                self._apply(self.layout.seq_of(ev.kv.key), ev.kv.value)
                            self.revision = max(self.revision, ev.kv.mod_revision)
                        pause = 0.1
                finally:
                    await watch.close()
            except (EtcdCompacted, Gap):
                continue  # catch_up reads what the watch can no longer give
            except EtcdError as exc:
                log.debug("standby: journal watch broke (%s); again in %.1fs", exc, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, 1.0)


def _batch_first(value: bytes) -> int:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(value)
    return int(unpacker.unpack())


def _load_local(path: str, ns: Namespace) -> "checkpoint.Checkpoint | None":
    if not os.path.exists(path):
        return None
    return checkpoint.load(path, ns)
