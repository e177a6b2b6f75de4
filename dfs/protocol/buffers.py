"""A small pool of reusable payload buffers, so bulk bytes land in memory that is already mapped.

Owns free buffers by size; never does I/O. Buffers are anonymous mmaps, not bytearrays, so they
start on a page boundary: a chunkserver can hand a received packet straight to an O_DIRECT
write, which needs aligned memory (see chunk/blockstore.py). A buffer may be returned only when
nothing else still refers to it (see `net.connection` for the rule used when a buffer was also
written to a socket). Returning is optional: a buffer never returned is garbage collected.
"""

from __future__ import annotations

import mmap
import threading

Buffer = bytearray | mmap.mmap

class BufferPool:
    def __init__(self, max_free_bytes: int = 64 * 1024 * 1024) -> None:
        self._free: dict[int, list[Buffer]] = {}
        self._free_bytes = 0
        self._max_free_bytes = max_free_bytes
        # Several event loops may share the pool in one process (a dfs.Client's thread and
        # fsspec's IO thread, say): each check-then-pop must be one step.
        self._lock = threading.Lock()

    @staticmethod
    def size_class(n: int) -> int:
        """Round up to a power of two of at least 64 KiB, so few sizes share the pool."""
        size = 65536
        while size < n:
            size <<= 1
        return size

    def get(self, n: int) -> Buffer:
        size = self.size_class(n)
        with self._lock:
            free = self._free.get(size)
            if free:
                self._free_bytes -= size
                return free.pop()
        return mmap.mmap(-1, size)

    def put(self, buf: Buffer) -> None:
        size = len(buf)
        if size != self.size_class(size):
            return
        with self._lock:
            if self._free_bytes + size > self._max_free_bytes:
                return
            self._free.setdefault(size, []).append(buf)
            self._free_bytes += size

    @property
    def free_bytes(self) -> int:
        return self._free_bytes


# One pool per process: every connection in a dfsd or client process shares it.
POOL = BufferPool()


class Lease:
    """A reply payload held in a pooled buffer: the first `n` bytes of `buf`. Whoever sends
    it calls `release` once the transport no longer holds it (net.ServerConnection.reply
    does), which hands the buffer back to the pool; never released, it is garbage
    collected like any buffer."""

    __slots__ = ("buf", "n", "pool")

    def __init__(self, buf: Buffer, n: int, pool: BufferPool = POOL) -> None:
        self.buf, self.n, self.pool = buf, n, pool

    @property
    def view(self) -> memoryview:
        return memoryview(self.buf)[:self.n]

    def __len__(self) -> int:
        return self.n

    def release(self) -> None:
        self.pool.put(self.buf)
