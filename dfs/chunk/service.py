"""The chunkserver's request handlers: the write pipeline and block reads.

Write pipeline, per block: the client sends `write_block` naming the rest of the chain; this
server opens the same stream to the next server, then takes `packet`s. Each packet's CRC32Cs
are verified here before the bytes touch the disk, the packet is forwarded downstream and
written locally at its offset, and its ack goes back once the downstream ack has arrived too.
The last packet's ack waits for the local fsync + rename + directory fsync and for the whole
rest of the chain doing the same, so an acknowledged block is durable on every replica listed
in the ack. Packets are never re-encoded: the payload buffer received from upstream is the one
written to the file and to the next socket.

Numbers for /metrics are plain ints bumped on the event loop (never in a disk thread, where
`+=` could lose an update), read at scrape time by dfs/web/metrics.py, so nothing here imports
prometheus: `read_bytes` served by read_block, `written_bytes` of replicas made durable here
(pipelines, write_small, copies received), `checksum_failures` this server detected (packets
received, replicas it read; the scrubber and the copier count their own). `on_pipeline`, when
the daemon installs it, gets the seconds from each block stream's open to its final ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from .. import checksum, config
from ..errors import BadRequest, ChecksumError, DFSError, NoSpace, Unavailable
from ..net import NO_SECURITY, Checkout, ConnectionPool, Security, ServerConnection
from ..net.blockstream import BlockStream, died_idle
from ..protocol import Frame
from ..protocol.buffers import POOL, Lease
from ..protocol.fields import addrs, uint
from .blockstore import UNIT, BlockStore, BlockWriter, Replica
from .copier import Copier

log = logging.getLogger(__name__)

ReadReply = tuple[dict[str, Any], bytes | Lease]  # a read_block reply: header, data


def _chain(h: dict[str, Any], me: str) -> list[str]:
    """The servers after this one in a write pipeline: distinct, and never this one (a chain
    that loops back would write one replica several times and report each as another)."""
    chain = addrs(h, "targets", config.MAX_REPLICATION)
    if me in chain or len(set(chain)) != len(chain):
        raise BadRequest("a pipeline chain must name distinct servers other than the receiver")
    return chain


class Stream:
    """One block being written through this server."""

    def __init__(self, writer: BlockWriter, downstream: BlockStream | None,
                 opened: float) -> None:
        self.writer = writer
        self.downstream = downstream  # to the next server of the chain, if any
        self.opened = opened  # time.monotonic() when write_block arrived
        self.syncing = False
        self.pending: set[asyncio.Future[None]] = set()  # packet writes still in a disk thread
        self.failed: DFSError | None = None
        self.done = False


def _abort_opened(fut: "asyncio.Future[BlockWriter]") -> None:
    """Drop a replica file that was opened for a write that failed or went away meanwhile."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result().abort()


