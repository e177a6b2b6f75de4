"""`dfs-bench fsspec`: what dfs:// (dfs.fsspec.DFSFileSystem) costs next to dfs's own client,
in one run against one cluster, so every figure is a ratio measured under the same conditions.

1. Whole files, A against B, both sides moving the same bytes to the same cluster:
   `dfs-cli put` against `fs.put_file`, `dfs.Client.get_bytes` against `fs.cat_file` (the file
   into memory), `dfs-cli get` against `fs.get_file` (the file to a local file). dfs-cli runs
   as its own process and is timed as a whole process, start-up included, as everywhere in
   dfs-bench (its start-up alone is measured too, so a reader can tell it apart).
   The two reads into memory each run in a fresh process of their own (this module run as a
   script, see `read_worker`), timed inside it, after one untimed read there. A 1 GiB read
   into memory touches 2 GiB of fresh memory (1 MiB segments, then the joined result), and
   on this VM the page faults are most of its time. With both clients in one process, each
   on its own thread and so its own malloc arena, one arena may happen to keep ~0.5 GiB of
   freed segments while the other gives its memory back and faults it in again: about
   20-40% of the time of a read, landing on either side depending on what the process did
   before (measured: with MALLOC_ARENA_MAX=1 both sides fault the same). A process of its
   own is also how each is used.
2. One parquet column: `pyarrow.parquet.read_table(path, filesystem=fs, columns=["c3"])` of a
   file of ten random numeric columns, with the bytes the filesystem's client received from
   chunkservers set against the column's compressed size in the file's own metadata: a
   column read should move that column, not the file. The same read of the local file is
   timed for comparison. pyarrow is a test dependency, not a runtime one: without it this
   part reports why it was skipped.
3. Random 4 KiB ranges of the large file: `fs.cat_file(path, start, start + 4096)` one at a
   time (each timed: p50, p99), then the same ranges in one `fs.cat_ranges` call.

Fairness: the machine is noisy, so each whole-file figure is the median of --runs
repetitions, with the A/B order alternating from run to run, and the page cache's dirty data
is written back (sync(2), untimed) before every timed step, as in dfs.bench.tree. The large
file is read once, untimed, before the timed reads: chunkservers write around the page cache,
so the first read of a block comes from disk, and would otherwise land on whichever side
went first. Every byte read back is checked against its source; a figure counts only if
the data came back whole. Every put goes to its own path and nothing is
removed until the end, so no deletion runs inside a later timing.

Owns the local inputs, the remote files under /bench-fsspec-PID and the order of the timed
steps; starts no server (dfs.bench.cli does) and judges no figure: the targets are in
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import crc32c
from fsspec.asyn import sync

from .. import config
from ..client import Client
from ..fsspec import DFSFileSystem
from .measure import latency_ms, random_file, run_timed, same_file

COLUMNS = 10  # numeric columns of the parquet file: c0..c4 int64, c5..c9 float64
COLUMN = "c3"  # the one read back
ROW_GROUP_BYTES = 50 * config.MiB  # four row groups in the default 200 MiB file
RANGE = 4 * config.KiB

Cli = Callable[..., list[str]]
Log = Callable[[str], None]


def _mbps(size: int, seconds: float) -> float:
    return round(size / seconds / 1e6, 1)


def _timed(op: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one step, after writing back dirty pages untimed."""
    os.sync()
    t0 = time.perf_counter()
    out = op()
    return time.perf_counter() - t0, out


def _timed_process(cmd: list[str]) -> float:
    """Wall seconds of a command run as its own process, after writing back dirty pages."""
    os.sync()
    return run_timed(cmd)[0]


