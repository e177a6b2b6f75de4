"""`dfs-bench repair`: how fast the cluster heals after losing a chunkserver, and what that
costs a client reading meanwhile.

A cluster of meta and three chunkservers (R=2, data on disk, fsync on, the default 3 s
heartbeat, a short dead timeout so the run does not wait 30 s) gets enough files of 1 GiB (or
half of `--size`, if less) that
the chunkserver holding the most block bytes holds at least `--size`, plus one foreground
file. Then:

1. the foreground file is read (`dfs-cli get FILE /dev/null`) once untimed and `--runs` times
   timed: its unloaded speed on three servers;
2. the fullest chunkserver is SIGKILLed. A thread polls meta's `status` every POLL seconds
   (its `repair` object and the victim's state) while another reads the foreground file again
   and again, until meta reports nothing needy and no copy in flight, and `fsck` is clean;
3. the foreground file is read `--runs` times more: its unloaded speed on the two survivors,
   the same servers the reads during repair used. That is the baseline of the ratio.

Reported: when meta declared the victim dead and when repair started, from the kill and from
the dead timeout (the earliest moment meta may declare it, counted from the victim's last
heartbeat); repair's rate, the bytes copied over the time from its first copy to fsck-clean;
the foreground reads that ran wholly inside the repair against the baseline; peak RSS.
Times are taken by polling, so "started" is at most POLL late (and never early).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from typing import Any

from .. import config
from ..local_cluster import Cluster, wait_until
from .measure import peaks, random_file, run_timed

POLL = 0.05  # seconds between status polls
FILE_SIZE = config.GiB  # each background file, at most
HEARTBEAT = "3s"  # dfsd's default: copies must not wait for heartbeats to start
DONE_TIMEOUT = 900.0  # give up on a repair that has not finished by then


def _log(text: str) -> None:
    import sys
    print(f"dfs-bench: {text}", file=sys.stderr, flush=True)


def _stored(cluster: Cluster, name: str) -> int:
    return sum(p.stat().st_size for p in cluster.block_files(name))


def run(args: argparse.Namespace, base: str, cli: Any, security: list[str],
        client_options: dict[str, Any]) -> dict[str, Any]:
    """cli(addr, *args) -> the argv of a dfs-cli command against the cluster."""
    if args.dead_timeout <= config.parse_duration(HEARTBEAT):
        raise RuntimeError(f"--dead-timeout must be longer than the heartbeat ({HEARTBEAT}): "
                           "live servers would be declared dead between two beats")
    chunk_args = list(security)
    if args.replication_rate is not None:
        chunk_args += ["--replication-rate", str(args.replication_rate)]
    cluster = Cluster(os.path.join(base, "dfs"), chunkservers=3, meta_args=security,
                      chunk_args=chunk_args, dead_timeout=f"{args.dead_timeout:g}s",
                      heartbeat=HEARTBEAT, client_options=client_options)
    cluster.start()
    try:
        return _measure(args, base, cluster, cli)
    finally:
        cluster.stop_all()


def _measure(args: argparse.Namespace, base: str, cluster: Cluster,
             cli: Any) -> dict[str, Any]:
    addr = cluster.meta_addr
    src, fg_src = os.path.join(base, "bg.src"), os.path.join(base, "fg.src")
    random_file(src, min(FILE_SIZE, max(args.size // 2, config.MiB)))
    random_file(fg_src, args.foreground_size)
    run_timed(cli(addr, "put", fg_src, "/repair/foreground"))
    os.unlink(fg_src)
    files = 0
    names = [d.name for d in cluster.chunkservers]
    while max(_stored(cluster, n) for n in names) < args.size:
        _log(f"put background file {files + 1} (fullest chunkserver holds "
             f"{max(_stored(cluster, n) for n in names) / config.MiB:.0f} MiB)")
        run_timed(cli(addr, "put", src, f"/repair/bg{files}"))
        files += 1
    os.unlink(src)
    victim = max(names, key=lambda n: _stored(cluster, n))
    held = _stored(cluster, victim)
    survivors = [n for n in names if n != victim]

    def read_fg() -> float:
        return run_timed(cli(addr, "get", "/repair/foreground", os.devnull))[0]

    # Into the page cache: every replica of the foreground file, not only the ones a get
    # reads, so reads during repair that move to a surviving replica find it warm as well.
    fg_blocks = [b["id"] for b in cluster.admin().stat("/repair/foreground")["blocks"]]
    for name in names:
        for block_id in fg_blocks:
            for path in cluster.block_files(name, block_id):
                with open(path, "rb") as f:
                    while f.read(config.MiB):
                        pass
    before = [read_fg() for _ in range(args.runs)]

    admin = cluster.admin()
    wait_until(lambda: _quiet(admin.status()["repair"]), 60,
               "repair to be idle before the kill")
    start = admin.status()["repair"]
    _log(f"SIGKILL {victim}, which holds {held / config.MiB:.0f} MiB of blocks")
    samples: list[tuple[float, str, dict[str, Any]]] = []
    during: list[tuple[float, float]] = []  # (start, end) of each foreground read
    done = threading.Event()
    rss: dict[str, float] = {}
    pids = {"meta": cluster.meta.pid, **{n: cluster[n].pid for n in survivors}}

    def foreground() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            read_fg()
            during.append((t0, time.monotonic()))

    with peaks(pids, rss):
        t_kill = time.monotonic()
        cluster.kill(victim)
        reader = threading.Thread(target=foreground, daemon=True)
        reader.start()
        try:
            t_done = _wait_repaired(admin, cluster.by_addr, victim, samples,
                                    start["copied_bytes"])
        finally:
            done.set()
            reader.join()
    _log("repair done; checking with fsck")
    run_timed(cli(addr, "fsck", "/"))  # exit 1 (an error here) unless every block is healthy
    after = [read_fg() for _ in range(args.runs)]

    t_dead = next(t for t, state, _ in samples if state == "dead")
    t_start = next(t for t, _, r in samples if _ordered(r) > _ordered(start))
    copied = samples[-1][2]["copied_bytes"] - start["copied_bytes"]
    inside = [e - s for s, e in during if s >= t_start and e <= t_done]
    size = args.foreground_size
    base_mbps = size / statistics.median(after) / 1e6
    out: dict[str, Any] = {
        "workload": "repair", "victim": victim, "victim_bytes": held,
        "background_files": files,
        "foreground_size": size, "dead_timeout_s": args.dead_timeout,
        "heartbeat_s": config.parse_duration(HEARTBEAT),
        "replication_rate": args.replication_rate,
        "dead_after_kill_s": round(t_dead - t_kill, 2),
        "start_after_dead_s": round(t_start - t_dead, 2),
        "start_after_kill_s": round(t_start - t_kill, 2),
        "repair_s": round(t_done - t_start, 2),
        "copied_bytes": copied,
        "repair_MBps": round(copied / max(t_done - t_start, 1e-3) / 1e6, 1),
        "copies": {k: v - start["copies"][k] for k, v in samples[-1][2]["copies"].items()},
        "foreground": {
            "before_MBps": round(size / statistics.median(before) / 1e6, 1),
            "after_MBps": round(base_mbps, 1),
            "during_reads": len(inside),
            "during_MBps": round(size / statistics.median(inside) / 1e6, 1) if inside else None,
            "during_worst_MBps": round(size / max(inside) / 1e6, 1) if inside else None,
        },
        "rss_mib": rss}
    if inside:
        out["foreground"]["during_vs_after"] = round(
            out["foreground"]["during_MBps"] / base_mbps, 2)
    return out


def _quiet(r: dict[str, Any]) -> bool:
    return not r["needy"] and not r["copying"]


def _ordered(r: dict[str, Any]) -> int:
    """Copies meta has ordered since it started: those ended plus those in flight."""
    return sum(r["copies"].values()) + r["copying"]


def _wait_repaired(admin: Any, by_addr: Any, victim: str,
                   samples: list[tuple[float, str, dict[str, Any]]], start_copied: int) -> float:
    """Poll meta until the victim is dead and repair has copied something and has nothing
    left (needy and copying both 0); returns that moment."""
    deadline = time.monotonic() + DONE_TIMEOUT
    while time.monotonic() < deadline:
        status = admin.status()
        now = time.monotonic()
        state = next((cs["state"] for cs in status["chunkservers"]
                      if by_addr(cs["addr"]).name == victim), "?")
        r = status["repair"]
        samples.append((now, state, r))
        if state == "dead" and r["copied_bytes"] > start_copied and _quiet(r):
            return now
        time.sleep(POLL)
    raise RuntimeError(f"repair did not finish within {DONE_TIMEOUT:.0f} s")


def render(r: dict[str, Any]) -> str:
    fg = r["foreground"]
    rate = "dfsd's default" if r["replication_rate"] is None else \
        config.format_size(r["replication_rate"]) + "/s" if r["replication_rate"] else "none"
    lines = [
        f"dfs-bench repair: SIGKILL of 1 of 3 chunkservers holding "
        f"{r['victim_bytes'] / config.MiB:.0f} MiB of blocks, R=2, dead timeout "
        f"{r['dead_timeout_s']:g} s, heartbeat {r['heartbeat_s']:g} s, rate cap {rate}",
        f"  declared dead {r['dead_after_kill_s']:.2f} s after the kill; first copy "
        f"{r['start_after_dead_s']:.2f} s after that",
        f"  repair: {r['copied_bytes'] / config.MiB:.0f} MiB in {r['repair_s']:.1f} s = "
        f"{r['repair_MBps']:.1f} MB/s until nothing was left to copy (fsck clean); "
        f"copies {r['copies']}",
        f"  foreground get of {r['foreground_size'] / config.MiB:.0f} MiB to /dev/null: "
        f"{fg['before_MBps']:.0f} MB/s on 3 servers before, {fg['after_MBps']:.0f} MB/s on "
        f"the 2 survivors after"]
    if fg["during_reads"]:
        lines.append(f"  ... during repair ({fg['during_reads']} reads): median "
                     f"{fg['during_MBps']:.0f} MB/s, worst {fg['during_worst_MBps']:.0f} MB/s"
                     f" = {fg['during_vs_after']:.2f} of after")
    else:
        lines.append("  ... no foreground read ran wholly inside the repair")
    lines.append("  peak RSS during repair: " + ", ".join(
        f"{k} {v:.0f} MiB" for k, v in r["rss_mib"].items()))
    lines.append(f"  ({r.get('seconds', 0):.0f} s in all)")
    return "\n".join(lines)
