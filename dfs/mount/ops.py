"""The FUSE operations: the kernel's questions, answered from meta and the chunkservers.

Every answer comes from meta through `dfs.AsyncClient` (one per mount; meta calls, reads and
uploads all share it). Entries meta returned are kept for `attrs.TIMEOUT` seconds so a burst of
lookups and getattrs (ls -l, tar, git status) costs one stat each, and every change made here
drops what it touched. `open` always asks meta afresh: close-to-open consistency, and the
kernel keeps its page cache of a file only if the file is the one it cached.

What POSIX asks and dfs cannot give is refused with the errno a program expects: hard links
(EPERM), special files (EPERM), RENAME_EXCHANGE (EINVAL), extended attributes (ENOTSUP).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import stat
import time
from typing import Any, Callable, Coroutine, ParamSpec, Sequence, TypeVar

import pyfuse3

from .. import config
from ..client import AsyncClient, blocklist
from ..client.reader import FileReader
from ..errors import DFSError, NotFound
from . import attrs
from .errnos import to_errno
from .handles import ReadHandle, SpoolBudget, WriteHandle
from .inodes import ROOT, Inodes

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
LS_PAGE = 1000  # entries per meta ls request while a directory is read
_PAGING = ("blocks", "block_count", "blocks_more", "first_block")  # not an entry's attributes
RENAME_NOREPLACE = getattr(pyfuse3, "RENAME_NOREPLACE", 1)
RENAME_EXCHANGE = getattr(pyfuse3, "RENAME_EXCHANGE", 2)


def _answers(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn dfs and spool errors into the FUSEError the kernel passes on as an errno; a bug
    is logged and becomes EIO (the mount keeps serving)."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (DFSError, OSError) as exc:
            raise pyfuse3.FUSEError(to_errno(exc)) from None
        except Exception:
            log.exception("dfs-mount: %s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _name(name: bytes) -> str:
    if len(name) > 255:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        return name.decode()
    except UnicodeDecodeError:  # dfs names are UTF-8 text
        raise pyfuse3.FUSEError(errno.EINVAL) from None


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


class DirListing:
    """An open directory: the entries read so far, fetched from meta a page at a time as
    the kernel reads on (a directory of 100,000 entries is never fetched whole up front)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        self.more = True


