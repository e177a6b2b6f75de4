"""The active meta's journal in etcd: the JournalStore an HA meta appends to.

Group commit as in the file journal: `append()` queues a record and returns a future; one
flusher sends everything queued as one batch, one etcd transaction, and resolves every future
once etcd has accepted it. etcd replicates the batch to a quorum and syncs it to disk before
it answers, so "accepted" is what "fsynced" is for the local journal: an acknowledged change
survives the loss of this meta and of any minority of etcd.

Fencing: each batch transaction succeeds only if the leader key still has the revision this
meta created when it won the election, and the batch's key does not exist yet. A meta whose
lease lapsed (paused, partitioned, slow) finds the leader key gone or someone else's, so it
can never get a batch accepted; its futures fail with `not_leader` and `on_lost` tells the
node to step down. When etcd cannot be reached, the same batch is sent again until it can be:
the outcome of a request lost on the way is unknown, and the batch key makes a second try
either the first success or the discovery that the first one landed.

A checkpoint (checkpointer.py) ends with `rotate(snapshot)`: the snapshot is stored in etcd in
pieces, the `checkpoint` key is pointed at it (fenced), and the batches it covers are deleted,
so etcd holds the namespace once plus the changes since, not the whole history.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from typing import Any, Callable

import msgpack

from .. import config
from ..errors import NotLeader, Unavailable
from .etcd import KV, Etcd, EtcdError, cmp_create_revision, op_put, op_range, prefix_end
from .layout import BATCH_BYTES, PIECE, Layout

log = logging.getLogger(__name__)

RETRY_MAX = 1.0  # seconds between tries of a batch while etcd cannot be reached


class Fenced(Exception):
    """etcd refused a write: another meta leads now."""


class EtcdJournal:
    gen = 0  # the file journal's generations have no meaning here: `total` is global
    base: int | None = None

    def __init__(self, etcd: Etcd, layout: Layout, leader_rev: int, next_seq: int,
                 total: int, on_lost: Callable[[str], None], since_checkpoint: int = 0) -> None:
        self.etcd, self.layout = etcd, layout
        self.leader_rev = leader_rev  # the leader key's create revision: our fence
        self.next_seq = next_seq
        self.total = total  # records journaled by every active so far, ours included
        # Records since the newest checkpoint in etcd: what the checkpointer's "due" counts
        # (the file journal's records of its generation).
        self.count = since_checkpoint
        self.on_lost = on_lost
        self.full = False  # etcd has no "disk full" meta can act on; its errors stall
        # The largest record meta may journal here (a publish of a file with many blocks):
        # etcd refuses a request over --max-request-bytes (1.5 MiB by default).
        self.max_record = config.HA_MAX_RECORD
        self.appended = 0
        self.syncs = 0
        self.on_sync: Callable[[float], None] | None = None
        self.stalled = False  # a batch is waiting for etcd to come back
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._last: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._marked = 0
        # (seq, records journaled once that batch is applied) of batches written since this
        # meta took over: what a checkpoint may delete.
        self._written: deque[tuple[int, int]] = deque()
        if next_seq > 0:  # the batches of the actives before this one
            self._written.append((next_seq - 1, total))

    # the JournalStore interface -----------------------------------------------------------
    def load(self) -> list[list[Any]]:
        return []  # the HA node restores the namespace before this journal exists

    def append(self, record: list[Any]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._failed is not None:
            fut.set_exception(self._failed)
            return fut
        self._pending.append((msgpack.packb(record, use_bin_type=True), fut))
        self._last = fut
        self.total += 1
        self.count += 1
        self.appended += 1
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return fut

    def mark(self) -> tuple[int, int]:
        self._marked = self.total
        return 0, self.total

    def synced(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        last = self._last
        if self._failed is not None:
            fut.set_exception(self._failed)
        elif last is None or last.done():
            fut.set_result(None)
        else:
            return asyncio.shield(last)
        return fut

    def unmark(self) -> None:
        return None

    async def make_room(self) -> bool:
        return True

    def rotate(self, snapshot: bytes = b"") -> asyncio.Future[None]:
        return asyncio.ensure_future(self._store_checkpoint(snapshot, self._marked))

    async def close(self) -> None:
        """Wait (a little) for batches in flight; whatever is left fails, unacknowledged."""
        if self._flusher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._flusher), 5.0)
            except asyncio.TimeoutError:  # etcd out of reach: the batch may have landed
                self.fail(Unavailable("meta stopped while etcd was out of reach; the change "
                                      "may or may not have been kept"))

    def fail(self, exc: BaseException) -> None:
        """Refuse everything from now on (this meta no longer leads)."""
        if self._failed is None:
            self._failed = exc
        if self._flusher is not None and self._flusher is not asyncio.current_task():
            self._flusher.cancel()  # (from the flusher itself, it just returns)
        self._flusher = None
        pending, self._pending = self._pending, []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(self._failed)

    # writing batches --------------------------------------------------------------------
    async def _flush(self) -> None:
        try:
            while self._pending and self._failed is None:
                take, size = 0, 0
                for data, _ in self._pending:
                    if take and size + len(data) > BATCH_BYTES:
                        break
                    take, size = take + 1, size + len(data)
                batch = self._pending[:take]
                del self._pending[:take]
                first = self.total - len(self._pending) - len(batch)
                value = msgpack.packb(first) + b"".join(d for d, _ in batch)
                seq = self.next_seq
                started = time.perf_counter()
                try:
                    await self._write(seq, value)
                except Fenced as exc:
                    err = NotLeader(f"this meta lost the lead before the change was kept "
                                    f"({exc}); retry at the active meta")
                    for _, fut in batch:
                        fut.set_exception(err)
                    self.fail(err)
                    self.on_lost(str(exc))
                    return
                self.next_seq = seq + 1
                self.syncs += 1
                self._written.append((seq, first + len(batch)))
                if self.on_sync is not None:
                    self.on_sync(time.perf_counter() - started)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None

    async def _write(self, seq: int, value: bytes) -> None:
        """One fenced batch, sent again until etcd answers either way."""
        key = self.layout.batch(seq)
        pause = 0.05
        while True:
            try:
                ok, responses, _ = await self.etcd.txn(
                    [cmp_create_revision(self.layout.leader, "=", self.leader_rev),
                     cmp_create_revision(key, "=", 0)],
                    [op_put(key, value)],
                    [op_range(self.layout.leader), op_range(key)])
            except EtcdError as exc:
                if not self.stalled:
                    log.error("etcd cannot take journal batch %d (%s): changes wait until it "
                              "can", seq, exc)
                self.stalled = True
                await asyncio.sleep(pause)
                pause = min(2 * pause, RETRY_MAX)
                continue
            if self.stalled:
                log.warning("etcd takes journal batches again")
                self.stalled = False
            if ok:
                return
            leader, batch = (_first_kv(r) for r in responses)
            if leader is None or leader.get("create_revision", 0) != self.leader_rev:
                raise Fenced("the leader key in etcd is no longer this meta's")
            if batch is not None and batch.get("value") == value:
                return  # an earlier try landed and its answer was lost
            raise Fenced(f"journal batch {seq} was written by another meta")

    # checkpoints ------------------------------------------------------------------------
    async def _store_checkpoint(self, snapshot: bytes, count: int) -> None:
        """Store a checkpoint covering `count` records, then delete what it makes needless.
        Raises OSError (the checkpointer retries later) when etcd cannot take it."""
        if not snapshot:
            return
        seq = self.next_seq  # names the pieces; unique, since batches only move forward
        parts = [snapshot[i:i + PIECE] for i in range(0, len(snapshot), PIECE)]
        pointer = msgpack.packb({"count": count, "parts": len(parts), "size": len(snapshot),
                                 "crc": zlib.crc32(snapshot), "seq": seq})
        try:
            for i, part in enumerate(parts):
                await self.etcd.put(self.layout.piece(seq, i), part)
            ok, _, revision = await self.etcd.txn(
                [cmp_create_revision(self.layout.leader, "=", self.leader_rev)],
                [op_put(self.layout.checkpoint, pointer)])
            if not ok:
                await self.etcd.delete_range(self.layout.piece_dir(seq),
                                             prefix_end(self.layout.piece_dir(seq)))
                self.on_lost("the leader key in etcd is no longer this meta's")
                raise OSError("not the active meta any more: checkpoint not stored")
            covered = None
            while self._written and self._written[0][1] <= count:
                covered = self._written.popleft()[0]
            if covered is not None:
                await self.etcd.delete_range(self.layout.journal,
                                             self.layout.batch(covered + 1))
            await self.etcd.delete_range(self.layout.pieces, self.layout.piece_dir(seq))
            await self.etcd.compact(revision)
        except EtcdError as exc:
            raise OSError(f"etcd: {exc}") from None
        self.count = max(0, self.total - count)
        log.info("checkpoint stored in etcd: %d bytes in %d pieces, covering %d records",
                 len(snapshot), len(parts), count)


def _first_kv(response: dict[str, Any]) -> dict[str, Any] | None:
    """The first key of a range response inside a failed txn, decoded (or None)."""
    kvs = (response.get("response_range") or {}).get("kvs") or []
    if not kvs:
        return None
    kv = KV.from_json(kvs[0])
    return {"create_revision": kv.create_revision, "value": kv.value}
