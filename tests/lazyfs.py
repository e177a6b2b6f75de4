"""lazyfs: a FUSE pass-through file system that forgets what was not made durable, for power-loss
tests (after Jepsen's LazyFS; written here on pyfuse3).

    python3 tests/lazyfs.py BACKING MOUNTPOINT CONTROL [--debug]

Every operation goes straight through to BACKING, so programs see an ordinary file system.
Beside it lazyfs keeps, in memory, how to undo whatever has not been made durable; a command
on the control socket (a Unix socket at CONTROL, one line in, one line out) "cuts the power":

    crash            undo everything not durable, so BACKING holds exactly the durable state;
                     answer "ok files=<n> dirs=<n> bytes=<n>" (what was thrown away), unmount
                     and exit. Start a new lazyfs on BACKING to "boot" again.
    crash torn SEED  the same, but (seeded) each file keeps a random prefix of its unsynced
                     writes, the last of them possibly cut after any 512-byte sector, and
                     each directory randomly keeps its unsynced entries, as when part of the
                     page cache and of the directory updates reached the disk
    stats            "ok files=<n> dirs=<n> bytes=<n>": what a crash now would throw away
    sync             make everything durable (sync(1))

The durability model (the rules lazyfs holds a program to; what POSIX promises, no more):
- A file's data and size become durable only by fsync() or fdatasync() of that file (any
  descriptor of the inode; both count the same, the size is data). Writes, truncates and
  O_TRUNC opens since the last one are undone at a crash, byte for byte.
- A directory entry (create, mkdir, symlink, link, unlink, rmdir, rename) becomes durable only
  by fsync() of the directory holding it. fsync() of a file does not make its name durable;
  a new directory's own entries need its own fsync, and its name the parent's. A crash
  restores each directory's entries as of its last fsync, pointing at the same inodes (whose
  data is restored by the rule above), so an unsynced unlink or rename over a file comes
  back. rename() is atomic as far as it goes: each directory shows the old or the new state
  as a whole; a rename between two directories with only one of them fsynced can show the
  file under both names or neither (strict POSIX, which promises nothing across the two).
- syncfs(2) and sync(2) on the mount do NOT reach a FUSE daemon (Linux forwards FUSE_SYNCFS
  only to virtiofs, and libfuse/pyfuse3 have no handler), so they make nothing durable
  here, exactly as on any FUSE file system: a program that relies on syncfs loses data.
- Not modelled (kept as is at a crash): permissions, owners, times, xattrs. A write (at
  most 128 KiB: FUSE splits larger ones) is torn inside itself only in "torn" mode, at a
  sector boundary.
Real file systems are often kinder (ext4 commits a new file's name with its fsync); a program
that passes here does not depend on that.

Inodes are the backing file system's inode numbers (the root is FUSE's ROOT_INODE). Files
whose last name goes away while an undurable directory state still names them are kept
alive as hard links in BACKING/.lazyfs (hidden), so a crash can bring them back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pyfuse3
import trio

HIDDEN = b".lazyfs"
SECTOR = 512  # a torn write keeps a whole number of these
ROOT = pyfuse3.ROOT_INODE
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Entry:
    """One durable directory entry: the inode it names, its kind ("f", "d", "l") and, for a
    symlink, its target."""

    ino: int
    kind: str
    target: bytes = b""


@dataclass
class Undo:
    """What to put back, in reverse order, to return a file to its last fsync: each record is
    (offset, length written, the bytes the write replaced, the size before it)."""

    records: list[tuple[int, int, bytes, int]] = field(default_factory=list)

    def nbytes(self) -> int:
        return sum(len(old) for _, _, old, _ in self.records) + 1


def _errors(fn: F) -> F:
    """OSError -> FUSEError with the same errno (what the kernel hands back to the caller)."""
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    wrapper.__name__ = fn.__name__
    return wrapper  # type: ignore[return-value]


def _kind(mode: int) -> str:
    return "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f"


class LazyFS(pyfuse3.Operations):
    """The pass-through operations plus the undo state. Every handler is synchronous inside
    (no await between reading and changing state), so each is atomic with respect to the
    others and to a crash command on the same trio loop."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # every write reaches us at once

    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = os.path.abspath(backing).encode()
        self.hidden = os.path.join(self.backing, HIDDEN)
        self.grave = os.path.join(self.hidden, b"grave")
        shutil.rmtree(self.hidden, ignore_errors=True)
        os.makedirs(self.grave)
        self.root_ino = os.lstat(self.backing).st_ino
        self.paths: dict[int, bytes] = {ROOT: self.backing}
        self.fhs: dict[int, tuple[int, int]] = {}  # fh -> (backing fd, inode)
        self.undo: dict[int, Undo] = {}  # inode -> how to undo its unsynced writes
        self.snaps: dict[int, dict[bytes, Entry]] = {}  # dir inode -> durable entries
        self.dead_dirs: dict[int, dict[bytes, Entry]] = {}  # rmdir'd dirs: durable entries
        self.graves: set[int] = set()

    # inodes and paths -------------------------------------------------------------------
    def _ino(self, st: os.stat_result) -> int:
        return ROOT if st.st_ino == self.root_ino else st.st_ino

    def _path(self, ino: int) -> bytes:
        try:
            return self.paths[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "unknown inode") from None

    def _child(self, parent: int, name: bytes) -> bytes:
        if parent == ROOT and name == HIDDEN:
            raise OSError(errno.ENOENT, "hidden")
        return os.path.join(self._path(parent), name)

    def _attr(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(st)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = 1.0
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                     "st_blksize", "st_blocks"):
            setattr(a, name, getattr(st, name))
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, \
            st.st_ctime_ns
        return a

    def _entry(self, path: bytes) -> pyfuse3.EntryAttributes:
        st = os.lstat(path)
        self.paths[self._ino(st)] = path
        return self._attr(st)

    def _listing(self, path: bytes) -> dict[bytes, Entry]:
        out = {}
        for de in os.scandir(path):
            if path == self.backing and de.name == HIDDEN:
                continue
            st = de.stat(follow_symlinks=False)
            kind = _kind(st.st_mode)
            out[de.name] = Entry(self._ino(st), kind,
                                 os.readlink(de.path) if kind == "l" else b"")
        return out

    # the undo state ---------------------------------------------------------------------
    def _dirty_dir(self, ino: int) -> None:
        """About to change a directory's entries: remember them as they are durable now."""
        if ino not in self.snaps:
            self.snaps[ino] = self._listing(self._path(ino))

    def _named(self, ino: int) -> bool:
        return any(e.ino == ino for snap in (*self.snaps.values(), *self.dead_dirs.values())
                   for e in snap.values())

    def _removing(self, path: bytes) -> None:
        """`path` (not a directory) is about to lose its name: if that was its last one and an
        undurable directory state still names it, keep it alive in the grave."""
        st = os.lstat(path)
        ino = self._ino(st)
        if stat.S_ISDIR(st.st_mode):
            return
        if st.st_nlink == 1 and ino not in self.graves and self._named(ino):
            os.link(path, os.path.join(self.grave, str(ino).encode()), follow_symlinks=False)
            self.graves.add(ino)
        elif st.st_nlink == 1 and not self._named(ino) and ino not in self.graves:
            self.undo.pop(ino, None)

    def _record(self, fd: int, ino: int, offset: int, length: int) -> None:
        """About to overwrite [offset, offset+length) of a file: keep the old bytes and size."""
        size = os.fstat(fd).st_size
        old = os.pread(fd, max(0, min(length, size - offset)), offset) if offset < size else b""
        self.undo.setdefault(ino, Undo()).records.append((offset, length, old, size))

    # control ----------------------------------------------------------------------------
    def _differs(self, ino: int, snap: dict[bytes, Entry]) -> bool:
        """Would a crash change this directory's entries (are they not all durable)?"""
        try:
            live = self._listing(self._path(ino))
        except OSError:
            return bool(snap)
        return {n: e.ino for n, e in live.items()} != {n: e.ino for n, e in snap.items()}

    def stats(self) -> str:
        """What a crash now would throw away: files with unsynced writes, directories whose
        entries differ from their durable ones, bytes of undo kept."""
        dirs = sum(1 for ino, snap in self.snaps.items() if self._differs(ino, snap)) + \
            sum(1 for snap in self.dead_dirs.values() if snap)
        return (f"files={sum(1 for u in self.undo.values() if u.records)} "
                f"dirs={dirs} "
                f"bytes={sum(u.nbytes() for u in self.undo.values() if u.records)}")

    def sync_all(self) -> None:
        self.undo.clear()
        self.snaps.clear()
        self.dead_dirs.clear()

    def crash(self, rng: random.Random | None = None) -> str:
        """Put BACKING back to its durable state (see the module docstring). With `rng`, keep
        a random part of what was not durable ("torn")."""
        summary = self.stats()
        for fd, _ in self.fhs.values():
            os.close(fd)
        self.fhs.clear()
        # Where every surviving inode can be found now: its live names, then the grave.
        where: dict[int, bytes] = {}
        dirs: dict[int, bytes] = {ROOT: self.backing}
        for top, dnames, fnames in os.walk(self.backing):
            if top == self.backing:
                dnames[:] = [d for d in dnames if d != HIDDEN]
            for name in dnames + fnames:
                p = os.path.join(top, name)
                st = os.lstat(p)
                (dirs if stat.S_ISDIR(st.st_mode) else where)[self._ino(st)] = p
        for ino in self.graves:
            where.setdefault(ino, os.path.join(self.grave, str(ino).encode()))
        # File contents back to their last fsync (or, torn, some prefix of the writes after).
        for ino, undo in self.undo.items():
            path = where.get(ino)
            if path is None or not undo.records:
                continue
            keep = rng.randint(0, len(undo.records)) if rng else 0
            fd = os.open(path, os.O_RDWR)
            try:
                for i, (offset, length, old, size) in reversed(
                        list(enumerate(undo.records))[keep:]):
                    # Torn: the first write lost may keep a prefix of its sectors.
                    cut = rng.randrange(0, length, SECTOR) if rng and i == keep and length \
                        else 0
                    os.pwrite(fd, old[cut:], offset + cut)
                    os.ftruncate(fd, max(size, offset + cut) if cut else size)
            finally:
                os.close(fd)

        def entries(ino: int) -> dict[bytes, Entry]:
            live = dirs.get(ino)
            snap = self.snaps.get(ino, self.dead_dirs.get(ino))
            if snap is not None and (live is None or not rng or rng.random() < 0.5):
                return snap
            return self._listing(live) if live is not None else {}

        new = os.path.join(self.hidden, b"new")
        os.mkdir(new)
        lost: list[str] = []

        def build(ino: int, dst: bytes, depth: int) -> None:
            if depth > 64:
                return
            for name, e in entries(ino).items():
                target = os.path.join(dst, name)
                if e.kind == "d":
                    os.mkdir(target)
                    build(e.ino, target, depth + 1)
                elif e.kind == "l":
                    os.symlink(e.target, target)
                elif e.ino in where:
                    os.link(where[e.ino], target)
                else:
                    lost.append(target.decode(errors="replace"))
        build(ROOT, new, 0)
        if lost:  # a bug of ours, not of the program under test
            print(f"lazyfs: inodes missing at crash: {lost}", file=sys.stderr)
        for name in os.listdir(self.backing):
            if name == HIDDEN:
                continue
            p = os.path.join(self.backing, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        for name in os.listdir(new):
            os.rename(os.path.join(new, name), os.path.join(self.backing, name))
        shutil.rmtree(self.hidden)
        self.sync_all()
        return summary

    # pyfuse3 operations ---------------------------------------------------------------
    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        return self._entry(self._child(parent_inode, name))

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        for fd, ino in self.fhs.values():
            if ino == inode:
                return self._attr(os.fstat(fd))
        return self._attr(os.lstat(self._path(inode)))

    @_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        if fields.update_size:
            # Through the caller's descriptor when it has one (the name may be gone).
            fd = os.dup(self.fhs[fh][0]) if fh in self.fhs else os.open(path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if attr.st_size < size:
                    self._record(fd, inode, attr.st_size, size - attr.st_size)
                else:
                    self._record(fd, inode, size, 0)
                os.ftruncate(fd, attr.st_size)
            finally:
                os.close(fd)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                     follow_symlinks=False)
        return await self.getattr(inode)

    @_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.readlink(self._path(inode))

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        self._path(inode)
        return inode

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        names = sorted(n for n in os.listdir(path) if not (fh == ROOT and n == HIDDEN))
        for i, name in enumerate(names[start_id:], start_id + 1):
            try:
                attr = self._entry(os.path.join(path, name))
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, name, attr, i):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.snaps.pop(fh, None)  # its entries, as they are now, are durable

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._dirty_dir(parent_inode)
        os.mkdir(path, mode)
        attr = self._entry(path)
        self.snaps[attr.st_ino] = {}  # a new directory holds nothing durable yet
        return attr

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        ino = self._ino(os.lstat(path))
        self._dirty_dir(parent_inode)
        os.rmdir(path)
        self.dead_dirs[ino] = self.snaps.pop(ino, {})
        self.paths.pop(ino, None)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = self._child(parent_inode, name)
        self._dirty_dir(parent_inode)
        self._removing(path)
        os.unlink(path)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any
                      ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._dirty_dir(parent_inode)
        os.symlink(target, path)
        return self._entry(path)

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
                   ) -> pyfuse3.EntryAttributes:
        path = self._child(new_parent_inode, new_name)
        self._dirty_dir(new_parent_inode)
        os.link(self._path(inode), path, follow_symlinks=False)
        return self._entry(path)

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        st = os.lstat(old)
        gone = 0
        exists = os.path.lexists(new)
        if exists and flags & pyfuse3.RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "exists")
        self._dirty_dir(parent_inode_old)
        self._dirty_dir(parent_inode_new)
        if exists:
            self._removing(new)
            gone = self._ino(os.lstat(new))
        os.rename(old, new)
        if exists and stat.S_ISDIR(st.st_mode) and gone != self._ino(st):
            self.dead_dirs[gone] = self.snaps.pop(gone, {})
        ino = self._ino(st)
        self.paths[ino] = new
        if stat.S_ISDIR(st.st_mode):  # everything under it moved too
            prefix = old + b"/"
            for i, p in list(self.paths.items()):
                if p.startswith(prefix):
                    self.paths[i] = new + p[len(old):]

    def _open_flags(self, flags: int) -> int:
        # Read-write whatever was asked, so old bytes can be read back for the undo log; no
        # O_APPEND (the kernel gives every write its offset); no O_DIRECT (the backing file
        # system need not support it, and durability here is ours to decide anyway).
        flags &= ~(os.O_ACCMODE | os.O_APPEND | os.O_DIRECT | os.O_CREAT | os.O_EXCL |
                   os.O_TRUNC)
        return flags | os.O_RDWR

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        path = self._path(inode)
        fd = os.open(path, self._open_flags(flags))
        if flags & os.O_TRUNC:
            size = os.fstat(fd).st_size
            self._record(fd, inode, 0, size)
            os.ftruncate(fd, 0)
        self.fhs[fd] = (fd, inode)
        return pyfuse3.FileInfo(fh=fd)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        self._dirty_dir(parent_inode)
        if os.path.lexists(path):
            if flags & os.O_EXCL:
                raise OSError(errno.EEXIST, "exists")
            attr = self._entry(path)
            return await self.open(attr.st_ino, flags, ctx), attr
        fd = os.open(path, self._open_flags(flags) | os.O_CREAT | os.O_EXCL, mode)
        attr = self._entry(path)
        self.undo.pop(attr.st_ino, None)  # a new inode (a number may be reused)
        self._record(fd, attr.st_ino, 0, 0)  # durable: empty
        self.fhs[fd] = (fd, attr.st_ino)
        return pyfuse3.FileInfo(fh=fd), attr

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.fhs[fh][0], size, off)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        fd, ino = self.fhs[fh]
        self._record(fd, ino, off, len(buf))
        written = 0
        while written < len(buf):
            written += os.pwrite(fd, buf[written:], off + written)
        return written

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.undo.pop(self.fhs[fh][1], None)  # data and size are durable

    async def flush(self, fh: int) -> None:
        return None

    @_errors
    async def release(self, fh: int) -> None:
        fd, ino = self.fhs.pop(fh)
        try:
            if os.fstat(fd).st_nlink == 0 and ino not in self.graves:
                self.undo.pop(ino, None)  # gone for good; its number may be reused
        finally:
            os.close(fd)

    @_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out


