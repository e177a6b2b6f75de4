"""A real dfs cluster on loopback for integration tests: one meta, N chunkservers, real processes.

Owns the processes it starts and nothing else: every daemon is started by this module, tracked by
PID, and SIGKILLed by `stop_all()` (the fixtures call it in teardown, whatever the outcome). As a
second line of defence each daemon asks the kernel to SIGKILL it when the test runner dies
(PR_SET_PDEATHSIG), so not even a runner killed by a timeout leaves stray `dfsd` processes.

    c = Cluster(tmp_path, chunkservers=2).start()
    client = c.client()
    client.put_bytes(b"x", "/x")
    c.kill("chunk0")            # SIGKILL by default
    c.restart("chunk0")         # same port, same data dir
    c.stop_all()

Ports are found by binding port 0 on 127.0.0.1. Each daemon writes stdout and stderr to
`<base>/<name>.log` (appended across restarts), and `log_tail()` gives the end of every log.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import dfs

T = TypeVar("T")

HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB
DEAD_TIMEOUT = "3s"
HEARTBEAT = "0.5s"
START_TIMEOUT = 15.0  # a daemon must listen within this long (cold imports on a busy box)
LIVE_TIMEOUT = 15.0  # chunkservers must show `live` in status within this long

# Runs before the daemon, in the same process (exec keeps the PID): ask the kernel to SIGKILL
# this process when the thread that started it goes away, then become `python -m dfs.daemon`.
_PDEATHSIG_EXEC = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    os._exit(1)
os.execv(sys.executable, [sys.executable] + sys.argv[2:])
"""


def data_of(n: int, seed: int = 0) -> bytes:
    """n reproducible pseudo-random bytes (distinct for each (n, seed))."""
    return random.Random(f"{n}-{seed}").randbytes(n)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (all held at once so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Poll until predicate() is truthy and return its value; AssertionError on timeout.
    Exceptions from the predicate count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - "not yet", reported on timeout
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(interval)


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


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Daemon:
    """One dfsd process: its role, port, data dir, log file and current Popen."""

    def __init__(self, name: str, role: str, port: int, data_dir: Path, log_path: Path,
                 args: list[str]) -> None:
        self.name, self.role, self.port = name, role, port
        self.data_dir, self.log_path, self.args = data_dir, log_path, args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running(), f"{self.name} is already running"
        cmd = daemon_command(self.args)
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.args)}\n"
                      .encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.data_dir.parent)

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def daemon_command(args: list[str]) -> list[str]:
    """`python -m dfs.daemon ARGS`, behind the parent-death guard when we are on the main
    thread (the kernel ties PDEATHSIG to the starting *thread*, so a daemon started from a
    worker thread would die with that thread)."""
    base = [sys.executable, "-m", "dfs.daemon", *args]
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *base[1:]]
    return base


