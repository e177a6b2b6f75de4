"""What meta shows: stat entries, listing pages, fsck reports and the cluster status, built
from the namespace and the block map. Read-only and pure: nothing here changes state or does
I/O, and every shape is the one docs/PROTOCOL.md documents (and `dfs-cli ... --json` prints).
"""

from __future__ import annotations

from typing import Any

import msgpack

from .. import config
from ..errors import TooLarge
from ..net.security import Security
from .blocks import Block
from .cluster import Cluster
from .namespace import Dir, File, Link, Node, walk

# A reply must always fit in one frame: pages and problem lists stop at half a header.
_BUDGET = config.MAX_HEADER // 2
# The block entries of one `stat` reply stop here; what else the reply holds (a path of at
# most 16 KiB in UTF-8, a few numbers) fits in the rest of the frame.
_BLOCKS_BUDGET = config.MAX_HEADER - 64 * 1024
# The most a block entry takes in msgpack without its replica addresses: the keys, an id
# string of up to 20 digits, gen and size of up to 9 bytes each, a digest and a read token
# ([expiry, 16-byte mac]). Each address adds its bytes and a header of at most 3.
_ENTRY_COST = 110


def entry(path: str, node: Node, cluster: Cluster, security: Security,
          blocks: bool, page: tuple[int, int] | None = None) -> dict[str, Any]:
    """A `stat` entry; with `blocks`, each block's live replicas (and read tokens).

    `page` (start, limit): a client that pages block lists gets blocks from index `start`,
    at most `limit` of them and no more than fit in a frame, with `block_count` (the file's),
    `blocks_more` and `first_block` (the id of block 0: a file's block list never changes once
    published and ids are never reused, so a reader going through the pages checks it still
    reads the version it opened). Without `page`, every block, or TooLarge when they would
    not fit in one reply (docs/PROTOCOL.md, `stat`)."""
    if isinstance(node, Dir):
        return _with_attrs({"path": path, "type": "dir", "size": 0, "mtime": node.mtime,
                            "entries": len(node.children)}, node)
    if isinstance(node, Link):
        return _with_attrs({"path": path, "type": "symlink", "target": node.target,
                            "size": len(node.target.encode()), "mtime": node.mtime}, node)
    out: dict[str, Any] = _with_attrs(
        {"path": path, "type": "file", "size": node.size, "replication": node.replication,
         "block_size": node.block_size, "mtime": node.mtime}, node)
    if not blocks:
        return out
    held = node.blocks
    if page is None:
        out["blocks"] = _block_entries(held, cluster, security, None)
        _refuse_oversized(out, len(held))
        return out
    start, limit = page
    out["blocks"] = entries = _block_entries(held[start:start + limit], cluster, security,
                                             _BLOCKS_BUDGET)
    out["block_count"] = len(held)
    out["blocks_more"] = start + len(entries) < len(held)
    if held:
        out["first_block"] = str(held[0].id)
    return out


def _block_entries(held: list[Block], cluster: Cluster, security: Security,
                   budget: int | None) -> list[dict[str, Any]]:
    """The stat entries of `held`, in order; with `budget`, only the first ones whose largest
    encoding fits in it (at least one)."""
    out: list[dict[str, Any]] = []
    costs: dict[str, int] = {}  # per address: the same few recur in every entry
    signing = security.authenticating
    for b in held:
        replicas = cluster.live_replicas(b.id)
        if budget is not None:
            budget -= _ENTRY_COST
            for a in replicas:
                cost = costs.get(a)
                if cost is None:
                    cost = costs[a] = len(a.encode()) + 3
                budget -= cost
            if budget < 0 and out:
                break
        e: dict[str, Any] = {"id": str(b.id), "gen": b.gen, "size": b.size,
                             "replicas": replicas}
        info = cluster.blocks.get(b.id)
        if info is not None and info.digest is not None:
            e["digest"] = info.digest  # of the block's CRC table (see checksum.py)
        if signing:  # read tokens for the chunkservers
            e["token"] = security.issue(b.id, b.gen, "r")
        out.append(e)
    return out


def _refuse_oversized(out: dict[str, Any], count: int) -> None:
    """A stat that does not page gets every block or, when they would not fit in one reply,
    TooLarge naming the way out. Measured exactly, so a client of before paging still reads
    every file it could read then; a few blocks always fit (even 16 replicas each, every
    address 260 bytes long, are 70 KiB), so the usual small file is not measured at all."""
    if count <= 16:
        return
    if len(msgpack.packb(out)) <= config.MAX_HEADER - 1024:  # room for the reply's id
        return
    raise TooLarge(f"{out['path']} has {count:,} blocks, more than one stat reply holds: "
                   "ask for them a page at a time with block_start (and block_limit)")


def _with_attrs(out: dict[str, Any], node: Node) -> dict[str, Any]:
    """mode, uid and gid of an entry, those that were ever set."""
    if node.attrs is not None:
        for key, value in zip(("mode", "uid", "gid"), node.attrs, strict=True):
            if value is not None:
                out[key] = value
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


