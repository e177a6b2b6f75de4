"""One client of the fault tests, run as a process of its own (on a host of its own: `ip
netns exec`), appending every operation and its outcome to a history file (history.py).

    history_worker.py --meta A --out FILE --name w0 --mode write|read --stop FILE [...]

A writer puts new files under /hist/<name>/, and now and then replaces, reads back, removes
or renames one of its own; a reader reads anyone's files under /hist and checks that each
is wholly one put's bytes. Both run until the stop file exists (or --ops are done). Each
line is flushed as soon as the operation ends, so a worker killed mid-run loses at most the
operation it was in.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from history import ROOT_DIR as ROOT  # noqa: E402
from history import Op, body, identify  # noqa: E402

import dfs  # noqa: E402


def classify(exc: BaseException) -> tuple[str, str]:
    """A refusal with an error code is `fail`; a timeout or a lost connection is `unknown`
    (the operation may have happened)."""
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    if isinstance(exc, (dfs.Timeout, dfs.Unavailable)) or not isinstance(exc, dfs.DFSError):
        return "unknown", msg
    return "fail", msg


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--meta", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--mode", choices=("write", "read"), default="write")
    p.add_argument("--stop", required=True, help="stop once this file exists")
    p.add_argument("--ops", type=int, default=0, help="stop after this many (0: no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-size", type=int, default=300_000)
    p.add_argument("--block-size", type=int, default=128 * 1024)
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rng = random.Random(f"{a.seed}:{a.name}")
    client = dfs.Client(a.meta, timeout=a.timeout)
    mine: list[str] = []
    n = 0
    with open(a.out, "a", buffering=1) as out:
        while not os.path.exists(a.stop) and (not a.ops or n < a.ops):
            n += 1
            op = (write_step if a.mode == "write" else read_step)(client, a, rng, mine, n)
            out.write(op.dump() + "\n")
            if op.outcome != "ok":
                time.sleep(0.05)  # a refused op: do not spin against a down service
    client.close()
    return 0


def write_step(client: dfs.Client, a: argparse.Namespace, rng: random.Random,
               mine: list[str], n: int) -> Op:
    roll = rng.random()
    if not mine or roll < 0.6:
        kind, path = "put", f"{ROOT}/{a.name}/f{n:06d}"
    elif roll < 0.7:
        kind, path = "put", rng.choice(mine)  # replace: readers may race it
    elif roll < 0.8:
        kind, path = "get", rng.choice(mine)
    elif roll < 0.9:
        kind, path = "rm", rng.choice(mine)
    else:
        kind, path = "mv", rng.choice(mine)
    op = Op(a.name, kind, path, "ok", time.time(), 0.0)
    try:
        if kind == "put":
            op.size = rng.choice((rng.randint(1, 4096), rng.randint(1, a.max_size)))
            op.put_id = f"{a.name}:{n}"
            client.put_bytes(body(op.put_id, op.size), path, block_size=a.block_size)
            if path not in mine:
                mine.append(path)
        elif kind == "get":
            read(client, op)
        elif kind == "rm":
            mine.remove(path)
            client.rm(path)
        else:
            mine.remove(path)
            op.dst = f"{ROOT}/{a.name}/m{n:06d}"
            mine.append(op.dst)
            client.mv(path, op.dst)
    except Exception as exc:  # noqa: BLE001 - every outcome goes into the history
        op.outcome, op.error = classify(exc)
    op.end = time.time()
    return op


def read(client: dfs.Client, op: Op) -> None:
    data = client.get_bytes(op.path)
    op.size = len(data)
    try:
        op.put_id = identify(data)
    except ValueError as exc:
        op.put_id = f"torn: {exc}"


def read_step(client: dfs.Client, a: argparse.Namespace, rng: random.Random,
              mine: list[str], n: int) -> Op:
    if not mine or n % 20 == 0:
        try:
            mine[:] = [f["path"] for d in dirs(client) for f in client.ls(d)
                       if f.get("type") == "file"]
        except Exception:  # noqa: BLE001 - a listing is a means, not an op we check
            pass
    op = Op(a.name, "get", rng.choice(mine) if mine else f"{ROOT}/none", "ok", time.time(), 0.0)
    try:
        read(client, op)
    except dfs.NotFound as exc:
        op.outcome, op.error = "fail", f"NotFound: {exc}"  # removed or renamed meanwhile
    except Exception as exc:  # noqa: BLE001
        op.outcome, op.error = classify(exc)
    op.end = time.time()
    return op


def dirs(client: dfs.Client) -> list[str]:
    return [e["path"] for e in client.ls(ROOT) if e.get("type") == "dir"]


if __name__ == "__main__":
    sys.exit(main())
