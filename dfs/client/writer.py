"""The client's write path: stream a file as blocks, each block as a pipeline of packets.

For each block the client asks meta for a block id and an ordered chain of chunkservers, opens
the stream at the head of the chain and sends packets of PACKET_SIZE bytes, WRITE_WINDOW of them
in flight, each with one CRC32C per CHECKSUM_UNIT computed here once. An empty packet marked
`last` ends the block; its ack comes after every replica has fsynced and renamed the block.
A block that ends within its first packet (small files, short last blocks) skips the stream:
it goes down the chain whole in one `write_small` frame, written and sealed in one step.

If anything in the chain fails, the block's packets (kept in memory until the block is acked, so
memory is bounded by one block plus the window) are resent to a new chain that meta builds
around the failed server, under a new generation. The file becomes visible only at `close()`,
when meta commits the whole block list atomically. A list too long for one frame goes to meta
ahead of the commit, in parts of finished blocks (`commit_part`), which meta keeps with the
upload until the commit lists the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .. import checksum, config
from ..errors import DFSError
from ..net.blockstream import BlockStream, died_idle

if TYPE_CHECKING:
    from .async_client import AsyncClient

log = logging.getLogger(__name__)

# Finished blocks go to meta in a `commit_part` once their entries add up to this many bytes
# (at most), so neither a part nor the commit ever outgrows a frame: about 7,000 blocks a
# part with two replicas each, fewer with more or longer addresses.
PART_BYTES = config.MAX_HEADER // 2


class BlockWrite:
    """One block: its packets (kept for a resend until the block is acked), its current
    chain and the stream to it."""

    def __init__(self, client: "AsyncClient", upload: int, block_id: int, gen: int,
                 targets: list[str], token: Any = None, read_token: Any = None) -> None:
        self.client = client
        self.upload = upload
        self.block_id, self.gen, self.targets = block_id, gen, targets
        self.token = token  # meta's write token for (block, gen): chunkservers check it
        self.read_token = read_token  # lets this writer read the block back (dfs-mount)
        self.packets: list[tuple[bytes, list[int]]] = []
        self.size = 0
        self.digest = 0  # of the block's CRC table (checksum.digest), for meta's commit
        self.stream: BlockStream | None = None
        self.error: DFSError | None = None
        self.excluded: set[str] = set()
        self.started = False  # the pipeline is open (not while a lone packet is held)

    async def start(self) -> None:
        self.started = True
        self.stream = None
        head = None
        try:
            head = await self.client.pool.checkout(self.targets[0])
            self.stream = await BlockStream.open(head.conn, self.block_id, self.gen,
                                                 self.targets[1:], self.token)
        except DFSError as exc:
            if head is not None and head.died_idle(exc):
                exc = died_idle(exc, self.targets[0])
            self._broken(exc)

    def _broken(self, exc: DFSError) -> None:
        if self.error is None:
            self.error = exc
            log.info("block %d pipeline %s failed: %s", self.block_id, self.targets, exc)

    async def add(self, data: bytes, crcs: list[int]) -> None:
        """Keep the packet for a possible resend, and send it unless the chain is broken.

        A block's first packet is held until a second one comes: if the block ends first,
        it travels whole in one `write_small` frame (see finish)."""
        offset = self.size
        self.packets.append((data, crcs))
        self.size += len(data)
        self.digest = checksum.digest(crcs, self.digest)
        if not self.started:
            if len(self.packets) == 1 and len(data) <= config.PACKET_SIZE:
                return
            await self.start()
            offset = 0
            for held, held_crcs in self.packets[:-1]:
                await self._send(offset, held, held_crcs)
                offset += len(held)
        await self._send(offset, data, crcs)

    async def _send(self, offset: int, data: bytes, crcs: list[int]) -> None:
        if self.error is not None:
            return
        assert self.stream is not None
        try:
            await self.stream.send(offset, data, crcs)
        except DFSError as exc:
            self._broken(exc)

    async def finish(self) -> list[str]:
        """End the block; rebuild the pipeline and resend as often as needed. Returns the
        servers that hold the block durably."""
        complete = self._complete if self.started else self._write_small
        retries = idle = 0
        while True:
            if self.error is None:
                try:
                    return await complete()
                except DFSError as exc:
                    self._broken(exc)
            assert self.error is not None
            # A pooled connection that had died while idle costs no retry: each is found
            # dead only once (closed, it is replaced by a new one), so these are bounded by
            # the connections the chains' hops had pooled. The cap guards against a bug.
            if self.error.details.get("died_idle") and idle < config.MAX_REPLICATION:
                idle += 1
            elif retries < config.PIPELINE_RETRIES:
                retries += 1
            else:
                break
            await self._recover()
        self.abandon()
        raise self.error

    async def _complete(self) -> list[str]:
        assert self.stream is not None
        return await self.stream.finish(self.size)

    async def _write_small(self) -> list[str]:
        """The whole block in one frame down the chain; the ack means durable everywhere."""
        (data, crcs), = self.packets
        head = await self.client.pool.checkout(self.targets[0])
        stream = BlockStream(head.conn, self.block_id, self.gen, self.targets[1:])
        try:
            return await stream.replicas(stream.small(data, crcs, self.token))
        except DFSError as exc:
            if head.died_idle(exc):
                raise died_idle(exc, self.targets[0]) from None
            raise

    def abandon(self) -> None:
        """Give the block up: stop waiting for acks and have the chain drop its partial
        replicas now (not when the pooled connection closes, which may be much later)."""
        if self.stream is not None:
            self.stream.abort()

    async def _recover(self) -> None:
        """Ask meta for a new generation and chain without the failed server, then resend."""
        assert self.error is not None
        details = self.error.details
        if not (details.get("token") or details.get("died_idle")):
            self.excluded.add(details.get("bad") or self.targets[0])
        # else: our write token expired (a writer that stalled for minutes) or was refused,
        # or a pooled connection on the way had died while idle (a NAT box restarted); the
        # servers are fine, and recover_block hands out a new generation and token.
        if self.stream is not None:
            self.stream.abort()
        keep = [t for t in self.targets if t not in self.excluded]
        reply = await self.client.meta_call("recover_block", upload=self.upload,
                                            block=self.block_id, exclude=sorted(self.excluded),
                                            keep=keep)
        self.gen, self.targets, self.token = reply["gen"], reply["targets"], reply.get("token")
        self.read_token = reply.get("read_token")
        log.info("block %d: resending to %s as gen %d", self.block_id, self.targets, self.gen)
        self.error = None
        if not self.started:
            return  # a whole-block write: finish() sends it again to the new chain
        await self.start()
        offset = 0
        for data, crcs in self.packets:
            await self._send(offset, data, crcs)
            offset += len(data)


class FileWriter:
    """Streams one file into dfs. Nothing is visible until `close()` commits it."""

    def __init__(self, client: "AsyncClient", path: str, replication: int,
                 block_size: int) -> None:
        self.client = client
        self.path = path
        self.replication = replication
        self.block_size = block_size
        self.upload = 0
        self.committed: list[list[Any]] = []  # [id, gen, size, replicas, digest]
        self.sent = 0  # how many of them meta holds already (commit_part)
        self._unsent_bytes = 0  # the most those not sent yet take on the wire
        self.read_tokens: list[Any] = []  # of each committed block, for reading it back
        self.block: BlockWrite | None = None
        self.buf = bytearray()
        self.size = 0
        self.result: dict[str, Any] = {}
        self.excluded: set[str] = set()  # servers that failed a pipeline of this upload
        self._renewer: asyncio.Task[None] | None = None
        self._first: dict[str, Any] | None = None  # a block meta placed along with create
        self.closed = False
        self.mtime: float | None = None  # set to publish with this mtime, not meta's clock
        self.exclusive = False  # set to fail (AlreadyExists) if anything is at the path
        self.attrs: dict[str, int] | None = None  # mode/uid/gid to publish with

    async def open(self, size: int | None = None) -> "FileWriter":
        """Start the upload. `size`, when the writer knows the file's size, lets meta place
        blocks on servers with room for what will really be written (a small file needs no
        room for a whole block). Unless the file is known to be empty, meta places the first
        block in the same round trip."""
        fields: dict[str, Any] = {} if size is None else {"size": size}
        if self.exclusive:
            fields["exclusive"] = True
        reply = await self.client.meta_call("create", path=self.path,
                                            replication=self.replication,
                                            block_size=self.block_size,
                                            first_block=size != 0, **fields)
        self.upload = reply["upload"]
        self._first = reply.get("first")
        self._renewer = asyncio.ensure_future(self._renew())
        return self

    async def _renew(self) -> None:
        """Keep the upload's lease alive while a slow writer is between meta calls."""
        while True:
            await asyncio.sleep(config.UPLOAD_LEASE / 4)
            try:
                await self.client.meta_call("renew", upload=self.upload)
            except DFSError as exc:
                log.warning("could not renew the upload lease of %s: %s", self.path, exc)

    async def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer and send whole packets; returns len(data)."""
        if self.closed:
            raise ValueError("write to a closed dfs file")
        self.buf += data
        packet = config.PACKET_SIZE
        while len(self.buf) >= packet:
            with memoryview(self.buf) as view:  # one copy of the packet, not two
                chunk = bytes(view[:packet])
            del self.buf[:packet]
            await self.write_packet(chunk)
        return len(data)

    async def write_packet(self, data: bytes) -> None:
        """Send bytes as packets, cutting at block boundaries. Every piece but the file's
        last must be whole checksum units (block sizes are multiples of CHECKSUM_UNIT)."""
        view = memoryview(data)
        while view:
            if self.block is None:
                await self._new_block()
            assert self.block is not None
            room = self.block_size - self.block.size
            # The common case (the packet fits, whole) sends the caller's bytes uncopied.
            piece = data if len(view) == len(data) <= room else bytes(view[:room])
            view = view[len(piece):]
            await self.block.add(piece, checksum.crcs_of(piece))
            self.size += len(piece)
            if self.block.size == self.block_size:
                await self._end_block()
                if self._unsent_bytes > PART_BYTES:  # whole blocks only: the last comes later
                    await self._send_part()

    async def _new_block(self) -> None:
        # Servers that failed an earlier block of this upload are avoided for the rest of it,
        # so a dead server is not retried block after block before meta notices it is gone.
        reply, self._first = self._first, None
        if reply is None or self.excluded:
            reply = await self.client.meta_call("add_block", upload=self.upload,
                                                exclude=sorted(self.excluded))
        self.block = BlockWrite(self.client, self.upload, reply["block"], reply["gen"],
                                reply["targets"], reply.get("token"), reply.get("read_token"))
        self.block.excluded = self.excluded

    async def _end_block(self) -> None:
        block, self.block = self.block, None
        assert block is not None
        replicas = await block.finish()
        self.committed.append([block.block_id, block.gen, block.size, replicas, block.digest])
        self.read_tokens.append(block.read_token)
        # An entry's msgpack at most: id, gen, size, digest, and each address with a header.
        self._unsent_bytes += 40 + sum(len(a.encode()) + 3 for a in replicas)

    async def _send_part(self) -> None:
        """Hand meta the finished blocks not sent yet, ahead of the commit."""
        end = len(self.committed)
        await self.client.meta_call("commit_part", upload=self.upload, block_start=self.sent,
                                    blocks=self.committed[self.sent:end])
        self.sent, self._unsent_bytes = end, 0

    async def close(self) -> dict[str, Any]:
        """Flush, end the last block, and commit: the file appears atomically."""
        if self.closed:
            return self.result
        try:
            if self.buf:
                data, self.buf = bytes(self.buf), bytearray()
                await self.write_packet(data)
            if self.block is not None:
                await self._end_block()
            extra: dict[str, Any] = {} if self.mtime is None else {"mtime": self.mtime}
            if self.exclusive:
                extra["exclusive"] = True
            if self.attrs:
                extra["attrs"] = self.attrs
            if self.sent:  # the rest of a list whose head went with commit_part
                extra["block_start"] = self.sent
            reply = await self.client.meta_call("commit", upload=self.upload,
                                                blocks=self.committed[self.sent:], **extra)
        except BaseException:
            await self.abort()
            raise
        self.closed = True
        self._stop_renewing()
        self.result = {"path": reply["path"], "size": self.size,
                       "blocks": len(self.committed),
                       "under_replicated": reply.get("under_replicated", [])}
        if "mtime" in reply:
            self.result["mtime"] = reply["mtime"]
        if "under_replicated_count" in reply:  # more than the reply could list
            self.result["under_replicated_count"] = reply["under_replicated_count"]
        return self.result

    async def abort(self) -> None:
        """Give up: the file never appears and meta reclaims its blocks."""
        if self.closed:
            return
        self.closed = True
        self._stop_renewing()
        if self.block is not None:
            self.block.abandon()
        if self.upload:
            try:
                await self.client.meta_call("abort", upload=self.upload)
            except DFSError:
                pass  # the lease expires on its own

    def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