async def _control(fs: LazyFS, path: str, done: trio.Event) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from an earlier run
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    while not done.is_set():
        conn, _ = await sock.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                got = await conn.recv(4096)
                if not got:
                    break
                line += got
            words = line.decode().split()
            try:
                if words[:1] == ["crash"]:
                    rng = random.Random(words[2]) if words[1:2] == ["torn"] else None
                    reply = "ok " + fs.crash(rng)  # blocking: no request runs meanwhile
                    done.set()
                elif words == ["stats"]:
                    reply = "ok " + fs.stats()
                elif words == ["sync"]:
                    fs.sync_all()
                    reply = "ok"
                else:
                    reply = f"error unknown command {line!r}"
            except Exception as exc:  # noqa: BLE001 - told to the caller
                reply = f"error {exc!r}"
            out = reply.encode() + b"\n"
            while out:
                out = out[await conn.send(out):]
    sock.close()
    pyfuse3.terminate()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    backing, mountpoint, control = argv[:3]
    fs = LazyFS(backing)
    options = set(pyfuse3.default_options) | {"fsname=lazyfs", "subtype=lazyfs"}
    if "--debug" in argv:
        options.add("debug")
    pyfuse3.init(fs, mountpoint, options)
    done = trio.Event()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_control, fs, control, done)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
