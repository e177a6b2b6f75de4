"""`sync`: make a directory tree on one side (local or dfs) match the other, moving only
what differs, as rsync and `aws s3 sync` do.

A file is copied when the destination lacks it or its size or mtime differs (`checksum`:
when its content differs, by the composite CRC32C both sides can compute without a
download). Copies keep the source's mtime, so a second sync of an unchanged tree finds
nothing to do. `delete` removes what the source no longer has; `dry_run` only plans.

Which side is dfs: an argument written `dfs:/path` (or `dfs:///path`) is remote; with no
such prefix the source is local and the destination remote (`sync LOCAL_DIR REMOTE_DIR`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

from .. import config
from ..errors import BadRequest, DFSError, NotFound
from . import tree
from .filechecksum import file_checksum, local_checksum

if TYPE_CHECKING:
    from .async_client import AsyncClient

MTIME_WINDOW = 0.001  # seconds: float mtimes may round differently on each side


def remote_path(arg: str) -> str | None:
    """The dfs path an argument names (`dfs:/p`, `dfs:///p`), or None for a local path."""
    if not arg.startswith("dfs:"):
        return None
    rest = arg[4:]
    if rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        if authority:
            raise BadRequest(f"{arg}: give the meta address with --meta, not in the path")
        rest = "/" + path
    if not rest.startswith("/"):
        raise BadRequest(f"{arg}: a dfs path must be absolute (dfs:/dir)")
    return rest


def sides(src: str, dst: str) -> tuple[bool, str, str]:
    """(upload?, local dir, remote dir) for `sync SRC DST`."""
    rs, rd = remote_path(src), remote_path(dst)
    if rs is not None and rd is not None:
        raise BadRequest("both sides are in dfs: use cp -r")
    if rs is not None:
        return False, dst, rs
    if rd is not None:
        return True, src, rd
    return True, src, dst


async def _local_tree(top: str, result: tree.TreeResult
                      ) -> tuple[dict[str, tree.Job], set[str]]:
    files, dirs = await asyncio.to_thread(tree.walk_local, top, result)
    out = {rel.replace(os.sep, "/"): tree.Job(os.path.join(top, rel), "", st.st_size,
                                              st.st_mtime) for rel, st in files}
    return out, {d.replace(os.sep, "/") for d in dirs}


async def _remote_tree(client: "AsyncClient", top: str
                       ) -> tuple[dict[str, tree.Job], set[str]]:
    """The remote tree (empty when `top` does not exist). A directory that vanishes during
    the walk fails the whole sync: taking it for empty could delete its twin on the other
    side."""
    try:
        st = await client.stat(top, blocks=False)
    except NotFound:
        return {}, set()
    if st["type"] != "dir":
        raise BadRequest(f"{top} is a file, not a directory")
    files, dirs = await tree.walk_remote(client, top)
    return ({f["rel"]: tree.Job(f["path"], "", f["size"], f["mtime"]) for f in files},
            set(dirs))


async def sync(client: "AsyncClient", src: str, dst: str, *, delete: bool = False,
               dry_run: bool = False, checksum: bool = False,
               parallel: int = tree.DEFAULT_PARALLEL,
               replication: int = config.DEFAULT_REPLICATION,
               block_size: int = config.DEFAULT_BLOCK_SIZE,
               tally: tree.Tally | None = None) -> tree.TreeResult:
    tally = tally or tree.Tally()
    result = tree.TreeResult()
    started = time.monotonic()
    up, local, remote = sides(src, dst)
    if up and not os.path.isdir(local):
        raise NotFound(f"{local}: no such local directory")
    if not up:
        await client.stat(remote, blocks=False)  # NotFound for a missing source
        if os.path.lexists(local) and not os.path.isdir(local):
            raise BadRequest(f"{local} is a file, not a directory")
    lfiles, ldirs = await _local_tree(local, result) if os.path.isdir(local) else ({}, set())
    unreadable = bool(result.failed)  # the local walk could not see everything
    rfiles, rdirs = await _remote_tree(client, remote)
    sfiles, sdirs, dfiles, ddirs = (lfiles, ldirs, rfiles, rdirs) if up else \
        (rfiles, rdirs, lfiles, ldirs)
    dst_root = remote if up else local

    def dst_of(rel: str) -> str:
        return tree.rjoin(dst_root, rel) if up else os.path.join(dst_root, *rel.split("/"))

    # What goes: files and directories the source no longer has (top-most only), and
    # anything of the other kind in the way of a source entry.
    doomed: list[str] = []
    if delete and up and unreadable:
        # As rsync: part of the source could not be read, and what could not be seen must
        # not look deleted. Nothing is deleted; the rest of the sync goes on.
        result.fail(local, "some of the source could not be read: nothing deleted")
        delete = False
    if delete:
        gone_dirs = sorted(d for d in ddirs - sdirs if d)
        for d in gone_dirs:
            if not any(d.startswith(g + "/") for g in doomed):
                doomed.append(d)
        doomed += [f for f in dfiles if f not in sfiles and
                   not any(f.startswith(g + "/") for g in gone_dirs)]
    blocked = [r for r in sfiles if r in ddirs] + [d for d in sdirs if d in dfiles]
    for rel in blocked:
        if delete:
            if rel not in doomed:
                doomed.append(rel)
        else:
            result.fail(dst_of(rel), "the other kind of entry is in the way "
                                     "(use --delete to replace it)")
    copies: list[tree.Job] = []
    same: list[str] = []
    to_compare: list[str] = []
    for rel, job in sorted(sfiles.items()):
        if rel in ddirs and not delete:
            continue
        have = dfiles.get(rel)
        if have is None or have.size != job.size:
            copies.append(tree.Job(job.src, dst_of(rel), job.size, job.mtime))
        elif checksum:
            to_compare.append(rel)
        elif abs(have.mtime - job.mtime) > MTIME_WINDOW:
            copies.append(tree.Job(job.src, dst_of(rel), job.size, job.mtime))
        else:
            same.append(rel)
    retime: list[str] = []  # same content, another mtime: only the time is copied
    if to_compare:
        differ = await _differing(client, to_compare, sfiles, dfiles, up, parallel, result)
        for rel in to_compare:
            job = sfiles[rel]
            if rel in differ:
                copies.append(tree.Job(job.src, dst_of(rel), job.size, job.mtime))
            else:
                same.append(rel)
                if abs(dfiles[rel].mtime - job.mtime) > MTIME_WINDOW:
                    retime.append(rel)
    new_dirs = sorted(d for d in sdirs - ddirs if d or not ddirs)
    result.unchanged = len(same)
    result.changes = [("delete", dst_of(r)) for r in doomed] + \
        [("mkdir", dst_of(d)) for d in new_dirs] + \
        [("upload" if up else "download", j.dst) for j in copies]
    if dry_run:
        result.seconds = time.monotonic() - started
        return result
    for rel in doomed:
        try:
            if up:
                await client.rm(dst_of(rel), recursive=True)
            elif os.path.isdir(dst_of(rel)) and not os.path.islink(dst_of(rel)):
                await asyncio.to_thread(shutil.rmtree, dst_of(rel))
            else:
                os.remove(dst_of(rel))
            result.deleted += 1
        except (OSError, DFSError) as exc:
            result.fail(dst_of(rel), exc)
    for rel in retime:
        try:
            if up:
                await client.touch(dst_of(rel), sfiles[rel].mtime)
            else:
                os.utime(dst_of(rel), (sfiles[rel].mtime, sfiles[rel].mtime))
        except (OSError, DFSError) as exc:
            result.fail(dst_of(rel), exc)
    dirs = [dst_of(d) for d in new_dirs]
    if up:
        await tree.upload(client, copies, dirs, result, parallel=parallel,
                          replication=replication, block_size=block_size, preserve=True,
                          tally=tally)
    else:
        await tree.download(client, copies, dirs, result, parallel=parallel, preserve=True,
                            tally=tally)
    result.seconds = time.monotonic() - started
    return result


async def _differing(client: "AsyncClient", rels: list[str], sfiles: dict[str, tree.Job],
                     dfiles: dict[str, tree.Job], up: bool, parallel: int,
                     result: tree.TreeResult) -> set[str]:
    """The files among `rels` whose content differs on the two sides (composite CRC32C); a
    file whose checksum cannot be had is copied again rather than trusted."""
    differ: set[str] = set()

    async def value(job: tree.Job, remote: bool) -> Any:
        if remote:
            return (await file_checksum(client, job.src))["checksum"]
        return (await asyncio.to_thread(local_checksum, job.src))["checksum"]

    async def compare(rel: str) -> None:
        try:
            a = await value(sfiles[rel], not up)
            b = await value(dfiles[rel], up)
        except (OSError, DFSError):
            a, b = 0, 1
        if a != b:
            differ.add(rel)

    await tree.each(rels, parallel, result, compare)
    return differ
