"""Many files at once: whole directories, several sources and remote globs, up and down.

A transfer is planned first (which local file goes to which remote path, and back), then run
by `parallel` workers over the one shared AsyncClient, so many small files keep the cluster
busy while a few large ones still stream with bounded memory. A file that fails is recorded
with its reason and the others go on: the caller gets every failure in `TreeResult`, as
`hdfs dfs -put`, `aws s3 cp --recursive` and rsync report them.

Destination rules (those of `hdfs dfs -put`/`cp -r`): one file to a path that is not a
directory becomes that path; several sources, a glob, or a directory make the destination a
directory, created if missing; a single directory copied to a path that does not exist
becomes that path, and to an existing directory goes inside it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, TypeVar

from .. import config
from ..errors import DFSError, NotADirectory, NotFound

if TYPE_CHECKING:
    from .async_client import AsyncClient

DEFAULT_PARALLEL = 8
T = TypeVar("T")
_MAGIC = set("*?[")


class Tally:
    """What a transfer tells a progress display: work planned, bytes moved, files done.
    The default does nothing; dfs-cli's bar overrides it."""

    def planned(self, files: int, nbytes: int) -> None:
        pass

    def moved(self, nbytes: int) -> None:
        pass

    def finished(self, path: str, ok: bool) -> None:
        pass


@dataclass
class Job:
    """One file to move: `src` to `dst`, `size` bytes (as listed), `mtime` of the source."""

    src: str
    dst: str
    size: int
    mtime: float = 0.0


@dataclass
class TreeResult:
    """The outcome of a many-file transfer (or sync): counts, bytes, time, and each failure
    as (path, reason)."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    deleted: int = 0
    unchanged: int = 0
    dirs: int = 0
    changes: list[tuple[str, str]] = field(default_factory=list)  # (what, path): sync's plan
    not_found_only: bool = True  # every failure was a missing source (exit status 2)

    @property
    def ok(self) -> bool:
        return not self.failed

    def fail(self, path: str, exc: BaseException | str) -> None:
        """Record a failed path: an exception, or a reason in words."""
        if not isinstance(exc, NotFound):
            self.not_found_only = False
        self.failed.append((path, exc if isinstance(exc, str) else describe(exc)))

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "deleted": self.deleted, "unchanged": self.unchanged, "dirs": self.dirs,
                "failed": [{"path": p, "error": e} for p, e in self.failed],
                "changes": [{"action": a, "path": p} for a, p in self.changes]}


def describe(exc: BaseException) -> str:
    """One line for a failure: an OSError as the shell words it, a DFSError as it says."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


def has_magic(path: str) -> bool:
    return any(c in _MAGIC for c in path)


def rjoin(base: str, name: str) -> str:
    """Join a remote directory and a relative path."""
    return (base.rstrip("/") or "") + "/" + name if name else base


# local side ---------------------------------------------------------------------------------
def walk_local(top: str, result: TreeResult) -> tuple[list[tuple[str, os.stat_result]],
                                                        list[str]]:
    """Every regular file under `top` with its stat, and every directory (relative paths,
    "" for `top`). Unreadable directories and files that are not regular (sockets, FIFOs,
    devices) are failures; symlinks to files are followed, symlinked directories are not
    (so a link loop cannot make the walk endless)."""
    files: list[tuple[str, os.stat_result]] = []
    dirs: list[str] = [""]

    def onerror(exc: OSError) -> None:
        result.fail(exc.filename or top, exc)

    for root, dnames, fnames in os.walk(top, onerror=onerror):
        rel = os.path.relpath(root, top)
        rel = "" if rel == "." else rel
        for d in list(dnames):
            full = os.path.join(root, d)
            if not _utf8(os.path.join(rel, d)):
                dnames.remove(d)
                result.fail(shown(full), "directory name is not valid UTF-8: not copied")
                continue
            if os.path.islink(full):
                dnames.remove(d)
                fnames.append(d)  # a link to a directory is listed, and refused below
                continue
            dirs.append(os.path.join(rel, d))
        for name in fnames:
            full = os.path.join(root, name)
            if not _utf8(os.path.join(rel, name)):
                result.fail(shown(full), "file name is not valid UTF-8: not copied")
                continue
            try:
                st = os.stat(full)
            except OSError as exc:
                result.fail(full, exc)
                continue
            if stat_mod.S_ISREG(st.st_mode):
                files.append((os.path.join(rel, name), st))
            elif stat_mod.S_ISDIR(st.st_mode):
                result.fail(full, "a symbolic link to a directory: not followed")
            else:
                result.fail(full, "not a regular file")
    return files, dirs


