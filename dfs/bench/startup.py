"""`dfs-bench startup`: how long meta takes to start with N files, and how much memory it
holds per file.

Builds a namespace of N one-block files (in 1,000 directories), writes it as meta's checkpoint
in a fresh data dir, then starts a real `dfsd --role meta` on it through the local cluster
launcher and times it until it listens (listening means ready). Memory: the meta process's
resident set once it listens, less that of a meta started on an empty data dir, over N.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..local_cluster import Cluster
from ..meta import checkpoint
from ..meta.namespace import Block, File, Namespace


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _start_meta(base: str) -> tuple[float, int]:
    """Start meta on the data dir base/meta: (seconds until it listens, its RSS in bytes)."""
    cluster = Cluster(base, chunkservers=0)
    try:
        t0 = time.perf_counter()
        cluster.restart("meta")
        elapsed = time.perf_counter() - t0
        return elapsed, _rss_bytes(cluster.meta.pid)
    finally:
        cluster.stop_all()


def run(files: int, base: str) -> dict[str, Any]:
    ns = Namespace()
    for i in range(files):
        ns.publish(f"/data/d{i % 1000}/f{i}",
                   File([Block((1 << 32) | i, 1, 4096)], 2, 64 << 20, 1.0))
    # Every block with a digest, as a cluster written by this version records them.
    data = checkpoint.snapshot(ns, 0, 0, 1, lambda block_id: 0x9E3779B9 ^ (block_id & 0xFFFF))
    del ns
    full, empty = os.path.join(base, "full"), os.path.join(base, "empty")
    os.makedirs(os.path.join(full, "meta"))
    checkpoint.write(os.path.join(full, "meta", "checkpoint"), data)
    _, rss_empty = _start_meta(empty)
    elapsed, rss_full = _start_meta(full)
    return {"workload": "startup", "files": files, "checkpoint_bytes": len(data),
            "start_s": round(elapsed, 2), "rss_mib": {"meta": round(rss_full / 2**20, 1),
                                                      "meta_empty": round(rss_empty / 2**20, 1)},
            "rss_bytes_per_file": round((rss_full - rss_empty) / files)}


def render(r: dict[str, Any]) -> str:
    return (f"meta start with {r['files']} files ({r['checkpoint_bytes'] / 1e6:.0f} MB "
            f"checkpoint): {r['start_s']:.1f} s to listening; RSS {r['rss_mib']['meta']:.0f} "
            f"MiB (empty meta {r['rss_mib']['meta_empty']:.0f} MiB): "
            f"{r['rss_bytes_per_file']} bytes per file")
