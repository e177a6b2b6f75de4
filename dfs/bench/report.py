"""The human-readable form of a dfs-bench result: one line per figure with its ratio to the
machine's limit and to the peer from the same run. Pure formatting; the JSON form is the
result dict itself."""

from __future__ import annotations

from typing import Any

# figure key -> (label, unit, limit key or None)
_FIGURES = [
    ("put_MBps", "put", "MB/s", "fsync_write_MBps"),
    ("get_first_MBps", "get to a file, first", "MB/s", "loopback_MBps"),
    ("get_MBps", "get to a file, repeated", "MB/s", "loopback_MBps"),
    ("get_warm_MBps", "get, warm cache, discarded", "MB/s", "loopback_MBps"),
    ("get_warm_net_MBps", "... net of start-up", "MB/s", "loopback_MBps"),
    ("put_ops", "put", "files/s", None),
    ("get_ops", "get", "files/s", None),
    ("create_ops", "create", "ops/s", None),
    ("stat_ops", "stat", "ops/s", None),
    ("rm_ops", "rm", "ops/s", None),
]
_LIMIT_NAMES = {"fsync_write_MBps": "fsync'd local write", "loopback_MBps": "loopback stream"}


def render(r: dict[str, Any]) -> str:
    if r.get("workload") == "tree":
        return _render_tree(r)
    lines = [_title(r)]
    lim = r.get("limits", {})
    peer = r.get("seaweedfs", {})
    for key, label, unit, limit_key in _FIGURES:
        if key not in r:
            continue
        value = r[key]
        line = f"  {label:<28}{value:>10.1f} {unit:<8}"
        if limit_key and lim.get(limit_key):
            line += f"  {100 * value / lim[limit_key]:5.0f}% of {_LIMIT_NAMES[limit_key]}"
        if peer.get(key):
            line += f"  {value / peer[key]:5.2f}x {_peer_name(peer)} ({peer[key]:.1f})"
        lines.append(line)
    if "cli_startup_s" in r:
        lines.append(f"  {'dfs-cli start-up (ls /)':<28}{r['cli_startup_s']:>10.3f} s")
    if "ls_s" in r:
        lines.append(f"  {'ls of ' + str(r['ls_entries']) + ' entries':<28}{r['ls_s']:>10.3f} s")
    for kind, q in r.get("latency", {}).items():
        text = f"  {kind + ' latency':<28}p50 {q['p50_ms']:.2f} ms  p99 {q['p99_ms']:.2f} ms"
        peer_q = peer.get("latency", {}).get(kind)
        if peer_q:
            text += f"   seaweedfs p50 {peer_q['p50_ms']:.2f} ms  p99 {peer_q['p99_ms']:.2f} ms"
        lines.append(text)
    if lim:
        lines.append("  limits: " + ", ".join(
            f"{k.removesuffix('_MBps').replace('_', ' ')} {v:.0f} MB/s" for k, v in lim.items()))
    lines.append("  peak RSS: " + _rss(r.get("rss_mib", {})))
    if peer.get("rss_mib"):
        lines.append("  seaweedfs peak RSS: " + _rss(peer["rss_mib"]))
    if peer.get("skipped"):
        lines.append(f"  seaweedfs: not compared ({peer['skipped']})")
    if r.get("secret") or r.get("tls"):
        lines.append("  with: " + ", ".join(k for k in ("secret", "tls") if r.get(k)))
    lines.append(f"  ({r.get('seconds', 0):.0f} s in all)")
    return "\n".join(lines)


def _render_tree(r: dict[str, Any]) -> str:
    """Per tree: put and get in files/s and MB/s, and the ratio to the peer (the same for both
    units: the same files moved)."""
    peer = r.get("seaweedfs", {})
    lines = [f"dfs-bench tree: dfs-cli put/get --parallel {r['parallel']}, "
             f"R={r['replication']}"]
    trees = {"small": f"{r['files']} files of {r['size']} bytes in nested directories",
             "large": f"{r['large_files']} files of {r['large_size'] / 2**20:.0f} MiB"}
    for name, title in trees.items():
        if name not in r:
            continue
        lines.append(f"  {title}")
        for op in ("put", "get"):
            ours = r[name]
            line = (f"    {op:<6}{ours[op + '_ops']:>10.1f} files/s {ours[op + '_MBps']:>9.1f}"
                    f" MB/s")
            theirs = peer.get(name)
            if theirs:
                line += (f"  {ours[op + '_ops'] / theirs[op + '_ops']:5.2f}x "
                         f"{_peer_name(peer)} ({theirs[op + '_ops']:.1f} files/s, "
                         f"{theirs[op + '_MBps']:.1f} MB/s)")
            lines.append(line)
        lines.append("    client peak RSS: " + _client_rss("dfs-cli", r[name]) + (
            "; " + _client_rss("weed", peer[name]) if peer.get(name) else ""))
    lines.append("  peak RSS: " + _rss(r.get("rss_mib", {})))
    if peer:
        lines.append("  seaweedfs peak RSS: " + _rss(peer.get("rss_mib", {})))
        lines.append("  seaweedfs: weed upload -dir / weed download by file id, one file at "
                     "a time" + (", volume files fsynced after each upload" if peer.get("fsync")
                                 else ", no fsync"))
    lines.append(f"  ({r.get('seconds', 0):.0f} s in all)")
    return "\n".join(lines)


def _client_rss(who: str, figures: dict[str, Any]) -> str:
    rss = figures["client_rss_mib"]
    return f"{who} put {rss['put']:.0f} MiB, get {rss['get']:.0f} MiB"


def _title(r: dict[str, Any]) -> str:
    kind = r.get("workload")
    if kind == "large":
        return f"dfs-bench large: one {r['size'] / 2**20:.0f} MiB file, R={r['replication']}"
    if kind == "small":
        return (f"dfs-bench small: {r['files']} files of {r['size']} bytes, "
                f"{r['concurrency']} clients, R={r['replication']}")
    return f"dfs-bench meta: {r.get('ops')} ops, {r.get('concurrency')} clients"


def _peer_name(peer: dict[str, Any]) -> str:
    return "seaweedfs" + (" -fsync" if peer.get("fsync") else "")


def _rss(rss: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items()) or "not measured"