def _utf8(name: str) -> bool:
    """Whether a local name (surrogate-escaped by Python when its bytes are not UTF-8) can
    be a dfs path, which is UTF-8 text."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def shown(path: str) -> str:
    """A local path fit for printing: bytes that are not UTF-8 shown as U+FFFD."""
    return path.encode(errors="surrogateescape").decode(errors="replace")


# remote side --------------------------------------------------------------------------------
async def walk_remote(client: "AsyncClient", top: str
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every file entry under the remote directory `top` (dicts as `ls` gives, plus `rel`,
    the path relative to `top`) and every directory (relative, "" for `top`), listing
    several directories at once."""
    files: list[dict[str, Any]] = []
    dirs: list[str] = []
    pending = [""]
    while pending:
        batch, pending = pending[:16], pending[16:]
        pages = await asyncio.gather(*(client.ls(rjoin(top, rel)) for rel in batch))
        for rel, entries in zip(batch, pages, strict=True):
            dirs.append(rel)
            for e in entries:
                name = e["path"].rsplit("/", 1)[-1]
                child = f"{rel}/{name}" if rel else name
                if e["type"] == "dir":
                    pending.append(child)
                elif e["type"] == "file":  # symbolic links (made by dfs-mount) are skipped
                    files.append({**e, "rel": child})
    return files, dirs


async def glob_remote(client: "AsyncClient", pattern: str) -> list[dict[str, Any]]:
    """Entries matching a remote glob (`*`, `?`, `[...]` in any component, as the shell
    matches them: a leading `.` only by a pattern that starts with one), in path order."""
    parts = [p for p in pattern.split("/") if p]
    found: list[dict[str, Any]] = [{"path": "/", "type": "dir"}]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt: list[dict[str, Any]] = []
        for entry in found:
            if entry["type"] != "dir":
                continue
            base = entry["path"]
            if not has_magic(part):
                try:
                    nxt.append(await client.stat(rjoin(base, part), blocks=False) if last else
                               {"path": rjoin(base, part), "type": "dir"})
                except (NotFound, NotADirectory):
                    pass
                continue
            try:
                children = await client.ls(base)
            except (NotFound, NotADirectory):
                continue
            if len(children) == 1 and children[0]["path"] == base:
                continue  # a plain component taken for a directory is a file: no match
            for e in children:
                name = e["path"].rsplit("/", 1)[-1]
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    nxt.append(e)
        found = nxt
    return sorted(found, key=lambda e: e["path"])


# running ------------------------------------------------------------------------------------
async def run_jobs(jobs: list[Job], parallel: int, result: TreeResult, tally: Tally,
                   one: Callable[[Job], Awaitable[int]]) -> None:
    """Run `one` on every job with at most `parallel` at a time; a failure is recorded and
    the rest go on. Largest files first: the small ones then fill the gaps at the end instead
    of one big file running alone."""
    seen: set[str] = set()
    unique = []
    for job in jobs:  # two sources of one name (`get /a/x /b/x .`) would overwrite each other
        if job.dst in seen:
            result.fail(job.src, f"another source is also copied to {job.dst}: skipped")
            tally.finished(job.src, False)
        else:
            seen.add(job.dst)
            unique.append(job)
    unique.sort(key=lambda j: -j.size)

    async def one_job(job: Job) -> None:
        try:
            n = await one(job)
        except (OSError, DFSError):
            tally.finished(job.src, False)
            raise
        result.files += 1
        result.bytes += n
        tally.finished(job.src, True)
    await each(unique, parallel, result, one_job, lambda j: j.src)


async def upload(client: "AsyncClient", jobs: list[Job], dirs: Iterable[str],
                 result: TreeResult, *, parallel: int, replication: int, block_size: int,
                 preserve: bool, tally: Tally) -> None:
    """Create `dirs` (remote, parents too) and upload every job, `parallel` at a time."""
    tally.planned(len(jobs), sum(j.size for j in jobs))
    await each(sorted(set(dirs)), parallel, result, lambda d: client.mkdir(d, parents=True))
    result.dirs += len(set(dirs))

    async def one(job: Job) -> int:
        reply = await client.put(job.src, job.dst, replication=replication,
                                 block_size=block_size, progress=tally.moved,
                                 preserve=preserve)
        return int(reply["size"])
    await run_jobs(jobs, parallel, result, tally, one)


async def download(client: "AsyncClient", jobs: list[Job], dirs: Iterable[str],
                   result: TreeResult, *, parallel: int, preserve: bool,
                   tally: Tally) -> None:
    """Create local `dirs` and download every job, `parallel` at a time; with `preserve`
    each file (and directory) keeps its remote mtime."""
    tally.planned(len(jobs), sum(j.size for j in jobs))
    made = sorted(set(dirs))
    for d in made:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            result.fail(d, exc)
    result.dirs += len(made)

    async def one(job: Job) -> int:
        parent = os.path.dirname(job.dst)
        if parent:
            os.makedirs(parent, exist_ok=True)
        n = await client.get(job.src, job.dst, progress=tally.moved)
        if preserve:
            os.utime(job.dst, (job.mtime, job.mtime))
        return n
    await run_jobs(jobs, parallel, result, tally, one)


