"""What meta shows: stat entries, listing pages, fsck reports and the cluster status, built
from the namespace and the block map. Read-only and pure: nothing here changes state or does
I/O, and every shape is the one docs/PROTOCOL.md documents (and `dfs-cli ... --json` prints).
"""

from __future__ import annotations

from typing import Any

from .. import config
from ..net.security import Security
from .cluster import Cluster
from .namespace import Dir, File, Node, walk

# A reply must always fit in one frame: pages and problem lists stop at half a header.
_BUDGET = config.MAX_HEADER // 2


def entry(path: str, node: Node, cluster: Cluster, security: Security,
          blocks: bool) -> dict[str, Any]:
    """A `stat` entry; with `blocks`, each block's live replicas (and read tokens)."""
    if isinstance(node, Dir):
        return {"path": path, "type": "dir", "size": 0, "mtime": node.mtime,
                "entries": len(node.children)}
    out: dict[str, Any] = {"path": path, "type": "file", "size": node.size,
                           "replication": node.replication, "block_size": node.block_size,
                           "mtime": node.mtime}
    if blocks:
        out["blocks"] = [{"id": str(b.id), "gen": b.gen, "size": b.size,
                          "replicas": cluster.live_replicas(b.id)}
                         for b in node.blocks]
        if security.authenticating:  # read tokens for the chunkservers
            for b, e in zip(node.blocks, out["blocks"], strict=True):
                e["token"] = security.issue(b.id, b.gen, "r")
    return out


def ls_rows(path: str, entries: list[tuple[str, Node]], more: bool, cluster: Cluster,
            security: Security) -> dict[str, Any]:
    """A page of a listing as a list of stat entries (without blocks)."""
    base = "" if path == "/" else path
    out: list[dict[str, Any]] = []
    budget = _BUDGET
    for name, node in entries:
        budget -= len(base) + len(name.encode()) + 160
        if budget < 0 and out:
            more = True
            break
        out.append(entry(f"{base}/{name}", node, cluster, security, False))
    return {"entries": out, "more": more}


def ls_columns(path: str, entries: list[tuple[str, Node]], more: bool) -> dict[str, Any]:
    """A page of a listing as columns of plain values: names relative to the directory,
    no repeated keys. About 4x more entries per frame than a list of maps, and far less
    to build and encode: a 100,000-entry `ls` is a few pages, not 35."""
    names: list[str] = []
    is_dir: list[bool] = []
    size: list[int] = []
    mtime: list[float] = []
    replication: list[int] = []
    block_size: list[int] = []
    budget = _BUDGET
    for name, node in entries:
        budget -= len(name.encode()) + 40  # a name, a bool, four numbers of <= 9 bytes
        if budget < 0 and names:
            more = True
            break
        names.append(name)
        mtime.append(node.mtime)
        if isinstance(node, Dir):
            is_dir.append(True)
            size.append(len(node.children))  # for a directory: how many entries
            replication.append(0)
            block_size.append(0)
        else:
            is_dir.append(False)
            size.append(node.size)
            replication.append(node.replication)
            block_size.append(node.block_size)
    return {"path": path, "names": names, "dir": is_dir, "size": size, "mtime": mtime,
            "replication": replication, "block_size": block_size, "more": more}


def files_under(node: Node, path: str) -> list[tuple[str, File]]:
    """Every file at or under `path` (whose node is `node`), with its full path."""
    if isinstance(node, File):
        return [(path, node)]
    return [(p, n) for p, n in walk(node, "" if path == "/" else path) if isinstance(n, File)]


def fsck(path: str, node: Node, cluster: Cluster) -> dict[str, Any]:
    """Health of every block under a path (the shape of `dfs-cli fsck --json`). The counts
    are always exact; the problem list stops when the reply would outgrow a frame."""
    counts = {"healthy": 0, "under_replicated": 0, "missing": 0, "corrupt": 0}
    problems: list[dict[str, Any]] = []
    budget = _BUDGET
    files = blocks = 0
    for fpath, f in sorted(files_under(node, path), key=lambda t: t[0]):
        files += 1
        for b in f.blocks:
            blocks += 1
            state, live = cluster.health(b.id)
            counts[state] += 1
            if state != "healthy":
                budget -= len(fpath) + 64 + sum(len(a) + 4 for a in live)
                if budget > 0:
                    problems.append({"path": fpath, "block": str(b.id), "state": state,
                                     "replicas": live})
    out: dict[str, Any] = {"path": path, "files": files, "blocks": blocks, **counts,
                           "problems": problems}
    if sum(counts.values()) - counts["healthy"] > len(problems):
        out["problems_truncated"] = True
    return out


def chunkservers(cluster: Cluster, now: float) -> list[dict[str, Any]]:
    """One status row per chunkserver, by address."""
    return [{"id": cs.id, "addr": cs.addr, "state": cs.shown_state, "blocks": len(cs.blocks),
             "used": cs.used, "capacity": cs.capacity, "free": cs.free,
             "last_heartbeat_s": round(now - cs.last_heartbeat, 3)}
            for cs in sorted(cluster.servers.values(), key=lambda c: c.addr)]
