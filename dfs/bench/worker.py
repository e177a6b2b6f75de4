"""The client side of the `small` and `meta` workloads, run by dfs-bench as its own process
(`python -m dfs.bench.worker KIND META_ADDR JSON_ARGS`) so its peak RSS and CPU are the client's
alone. Prints one JSON object: rates per second and the latency of every operation.

Concurrency is N independent `AsyncClient`s in one uvloop process, each with its own
connections, each working through its share of the files in order: N clients, not one client
with N requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from ..client import AsyncClient
from .measure import latency_ms

Op = Callable[[AsyncClient, int], Awaitable[object]]


async def _phase(clients: list[AsyncClient], count: int, op: Op) -> tuple[float, list[float]]:
    """Run op(client, i) for i in range(count) over the clients: (ops/s, per-op seconds)."""
    durations: list[float] = []

    async def run(k: int) -> None:
        client = clients[k]
        for i in range(k, count, len(clients)):
            t0 = time.perf_counter()
            await op(client, i)
            durations.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(run(k) for k in range(len(clients))))
    elapsed = time.perf_counter() - t0
    return count / elapsed, durations


async def small(clients: list[AsyncClient], files: int, size: int) -> dict[str, Any]:
    """Put `files` files of `size` random bytes, then get each back and compare."""
    payload = os.urandom(size)

    async def put(c: AsyncClient, i: int) -> None:
        await c.put_bytes(payload, f"/bench/small/f{i}")

    async def get(c: AsyncClient, i: int) -> None:
        if await c.get_bytes(f"/bench/small/f{i}") != payload:
            raise RuntimeError(f"/bench/small/f{i} came back different")

    put_ops, put_lat = await _phase(clients, files, put)
    get_ops, get_lat = await _phase(clients, files, get)
    await clients[0].rm("/bench/small", recursive=True)
    return {"put_ops": round(put_ops, 1), "get_ops": round(get_ops, 1),
            "latency": {"put": latency_ms(put_lat), "get": latency_ms(get_lat)}}


async def meta(clients: list[AsyncClient], ops: int, ls_entries: int) -> dict[str, Any]:
    """Create `ops` empty files in one directory, top it up to `ls_entries` entries, list it,
    stat every file, then remove every file: all journaled operations are fsync'd."""
    empty = b""

    async def create(c: AsyncClient, i: int) -> None:
        await c.put_bytes(empty, f"/bench/meta/f{i}")

    async def stat(c: AsyncClient, i: int) -> None:
        info = await c.stat(f"/bench/meta/f{i}")
        if info["size"] != 0:
            raise RuntimeError(f"/bench/meta/f{i} has size {info['size']}")

    async def rm(c: AsyncClient, i: int) -> None:
        await c.rm(f"/bench/meta/f{i}")

    await clients[0].mkdir("/bench/meta", parents=True)
    create_ops, create_lat = await _phase(clients, ops, create)
    extra = max(0, ls_entries - ops)
    if extra:
        async def top_up(c: AsyncClient, i: int) -> None:
            await c.put_bytes(empty, f"/bench/meta/f{ops + i}")
        await _phase(clients, extra, top_up)
    t0 = time.perf_counter()
    listed = await clients[0].ls("/bench/meta")
    ls_s = time.perf_counter() - t0
    if len(listed) != ops + extra:
        raise RuntimeError(f"ls listed {len(listed)} entries, expected {ops + extra}")
    stat_ops, stat_lat = await _phase(clients, ops, stat)
    rm_ops, rm_lat = await _phase(clients, ops, rm)
    await clients[0].rm("/bench/meta", recursive=True)
    return {"create_ops": round(create_ops, 1), "stat_ops": round(stat_ops, 1),
            "rm_ops": round(rm_ops, 1), "ls_entries": len(listed), "ls_s": round(ls_s, 6),
            "latency": {"create": latency_ms(create_lat), "stat": latency_ms(stat_lat),
                        "rm": latency_ms(rm_lat)}}


async def _main(kind: str, meta_addr: str, args: dict[str, Any]) -> dict[str, Any]:
    clients = [AsyncClient(meta_addr, secret_file=args.get("secret_file"),
                           tls_cert=args.get("tls_cert"), tls_key=args.get("tls_key"),
                           tls_ca=args.get("tls_ca"))
               for _ in range(int(args["concurrency"]))]
    try:
        if kind == "small":
            return await small(clients, int(args["files"]), int(args["size"]))
        if kind == "meta":
            return await meta(clients, int(args["ops"]), int(args["ls_entries"]))
        raise SystemExit(f"unknown workload {kind!r}")
    finally:
        for c in clients:
            await c.close()


def main() -> None:
    kind, meta_addr, raw = sys.argv[1:4]
    print(json.dumps(uvloop.run(_main(kind, meta_addr, json.loads(raw)))))


if __name__ == "__main__":
    main()
