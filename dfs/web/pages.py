"""The status pages of meta (`/`, `/chunkservers`, `/browse`) and of a chunkserver (`/`),
rendered from the daemon's own state on its event loop: no request to anyone, nothing
cached. A directory is shown a page of PAGE entries at a time, so a directory of 100,000
files costs what one page costs; a file's blocks likewise."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from ..errors import BadRequest
from ..meta.namespace import Dir, Link
from . import html as h
from .metrics import STATES, block_health

if TYPE_CHECKING:
    from ..chunk.blockstore import BlockStore
    from ..meta.service import MetaService

PAGE = 1000
STATE_LEVEL = {"live": "ok", "dead": "bad", "decommissioning": "warn", "decommissioned": "warn"}


def overview(svc: "MetaService", started: float) -> str:
    now = time.monotonic()
    servers = list(svc.cluster.servers.values())
    live = [cs for cs in servers if cs.shown_state == "live"]
    capacity, used = sum(cs.capacity for cs in live), sum(cs.used for cs in live)
    health = block_health(svc)
    states = " ".join(
        h.badge(f"{sum(1 for cs in servers if cs.shown_state == s)} {s}", STATE_LEVEL[s])
        if s == "live" or any(cs.shown_state == s for cs in servers)
        else f'<span class=muted>0 {s}</span>' for s in STATES)
    mode = h.badge(f"safe mode ({max(0.0, svc.safe_until - now):.0f}s left)", "warn") \
        if svc.safe_mode else h.badge("serving", "ok")
    if svc.journal.full:
        mode += " " + h.badge("read-only: journal disk full", "bad")
    rep = svc.replicator
    cards = "".join([
        h.card("files", f"{svc.ns.files:,}"), h.card("blocks", f"{svc.ns.blocks:,}"),
        h.card("capacity", h.size(capacity)), h.card("used", h.size(used)),
        h.card("free", h.size(sum(cs.free for cs in live))),
        h.card("up", h.duration(now - started))])
    rows = [
        h.row(["cluster", f"<code>{h.esc(svc.cluster_id)}</code>"]),
        h.row(["meta", f"<code>{h.esc(svc.addr)}</code>, pid {os.getpid()}"]),
        h.row(["state", mode]),
        h.row(["space used (live chunkservers)", f"{h.bar(used, capacity)} "
               f"{h.size(used)} of {h.size(capacity)}"]),
        h.row(["chunkservers", states]),
        h.row(["blocks needing care", " ".join([
            h.count_badge(health["under_replicated"], "under-replicated", "warn"),
            h.count_badge(health["missing"], "missing"),
            h.count_badge(health["corrupt"], "corrupt")])]),
        h.row(["re-replication", f"{len(rep.needy):,} blocks queued, "
               f"{len(rep.inflight):,} copies running"
               + _rate(getattr(rep, "bytes_per_second", None))]),
        h.row(["uploads open", f"{len(svc.uploads):,}"]),
        h.row(["journal", _journal(svc)]),
        h.row(["last checkpoint", f"{h.duration(now - svc.checkpointer.last)} ago"]),
    ]
    body = (f"<h1>Cluster overview</h1><div class=cards>{cards}</div>"
            f"<h2>Status</h2>{h.table(['', ''], rows)}")
    return h.page("overview", body, role="meta", active="/")


def _rate(value: Any) -> str:
    return f", {h.size(value)}/s" if isinstance(value, (int, float)) and value else ""


def _journal(svc: "MetaService") -> str:
    path = getattr(svc.journal, "path", None)
    try:
        size = h.size(os.path.getsize(path)) if path else "in memory"
    except OSError:
        size = "unknown"
    return f"{size}, {getattr(svc.journal, 'count', 0):,} records since the last checkpoint"


def chunkservers(svc: "MetaService") -> str:
    now = time.monotonic()
    servers = sorted(svc.cluster.servers.values(), key=lambda cs: cs.addr)
    sending, receiving = svc.replicator.sending, svc.replicator.receiving
    corrupt: dict[str, int] = {}  # replicas meta knows failed their checksums, per server
    for info in svc.cluster.blocks.values():
        for sid in info.corrupt or ():
            corrupt[sid] = corrupt.get(sid, 0) + 1
    rows = []
    for cs in servers:
        state = cs.shown_state
        level = STATE_LEVEL.get(state, "warn")
        failed = [d["path"] for d in cs.dirs if d["state"] == "failed"]
        dirs = "".join(f" {h.badge('failed data dir ' + p, 'bad')}" for p in failed)
        rows.append(h.row([
            f"<code>{h.esc(cs.addr)}</code>", h.badge(state, level) + dirs,
            f"{h.duration(now - cs.last_heartbeat)} ago", f"{len(cs.blocks):,}",
            f"{h.bar(cs.used, cs.capacity)} {h.size(cs.used)} of {h.size(cs.capacity)}",
            f"{sending.get(cs.id, 0)} out, {receiving.get(cs.id, 0)} in",
            h.count_badge(corrupt.get(cs.id, 0), "corrupt")],
            numeric={3}, cls="" if level == "ok" else level))
    table = h.table(["address", "state", "last heartbeat", "blocks", "used / capacity",
                     "copies in flight", "failed checksums"], rows, numeric={3}) \
        if rows else "<p class=muted>No chunkserver has registered.</p>"
    body = (f"<h1>Chunkservers ({len(servers)})</h1>{table}"
            f"<h2>Space used per server</h2>{_space_svg(servers)}")
    return h.page("chunkservers", body, role="meta", active="/chunkservers")


def _space_svg(servers: list[Any]) -> str:
    """Horizontal bars, one per server: used (filled) against capacity (outline)."""
    if not servers:
        return ""
    width, row_h, label_w = 640, 26, 170
    biggest = max((cs.capacity for cs in servers), default=0) or 1
    parts = []
    for i, cs in enumerate(servers):
        y = i * row_h + 4
        cap_w = (width - label_w - 80) * cs.capacity / biggest
        used_w = cap_w * (cs.used / cs.capacity if cs.capacity else 0)
        colour = "#c2362f" if cs.shown_state == "dead" else "#3d7bd9"
        parts.append(
            f'<text x="0" y="{y + 14}" font-size="12">{h.esc(cs.addr)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{cap_w:.1f}" height="16" fill="#e3e8ef"/>'
            f'<rect x="{label_w}" y="{y}" width="{used_w:.1f}" height="16" fill="{colour}"/>'
            f'<text x="{label_w + cap_w + 6:.1f}" y="{y + 13}" font-size="11">'
            f'{h.esc(h.size(cs.used))}</text>')
    height = len(servers) * row_h + 8
    return (f'<svg role="img" aria-label="space used per chunkserver" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>')


def browse(svc: "MetaService", path: str, after: str) -> str:
    """A directory's page of entries, or a file's blocks and replicas. Raises DFSError."""
    node = svc.ns.lookup(path)
    crumbs = _crumbs(path)
    if isinstance(node, Link):
        raise BadRequest(f"{path} is a symbolic link to {node.target}")
    if not isinstance(node, Dir):
        return _file_page(svc, path, node, crumbs, int(after) if after.isdigit() else 0)
    entries, more = svc.ns.listdir(path, after, PAGE)
    base = "" if path == "/" else path
    rows = []
    for name, child in entries:
        full = f"{base}/{name}"
        if isinstance(child, Dir):
            rows.append(h.row([f'<a href="{_browse_href(full)}">{h.esc(name)}/</a>', "dir",
                               _entries(len(child.children)), "",
                               h.when(child.mtime)], numeric={2}))
        elif isinstance(child, Link):
            rows.append(h.row([f"{h.esc(name)} → {h.esc(child.target)}", "symlink", "", "",
                               h.when(child.mtime)], numeric={2}))
        else:
            rows.append(h.row([f'<a href="{_browse_href(full)}">{h.esc(name)}</a>', "file",
                               h.size(child.size), str(child.replication),
                               h.when(child.mtime)], numeric={2, 3}))
    table = h.table(["name", "type", "size", "replication", "modified"], rows,
                    numeric={2, 3}) if rows else "<p class=muted>Empty directory.</p>"
    pager = ""
    if more:
        nxt = _browse_href(path, entries[-1][0])
        pager = (f'<p class=pager>Showing {len(entries):,} entries. '
                 f'<a href="{nxt}">Next page</a></p>')
    body = f"<h1>{crumbs}</h1>{table}{pager}"
    return h.page(path, body, role="meta", active="/browse", refresh=False)


def _entries(n: int) -> str:
    return f"{n:,} entry" if n == 1 else f"{n:,} entries"


def _file_page(svc: "MetaService", path: str, node: Any, crumbs: str, start: int) -> str:
    """A file's facts and a page of PAGE of its blocks from index `start`."""
    rows = []
    held = node.blocks
    for i, b in enumerate(held[start:start + PAGE], start):
        state, live = svc.cluster.health(b.id)
        level = {"healthy": "ok", "under_replicated": "warn"}.get(state, "bad")
        replicas = ", ".join(f"<code>{h.esc(a)}</code>" for a in live) or \
            h.badge("no live replica", "bad")
        rows.append(h.row([str(i), f"<code>{b.id}</code>", str(b.gen), h.size(b.size),
                           h.badge(state.replace("_", "-"), level), replicas],
                          numeric={0, 3}))
    blocks = h.table(["#", "block", "gen", "size", "health", "live replicas"], rows,
                     numeric={0, 3}) if rows else "<p class=muted>An empty file: no blocks.</p>"
    facts = h.table(["", ""], [
        h.row(["size", f"{h.size(node.size)} ({node.size:,} bytes)"]),
        h.row(["replication", str(node.replication)]),
        h.row(["block size", h.size(node.block_size)]),
        h.row(["modified", h.when(node.mtime)]),
        h.row(["download", f'<a id=download href="/files{quote(path)}" download>'
                           f'{h.esc(path.rsplit("/", 1)[-1])}</a>'])])
    pager = ""
    if len(held) > PAGE:
        shown = f"blocks {start:,}–{start + len(rows) - 1:,} of {len(held):,}" if rows else \
            f"no blocks from {start:,} (the file has {len(held):,})"
        links = [f'<a href="{_browse_href(path, str(at))}">{label}</a>' for at, label in (
            (max(0, start - PAGE) if start else -1, "Previous page"),
            (start + PAGE, "Next page"))
            if 0 <= at < len(held)]
        pager = f'<p class=pager>Showing {shown}. {" ".join(links)}</p>'
    body = f"<h1>{crumbs}</h1>{facts}<h2>Blocks</h2>{blocks}{pager}"
    return h.page(path, body, role="meta", active="/browse", refresh=False)


