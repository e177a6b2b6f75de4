"""`dfs-demo`: the classic three-process example with real processes, printed step by step.

Starts meta and two chunkservers on free loopback ports in a temporary directory, uploads a
file with `dfs-cli put`, SIGKILLs one chunkserver, downloads with `dfs-cli get` from the
surviving replica, compares SHA-256 digests, and stops everything. Exit 0 only if identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

from . import __version__
from .local_cluster import Cluster


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _step(n: int, text: str) -> None:
    print(f"[{n}] {text}", flush=True)


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
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