def ls_columns(path: str, names: list[str], nodes: list[Node], more: bool) -> dict[str, Any]:
    """A page of a listing (`names` and their `nodes`, which it may cut short) as columns of
    plain values: names relative to the directory, no repeated keys. About 4x more entries
    per frame than a list of maps, and far less to build and encode: a 100,000-entry `ls`
    is a few pages, not 35. Built column by column, a comprehension each, with no object
    per entry that the cyclic GC would track (ints, floats and strings it does not)."""
    # A name, a bool, four numbers of <= 9 bytes each: cut the page where that outgrows
    # the budget (a name's bytes are its characters when all are ASCII, the usual case).
    joined = "".join(names)
    cost = (len(joined) if joined.isascii() else len(joined.encode())) + 40 * len(names)
    if cost > _BUDGET:
        cost = 0
        for i, name in enumerate(names):
            cost += len(name.encode()) + 40
            if cost > _BUDGET and i:
                del names[i:], nodes[i:]
                more = True
                break
    out: dict[str, Any] = {"path": path, "names": names, "more": more,
                           "mtime": [n.mtime for n in nodes]}
    if all(type(n) is File for n in nodes):  # the common page: files only
        out["dir"] = [False] * len(nodes)
        out["size"] = [n.size for n in nodes]  # type: ignore[union-attr]
        kinds = [n.kind for n in nodes]  # type: ignore[union-attr]
        out["replication"] = [k[0] for k in kinds]
        out["block_size"] = [k[1] for k in kinds]
        return out
    is_dir: list[bool] = []
    size: list[int] = []
    replication: list[int] = []
    block_size: list[int] = []
    links: dict[str, str] = {}
    for name, node in zip(names, nodes, strict=True):
        if isinstance(node, Dir):
            is_dir.append(True)
            size.append(len(node.children))  # for a directory: how many entries
            replication.append(0)
            block_size.append(0)
        elif isinstance(node, Link):  # replication 0 marks it; its target is in `links`
            is_dir.append(False)
            size.append(len(node.target.encode()))
            replication.append(0)
            block_size.append(0)
            links[name] = node.target
        else:
            is_dir.append(False)
            size.append(node.size)
            replication.append(node.replication)
            block_size.append(node.block_size)
    out.update({"dir": is_dir, "size": size, "replication": replication,
                "block_size": block_size})
    if links:
        out["links"] = links
    return out


def files_under(node: Node, path: str) -> list[tuple[str, File]]:
    """Every file at or under `path` (whose node is `node`), with its full path."""
    if isinstance(node, File):
        return [(path, node)]
    if isinstance(node, Link):
        return []
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
             "last_heartbeat_s": round(now - cs.last_heartbeat, 3), "dirs": cs.dirs,
             "failed_dirs": sum(1 for d in cs.dirs if d["state"] == "failed")}
            for cs in sorted(cluster.servers.values(), key=lambda c: c.addr)]


def block_replication(root: Dir, changed: list[File], cluster: Cluster) -> dict[int, int]:
    """The replication each block of `changed` files now wants: its file's, or for a block
    shared by copies, the highest among every file using it (found by one walk of the
    namespace, paid only when a changed file shares blocks)."""
    wanted: dict[int, int] = {}
    shared: set[int] = set()
    for f in changed:
        for b in f.blocks:
            info = cluster.blocks.get(b.id)
            if info is not None and info.refs > 1:
                shared.add(b.id)
                wanted[b.id] = 0
            else:
                wanted[b.id] = f.replication
    if shared:
        for _path, f in files_under(root, "/"):
            for b in f.blocks:
                if b.id in shared and f.replication > wanted[b.id]:
                    wanted[b.id] = f.replication
    return wanted


def _usage(node: Node, cluster: Cluster) -> tuple[int, int, int, int]:
    """(logical bytes, bytes stored on live chunkservers, files, directories) at or under a
    node. Logical bytes count every file in full, copies too; stored bytes count each block
    once however many files share it, times its live replicas."""
    size = stored = files = dirs = 0
    seen: set[int] = set()
    nodes = [n for _, n in walk(node)] if isinstance(node, Dir) else [node]
    servers = cluster.servers
    for n in nodes:
        if isinstance(n, Dir):
            dirs += 1
            continue
        if isinstance(n, Link):
            continue
        files += 1
        size += n.size
        for b in n.blocks:
            if b.id in seen:
                continue
            seen.add(b.id)
            info = cluster.blocks.get(b.id)
            if info is not None:
                live = sum(1 for sid in info.replicas
                           if sid in servers and servers[sid].state == "live")
                stored += b.size * live
    return size, stored, files, dirs


def du(path: str, node: Node, cluster: Cluster) -> dict[str, Any]:
    """`dfs-cli du -s`: the totals of one path."""
    size, stored, files, dirs = _usage(node, cluster)
    return {"path": path, "type": _kind(node), "size": size,
            "replicated": stored, "files": files, "dirs": dirs}


def _kind(node: Node) -> str:
    return "dir" if isinstance(node, Dir) else "symlink" if isinstance(node, Link) else "file"


def du_page(base: str, entries: list[tuple[str, Node]], more: bool,
            cluster: Cluster) -> dict[str, Any]:
    """`dfs-cli du`: a page of a directory's entries, each with its totals."""
    out: list[dict[str, Any]] = []
    budget = _BUDGET
    for name, node in entries:
        budget -= len(base) + len(name.encode()) + 120
        if budget < 0 and out:
            more = True
            break
        out.append(du(f"{base}/{name}", node, cluster))
    return {"entries": out, "more": more}
