"""Start a whole dfs cluster as real local processes: used by dfs-demo and the benchmark.

Each role is a real `dfsd` child process (python -m dfs.daemon) on a free loopback port with
its own data dir under one base directory; logs go to <base>/<name>.log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    def __init__(self, base: str, chunkservers: int = 2, *, heartbeat: str = "0.5s",
                 dead_timeout: str = "5s", extra_meta: list[str] | None = None,
                 extra_chunk: list[str] | None = None,
                 client_options: dict[str, Any] | None = None) -> None:
        """client_options: keyword arguments for the dfs.Client this uses to poll status
        (secret_file=, tls_cert=, ... when the cluster runs with them)."""
        self.base = base
        self.n_chunk = chunkservers
        self.heartbeat, self.dead_timeout = heartbeat, dead_timeout
        self.extra_meta = extra_meta or []
        self.extra_chunk = extra_chunk or []
        self.client_options: dict[str, Any] = client_options or {}
        self.meta_port = free_port()
        self.meta_addr = f"127.0.0.1:{self.meta_port}"
        self.ports: dict[str, int] = {"meta": self.meta_port}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i in range(chunkservers):
            self.ports[f"chunk{i + 1}"] = free_port()

    def args(self, name: str) -> list[str]:
        port = self.ports[name]
        data = os.path.join(self.base, name)
        cmd = [sys.executable, "-m", "dfs.daemon", "--host", "127.0.0.1", "--port", str(port),
               "--data-dir", data, "--heartbeat-interval", self.heartbeat]
        if name == "meta":
            return cmd + ["--role", "meta", "--dead-timeout", self.dead_timeout] + self.extra_meta
        return cmd + ["--role", "chunk", "--meta", self.meta_addr] + self.extra_chunk

    def start(self, name: str) -> None:
        log = open(os.path.join(self.base, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(self.args(name), stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL)
        log.close()
        self._wait_listening(name)

    def _wait_listening(self, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see "
                                   f"{os.path.join(self.base, name + '.log')}")
            try:
                with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start listening within {timeout:g}s")

    def start_all(self, timeout: float = 20.0) -> None:
        os.makedirs(self.base, exist_ok=True)
        self.start("meta")
        for i in range(self.n_chunk):
            self.start(f"chunk{i + 1}")
        self.wait_live(self.n_chunk, timeout)

    def status(self) -> dict[str, Any]:
        from .client import Client
        with Client(self.meta_addr, **self.client_options) as c:
            return c.status()

    def wait_live(self, count: int, timeout: float = 20.0) -> None:
        """Wait until meta reports `count` live chunkservers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = [s for s in self.status()["chunkservers"] if s["state"] == "live"]
                if len(live) >= count:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} chunkservers live after {timeout:g}s")
            time.sleep(0.1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop_all(self) -> None:
        """SIGTERM everything (clean shutdown), then SIGKILL whatever is still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> "LocalCluster":
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