def _crc_of_file(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            crc = crc32c.crc32c(chunk, crc)
    return crc


async def _bytes_read(fs: DFSFileSystem) -> int:
    return fs.client().bytes_read


def bytes_read(fs: DFSFileSystem) -> int:
    """Block bytes fs's client (the one on fsspec's IO loop, which every sync call of fs
    uses) has received from chunkservers so far."""
    return int(sync(fs.loop, _bytes_read, fs))


class AB:
    """Two ways to do the same thing, timed `runs` times each in alternating order; the
    median of each side, its MB/s and the ratio fsspec/reference (above 1: fsspec faster)."""

    def __init__(self, reference: str, fsspec: str) -> None:
        self.names = (reference, fsspec)
        self.seconds: tuple[list[float], list[float]] = ([], [])

    def run(self, runs: int, reference: Callable[[int], float],
            fsspec: Callable[[int], float], log: Log) -> None:
        """Each side `runs` times, op(i) returning seconds; run i starts with the reference
        when i is even, with fsspec when odd."""
        sides = [(0, reference), (1, fsspec)]
        for i in range(runs):
            for side, op in sides if i % 2 == 0 else sides[::-1]:
                log(f"{self.names[side]} ({i + 1} of {runs})")
                self.seconds[side].append(op(i))

    def figures(self, size: int) -> dict[str, Any]:
        ref, ours = (statistics.median(s) for s in self.seconds)
        return {"reference": self.names[0], "fsspec": self.names[1],
                "reference_MBps": _mbps(size, ref), "fsspec_MBps": _mbps(size, ours),
                "ratio": round(ref / ours, 3),
                "reference_s": [round(s, 3) for s in self.seconds[0]],
                "fsspec_s": [round(s, 3) for s in self.seconds[1]]}


def read_worker(side: str, addr: str, path: str, options: dict[str, Any], crc: int) -> float:
    """Read `path` into memory once untimed, then once timed, with dfs.Client.get_bytes or
    fs.cat_file (`side`), in this process; the timed read's seconds. RuntimeError if the bytes
    are not the file's (its CRC32C is `crc`)."""
    reader: Client | DFSFileSystem = Client(addr, **options) if side == "Client.get_bytes" \
        else DFSFileSystem(addr, skip_instance_cache=True, **options)
    read_all = reader.get_bytes if isinstance(reader, Client) else reader.cat_file
    try:
        for _ in range(2):
            seconds, data = _timed(lambda: read_all(path))
            if crc32c.crc32c(data) != crc:
                raise RuntimeError(f"{side}: the file read back into memory differs from the "
                                   f"one put")
            del data
        return seconds
    finally:
        reader.close()


def whole_files(fs: DFSFileSystem, addr: str, options: dict[str, Any], cli: Cli, src: str,
                remote: str, runs: int, log: Log) -> tuple[dict[str, Any], str]:
    """Part 1. Returns the figures and the path of a file put by dfs-cli (for part 3)."""
    size = os.path.getsize(src)
    want = _crc_of_file(src)
    put, read, get = (AB("dfs-cli put", "fs.put_file"), AB("Client.get_bytes", "fs.cat_file"),
                      AB("dfs-cli get", "fs.get_file"))
    big = f"{remote}/cli-0.bin"

    def in_memory(side: str) -> float:
        args = json.dumps([side, addr, big, options, want])
        out = run_timed([sys.executable, "-m", __name__, args])[2]
        return float(out)

    def to_file(download: Callable[[str], Any], name: str) -> float:
        out = os.path.join(os.path.dirname(src), name)
        seconds, _ = _timed(lambda: download(out))
        if not same_file(src, out):
            raise RuntimeError(f"{name}: the file read back from dfs differs from the one put")
        os.unlink(out)
        return seconds

    put.run(runs, lambda i: _timed_process(cli("put", src, f"{remote}/cli-{i}.bin")),
            lambda i: _timed(lambda: fs.put_file(src, f"{remote}/fs-{i}.bin"))[0], log)
    log("reading the file once, untimed, so that every timed read finds it in the "
        "chunkservers' page cache")
    fs.get_file(big, os.devnull)
    read.run(runs, lambda _: in_memory(read.names[0]), lambda _: in_memory(read.names[1]), log)
    get.run(runs, lambda _: to_file(lambda out: run_timed(cli("get", big, out)), "cli.out"),
            lambda _: to_file(lambda out: fs.get_file(big, out), "fs.out"), log)
    startup = statistics.median(run_timed(cli("ls", "/"))[0] for _ in range(runs))
    return {"put": put.figures(size), "read": read.figures(size), "get": get.figures(size),
            "cli_startup_s": round(startup, 3)}, big


def make_parquet(path: str, size: int) -> dict[str, Any]:
    """A parquet file of about `size` bytes: COLUMNS columns of random (incompressible)
    numbers, in even row groups of about ROW_GROUP_BYTES, without dictionary pages (random
    values never repeat: a dictionary page would only be written, then abandoned, adding
    about 1 MiB to each column chunk). Its shape and the compressed size of COLUMN, summed
    over the row groups, from the file's own metadata."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    rows = max(1, size // (8 * COLUMNS))
    arrays = {}
    for c in range(COLUMNS):
        if c < COLUMNS // 2:
            arrays[f"c{c}"] = pa.Array.from_buffers(pa.int64(), rows,
                                                    [None, pa.py_buffer(os.urandom(8 * rows))])
        else:
            arrays[f"c{c}"] = pc.random(rows, initializer="system")
    groups = -(-size // ROW_GROUP_BYTES)
    pq.write_table(pa.table(arrays), path, row_group_size=-(-rows // groups),
                   use_dictionary=False)
    meta = pq.ParquetFile(path).metadata
    index = meta.schema.names.index(COLUMN)
    column = sum(meta.row_group(g).column(index).total_compressed_size
                 for g in range(meta.num_row_groups))
    return {"file_bytes": os.path.getsize(path), "rows": meta.num_rows,
            "row_groups": meta.num_row_groups, "columns": COLUMNS, "column": COLUMN,
            "column_bytes": column}


def parquet(fs: DFSFileSystem, local: str, remote: str, size: int, runs: int,
            log: Log) -> dict[str, Any]:
    """Part 2: one column of a parquet file through dfs:// and from the local file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return {"skipped": "pyarrow is not installed (a test dependency of dfs, not a runtime "
                           "one: pip install pyarrow)"}
    log(f"parquet: writing {size / config.MiB:.0f} MiB of {COLUMNS} random columns")
    figures = make_parquet(local, size)
    fs.put_file(local, remote)
    want = pq.read_table(local, columns=[COLUMN])
    dfs_s: list[float] = []
    local_s: list[float] = []
    moved: set[int] = set()

    def through_dfs() -> None:
        before = bytes_read(fs)
        seconds, table = _timed(lambda: pq.read_table(remote, filesystem=fs, columns=[COLUMN]))
        moved.add(bytes_read(fs) - before)
        if not table.equals(want):
            raise RuntimeError(f"parquet: column {COLUMN} read through dfs:// differs")
        dfs_s.append(seconds)

    def from_disk() -> None:
        local_s.append(_timed(lambda: pq.read_table(local, columns=[COLUMN]))[0])

    for i in range(runs):
        log(f"parquet: read_table(columns=[{COLUMN!r}]) through dfs:// and locally ({i + 1})")
        for op in (through_dfs, from_disk) if i % 2 == 0 else (from_disk, through_dfs):
            op()
    bytes_moved = max(moved)
    figures.update({"read_s": round(statistics.median(dfs_s), 4),
                    "local_read_s": round(statistics.median(local_s), 4),
                    "bytes_moved": bytes_moved,
                    "moved_ratio": round(bytes_moved / figures["column_bytes"], 3),
                    "read_all_s": [round(s, 4) for s in dfs_s],
                    "local_read_all_s": [round(s, 4) for s in local_s]})
    return figures