class Cluster:
    """One meta and `chunkservers` chunkservers, all on loopback ports in `base`."""

    def __init__(self, base: Path | str, chunkservers: int = 2, *,
                 meta_args: list[str] | tuple[str, ...] = (),
                 chunk_args: list[str] | tuple[str, ...] = (),
                 dead_timeout: str = DEAD_TIMEOUT, heartbeat: str = HEARTBEAT,
                 client_options: dict[str, Any] | None = None) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.heartbeat = heartbeat
        self.chunk_args = list(chunk_args)
        # keyword arguments for every dfs.Client we make (e.g. tls_cert=..., secret_file=...)
        self.client_options = dict(client_options or {})
        self.daemons: dict[str, Daemon] = {}
        self.extra: list[subprocess.Popen[Any]] = []  # other processes tests start (clients)
        self._clients: list[dfs.Client] = []
        self._admin: dfs.Client | None = None
        (meta_port,) = free_ports(1)
        self.meta = self._daemon("meta", "meta", meta_port, [
            "--dead-timeout", dead_timeout, "--heartbeat-interval", heartbeat, *meta_args])
        for _ in range(chunkservers):
            self.add_chunkserver(start=False)

    # building -------------------------------------------------------------------------
    def _daemon(self, name: str, role: str, port: int, extra: list[str]) -> Daemon:
        data_dir = self.base / name
        args = ["--role", role, "--host", HOST, "--port", str(port),
                "--data-dir", str(data_dir), *extra]
        d = Daemon(name, role, port, data_dir, self.base / f"{name}.log", args)
        self.daemons[name] = d
        return d

    def add_chunkserver(self, start: bool = True,
                        chunk_args: list[str] | tuple[str, ...] | None = None) -> Daemon:
        """A new chunkserver named chunk<k>; started (and waited for) unless start=False.
        chunk_args, when given, replace the cluster's chunk_args for this one."""
        name = f"chunk{sum(1 for d in self.daemons.values() if d.role == 'chunk')}"
        (port,) = free_ports(1)
        extra = self.chunk_args if chunk_args is None else list(chunk_args)
        d = self._daemon(name, "chunk", port, [
            "--meta", self.meta_addr, "--heartbeat-interval", self.heartbeat, *extra])
        if start:
            self._start(d)
            self.wait_live()
        return d

    @property
    def meta_addr(self) -> str:
        return self.meta.addr

    @property
    def chunkservers(self) -> list[Daemon]:
        return [d for d in self.daemons.values() if d.role == "chunk"]

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    def by_addr(self, addr: str) -> Daemon:
        for d in self.daemons.values():
            if d.addr == addr:
                return d
        raise KeyError(addr)

    # running --------------------------------------------------------------------------
    def start(self) -> "Cluster":
        """Start meta, wait until it accepts connections, start the chunkservers, and wait
        until status shows every one of them live."""
        try:
            self._start(self.meta)
            for d in self.chunkservers:
                d.start()
            for d in self.chunkservers:
                self._wait_listening(d)
            self.wait_live()
        except BaseException:
            self.stop_all()
            raise
        return self

    def _start(self, d: Daemon) -> None:
        d.start()
        self._wait_listening(d)

    def _wait_listening(self, d: Daemon) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(d.port):
            if not d.running():
                raise RuntimeError(f"{d.name} exited with {d.proc.returncode if d.proc else '?'}"
                                   f" before listening:\n{d.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{d.name} not listening on {d.addr} after "
                                   f"{START_TIMEOUT:g}s:\n{d.tail()}")
            time.sleep(0.02)

    def admin(self) -> dfs.Client:
        """A client kept for the cluster's own polling (status)."""
        if self._admin is None:
            self._admin = self.client()
        return self._admin

    def client(self, timeout: float = 20.0) -> dfs.Client:
        """A new blocking client; closed by stop_all()."""
        c = dfs.Client(self.meta_addr, timeout=timeout, **self.client_options)
        self._clients.append(c)
        return c

    def status(self) -> dict[str, Any]:
        return self.admin().status()

    def states(self) -> dict[str, str]:
        """chunkserver addr -> state, as meta reports it."""
        return {cs["addr"]: cs["state"] for cs in self.status()["chunkservers"]}

    def wait_live(self, timeout: float = LIVE_TIMEOUT) -> None:
        """Until every running chunkserver of ours is `live` in meta's status."""
        want = {d.addr for d in self.chunkservers if d.running()}

        def ready() -> bool:
            states = self.states()
            return all(states.get(a) == "live" for a in want)
        wait_until(ready, timeout, f"chunkservers {sorted(want)} live in status")

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> None:
        addr = self[name].addr
        wait_until(lambda: self.states().get(addr) == state, timeout,
                   f"{name} ({addr}) to be {state} in status")

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send `sig`; for SIGKILL (or when the process exits) return its exit status."""
        d = self[name]
        d.signal(sig)
        if sig == signal.SIGKILL:
            return d.wait(timeout)
        return None

    def restart(self, name: str, wait: bool = True) -> Daemon:
        """Start a stopped daemon again on the same port and data dir. For a chunkserver,
        wait until meta lists it live again (unless wait=False)."""
        d = self[name]
        if d.running():
            self.kill(name)
        self._start(d)
        if wait and d.role == "chunk":
            self.wait_state(name, "live", LIVE_TIMEOUT)
        return d

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        """Have stop_all() SIGKILL this process too."""
        self.extra.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGKILL everything still running and close our clients. Safe to call twice."""
        for proc in self.extra:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for d in self.daemons.values():
            d.signal(signal.SIGKILL)
        for proc in self.extra:
            with contextlib.suppress(Exception):
                proc.wait(10)
        for d in self.daemons.values():
            if d.proc is not None:
                with contextlib.suppress(Exception):
                    d.proc.wait(10)
        clients, self._clients, self._admin = self._clients, [], None
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()

    # looking inside -------------------------------------------------------------------
    def block_files(self, name: str, block_id: int | str | None = None) -> list[Path]:
        """Finalized replica files on a chunkserver's disk (optionally of one block)."""
        pattern = "blk_*" if block_id is None else f"blk_{int(block_id):016x}_*"
        root = self[name].data_dir / "blocks"
        return sorted(Path(p) for p in glob.glob(str(root / "*" / pattern))
                      if not p.endswith(".tmp"))

    def tmp_files(self, name: str) -> list[Path]:
        """Replicas being written right now on a chunkserver."""
        root = self[name].data_dir / "blocks"
        return [Path(p) for p in glob.glob(str(root / "*" / "blk_*.tmp"))]

    def stored_block_ids(self, name: str) -> set[int]:
        return {int(p.name.split("_")[1], 16) for p in self.block_files(name)}

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for d in self.daemons.values():
            parts.append(f"---- {d.name} ({d.addr}, {d.log_path}) ----\n{d.tail(lines)}")
        return "\n".join(parts)


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
