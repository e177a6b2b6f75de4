"""A whole dfs cluster as real local processes on loopback: the one launcher behind dfs-demo,
dfs-bench and the integration tests.

Owns the processes it starts and nothing else. Every daemon is a real `dfsd` (`python -m
dfs.daemon`) on a free loopback port with its own data dir under one base directory, tracked
by PID; its stdout and stderr go to `<base>/<name>.log` (appended across restarts). Each
daemon also asks the kernel to SIGKILL it when the thread that started it goes away
(PR_SET_PDEATHSIG), so not even a runner killed by a timeout leaves stray `dfsd` processes.

    c = Cluster(base, chunkservers=2).start()
    client = c.client()
    client.put_bytes(b"x", "/x")
    c.kill("chunk0")              # SIGKILL by default
    c.restart("chunk0")           # same port, same data dir
    c.flip_byte("chunk1", block_id, 100)
    c.stop_all()                  # SIGKILL everything (graceful=True: SIGTERM first)
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from .client import Client

T = TypeVar("T")

HOST = "127.0.0.1"
DEAD_TIMEOUT = "3s"
HEARTBEAT = "0.5s"
START_TIMEOUT = 15.0  # a daemon must listen within this long (cold imports on a busy box)
LIVE_TIMEOUT = 15.0  # chunkservers must show `live` in status within this long

# Runs before a child program, in the same process (exec keeps the PID): ask the kernel to
# SIGKILL this process when the thread that started it goes away, then become the program.
_PDEATHSIG_EXEC = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


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


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def daemon_command(args: list[str]) -> list[str]:
    """`python -m dfs.daemon ARGS`, behind the parent-death guard when we are on the main
    thread (the kernel ties PDEATHSIG to the starting *thread*, so a daemon started from a
    worker thread would die with that thread)."""
    return guarded([sys.executable, "-m", "dfs.daemon", *args])


def guarded(argv: list[str]) -> list[str]:
    """`argv` (its first element a path), behind the parent-death guard when we are on the
    main thread, so a runner killed by a timeout leaves no stray process behind."""
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]
    return argv


class Daemon:
    """One dfsd process: its role, port, data dir, log file and current Popen."""

    def __init__(self, name: str, role: str, port: int, data_dir: Path, log_path: Path,
                 args: list[str], host: str = HOST, prefix: list[str] | None = None) -> None:
        """host: the address it listens on and is reached at; prefix: argv the command runs
        under (`ip netns exec NS` puts it on a host of its own, see tests' netns.py)."""
        self.name, self.role, self.port, self.host = name, role, port, host
        self.data_dir, self.log_path, self.args = data_dir, log_path, args
        self.prefix = list(prefix or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = 0  # its HTTP side door, 0 when off

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running(), f"{self.name} is already running"
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.args)}\n"
                      .encode())
            log.flush()
            self.proc = subprocess.Popen([*self.prefix, *daemon_command(self.args)],
                                         stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, cwd=self.data_dir.parent)

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"


