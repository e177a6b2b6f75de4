"""dfs-cli's commands that move bytes: put, get, sync, cat, tail, and their progress bars
and summaries. Each is a thin layer over AsyncClient (one file) or client/tree.py and
client/treesync.py (many files); cli.py parses the command line and calls these.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .client.async_client import AsyncClient
from .client.tree import Tally, TreeResult, has_magic, shown
from .errors import NotFound

EXIT_OK, EXIT_ERROR, EXIT_NOT_FOUND = 0, 1, 2


class UsageError(Exception):
    pass


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _tqdm(total: int | None, desc: str) -> Any:
    """A tqdm bar on stderr when it is a terminal; None otherwise (nothing is drawn)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, file=sys.stderr)


class Progress:
    """One file's bar (bytes, rate, ETA) on a terminal; otherwise nothing at all."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.bar = _tqdm(total, desc)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TreeBar(Tally):
    """One bar for a many-file transfer: files done / total, bytes, rate and ETA."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.bar = _tqdm(0, verb)
        self.total = self.done = self.failed = 0

    def planned(self, files: int, nbytes: int) -> None:
        self.total += files
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + nbytes
            self._describe()

    def moved(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def finished(self, path: str, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        if self.bar is not None:
            self._describe()

    def _describe(self) -> None:
        failed = f", {self.failed} failed" if self.failed else ""
        self.bar.set_description(f"{self.verb} {self.done}/{self.total} files{failed}",
                                 refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summarise(verb: str, r: TreeResult) -> int:
    """The one-line summary (stdout), each failure on stderr, and the exit status: 0, or 2
    when every failure was a missing source, else 1."""
    rate = r.bytes / r.seconds if r.seconds > 0 else 0.0
    parts = [f"{verb}: {r.files} files, {human(r.bytes)} in {r.seconds:.2f}s "
             f"({human(rate)}/s)"]
    if r.deleted:
        parts.append(f"{r.deleted} deleted")
    if r.unchanged:
        parts.append(f"{r.unchanged} unchanged")
    parts.append(f"{len(r.failed)} failed")
    print(", ".join(parts), flush=True)
    for path, why in r.failed:
        print(f"dfs-cli: error: {shown(path)}: {why}", file=sys.stderr)
    if r.ok:
        return EXIT_OK
    return EXIT_NOT_FOUND if r.not_found_only else EXIT_ERROR


# commands ---------------------------------------------------------------------------------
async def cmd_put(c: AsyncClient, a: argparse.Namespace) -> int:
    sources: list[str] = a.sources
    if len(sources) == 1 and (sources[0] == "-" or os.path.isfile(sources[0])):
        return await _put_one(c, a, sources[0])
    if "-" in sources:
        raise UsageError("- (stdin) can only be put alone")
    bar = TreeBar("put")
    try:
        r = await c.put_tree(sources, a.remote, parallel=a.parallel,
                             replication=a.replication, block_size=a.block_size,
                             preserve=a.preserve, tally=bar)
    finally:
        bar.close()
    return summarise("put", r)


async def _put_one(c: AsyncClient, a: argparse.Namespace, local: str) -> int:
    remote = a.remote
    if local != "-" and remote.endswith("/"):
        remote += os.path.basename(local)
    elif local != "-":
        try:
            if (await c.stat(remote, blocks=False))["type"] == "dir":
                remote = remote.rstrip("/") + "/" + os.path.basename(local)
        except NotFound:
            pass
    if local == "-":
        bar = Progress(None, remote)
        try:
            result = await c.put_stream(sys.stdin.buffer, remote, replication=a.replication,
                                        block_size=a.block_size, progress=bar.update)
        finally:
            bar.close()
    else:
        try:
            f = open(local, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read {local}: {exc.strerror}") from None
        with f:
            st = os.fstat(f.fileno())
            bar = Progress(st.st_size, remote)
            try:
                result = await c.put_stream(f, remote, replication=a.replication,
                                            block_size=a.block_size, progress=bar.update,
                                            mtime=st.st_mtime if a.preserve else None)
            finally:
                bar.close()
    under = result.get("under_replicated") or []
    if under:
        short = result.get("under_replicated_count", len(under))
        print(f"dfs-cli: warning: {result['path']} is under-replicated: {short} of "
              f"{result['blocks']} blocks have fewer than {a.replication} live replicas",
              file=sys.stderr)
    return EXIT_OK


async def cmd_get(c: AsyncClient, a: argparse.Namespace) -> int:
    sources: list[str] = a.sources
    if len(sources) == 1 and not has_magic(sources[0]):
        if a.local == "-":
            return await _get_stream(c, sources[0])
        if (await c.stat(sources[0], blocks=False))["type"] == "file":
            return await _get_one(c, a, sources[0])
    elif a.local == "-":
        raise UsageError("- (stdout) takes one file; use cat")
    bar = TreeBar("get")
    try:
        r = await c.get_tree(sources, a.local, parallel=a.parallel, preserve=a.preserve,
                             tally=bar)
    finally:
        bar.close()
    return summarise("get", r)


async def _get_stream(c: AsyncClient, remote: str) -> int:
    bar = Progress(None, remote)
    try:
        await c.get_stream(remote, sys.stdout.buffer, bar.update, bar.set_total)
        sys.stdout.buffer.flush()
    finally:
        bar.close()
    return EXIT_OK


async def _get_one(c: AsyncClient, a: argparse.Namespace, remote: str) -> int:
    local = a.local
    if os.path.isdir(local):
        local = os.path.join(local, os.path.basename(remote.rstrip("/")))
    bar = Progress(None, remote)
    try:
        try:
            await c.get(remote, local, progress=bar.update, on_open=bar.set_total)
            if a.preserve:
                os.utime(local, (mtime := (await c.stat(remote, blocks=False))["mtime"],
                                 mtime))
        except OSError as exc:
            raise UsageError(f"cannot write {local}: {exc.strerror}") from None
    finally:
        bar.close()
    return EXIT_OK


async def cmd_sync(c: AsyncClient, a: argparse.Namespace) -> int:
    bar = TreeBar("sync") if not a.dry_run else None
    try:
        r = await c.sync(a.src, a.dst, delete=a.delete, dry_run=a.dry_run,
                         checksum=a.checksum, parallel=a.parallel,
                         replication=a.replication, block_size=a.block_size, tally=bar)
    finally:
        if bar is not None:
            bar.close()
    if a.dry_run:
        for action, path in r.changes:
            print(f"{action} {shown(path)}")
        copies = sum(1 for action, _ in r.changes if action in ("upload", "download"))
        deletes = sum(1 for action, _ in r.changes if action == "delete")
        print(f"dry run: {copies} to copy, {deletes} to delete, {r.unchanged} unchanged, "
              f"{len(r.failed)} failed")
        for path, why in r.failed:
            print(f"dfs-cli: error: {shown(path)}: {why}", file=sys.stderr)
        return EXIT_OK if r.ok else EXIT_ERROR
    return summarise("sync", r)


async def cmd_cat(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.get_stream(a.remote, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return EXIT_OK


async def cmd_tail(c: AsyncClient, a: argparse.Namespace) -> int:
    """The last bytes of a file: one range read, whatever the file's size."""
    if a.bytes < 0:
        raise UsageError("-c takes a byte count >= 0")
    async with c.open(a.remote) as f:
        f.seek(max(0, f.size - a.bytes))
        sys.stdout.buffer.write(await f.read())
    sys.stdout.buffer.flush()
    return EXIT_OK
