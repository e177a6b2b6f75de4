"""How long meta takes to start with N files, and how much memory it holds per file.

Builds a namespace of N one-block files (1,000 directories), writes it as meta's checkpoint in
a fresh data dir, then starts a real `dfsd --role meta` on it and times until it listens
(listening means ready). Memory: the meta process's resident set once it listens, minus that of
a meta started on an empty data dir, divided by N.

    python3 bench/meta_startup.py [N]        (default 1,000,000)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from dfs.meta import checkpoint
from dfs.meta.namespace import Block, File, Namespace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_meta(data_dir: str) -> tuple[float, int]:
    """Start dfsd --role meta on data_dir: (seconds until it listens, its RSS in bytes)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dfs.daemon", "--role", "meta", "--host",
                             "127.0.0.1", "--port", str(port), "--data-dir", data_dir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"meta exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        return elapsed, rss
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    base = tempfile.mkdtemp(prefix="dfs-meta-startup-")
    try:
        ns = Namespace()
        for i in range(n):
            ns.publish(f"/data/d{i % 1000}/f{i}",
                       File([Block((1 << 32) | i, 1, 4096)], 2, 64 << 20, 1.0))
        data = checkpoint.snapshot(ns, 0, 0, 1)
        del ns
        full, empty = os.path.join(base, "full"), os.path.join(base, "empty")
        os.makedirs(full)
        os.makedirs(empty)
        checkpoint.write(os.path.join(full, "checkpoint"), data)
        _, rss_empty = start_meta(empty)
        elapsed, rss_full = start_meta(full)
        print(f"meta start with {n} files ({len(data) / 1e6:.0f} MB checkpoint): "
              f"{elapsed:.1f} s to listening; RSS {rss_full / 2**20:.0f} MiB "
              f"(empty meta {rss_empty / 2**20:.0f} MiB): "
              f"{(rss_full - rss_empty) / n:.0f} bytes per file")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