def ranges(fs: DFSFileSystem, path: str, size: int, count: int, log: Log) -> dict[str, Any]:
    """Part 3: `count` random RANGE-byte ranges of `path`, one cat_file at a time, then all of
    them in one cat_ranges call. The offsets are random but seeded: the same in every run."""
    rng = random.Random(0)
    starts = [rng.randrange(0, max(1, size - RANGE)) for _ in range(count)]
    ends = [min(s + RANGE, size) for s in starts]
    log(f"ranges: {count} fs.cat_file of {RANGE} bytes, one at a time")
    os.sync()
    seconds: list[float] = []
    singles: list[bytes] = []
    before = bytes_read(fs)
    for start, end in zip(starts, ends, strict=True):
        t0 = time.perf_counter()
        singles.append(fs.cat_file(path, start, end))
        seconds.append(time.perf_counter() - t0)
    moved_single = bytes_read(fs) - before
    log(f"ranges: the same {count} in one fs.cat_ranges")
    before = bytes_read(fs)
    batch_s, batch = _timed(lambda: fs.cat_ranges([path] * count, starts, ends))
    moved_batch = bytes_read(fs) - before
    if batch != singles or any(len(b) != e - s for b, s, e in zip(batch, starts, ends,
                                                                   strict=True)):
        raise RuntimeError("ranges: cat_ranges and cat_file returned different bytes")
    return {"count": count, "size": RANGE, "cat_file": latency_ms(seconds),
            "cat_file_total_s": round(sum(seconds), 3),
            "cat_ranges_s": round(batch_s, 3),
            "bytes_moved": {"cat_file": moved_single, "cat_ranges": moved_batch}}


