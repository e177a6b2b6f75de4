"""The integration suite's view of a real dfs cluster: the launcher in dfs/local_cluster.py
(real dfsd processes on loopback, SIGKILL, restarts, flipped bytes), plus what only tests need:
reproducible data and a recording TCP relay.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading

from dfs.local_cluster import HOST, Cluster, free_ports, port_open, wait_until

__all__ = ["HOST", "Cluster", "KiB", "MiB", "RecordingRelay", "connected_ports", "data_of",
           "free_ports", "port_open", "wait_until"]

KiB = 1024
MiB = 1024 * KiB


def data_of(n: int, seed: int = 0) -> bytes:
    """n reproducible pseudo-random bytes (distinct for each (n, seed))."""
    return random.Random(f"{n}-{seed}").randbytes(n)


def connected_ports() -> set[int]:
    """Remote ports of the established TCP connections (IPv4) that this process holds: which
    servers an in-process client is talking to right now (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    with open("/proc/self/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


class RecordingRelay:
    """A TCP relay on loopback that keeps a copy of every byte it forwards, per connection:
    streams[i] = (bytes the connecting side sent, bytes the target sent back)."""

    def __init__(self, target: int | None = None) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.target = target  # may be set after construction, before the first connection
        self.streams: list[tuple[bytearray, bytearray]] = []
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                assert self.target is not None
                up = socket.create_connection((HOST, self.target), timeout=5)
                up.settimeout(None)
            except OSError:
                down.close()
                continue
            sent, back = bytearray(), bytearray()
            with self._lock:
                self.streams.append((sent, back))
                self._socks += [down, up]
            for src, dst, buf in ((down, up, sent), (up, down, back)):
                threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                with self._lock:
                    buf += data  # recorded before it is forwarded
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def recorded(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return [(bytes(a), bytes(b)) for a, b in self.streams]

    def close(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