class Cluster:
    """One meta and `chunkservers` chunkservers (named chunk0, chunk1, ...), all on loopback
    ports with their data under `base`."""

    def __init__(self, base: Path | str, chunkservers: int = 2, *,
                 meta_args: list[str] | tuple[str, ...] = (),
                 chunk_args: list[str] | tuple[str, ...] = (),
                 dead_timeout: str = DEAD_TIMEOUT, heartbeat: str = HEARTBEAT,
                 client_options: dict[str, Any] | None = None, http: bool = False,
                 metas: int = 1, ha: str | None = None,
                 placement: Callable[[str], tuple[str, list[str]]] | None = None) -> None:
        """client_options: keyword arguments for every dfs.Client made here (secret_file=,
        tls_cert=, ... when the cluster runs with them). http: give every daemon its HTTP
        side door on a free port (`Daemon.http_port`); off by default, so clusters side by
        side never fight over dfsd's default HTTP ports. placement: name -> (address,
        argv prefix) for each daemon, to run them on hosts of their own (default: all on
        127.0.0.1, no prefix)."""
        self.placement = placement
        self.http = http
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.heartbeat = heartbeat
        self.chunk_args = list(chunk_args)
        self.client_options = dict(client_options or {})
        self.daemons: dict[str, Daemon] = {}
        self.extra: list[subprocess.Popen[Any]] = []  # other processes tests start (clients)
        self._clients: list[Client] = []
        self._admin: Client | None = None
        # HA (`ha`: an etcd URL): metas named meta0, meta1, ...; `meta` is the first of them.
        ha_args = ["--ha", ha] if ha else []
        self.metas = [self._daemon(f"meta{i}" if ha else "meta", "meta", port, [
            "--dead-timeout", dead_timeout, "--heartbeat-interval", heartbeat, *ha_args,
            *meta_args]) for i, port in enumerate(free_ports(metas if ha else 1))]
        self.meta = self.metas[0]
        for _ in range(chunkservers):
            self.add_chunkserver(start=False)

    # building -------------------------------------------------------------------------
    def _daemon(self, name: str, role: str, port: int, extra: list[str]) -> Daemon:
        data_dir = self.base / name
        http_port = free_ports(1)[0] if self.http else 0
        host, prefix = self.placement(name) if self.placement else (HOST, [])
        args = ["--role", role, "--host", host, "--port", str(port),
                "--data-dir", str(data_dir), "--http-port", str(http_port), *extra]
        d = Daemon(name, role, port, data_dir, self.base / f"{name}.log", args, host, prefix)
        d.http_port = http_port
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
        """The meta address every client and chunkserver is given (with HA, all of them)."""
        return ",".join(m.addr for m in self.metas)

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
        until status shows every one of them live. Stops everything if any step fails."""
        try:
            for m in self.metas:
                m.start()
            for m in self.metas:
                self._wait_listening(m)
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
        while not port_open(d.port, d.host):
            if not d.running():
                code = d.proc.returncode if d.proc else "?"
                raise RuntimeError(f"{d.name} exited with {code} before listening:\n{d.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{d.name} not listening on {d.addr} after "
                                   f"{START_TIMEOUT:g}s:\n{d.tail()}")
            time.sleep(0.02)

    def admin(self) -> "Client":
        """A client kept for the cluster's own polling (status)."""
        if self._admin is None:
            self._admin = self.client()
        return self._admin

    def client(self, timeout: float = 20.0) -> "Client":
        """A new blocking client; closed by stop_all()."""
        from .client import Client
        c = Client(self.meta_addr, timeout=timeout, **self.client_options)
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

    def wait_log(self, name: str, text: str, timeout: float = 10.0, after: int = 0) -> int:
        """Until `text` appears in a daemon's log at or after offset `after` (use
        `log_size` to wait only for new lines); returns where it was found."""
        def found() -> int:
            return self[name].log_text().find(text, after) + 1
        return wait_until(found, timeout, f"{text!r} in {name}'s log") - 1

    def log_size(self, name: str) -> int:
        return len(self[name].log_text())

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

    def stop_all(self, graceful: bool = False) -> None:
        """Stop everything still running and close our clients. SIGKILL at once, or with
        `graceful` SIGTERM first and SIGKILL what has not exited after 10 s. Safe to call
        twice."""
        clients, self._clients, self._admin = self._clients, [], None
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
        for proc in self.extra:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if graceful:
            for d in self.daemons.values():
                d.signal(signal.SIGTERM)
            for d in self.daemons.values():
                if d.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        d.proc.wait(10)
        for d in self.daemons.values():
            d.signal(signal.SIGKILL)
        for proc in self.extra:
            with contextlib.suppress(Exception):
                proc.wait(10)
        for d in self.daemons.values():
            if d.proc is not None:
                with contextlib.suppress(Exception):
                    d.proc.wait(10)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop_all(graceful=True)

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

    def flip_byte(self, name: str, block_id: int | str, offset: int, mask: int = 0x01) -> Path:
        """Rot: flip bits of one byte of a chunkserver's replica file of a block, in place
        (offset into the file: the data, then the CRC table, then the footer)."""
        (path,) = self.block_files(name, block_id)
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ mask]))
        return path

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for d in self.daemons.values():
            parts.append(f"---- {d.name} ({d.addr}, {d.log_path}) ----\n{d.tail(lines)}")
        return "\n".join(parts)
