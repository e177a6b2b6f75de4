"""What this machine can do at best, measured in the same run as the benchmark, so every dfs
figure can also be shown as a fraction of its limit on a shared and noisy machine.

- loopback: one Python TCP stream over 127.0.0.1, sendall() of 1 MiB buffers into recv_into()
  of a reused buffer (no copies beyond the kernel's), sender and receiver on two threads.
- fsync'd write: the same number of bytes written in 1 MiB writes to one file in the
  benchmark's data directory, then fsync: what one copy of a block costs the disk.
- cached read: that file read back with readinto() while it is still in the page cache.
"""

from __future__ import annotations

import os
import socket
import threading
import time

_BUF = 1 << 20


def loopback_MBps(size: int) -> float:
    """MB/s (10^6 bytes) of one Python loopback TCP stream carrying `size` bytes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = [0]

    def receive() -> None:
        conn, _ = listener.accept()
        buf = bytearray(_BUF)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    return
                received[0] += n

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    data = os.urandom(_BUF)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        sent = 0
        while sent < size:
            chunk = min(_BUF, size - sent)
            s.sendall(data if chunk == _BUF else data[:chunk])
            sent += chunk
        s.shutdown(socket.SHUT_WR)
        thread.join()
        elapsed = time.perf_counter() - t0
    listener.close()
    if received[0] != size:
        raise RuntimeError(f"loopback limit: received {received[0]} of {size} bytes")
    return size / elapsed / 1e6


def fsync_write_MBps(directory: str, size: int) -> tuple[float, float]:
    """(fsync'd write MB/s, cached read-back MB/s) of a `size`-byte file in `directory`."""
    path = os.path.join(directory, "limit-probe.bin")
    data = os.urandom(_BUF)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            t0 = time.perf_counter()
            written = 0
            while written < size:
                written += os.write(fd, data[:min(_BUF, size - written)])
            os.fsync(fd)
            write_s = time.perf_counter() - t0
        finally:
            os.close(fd)
        buf = bytearray(_BUF)
        with open(path, "rb", buffering=0) as f:
            t0 = time.perf_counter()
            while f.readinto(buf):
                pass
            read_s = time.perf_counter() - t0
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return size / write_s / 1e6, size / read_s / 1e6