class ChunkService:
    def __init__(self, store: BlockStore, addr: str,
                 on_block: Callable[[int, Replica], None],
                 copy_rate: int = config.DEFAULT_REPLICATION_RATE,
                 security: Security = NO_SECURITY) -> None:
        self.store = store
        self.addr = addr  # as advertised to meta and clients
        self.on_block = on_block  # tells meta about a finalized replica
        self.writing = 0  # streams open across all connections
        self.security = security  # checks block tokens; authenticates to other servers
        self.pool = ConnectionPool(role="chunk", security=security)  # to downstream servers
        # Disk threads: packet writes, flushes and fsyncs block here, never the event loop.
        self.disk = ThreadPoolExecutor(max_workers=config.DISK_THREADS, thread_name_prefix="disk")
        self.copier = Copier(store, self.pool, self.disk, copy_rate, self.serving_clients)
        self._client_seen = float("-inf")  # when a client's last read or write arrived
        # Counters for /metrics (see the module docstring).
        self.read_bytes = 0
        self.written_bytes = 0
        self.checksum_failures = 0
        self.on_pipeline: Callable[[float], None] | None = None

    def serving_clients(self) -> bool:
        """Whether a client (not another chunkserver) read or wrote here lately: repair then
        slows down to leave it room (see copier.py)."""
        return time.monotonic() - self._client_seen < config.REPAIR_BUSY_WINDOW

    def _client_io(self, conn: ServerConnection) -> None:
        if conn.hello.get("role") != "chunk":
            self._client_seen = time.monotonic()

    def replicate(self, block_id: int, gen: int, target: str, token: Any = None) -> None:
        """Meta asked for a copy of a replica we hold (see copier.py)."""
        self.copier.start(block_id, gen, target, token)

    def _finalized(self, block_id: int, replica: Replica) -> None:
        """A replica is durable under its final name: index it and tell meta (unless it was
        dropped: an older generation than the one held, or in a data dir that failed)."""
        if not self.store.added(block_id, replica):
            return
        self.written_bytes += replica.size
        self.on_block(block_id, replica)

    def _streams(self, conn: ServerConnection) -> dict[int, Stream]:
        """The blocks being written over one connection (dropped when it closes)."""
        streams: dict[int, Stream] | None = conn.state.get("streams")
        if streams is None:
            streams = conn.state["streams"] = {}

            def closed() -> None:
                for block_id in list(streams):
                    self._close_stream(streams, block_id)
            conn.close_callbacks.append(closed)
        return streams

    # write pipeline -------------------------------------------------------------------
    def handle_write_block(self, h: dict[str, Any], payload: memoryview,
                           conn: ServerConnection) -> Awaitable[dict[str, Any]]:
        block_id, gen = uint(h, "block"), uint(h, "gen")
        chain = _chain(h, self.addr)
        token = h.get("token")
        self.security.check(token, block_id, gen, "w")
        self._client_io(conn)
        streams = self._streams(conn)
        # Re-opening a block on the same connection means the writer gave up on the old try.
        self._close_stream(streams, block_id)
        return self._open_stream(streams, block_id, gen, chain, token, time.monotonic())

    async def _open_stream(self, streams: dict[int, Stream], block_id: int, gen: int,
                           chain: list[str], token: Any, opened: float) -> dict[str, Any]:
        # The local file is created in a disk thread (creating a file can wait on the
        # filesystem journal while a sync runs; on the loop that would stall every
        # connection), at the same time as the downstream server opens its own.
        local = asyncio.get_running_loop().run_in_executor(
            self.disk, self.store.open_write, block_id, gen)
        downstream = None
        try:
            if chain:
                peer = None
                try:
                    peer = await self.pool.checkout(chain[0])
                    downstream = await BlockStream.open(peer.conn, block_id, gen, chain[1:],
                                                        token)
                except DFSError as exc:
                    if exc.details.get("token"):
                        raise  # the token, not the server: the writer gets a new one
                    if peer is not None and peer.died_idle(exc):
                        raise died_idle(exc, chain[0]) from None
                    bad = exc.details.get("bad") or chain[0]
                    idle = {"died_idle": True} if exc.details.get("died_idle") else {}
                    raise Unavailable(f"pipeline to {chain[0]} failed: {exc}",
                                      bad=bad, **idle) from None
            try:
                writer = await asyncio.shield(local)
            except DFSError as exc:
                if downstream is not None:
                    downstream.abort()
                exc.details["bad"] = self.addr
                raise
        except BaseException:
            local.add_done_callback(_abort_opened)  # never leave an open .tmp behind
            raise
        streams[block_id] = Stream(writer, downstream, opened)
        self.writing += 1
        return {}

    def _close_stream(self, streams: dict[int, Stream], block_id: int) -> None:
        stream = streams.pop(block_id, None)
        if stream is None:
            return
        self.writing -= 1
        if not stream.done:
            stream.writer.abort()
            if stream.downstream is not None:
                stream.downstream.abort()

    def handle_write_small(self, h: dict[str, Any], payload: memoryview,
                           conn: ServerConnection) -> Awaitable[dict[str, Any]]:
        """A whole block in one frame (a small file, or a file's short last block): checked,
        forwarded down the chain as one frame, and written, sealed and made durable here in
        one disk-thread call, so a small block costs one frame and one thread hop per hop."""
        block_id, gen, size = uint(h, "block"), uint(h, "gen"), uint(h, "size")
        chain = _chain(h, self.addr)
        self._client_io(conn)
        if size != len(payload) or not 0 < size <= config.MAX_PAYLOAD:
            raise BadRequest(f"write_small carries the whole block: size {size} but "
                             f"{len(payload)} bytes of payload")
        token = h.get("token")
        self.security.check(token, block_id, gen, "w")
        crcs = h.get("crcs") or []
        try:
            checksum.verify(payload, crcs)
        except ChecksumError:
            self.checksum_failures += 1
            raise
        return self._write_small(block_id, gen, chain, crcs, token, conn.detach_payload())

    async def _write_small(self, block_id: int, gen: int, chain: list[str], crcs: list[int],
                           token: Any, frame: Frame) -> dict[str, Any]:
        local = asyncio.get_running_loop().run_in_executor(
            self.disk, self.store.write_whole, block_id, gen, frame.payload, crcs)
        down: BlockStream | None = None
        peer: Checkout | None = None
        ack: asyncio.Future[Frame] | None = None
        indexed = False
        try:
            if chain:
                try:
                    peer = await self.pool.checkout(chain[0])
                    down = BlockStream(peer.conn, block_id, gen, chain[1:])
                    ack = down.small(frame.payload, crcs, token)
                except DFSError as exc:
                    raise Unavailable(f"pipeline to {chain[0]} failed: {exc}",
                                      bad=exc.details.get("bad") or chain[0]) from None
            try:
                replica = await asyncio.shield(local)
            except (OSError, ValueError, DFSError) as exc:
                raise self._local_error(exc) from None
            indexed = True
            self._finalized(block_id, replica)
            replicas = [self.addr]
            if down is not None and ack is not None:
                try:
                    replicas += await down.replicas(ack)
                except DFSError as exc:
                    if peer is not None and peer.died_idle(exc):
                        raise died_idle(exc, chain[0]) from None
                    raise down.upstream_error(exc) from None
        except BaseException:
            if ack is not None:
                ack.cancel()
            if not indexed:  # written, or still being written: index it when it lands
                local.add_done_callback(lambda f: self._landed(f, block_id))
            raise  # the buffer is not reused: a transport may still hold it
        frame.release()
        return {"replicas": replicas}

    def _landed(self, fut: "asyncio.Future[Replica]", block_id: int) -> None:
        """A whole-block write finished after its request went away: it is durable, so index
        and report it like any replica (meta deletes it if the upload never commits)."""
        if not fut.cancelled() and fut.exception() is None:
            self._finalized(block_id, fut.result())

    def handle_abort_block(self, h: dict[str, Any], payload: memoryview,
                           conn: ServerConnection) -> dict[str, Any]:
        """The upstream gave up on this block: drop the partial replica (and downstream's).
        Needs no token: it only touches a stream this connection opened, with one."""
        self._close_stream(self._streams(conn), uint(h, "block"))
        return {}

    def handle_packet(self, h: dict[str, Any], payload: memoryview,
                      conn: ServerConnection) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        block_id = uint(h, "block")
        self._client_io(conn)
        streams = self._streams(conn)
        stream = streams.get(block_id)
        if stream is None:
            raise BadRequest(f"no write of block {block_id} open on this connection")
        if stream.failed is not None:
            raise stream.failed
        offset, last = uint(h, "offset"), bool(h.get("last"))
        size = uint(h, "size") if last else 0
        crcs = h.get("crcs") or []
        try:
            checksum.verify(payload, crcs)
        except DFSError as exc:
            if isinstance(exc, ChecksumError):
                self.checksum_failures += 1
            self._fail(stream, exc)
            raise
        down_ack = None
        frame = conn.detach_payload()
        try:
            if stream.downstream is not None:
                try:
                    down_ack = stream.downstream.packet(offset, payload, crcs, last=last,
                                                        size=size)
                except DFSError:
                    lost = stream.downstream.addr
                    raise self._fail(stream, Unavailable(f"downstream {lost} lost",
                                                         bad=lost)) from None
            try:
                stream.writer.accept(offset, len(payload), crcs)
            except ValueError as exc:  # the writer sent packets out of order
                raise self._fail(stream, BadRequest(str(exc))) from None
            except NoSpace as exc:  # the partial replica goes; the writer goes elsewhere
                exc.details["bad"] = self.addr
                raise self._fail(stream, exc) from None
        except BaseException:
            self._release(frame, stream)
            raise
        local = self._write_local(stream, offset, frame)
        if last:
            return self._finish(streams, stream, size, down_ack)
        if stream.writer.unsynced >= config.BACKGROUND_SYNC_BYTES and not stream.syncing:
            stream.writer.unsynced = 0
            stream.syncing = True
            asyncio.ensure_future(self._background_sync(stream))
        return self._ack(stream, local, down_ack)

    def _write_local(self, stream: Stream, offset: int,
                     frame: Frame) -> asyncio.Future[None] | None:
        """Write the packet into the replica file in a disk thread; the buffer goes back to
        the pool once the disk and the downstream socket are both done with it."""
        if not frame.payload:
            frame.release()
            return None
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.disk, stream.writer.pwrite, offset, frame.payload)
        stream.pending.add(fut)

        def done(f: asyncio.Future[None]) -> None:
            stream.pending.discard(f)
            self._release(frame, stream)
        fut.add_done_callback(done)
        return fut

    async def _ack(self, stream: Stream, local: asyncio.Future[None] | None,
                   down_ack: asyncio.Future[Frame] | None) -> dict[str, Any]:
        """A packet's ack: written here, and acknowledged by the rest of the chain."""
        if local is not None:
            try:
                await local
            except (OSError, ValueError, DFSError) as exc:
                raise self._fail(stream, self._local_error(exc)) from None
        if down_ack is None or stream.downstream is None:
            return {}
        try:
            reply = await stream.downstream.wait(down_ack)
        except DFSError as exc:
            raise self._fail(stream, stream.downstream.upstream_error(exc)) from None
        return {"replicas": [self.addr] + reply.header.get("replicas", [])}

    def _local_error(self, exc: BaseException) -> DFSError:
        if isinstance(exc, DFSError):
            err = exc
        elif isinstance(exc, ValueError):
            err = Unavailable(f"write of this block was aborted: {exc}")
        else:
            err = DFSError(f"local write failed: {exc}")
        err.details["bad"] = self.addr
        return err

    @staticmethod
    def _release(frame: Frame, stream: Stream) -> None:
        """Hand the packet buffer back to the pool unless the downstream transport may still
        be holding it (it copies nothing; it keeps a reference until the bytes are sent)."""
        if stream.downstream is None or stream.downstream.write_idle:
            frame.release()

    async def _background_sync(self, stream: Stream) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.disk, stream.writer.sync_some)
        except OSError:
            pass  # the final fsync reports any real problem
        finally:
            stream.syncing = False

    async def _finish(self, streams: dict[int, Stream], stream: Stream, size: int,
                      down_ack: asyncio.Future[Frame] | None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        replicas = [self.addr]
        while stream.pending:  # every packet's bytes are in the file before we seal it
            await asyncio.wait(list(stream.pending))
        if stream.failed is not None:  # an earlier packet failed here or downstream
            if down_ack is not None:
                down_ack.cancel()
            raise stream.failed
        if size != stream.writer.written:  # the writer's mistake, not this server's
            raise self._fail(stream, BadRequest(
                f"block ends at {size} but {stream.writer.written} bytes were sent"))
        try:
            replica = await loop.run_in_executor(self.disk, stream.writer.seal, size)
        except (OSError, ValueError, DFSError) as exc:
            if down_ack is not None:
                down_ack.cancel()
            raise self._fail(stream, self._local_error(exc)) from None
        stream.done = True
        self._finalized(stream.writer.block_id, replica)
        if down_ack is not None and stream.downstream is not None:
            try:
                replicas += await stream.downstream.replicas(down_ack)
            except DFSError as exc:
                # Our copy is durable; the error names the bad server so the client can
                # rebuild the pipeline around it.
                raise stream.downstream.upstream_error(exc) from None
        if streams.get(stream.writer.block_id) is stream:
            self._close_stream(streams, stream.writer.block_id)
        if self.on_pipeline is not None:
            self.on_pipeline(time.monotonic() - stream.opened)
        return {"replicas": replicas}

    def _fail(self, stream: Stream, err: DFSError) -> DFSError:
        """The stream cannot complete: drop the partial replica, refuse further packets."""
        if stream.failed is None:
            stream.failed = err
            if not stream.done:
                stream.writer.abort()
            if stream.downstream is not None:
                stream.downstream.abort()
        return err

    # reads ----------------------------------------------------------------------------
    def handle_read_block(self, h: dict[str, Any], payload: memoryview, conn: ServerConnection
                          ) -> ReadReply | Awaitable[ReadReply]:
        block_id, gen = uint(h, "block"), uint(h, "gen")
        offset, length = uint(h, "offset"), uint(h, "length")
        self.security.check(h.get("token"), block_id, gen, "r")
        self._client_io(conn)
        size = self.store.lookup(block_id, gen)
        if offset > size:
            raise BadRequest(f"offset {offset} is past the end of block {block_id} ({size})")
        if offset % UNIT or length > config.MAX_PAYLOAD or \
                (length % UNIT and offset + length < size):
            raise BadRequest(f"reads cover whole {UNIT}-byte checksum units (up to the "
                             f"block's end) and are at most {config.MAX_PAYLOAD} bytes")
        if length <= UNIT:  # small: likely cached, and cheaper here than a thread hop
            try:
                reply = self._read(block_id, gen, offset, length)
            except ChecksumError:
                self.checksum_failures += 1
                raise
            self.read_bytes += len(reply[1])
            return reply
        # Large reads may go to the disk (blocks are written around the page cache), which
        # must not stall the loop; they are counted back on the loop, when they are done.
        # On plain TCP they land in a pooled buffer, handed back once the reply has left
        # (net.ServerConnection.reply): no fresh 1 MiB allocation, faulted in page by page,
        # per read.
        read: Callable[[int, int, int, int], ReadReply] = \
            self._read_pooled if conn.tracks_sent else self._read
        fut = asyncio.get_running_loop().run_in_executor(
            self.disk, read, block_id, gen, offset, length)
        fut.add_done_callback(self._count_read)
        return fut

    def _count_read(self, fut: "asyncio.Future[ReadReply]") -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            self.read_bytes += len(fut.result()[1])
        elif isinstance(exc, ChecksumError):  # the replica file is shorter than its index
            self.checksum_failures += 1

    def _read(self, block_id: int, gen: int, offset: int,
              length: int) -> tuple[dict[str, Any], bytes]:
        try:
            data, crcs, size = self.store.read(block_id, gen, offset, length)
        except OSError as exc:
            raise DFSError(f"reading block {block_id} failed: {exc}") from None
        return {"crcs": crcs, "size": size}, data

    def _read_pooled(self, block_id: int, gen: int, offset: int,
                     length: int) -> tuple[dict[str, Any], Lease]:
        buf = POOL.get(length)
        try:
            data, crcs, size = self.store.read_into(block_id, gen, offset, length, buf)
        except OSError as exc:
            POOL.put(buf)
            raise DFSError(f"reading block {block_id} failed: {exc}") from None
        except BaseException:
            POOL.put(buf)
            raise
        return {"crcs": crcs, "size": size}, Lease(buf, len(data))

    def handle_block_info(self, h: dict[str, Any], payload: memoryview,
                          conn: ServerConnection) -> dict[str, Any]:
        block_id, gen = uint(h, "block"), uint(h, "gen")
        self.security.check(h.get("token"), block_id, gen, "r")
        return {"size": self.store.lookup(block_id, gen)}

    def handle_block_crcs(self, h: dict[str, Any], payload: memoryview,
                          conn: ServerConnection) -> Awaitable[tuple[dict[str, Any], bytes]]:
        """The replica's stored CRC table (4 bytes per 64 KiB: 64 KiB for a 1 GiB block), for
        a file checksum computed without moving the data. Always from a disk thread: after a
        restart the table is not in the page cache, and a disk read must not stall the loop."""
        block_id, gen = uint(h, "block"), uint(h, "gen")
        self.security.check(h.get("token"), block_id, gen, "r")
        size = self.store.lookup(block_id, gen)  # NotFound / StaleGeneration at once
        return asyncio.get_running_loop().run_in_executor(
            self.disk, self._crc_table, block_id, gen, size)

    def _crc_table(self, block_id: int, gen: int, size: int) -> tuple[dict[str, Any], bytes]:
        try:
            table = self.store.crc_table(block_id, gen)
        except OSError as exc:
            raise DFSError(f"reading the checksums of block {block_id} failed: {exc}") from None
        return {"size": size, "unit": UNIT}, table