def _crumbs(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    out = [f'<a href="{_browse_href("/")}">/</a>']
    for i, part in enumerate(parts):
        out.append(f'<a href="{_browse_href("/" + "/".join(parts[:i + 1]))}">'
                   f'{h.esc(part)}</a>')
    return " / ".join(out)


def _browse_href(path: str, after: str = "") -> str:
    query = {"path": path, **({"after": after} if after else {})}
    return h.esc("/browse?" + urlencode(query))


def chunk_overview(store: "BlockStore", addr: str, meta: str, writing: int, copies: int,
                   scrub_passes: int, started: float) -> str:
    capacity, used, free = store.stats()
    rows = [
        h.row(["server id", f"<code>{h.esc(store.server_id)}</code>"]),
        h.row(["address", f"<code>{h.esc(addr)}</code>"]),
        h.row(["reports to meta", f"<code>{h.esc(meta)}</code>"]),
        h.row(["blocks", f"{len(store.index):,}"]),
        h.row(["space", f"{h.bar(used, capacity)} {h.size(used)} of {h.size(capacity)}, "
               f"{h.size(free)} free"]),
        *(h.row([f"data dir <code>{h.esc(str(d['path']))}</code>",
                  f"FAILED: {h.esc(str(d['error']))} ({d['lost']:,} replicas lost)"
                  if d["state"] == "failed" else
                  f"ok, {d['blocks']:,} blocks, {h.size(d['used'])} used"])
          for d in store.dirs()),
        h.row(["pipelines being written", str(writing)]),
        h.row(["copies in flight", str(copies)]),
        h.row(["scrubber", f"{scrub_passes} full passes done"]),
        h.row(["up", h.duration(time.monotonic() - started)]),
    ]
    body = f"<h1>Chunkserver</h1>{h.table(['', ''], rows)}"
    return h.page("chunkserver", body, role="chunkserver", nav=(("/", "Overview"),),
                  active="/")
