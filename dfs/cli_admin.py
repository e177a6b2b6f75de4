"""dfs-cli's commands about the cluster and its space rather than single files: status,
fsck, decommission, du, df and setrep. cli.py parses the command line and calls these.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .cli_transfers import EXIT_ERROR, EXIT_OK, human
from .client.async_client import AsyncClient


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def size_text(n: int, a: argparse.Namespace) -> str:
    return human(n) if getattr(a, "human", False) else str(n)


async def cmd_du(c: AsyncClient, a: argparse.Namespace) -> int:
    rows = await c.du(a.path, summary=a.summary)
    if a.json:
        print_json(rows)
        return EXIT_OK
    for r in rows:
        stored = f"{size_text(r['replicated'], a):>12}  " if a.replicated else ""
        print(f"{size_text(r['size'], a):>12}  {stored}{r['path']}")
    return EXIT_OK


async def cmd_df(c: AsyncClient, a: argparse.Namespace) -> int:
    d = await c.df()
    if a.json:
        print_json(d)
        return EXIT_OK
    use = f"{100 * d['used'] / d['capacity']:.0f}%" if d["capacity"] else "-"
    print(f"{'Filesystem':<24} {'Size':>12} {'Used':>12} {'Available':>12} {'Use%':>5}")
    print(f"{'dfs://' + c.meta_addr:<24} {size_text(d['capacity'], a):>12} "
          f"{size_text(d['used'], a):>12} {size_text(d['free'], a):>12} {use:>5}")
    return EXIT_OK


async def cmd_setrep(c: AsyncClient, a: argparse.Namespace) -> int:
    files = await c.setrep(a.path, a.replication, recursive=a.recursive, wait=a.wait)
    done = "; every block has it" if a.wait else ""
    print(f"replication {a.replication} set on {files} file{'s' * (files != 1)} under "
          f"{a.path}{done}")
    return EXIT_OK


async def cmd_status(c: AsyncClient, a: argparse.Namespace) -> int:
    st = await c.status()
    if a.json:
        print_json(st)
        return EXIT_OK
    live = sum(1 for s in st["chunkservers"] if s["state"] == "live")
    print(f"meta {st['meta']}: {st['files']} files, {st['blocks']} blocks, "
          f"{live}/{len(st['chunkservers'])} chunkservers live")
    ha = st.get("ha")
    if ha:
        others = ", ".join(f"{m['addr']} ({m['role']})" for m in ha.get("metas", [])
                           if m.get("addr") != st["meta"])
        print(f"  HA: this meta is {ha['role']}, term {ha['term']}, leader "
              f"{ha['leader'] or 'none'}" + (f"; also {others}" if others else ""))
    if st.get("safe_mode"):
        print(f"  SAFE MODE: waiting for block reports ({st.get('safe_mode_s', 0):.0f}s left); "
              "no repair or orphan deletion until then")
    if st.get("read_only"):
        print(f"  READ-ONLY: {st.get('read_only_reason') or 'meta takes no changes'}")
    for s in st["chunkservers"]:
        print(f"  {s['addr']:<22} {s['state']:<15} {s['blocks']:>8} blocks  "
              f"{human(s['used']):>10} used of {human(s['capacity']):>10}  "
              f"heartbeat {s['last_heartbeat_s']:.1f}s ago")
        dirs = s.get("dirs") or []
        for d in dirs:
            if d.get("state") == "failed":
                lost = d.get("lost", 0)
                print(f"    FAILED DATA DIR {d['path']}: {d.get('error') or 'failed'} "
                      f"({lost} replicas lost{', re-replicated elsewhere' if lost else ''})")
        if dirs and all(d.get("state") == "failed" for d in dirs):
            print("    every data dir of this chunkserver has failed: it takes no writes")
    return EXIT_OK


async def cmd_fsck(c: AsyncClient, a: argparse.Namespace) -> int:
    report = await c.fsck(a.path)
    sick = report["blocks"] - report["healthy"]
    if a.json:
        print_json(report)
    else:
        print(f"{report['path']}: {report['files']} files, {report['blocks']} blocks: "
              f"{report['healthy']} healthy, {report['under_replicated']} under-replicated, "
              f"{report['missing']} missing, {report['corrupt']} corrupt")
        for p in report["problems"]:
            where = ", ".join(p["replicas"]) or "no live replica"
            print(f"  {p['state']:<17} block {p['block']} of {p['path']} ({where})")
        if report.get("problems_truncated"):
            print("  ... more problems not listed")
        print("HEALTHY" if not sick else "NOT HEALTHY")
    return EXIT_OK if not sick else EXIT_ERROR


async def cmd_decommission(c: AsyncClient, a: argparse.Namespace) -> int:
    r = await c.decommission(a.addr, cancel=a.cancel)
    if a.cancel:
        now = "no chunkserver registered there now" if r["state"] == "unknown" else \
            f"{r['state']}, {r['blocks']} blocks"
        print(f"{r['addr']}: in service again ({now})")
    else:
        print(f"{r['addr']}: {r['state']} ({r['blocks']} blocks to keep elsewhere)")
    return EXIT_OK