class DFSOperations(pyfuse3.Operations):
    def __init__(self, client: AsyncClient, budget: SpoolBudget, *, read_only: bool = False,
                 replication: int = config.DEFAULT_REPLICATION,
                 block_size: int = config.DEFAULT_BLOCK_SIZE) -> None:
        super().__init__()
        self.block_size = block_size
        self.client = client
        self.budget = budget
        self.read_only = read_only
        self.replication = replication
        self.inodes = Inodes()
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._handles: dict[int, ReadHandle | WriteHandle] = {}
        self._writers: dict[int, list[WriteHandle]] = {}  # inode -> its open write handles
        self._dirs: dict[int, DirListing] = {}
        self._seen: dict[int, tuple[Any, ...]] = {}  # inode -> version its pages cache
        self._next_fh = 1

    # entries --------------------------------------------------------------------------
    async def _entry(self, path: str, fresh: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._entries.get(path)
        if cached is not None and not fresh and cached[0] > now:
            return cached[1]
        try:
            entry = await self.client.stat(path, blocks=False)
        except NotFound:
            self._entries.pop(path, None)
            raise
        self._remember(path, entry, now)
        return entry

    def _remember(self, path: str, entry: dict[str, Any], now: float | None = None) -> None:
        self._entries[path] = ((now or time.monotonic()) + attrs.TIMEOUT, entry)
        if len(self._entries) > 100_000:  # a bound, not a cache policy: start over
            self._entries.clear()

    def _forget_entry(self, *paths: str) -> None:
        for p in paths:
            self._entries.pop(p, None)
            self._entries.pop(p.rsplit("/", 1)[0] or "/", None)  # its directory's mtime

    def _writing(self, ino: int) -> WriteHandle | None:
        handles = self._writers.get(ino)
        return handles[-1] if handles else None

    def _attributes(self, ino: int, entry: dict[str, Any]) -> pyfuse3.EntryAttributes:
        w = self._writing(ino)
        if w is not None:  # unflushed bytes: what the writer sees, not meta's old version
            entry = {**entry, **w.entry()}
        return attrs.entry_attributes(ino, entry)

    def _path(self, ino: int) -> str:
        path = self.inodes.path(ino)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path

    def _child(self, parent_ino: int, name: bytes) -> str:
        return _join(self._path(parent_ino), _name(name))

    def _writable(self) -> None:
        if self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _new_fh(self, handle: ReadHandle | WriteHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    async def _stat_or_pending(self, path: str) -> dict[str, Any]:
        """meta's entry for `path`, or, for a file created here and not yet flushed, what
        its open handle holds."""
        ino = self.inodes.known(path)
        if ino is not None and self._writing(ino) is not None:
            try:
                return await self._entry(path)
            except NotFound:
                w = self._writing(ino)
                assert w is not None
                return w.entry()
        return await self._entry(path)

    # lookups --------------------------------------------------------------------------
    @_answers
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name == b".":
            return await self.getattr(parent_inode, ctx)
        if name == b"..":
            parent = self._path(parent_inode).rsplit("/", 1)[0] or "/"
            return self._attributes(self.inodes.of(parent), await self._entry(parent))
        path = self._child(parent_inode, name)
        entry = await self._stat_or_pending(path)
        return self._attributes(self.inodes.looked_up(path), entry)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    @_answers
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        path = self.inodes.path(inode)
        w = self._writing(inode)
        if path is None:
            if w is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return attrs.entry_attributes(inode, w.entry())  # unlinked while open
        return self._attributes(inode, await self._stat_or_pending(path))

    @_answers
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        entry = await self._entry(self._path(inode))
        if entry.get("type") != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(entry["target"])

    # attributes -----------------------------------------------------------------------
    @_answers
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        path = self._path(inode)
        w = self._handles.get(fh) if fh is not None else None
        if not isinstance(w, WriteHandle):
            w = self._writing(inode)
        if fields.update_size:
            await self._truncate(inode, path, w, attr.st_size)
            self._forget_entry(path)
        change: dict[str, int] = {}
        if fields.update_mode:
            change["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            change["uid"] = attr.st_uid
        if fields.update_gid:
            change["gid"] = attr.st_gid
        mtime = attr.st_mtime_ns / 1e9 if fields.update_mtime else None
        # tar and rsync set mode, owner and times one call at a time, often to what the file
        # already has: each unchanged one is a journal write saved.
        current = await self._stat_or_pending(path)
        change = {k: v for k, v in change.items() if current.get(k) != v}
        if mtime is not None and current.get("mtime") == mtime:
            mtime = None
        for handle in self._writers.get(inode, []):  # its next upload keeps them
            handle.attrs.update(change)
            if handle.published is not None:
                handle.published.update(change)
            if mtime is not None:
                handle.mtime = mtime
        in_meta = True
        if change:
            try:
                await self.client.chattr(path, **change)
            except NotFound:
                in_meta = False
                if w is None:
                    raise
        if mtime is not None and in_meta:
            try:
                await self.client.meta_call("touch", path=path, mtime=mtime)
            except NotFound:
                if w is None:
                    raise
        # What meta holds now is known: keep it rather than ask again.
        updated = {**current, **change, **({} if mtime is None else {"mtime": mtime})}
        if in_meta:
            self._remember(path, updated)
        return self._attributes(inode, updated)

    async def _truncate(self, inode: int, path: str, w: WriteHandle | None, size: int) -> None:
        if w is not None:
            await w.truncate(path, size)
            return
        # Not open for writing here (truncate(1), or O_TRUNC handled as a setattr): a new
        # version with the old bytes up to `size`, its attributes kept.
        entry = await self._entry(path, fresh=True)
        if entry.get("type") == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        handle = self._handle(inode, path, _kept(entry), stream=False)
        try:
            if size:
                await handle.fill(path)
            await handle.truncate(path, size)
            await handle.upload(path)
        finally:
            await handle.close()
        self._forget_entry(path)

    # directories ----------------------------------------------------------------------
    @_answers
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        path = self._path(inode)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirListing(path)
        return fh

    @_answers
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs[fh]
        i = start_id
        while True:
            if i >= len(listing.entries):
                if not listing.more:
                    return
                await self._next_page(listing)
                continue
            entry = listing.entries[i]
            path = entry["path"]
            ino = self.inodes.of(path)
            if not pyfuse3.readdir_reply(token, os.fsencode(path.rsplit("/", 1)[1]),
                                         self._attributes(ino, entry), i + 1):
                return
            self.inodes.looked_up(path)
            i += 1

    async def _next_page(self, listing: DirListing) -> None:
        after = listing.entries[-1]["path"].rsplit("/", 1)[1] if listing.entries else ""
        page = await self.client.meta_call("ls", path=listing.path, start_after=after,
                                           limit=LS_PAGE)
        now = time.monotonic()
        for entry in page["entries"]:
            self._remember(entry["path"], entry, now)
        listing.entries.extend(page["entries"])
        listing.more = bool(page.get("more")) and bool(page["entries"])

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @_answers
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        path = self._child(parent_inode, name)
        await self.client.meta_call("mkdir", path=path, attrs=_owner(mode, ctx))
        self._forget_entry(path)
        return self._attributes(self.inodes.looked_up(path), await self._entry(path))

    @_answers
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        entry = await self._entry(path, fresh=True)
        if entry.get("type") != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self.client.rm(path)  # DirectoryNotEmpty -> ENOTEMPTY
        self.inodes.removed(path)
        self._forget_entry(path)

    @_answers
    async def unlink(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        path = self._child(parent_inode, name)
        entry = await self._stat_or_pending(path)
        if entry.get("type") == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        ino = self.inodes.known(path)
        for w in self._writers.get(ino, []) if ino is not None else []:
            w.unlinked = True  # an open file unlinked: its bytes never reach meta
        try:
            await self.client.rm(path)
        except NotFound:
            if ino is None or not self._writers.get(ino):
                raise
        self.inodes.removed(path, tree=False)
        self._forget_entry(path)

    @_answers
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        """rename(2): atomic for files, replacing a file at the target. A directory replaces
        only an empty directory (removed first: the one step that is not atomic)."""
        self._writable()
        if flags & RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new)
        ino = self.inodes.known(src)
        for w in self._writers.get(ino, []) if ino is not None else []:
            await w.upload(src)  # publish before it moves
        entry = await self._entry(src, fresh=True)
        try:
            target: dict[str, Any] | None = await self._entry(dst, fresh=True)
        except NotFound:
            target = None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.get("type") == "dir":
                if entry.get("type") != "dir":
                    raise pyfuse3.FUSEError(errno.EISDIR)
                await self.client.rm(dst)  # an empty directory only: else ENOTEMPTY
            elif entry.get("type") == "dir":
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self.client.mv(src, dst)
        self.inodes.moved(src, dst, tree=entry.get("type") == "dir")
        self._forget_entry(src, dst)

    @_answers
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._writable()
        path = self._child(parent_inode, name)
        try:
            text = target.decode()
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        await self.client.symlink(text, path, uid=ctx.uid, gid=ctx.gid)
        self._forget_entry(path)
        return self._attributes(self.inodes.looked_up(path), await self._entry(path))

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # dfs has no hard links (docs/MOUNT.md)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no device files, FIFOs or sockets

    # files ----------------------------------------------------------------------------
    @_answers
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        path = self._path(inode)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            pending = self._writing(inode)
            if pending is not None:  # read what this mount is still writing
                await pending.upload(path)
            info = await self.client.stat_page(path)  # the reader loads further pages
            if info["type"] == "dir":
                raise pyfuse3.FUSEError(errno.EISDIR)
            if info["type"] != "file":
                raise pyfuse3.FUSEError(errno.EINVAL)
            self._remember(path, {k: v for k, v in info.items() if k not in _PAGING})
            # A published block list never changes: its length and first block name it.
            version = (info["size"], info["mtime"], blocklist.identity(info))
            keep = self._seen.get(inode) == version
            self._seen[inode] = version
            if not keep:
                # The kernel may hold the old size for attrs.TIMEOUT: tell it now, after
                # this reply, so a file replaced elsewhere is read whole.
                asyncio.get_running_loop().call_soon(_invalidate_attrs, inode)
            return pyfuse3.FileInfo(fh=self._new_fh(ReadHandle(FileReader(self.client, info))),
                                    keep_cache=keep)
        self._writable()
        entry = await self._stat_or_pending(path)
        if entry.get("type") == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        truncating = bool(flags & os.O_TRUNC)
        handle = self._handle(inode, path, _kept(entry), stream=truncating)
        try:
            other = self._writing(inode)
            if truncating:
                handle.dirty = True  # even if nothing is written: the file becomes empty
            elif other is not None:  # start from what the other descriptor wrote
                await other.upload(path)
                await handle.fill(path)
            elif entry.get("size", 0):
                await handle.fill(path)
        except BaseException:
            await handle.close()
            raise
        self._seen.pop(inode, None)
        return pyfuse3.FileInfo(fh=self._opened_for_writing(handle))

    def _handle(self, ino: int, path: str, attrs: dict[str, int], stream: bool
                ) -> WriteHandle:
        handle = WriteHandle(ino, self.budget, attrs, self.client, self.replication, stream,
                             self.block_size)
        handle.last_path = path
        return handle

    def _path_of(self, handle: WriteHandle) -> str:
        """Where a handle's file is now (a rename moves it); a file unlinked while open
        keeps writing to its spool under the name it had."""
        path = self.inodes.path(handle.ino)
        if path is not None:
            handle.last_path = path
        return handle.last_path

    def _opened_for_writing(self, handle: WriteHandle) -> int:
        self._writers.setdefault(handle.ino, []).append(handle)
        return self._new_fh(handle)

    @_answers
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        path = self._child(parent_inode, name)
        parent = await self._entry(path.rsplit("/", 1)[0] or "/")
        if parent.get("type") != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        ino = self.inodes.looked_up(path)
        handle = self._handle(ino, path, _owner(mode, ctx), stream=True)
        handle.dirty = True  # an empty file appears too
        fh = self._opened_for_writing(handle)
        self._seen.pop(ino, None)
        return pyfuse3.FileInfo(fh=fh), attrs.entry_attributes(ino, handle.entry())

    @_answers
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles[fh]
        if isinstance(handle, WriteHandle):
            return await handle.read(self._path_of(handle), off, size)
        return await handle.read(off, size)

    @_answers
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        if not isinstance(handle, WriteHandle):
            raise pyfuse3.FUSEError(errno.EBADF)
        return await handle.write(self._path_of(handle), off, buf)

    @_answers
    async def flush(self, fh: int) -> None:
        await self._publish(fh)

    @_answers
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._publish(fh)

    async def _publish(self, fh: int) -> None:
        handle = self._handles.get(fh)
        if not isinstance(handle, WriteHandle) or handle.unlinked:
            return
        path = self.inodes.path(handle.ino)
        if path is None:
            return  # removed while open: nowhere to publish
        if await handle.upload(path):
            self._forget_entry(path)  # and its directory's, whose mtime moved
            if handle.published is not None:
                self._remember(path, handle.published)

    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, WriteHandle):
            try:
                await self._publish_on_release(handle)
            finally:
                await handle.close()
                writers = self._writers.get(handle.ino, [])
                if handle in writers:
                    writers.remove(handle)
                if not writers:
                    self._writers.pop(handle.ino, None)
        elif handle is not None:
            handle.close()

    async def _publish_on_release(self, handle: WriteHandle) -> None:
        """flush() came first for every close(2); this catches writes after it (mmap, or
        a duplicated descriptor). The kernel ignores errors here, so they are logged."""
        path = self.inodes.path(handle.ino)
        if path is None or handle.unlinked or not handle.dirty:
            return
        try:
            await handle.upload(path)
        except (DFSError, OSError) as exc:
            log.error("dfs-mount: %s could not be published at release: %s", path, exc)

    # the file system ------------------------------------------------------------------
    @_answers
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        status = await self.client.status()
        live = [s for s in status["chunkservers"] if s["state"] == "live"]
        capacity = sum(s["capacity"] for s in live)
        free = sum(s.get("free", 0) for s in live)
        out = pyfuse3.StatvfsData()
        out.f_bsize = attrs.BLKSIZE
        out.f_frsize = 4096
        out.f_blocks = capacity // 4096
        out.f_bfree = out.f_bavail = free // 4096
        out.f_files = status["files"] + 2**32
        out.f_ffree = out.f_favail = 2**32
        out.f_namemax = 255
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def close_all(self) -> None:
        """At unmount: drop spools and read-ahead (unflushed writes are lost, as they would
        be on a local disk whose program never closed them)."""
        for handle in self._handles.values():
            if isinstance(handle, WriteHandle):
                await handle.close()
            else:
                handle.close()
        self._handles.clear()
        self._writers.clear()


def _kept(entry: dict[str, Any]) -> dict[str, int]:
    """The attributes a new version of a file keeps from the old one."""
    return {k: entry[k] for k in ("mode", "uid", "gid") if k in entry}


def _owner(mode: int, ctx: pyfuse3.RequestContext) -> dict[str, int]:
    """A new entry's attributes: its mode under the creator's umask, and the creator."""
    return {"mode": stat.S_IMODE(mode) & ~ctx.umask, "uid": ctx.uid, "gid": ctx.gid}


def _invalidate_attrs(inode: int) -> None:
    try:
        pyfuse3.invalidate_inode(inode, attr_only=True)
    except OSError:  # the kernel no longer knows it: nothing to invalidate
        pass


__all__ = ["DFSOperations", "ROOT"]