def run(addr: str, cli: Cli, client_options: dict[str, Any], base: str, args: Any,
        log: Log) -> dict[str, Any]:
    """All three parts against the cluster at `addr`; removes what it put, even on failure
    (it matters with --meta: that cluster outlives the run)."""
    src = os.path.join(base, "fsspec.src")
    log(f"writing a {args.size / config.MiB:.0f} MiB random source file")
    random_file(src, args.size)
    remote = f"/bench-fsspec-{os.getpid()}"
    fs = DFSFileSystem(addr, skip_instance_cache=True, **client_options)
    result: dict[str, Any] = {"workload": "fsspec", "size": args.size, "runs": args.runs,
                              "parquet_size": args.parquet_size,
                              "replication": config.DEFAULT_REPLICATION}
    try:
        fs.makedirs(remote, exist_ok=True)
        result["whole"], big = whole_files(fs, addr, client_options, cli, src, remote,
                                           args.runs, log)
        result["parquet"] = parquet(fs, os.path.join(base, "fsspec.parquet"),
                                    f"{remote}/t.parquet", args.parquet_size, args.runs, log)
        result["ranges"] = ranges(fs, big, args.size, args.ranges, log)
    finally:
        try:
            fs.rm(remote, recursive=True)
        except FileNotFoundError:
            pass
        fs.close()
        for name in ("fsspec.src", "fsspec.parquet"):
            try:
                os.unlink(os.path.join(base, name))
            except FileNotFoundError:
                pass
    return result


def render(r: dict[str, Any]) -> str:
    """The human-readable form: one line per A/B pair, the parquet read, the ranges."""
    lines = [f"dfs-bench fsspec: one {r['size'] / 2**20:.0f} MiB file, R={r['replication']}, "
             f"median of {r['runs']} runs (A/B order alternating); ratio: fsspec's speed over "
             f"the other's"]
    for kind, ab in r["whole"].items():
        if not isinstance(ab, dict):
            continue
        lines.append(f"  {kind:<6}{ab['reference']:<18}{ab['reference_MBps']:>8.1f} MB/s   "
                     f"{ab['fsspec']:<14}{ab['fsspec_MBps']:>8.1f} MB/s   {ab['ratio']:.2f}x")
    lines.append(f"  (dfs-cli figures are whole processes; its start-up alone, `dfs-cli ls /`, "
                 f"took {r['whole']['cli_startup_s']:.2f} s)")
    pq = r["parquet"]
    if "skipped" in pq:
        lines.append(f"  parquet: skipped: {pq['skipped']}")
    else:
        lines.append(f"  parquet: {pq['file_bytes'] / 1e6:.0f} MB, {pq['rows']} rows, "
                     f"{pq['row_groups']} row groups, {pq['columns']} columns")
        lines.append(f"    read_table(columns=[{pq['column']!r}]) through dfs:// "
                     f"{pq['read_s']:.3f} s, from the local file {pq['local_read_s']:.3f} s")
        lines.append(f"    moved {pq['bytes_moved'] / 1e6:.1f} MB from chunkservers for a "
                     f"{pq['column_bytes'] / 1e6:.1f} MB column: {pq['moved_ratio']:.2f}x")
    rg = r["ranges"]
    lines.append(f"  {rg['count']} random {rg['size']}-byte ranges: fs.cat_file one at a time "
                 f"p50 {rg['cat_file']['p50_ms']:.2f} ms, p99 {rg['cat_file']['p99_ms']:.2f} ms "
                 f"({rg['cat_file_total_s']:.2f} s in all); one fs.cat_ranges "
                 f"{rg['cat_ranges_s']:.3f} s")
    lines.append(f"  ({r.get('seconds', 0):.0f} s in all)")
    return "\n".join(lines)


if __name__ == "__main__":  # a read_worker, as whole_files runs it: one JSON list of arguments
    print(read_worker(*json.loads(sys.argv[1])))
