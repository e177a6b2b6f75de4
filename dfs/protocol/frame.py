"""Frame codec: bytes in, frames out. This module never does I/O.

Frame layout (all integers big-endian)::

    offset  size          field
    0       4             header_len   u32, 1 .. MAX_HEADER
    4       4             payload_len  u32, 0 .. MAX_PAYLOAD
    8       header_len    header       one msgpack map with string keys
    8+hl    payload_len   payload      raw bytes (file data), never msgpack-encoded

`FrameReader` is shaped for `asyncio.BufferedProtocol`: the transport asks `get_buffer()` for
memory to receive into and reports `buffer_updated(n)`. Small frames are parsed out of one
staging buffer (many frames per recv); a large payload is received straight into a pooled
buffer of its own, so file bytes are copied once, by the kernel. Tests drive it with `feed()`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ..config import MAX_HEADER, MAX_PAYLOAD
from ..errors import ProtocolViolation
from .buffers import POOL, Buffer, BufferPool

PREFIX = struct.Struct(">II")
PREFIX_SIZE = PREFIX.size

_STAGING = 256 * 1024
# Payloads up to this size are copied out of the staging buffer; larger ones get a buffer of
# their own from the pool and are received into it directly.
_DIRECT_PAYLOAD = 64 * 1024
_MAX_CONTAINER = 1_000_000


class Frame:
    """One decoded frame. `payload` is a memoryview; `release()` hands its buffer back."""

    __slots__ = ("header", "payload", "_buf", "_pool")

    def __init__(self, header: dict[str, Any], payload: memoryview,
                 buf: Buffer | None = None, pool: BufferPool | None = None) -> None:
        self.header = header
        self.payload = payload
        self._buf = buf
        self._pool = pool

    def release(self) -> None:
        """Return the payload buffer to the pool. Call only when no one else holds it."""
        buf, self._buf = self._buf, None
        if buf is not None and self._pool is not None:
            self.payload.release()
            self.payload = memoryview(b"")
            self._pool.put(buf)

    def __repr__(self) -> str:
        return f"Frame({self.header!r}, payload={len(self.payload)}B)"


def encode_header(header: dict[str, Any], payload_len: int = 0) -> bytes:
    """Prefix + msgpack header for a frame whose payload (if any) is written right after.

    Raises ValueError when *we* are about to break a limit: that is our bug, not the peer's.
    """
    body = msgpack.packb(header, use_bin_type=True)
    if len(body) > MAX_HEADER:
        raise ValueError(f"header of {len(body)} bytes exceeds {MAX_HEADER}")
    if not 0 <= payload_len <= MAX_PAYLOAD:
        raise ValueError(f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD}")
    return PREFIX.pack(len(body), payload_len) + body


def encode_frame(header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
    """A whole frame as one bytes object (convenient for small frames and for tests)."""
    return encode_header(header, len(payload)) + bytes(payload)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack ext types are not part of the protocol")


def decode_header(data: bytes | memoryview) -> dict[str, Any]:
    """Unpack one header with every msgpack size bounded; anything else is a violation."""
    # msgpack presizes a container to the length it *declares*; every element takes at least
    # one byte (a map entry two), so a declared length beyond that is a lie, refused before a
    # few KiB of nested "array32 of 1,000,000" headers can make us allocate tens of MiB.
    n = len(data)
    try:
        header = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_HEADER, max_bin_len=MAX_HEADER,
            max_array_len=min(_MAX_CONTAINER, n), max_map_len=min(_MAX_CONTAINER, n // 2),
            max_ext_len=0, ext_hook=_no_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ProtocolViolation(f"malformed header: {exc.__class__.__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolViolation(f"header is a {type(header).__name__}, not a map")
    if not all(isinstance(k, str) for k in header):
        raise ProtocolViolation("header keys must be strings")
    rid = header.get("id")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        raise ProtocolViolation("header id is not an integer")
    return header


class FrameReader:
    """Incremental frame decoder with no I/O. Broken input raises ProtocolViolation once;
    after that the reader must be discarded (the connection closes)."""

    def __init__(self, pool: BufferPool = POOL) -> None:
        self._pool = pool
        self._stage = bytearray(_STAGING)
        self._start = 0  # first unparsed byte in _stage
        self._end = 0  # end of received bytes in _stage
        self._need = 0  # bytes the current large header or payload still needs
        self._header: dict[str, Any] | None = None  # header of the payload being filled
        self._payload: Buffer | None = None
        self._plen = 0
        self._filled = 0
        self._frames: list[Frame] = []
        self.completed = 0  # frames decoded so far (lets a caller see a new frame begin)

    # -- the BufferedProtocol face -------------------------------------------------------
    def get_buffer(self) -> memoryview:
        if self._payload is not None:
            return memoryview(self._payload)[self._filled:self._plen]
        if self._end == len(self._stage):
            self._compact()
        return memoryview(self._stage)[self._end:]

    def buffer_updated(self, n: int) -> None:
        if self._payload is not None:
            self._filled += n
            if self._filled == self._plen:
                self._finish_direct()
            return
        self._end += n
        self._parse()

    def pop_frames(self) -> list[Frame]:
        frames, self._frames = self._frames, []
        self.completed += len(frames)
        return frames

    @property
    def mid_frame(self) -> bool:
        """True when part of a frame has arrived and the rest has not."""
        return self._payload is not None or self._end > self._start

    # -- for tests and simple callers ----------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        view = memoryview(data)
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]
        return self.pop_frames()

    # -- internals -----------------------------------------------------------------------
    def _compact(self) -> None:
        # Always move into a fresh or the same buffer by slice assignment, never resize in
        # place: the transport may still hold a memoryview from get_buffer().
        pending = self._end - self._start
        size = max(self._need, _STAGING)
        if len(self._stage) < size or (len(self._stage) > _STAGING and size <= _STAGING):
            stage = bytearray(size)
            stage[:pending] = self._stage[self._start:self._end]
            self._stage = stage
        elif pending and self._start:
            self._stage[:pending] = self._stage[self._start:self._end]
        self._start, self._end = 0, pending

    def _parse(self) -> None:
        stage = self._stage
        while True:
            avail = self._end - self._start
            if avail < PREFIX_SIZE:
                self._need = PREFIX_SIZE
                break
            hlen, plen = PREFIX.unpack_from(stage, self._start)
            if hlen == 0 or hlen > MAX_HEADER:
                raise ProtocolViolation(f"header length {hlen} outside 1..{MAX_HEADER}",
                                        "too_large" if hlen else "bad_request")
            if plen > MAX_PAYLOAD:
                raise ProtocolViolation(f"payload length {plen} exceeds {MAX_PAYLOAD}",
                                        "too_large")
            if avail < PREFIX_SIZE + hlen:
                self._need = PREFIX_SIZE + hlen
                if self._end == len(stage) or self._start + self._need > len(stage):
                    self._compact()
                    stage = self._stage
                break
            hstart = self._start + PREFIX_SIZE
            header = decode_header(memoryview(stage)[hstart:hstart + hlen])
            pstart = hstart + hlen
            have = min(plen, self._end - pstart)
            if plen <= _DIRECT_PAYLOAD:
                if have < plen:
                    self._need = PREFIX_SIZE + hlen + plen
                    if self._start + self._need > len(stage):
                        self._compact()
                        stage = self._stage
                    break
                payload = memoryview(bytes(stage[pstart:pstart + plen]))
                self._frames.append(Frame(header, payload))
                self._start = pstart + plen
                continue
            # Large payload: take its own buffer, copy what has arrived, receive the rest into it.
            buf = self._pool.get(plen)
            buf[:have] = stage[pstart:pstart + have]
            self._start = pstart + have
            if have == plen:  # all of it was already here: no nested parse, keep looping
                self._frames.append(Frame(header, memoryview(buf)[:plen], buf, self._pool))
                continue
            self._header, self._payload, self._plen, self._filled = header, buf, plen, have
            break
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._stage) > _STAGING:
                # Drop the room a huge header needed; replaced, never resized (see _compact).
                self._stage = bytearray(_STAGING)

    def _finish_direct(self) -> None:
        # Only reached from buffer_updated: while a payload is received directly, the
        # staging buffer holds nothing unparsed, so there is nothing more to parse here.
        assert self._payload is not None and self._header is not None
        buf = self._payload
        self._frames.append(Frame(self._header, memoryview(buf)[:self._plen], buf, self._pool))
        self._header, self._payload, self._plen, self._filled = None, None, 0, 0
