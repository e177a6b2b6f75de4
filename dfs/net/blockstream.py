"""The sending end of the block write protocol, shared by every sender: the client's writer,
a chunkserver forwarding packets down its pipeline, and a chunkserver sending a copy of a
replica during re-replication. Nothing else speaks `write_block`, `packet`, `abort_block` or
`write_small`.

The exchange (docs/PROTOCOL.md): `write_block` opens a stream for (block, generation) at the
head of a chain and names the servers after it; `packet`s carry the bytes at increasing
offsets, each with one CRC32C per checksum unit; a last, empty packet with `last` and `size`
seals the block. Acks come back in order, and the last one only once every replica in the chain
is durable, listing them in `replicas`. `abort_block` drops the partial replicas. A block that
fits in one packet may instead travel whole in one `write_small` frame.

A stream never resends and never chooses servers: on an error it names the server that failed
(`failed_server`) and the caller (the writer, with meta's help) builds a new chain.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .. import config
from ..errors import ChecksumError, DFSError, NoSpace, Unavailable
from ..protocol import Frame
from .connection import Connection, Payload, wait_reply


class BlockStream:
    """One block's stream to the head of a chain, on one connection."""

    def __init__(self, conn: Connection, block_id: int, gen: int, chain: list[str],
                 window: int = config.WRITE_WINDOW) -> None:
        self.conn = conn
        self.addr = conn.addr
        self.block_id, self.gen, self.chain = block_id, gen, list(chain)
        self.window = window
        # Each hop waits less than the one above it (see config.packet_timeout).
        self.timeout = config.packet_timeout(len(chain))
        self.acks: deque[asyncio.Future[Frame]] = deque()

    @classmethod
    async def open(cls, conn: Connection, block_id: int, gen: int, chain: list[str],
                   token: Any = None, window: int = config.WRITE_WINDOW) -> "BlockStream":
        """Open the stream (`write_block`): the head has opened its replica and its own
        stream to the rest of the chain when this returns. The wait shrinks hop by hop like a
        packet's, so a hung server deep in the chain is named by its neighbour."""
        (await conn.call("write_block", block=block_id, gen=gen, targets=chain, token=token,
                         timeout=config.packet_timeout(len(chain)))).release()
        return cls(conn, block_id, gen, chain, window)

    # sending --------------------------------------------------------------------------
    def packet(self, offset: int, data: Payload, crcs: list[int], *, last: bool = False,
               size: int = 0) -> asyncio.Future[Frame]:
        """Send one packet now, outside the window; the future resolves to its ack. A
        forwarding chunkserver uses this: its upstream already keeps the window."""
        fields: dict[str, Any] = {"block": self.block_id, "offset": offset, "crcs": crcs}
        if last:
            fields["last"] = True
            fields["size"] = size
        return self.conn.request("packet", data, **fields)

    async def send(self, offset: int, data: Payload, crcs: list[int]) -> None:
        """Send one packet, first waiting for the oldest ack while `window` are unacked."""
        await self.conn.drain(self.timeout, f"packets of block {self.block_id}")
        self.acks.append(self.packet(offset, data, crcs))
        while len(self.acks) >= self.window:
            (await self.wait(self.acks.popleft())).release()

    async def finish(self, size: int) -> list[str]:
        """Seal the block at `size` bytes and wait for every ack. Returns the servers that
        hold it durably, as the last ack lists them."""
        await self.conn.drain(self.timeout, f"packets of block {self.block_id}")
        self.acks.append(self.packet(size, b"", [], last=True, size=size))
        while len(self.acks) > 1:
            (await self.wait(self.acks.popleft())).release()
        return await self.replicas(self.acks.popleft())

    def small(self, data: Payload, crcs: list[int], token: Any = None) -> asyncio.Future[Frame]:
        """The whole block in one `write_small` frame down the chain (no `open` needed); its
        ack, read with `replicas`, means durable on every server it lists."""
        return self.conn.request("write_small", data, block=self.block_id, gen=self.gen,
                                 targets=self.chain, crcs=crcs, size=len(data), token=token)

    # acks -----------------------------------------------------------------------------
    async def wait(self, ack: asyncio.Future[Frame]) -> Frame:
        return await wait_reply(ack, self.timeout, f"block {self.block_id} to {self.addr}")

    async def replicas(self, ack: asyncio.Future[Frame]) -> list[str]:
        """Wait for a sealing ack (last packet or write_small) and read its replica list."""
        reply = await self.wait(ack)
        replicas: list[str] = reply.header.get("replicas") or [self.addr]
        reply.release()
        return replicas

    def forget(self) -> None:
        """Stop waiting for the acks in flight (the stream is being abandoned)."""
        while self.acks:
            self.acks.popleft().cancel()

    def abort(self) -> None:
        """Abandon the stream: forget the acks and, best effort, have the chain drop its
        partial replicas. Never waits."""
        self.forget()
        abort_block(self.conn, self.block_id)

    @property
    def write_idle(self) -> bool:
        """No payload buffer handed to this stream is still held by the transport."""
        return self.conn.protocol.write_idle

    # errors ---------------------------------------------------------------------------
    def failed_server(self, exc: DFSError) -> str:
        """The server an error from this stream blames: the one the chain named, else the
        head we talk to."""
        return str(exc.details.get("bad") or self.addr)

    def upstream_error(self, exc: DFSError) -> DFSError:
        """An error from this stream as a forwarding chunkserver reports it upstream: it names
        the failed server, so the writer rebuilds the chain around that one. Checksum, space
        and token errors keep their kind (the writer treats each differently)."""
        bad = self.failed_server(exc)
        if exc.details.get("token"):
            return exc
        if isinstance(exc, ChecksumError):
            return ChecksumError(str(exc), bad=bad)
        if isinstance(exc, NoSpace):
            return NoSpace(str(exc), bad=bad)
        return Unavailable(f"downstream {self.addr}: {exc}", bad=bad,
                           **({"died_idle": True} if exc.details.get("died_idle") else {}))


def died_idle(exc: DFSError, bad: str) -> Unavailable:
    """`exc` as the failure of a pooled connection to `bad` that had died while idle
    (`Checkout.died_idle`), marked `died_idle`: the writer then strikes no server off, and
    rebuilds the chain on new connections under a new generation (never the same block
    twice under one generation: a replica the dead connection may have started is older)."""
    return Unavailable(f"{exc} (a pooled connection to {bad} that had died while idle)",
                       bad=bad, died_idle=True)


def abort_block(conn: Connection | None, block_id: int) -> None:
    """Best effort, never waits: tell a server to drop its partial replica of a block (it
    passes the word down its chain)."""
    if conn is None or conn.closed:
        return
    try:
        conn.request("abort_block", block=block_id).add_done_callback(
            lambda f: f.cancelled() or f.exception())
    except DFSError:
        pass
