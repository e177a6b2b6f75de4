"""A history of every operation clients ran through a fault, and the checker over it.

In the manner of Jepsen: clients (`history_worker.py`, each a process of its own, on a host
of its own) record every operation with its outcome, `ok` (acknowledged), `fail` (refused
with a clear error) or `unknown` (no answer: it may or may not have happened). After the
faults heal, `check()` replays each writer's operations and compares them with what the
cluster holds:

- every acknowledged put reads back with exactly its bytes (unless the same writer later
  removed, renamed or replaced it); an operation that was not acknowledged may or may not
  have happened, but nothing else may show up;
- an acknowledged rm or mv is never undone;
- no reader ever saw a file that was not wholly one put's bytes (no mix of two versions, no
  torn or corrupt read): every body says which put wrote it and how long it is, so a read
  proves itself.

Each writer works on its own paths, one operation at a time, so its own order is the order
the cluster saw; readers read anyone's files.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT_DIR = "/hist"  # every worker's files are under ROOT_DIR/<worker>/
MAGIC = b"DFSH"
_HEAD = struct.Struct(">4sH")  # magic, length of the put's id


def body(put_id: str, size: int) -> bytes:
    """The bytes of one put: a header naming it, then a stream only it produces."""
    ident = put_id.encode()
    head = _HEAD.pack(MAGIC, len(ident)) + ident + struct.pack(">Q", size)
    out = bytearray(head)
    seed = hashlib.sha256(ident).digest()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:max(size, len(head))])


def identify(data: bytes) -> str:
    """The id of the put that wrote `data`; ValueError when `data` is not exactly one
    put's bytes (torn, mixed, corrupt)."""
    if len(data) < _HEAD.size:
        raise ValueError(f"{len(data)} bytes: too short for a header")
    magic, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("no header")
    ident = data[_HEAD.size:_HEAD.size + n].decode(errors="replace")
    (size,) = struct.unpack_from(">Q", data, _HEAD.size + n)
    if len(data) != max(size, _HEAD.size + n + 8):
        raise ValueError(f"{ident}: {len(data)} bytes, the put wrote {size}")
    if data != body(ident, size):
        raise ValueError(f"{ident}: bytes differ from what the put wrote")
    return ident


@dataclass
class Op:
    worker: str
    kind: str  # put, get, rm, mv
    path: str
    outcome: str  # ok, fail, unknown
    start: float
    end: float
    put_id: str = ""  # put: the id its bytes carry; get: the id read
    dst: str = ""  # mv
    size: int = 0
    error: str = ""

    @classmethod
    def load(cls, line: str) -> "Op":
        return cls(**json.loads(line))

    def dump(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def load(paths: Iterable[Path]) -> list[Op]:
    """Every op of these history files (a worker killed mid-line leaves a torn last line,
    which is skipped: that op is still in flight, so it may or may not have happened)."""
    ops = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            try:
                ops.append(Op.load(line))
            except (ValueError, TypeError):
                continue
    return ops


@dataclass
class Report:
    tried: Counter[str] = field(default_factory=Counter)
    acked: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # acked put gone or wrong
    undone: list[str] = field(default_factory=list)  # acked rm/mv undone
    phantoms: list[str] = field(default_factory=list)  # a file no writer could have left
    bad_reads: list[str] = field(default_factory=list)  # a reader saw a torn or mixed file
    errors: Counter[str] = field(default_factory=Counter)  # clear errors, by first words

    @property
    def violations(self) -> list[str]:
        return self.lost + self.undone + self.phantoms + self.bad_reads

    def summary(self) -> str:
        kinds = sorted(self.tried)
        parts = [f"{k}: {self.tried[k]} tried, {self.acked[k]} ok, {self.failed[k]} failed, "
                 f"{self.unknown[k]} unknown" for k in kinds]
        lost = len(self.lost) + len(self.undone)
        return ("; ".join(parts) + f"; lost {lost}, phantom {len(self.phantoms)}, "
                f"bad reads {len(self.bad_reads)}")

    def as_dict(self) -> dict[str, Any]:
        return {"tried": dict(self.tried), "acked": dict(self.acked),
                "failed": dict(self.failed), "unknown": dict(self.unknown),
                "lost": len(self.lost) + len(self.undone), "phantoms": len(self.phantoms),
                "bad_reads": len(self.bad_reads), "errors": dict(self.errors)}


def expected_states(ops: list[Op]) -> dict[str, set[str | None]]:
    """path -> the states it may be in now (a put's id, or None for absent), replaying each
    writer's operations in its own order."""
    possible: dict[str, set[str | None]] = {}
    for op in sorted((o for o in ops if o.kind != "get"), key=lambda o: (o.worker, o.start)):
        here = possible.setdefault(op.path, {None})
        if op.kind == "put":
            if op.outcome == "ok":
                possible[op.path] = {op.put_id}
            else:
                here.add(op.put_id)
        elif op.kind == "rm":
            if op.outcome == "ok":
                possible[op.path] = {None}
            else:
                here.add(None)
        elif op.kind == "mv":
            dst = possible.setdefault(op.dst, {None})
            if op.outcome == "ok":
                possible[op.dst] = set(here)
                possible[op.path] = {None}
            else:
                dst |= here
                here.add(None)
    return possible


def check(ops: list[Op], actual: dict[str, str | None]) -> Report:
    """Compare the history with `actual` (every path under the writers' directories ->
    the id of the put whose bytes it holds, or "torn: ..." when they are no put's)."""
    r = Report()
    for op in ops:
        r.tried[op.kind] += 1
        {"ok": r.acked, "fail": r.failed}.get(op.outcome, r.unknown)[op.kind] += 1
        if op.outcome == "fail":
            r.errors[" ".join(op.error.split()[:6])] += 1
        if op.kind == "get" and op.outcome == "ok" and op.put_id.startswith("torn"):
            r.bad_reads.append(f"{op.worker} read {op.path}: {op.put_id}")
    possible = expected_states(ops)
    for path, states in sorted(possible.items()):
        have = actual.get(path)
        if have in states:
            continue
        acked = [o for o in ops if o.outcome == "ok" and path in (o.path, o.dst)]
        if have is None:
            r.lost.append(f"{path}: gone, expected one of {sorted(map(str, states))}")
        elif None in states and len(states) == 1 and acked:
            r.undone.append(f"{path}: holds {have}, an acknowledged rm/mv removed it")
        else:
            r.lost.append(f"{path}: holds {have}, expected one of {sorted(map(str, states))}")
    for path in sorted(set(actual) - set(possible)):
        r.phantoms.append(f"{path}: holds {actual[path]}, which no writer put there")
    return r