async def each(items: list[T], parallel: int, result: TreeResult,
               fn: Callable[[T], Awaitable[Any]],
               name: Callable[[T], str] = str) -> None:
    """fn(item) for every item in order, at most `parallel` at a time; an OSError or
    DFSError is recorded against name(item) and the rest go on."""
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            item = queue.pop()
            try:
                await fn(item)
            except (OSError, DFSError) as exc:
                result.fail(name(item), exc)

    await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, len(queue))))))


# planning -----------------------------------------------------------------------------------
async def put_tree(client: "AsyncClient", sources: list[str], remote: str, *,
                   parallel: int = DEFAULT_PARALLEL,
                   replication: int = config.DEFAULT_REPLICATION,
                   block_size: int = config.DEFAULT_BLOCK_SIZE, preserve: bool = False,
                   tally: Tally | None = None) -> TreeResult:
    """Upload local files and directories (recursively) under the rules above."""
    tally = tally or Tally()
    result = TreeResult()
    started = time.monotonic()
    jobs: list[Job] = []
    dirs: list[str] = []
    remote_type = await _remote_type(client, remote)
    into = len(sources) > 1 or remote_type == "dir" or remote.endswith("/")
    for src in sources:
        try:
            st = os.stat(src)
        except OSError as exc:
            result.fail(src, exc)
            continue
        name = os.path.basename(os.path.abspath(src))  # `.` and `..` by their real names
        if stat_mod.S_ISDIR(st.st_mode):
            if not into and remote_type == "file":
                result.fail(src, f"cannot put a directory over the file {remote}")
                continue
            base = rjoin(remote, name) if into else remote
            files, subdirs = walk_local(src, result)
            # Directories holding files (at any depth) appear with them: only the others
            # need a mkdir of their own.
            holding = {""}
            for rel, _ in files:
                d = os.path.dirname(rel)
                while d not in holding:
                    holding.add(d)
                    d = os.path.dirname(d)
            dirs += [rjoin(base, d.replace(os.sep, "/")) for d in subdirs if d not in holding]
            if not files:
                dirs.append(base)
            jobs += [Job(os.path.join(src, rel), rjoin(base, rel.replace(os.sep, "/")),
                         s.st_size, s.st_mtime) for rel, s in files]
        elif stat_mod.S_ISREG(st.st_mode):
            jobs.append(Job(src, rjoin(remote, name) if into else remote, st.st_size,
                            st.st_mtime))
        else:
            result.fail(src, "not a regular file")
    if len(sources) > 1 and remote_type is None:
        dirs.append(remote)
    await upload(client, jobs, dirs, result, parallel=parallel, replication=replication,
                 block_size=block_size, preserve=preserve, tally=tally)
    result.seconds = time.monotonic() - started
    return result


async def get_tree(client: "AsyncClient", sources: list[str], local: str, *,
                   parallel: int = DEFAULT_PARALLEL, preserve: bool = False,
                   tally: Tally | None = None) -> TreeResult:
    """Download remote files, directories (recursively) and globs under the rules above."""
    tally = tally or Tally()
    result = TreeResult()
    started = time.monotonic()
    entries: list[dict[str, Any]] = []
    globbed = False
    for src in sources:
        if has_magic(src):
            globbed = True
            matched = await glob_remote(client, src)
            if not matched:
                result.fail(src, NotFound("no match"))
            entries += matched
            continue
        try:
            entries.append(await client.stat(src, blocks=False))
        except DFSError as exc:
            result.fail(src, exc)
    into = len(sources) > 1 or globbed or os.path.isdir(local)
    jobs: list[Job] = []
    dirs: list[str] = []
    if into and (len(sources) > 1 or globbed):
        dirs.append(local)
    for e in entries:
        name = e["path"].rsplit("/", 1)[-1]  # "" for /: its contents go straight in
        target = os.path.join(local, name) if into and name else local
        if e["type"] == "dir":
            try:
                files, subdirs = await walk_remote(client, e["path"])
            except DFSError as exc:
                result.fail(e["path"], exc)
                continue
            dirs += [os.path.join(target, d) for d in subdirs]
            jobs += [Job(f["path"], os.path.join(target, *f["rel"].split("/")), f["size"],
                         f["mtime"]) for f in files]
        else:
            jobs.append(Job(e["path"], target, e["size"], e["mtime"]))
    await download(client, jobs, dirs, result, parallel=parallel, preserve=preserve,
                   tally=tally)
    result.seconds = time.monotonic() - started
    return result


async def _remote_type(client: "AsyncClient", path: str) -> str | None:
    try:
        return str((await client.stat(path, blocks=False))["type"])
    except NotFound:
        return None
