"""dfs-mount's parts that need no kernel: the errno of each dfs error, the inode table (lookup
counts, renames of trees, removal while open), and the stat results made from meta's entries."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from dfs import errors
from dfs.mount.errnos import to_errno
from dfs.mount.inodes import ROOT, Inodes


@pytest.mark.parametrize("exc, expected", [
    (errors.NotFound("x"), errno.ENOENT),
    (errors.AlreadyExists("x"), errno.EEXIST),
    (errors.NotADirectory("x"), errno.ENOTDIR),
    (errors.IsADirectory("x"), errno.EISDIR),
    (errors.DirectoryNotEmpty("x"), errno.ENOTEMPTY),
    (errors.NoSpace("x"), errno.ENOSPC),
    (errors.Unavailable("no replica"), errno.EIO),
    (errors.ChecksumError("x"), errno.EIO),
    (errors.Timeout("x"), errno.EIO),
    (errors.Unauthorized("x"), errno.EACCES),
    (errors.BadRequest("x"), errno.EINVAL),
    (errors.TooLarge("x"), errno.EFBIG),
    (errors.DFSError("x"), errno.EIO),
    (errors.InternalError("x"), errno.EIO),
    (OSError(errno.ENOSPC, "cache full"), errno.ENOSPC),
    (ValueError("a bug"), errno.EIO),
])
def test_each_error_becomes_the_errno_a_program_expects(exc, expected) -> None:
    assert to_errno(exc) == expected


def test_inodes_live_while_the_kernel_remembers_them() -> None:
    t = Inodes()
    assert t.path(ROOT) == "/" and t.of("/") == ROOT
    a = t.looked_up("/a")
    assert t.looked_up("/a") == a and t.path(a) == "/a"
    t.forget(a, 1)
    assert t.path(a) == "/a"  # one lookup left
    t.forget(a, 1)
    assert t.path(a) is None and t.known("/a") is None
    assert t.looked_up("/a") != a  # numbers are never reused


def test_a_renamed_directory_takes_what_is_under_it_along() -> None:
    t = Inodes()
    d, f, other = t.looked_up("/d"), t.looked_up("/d/sub/f"), t.looked_up("/dx")
    target = t.looked_up("/e")
    t.moved("/d", "/e")
    assert (t.path(d), t.path(f), t.path(other)) == ("/e", "/e/sub/f", "/dx")
    assert t.path(target) is None  # what was at /e has no path any more
    t.moved("/dx", "/dy", tree=False)
    assert t.path(other) == "/dy" and t.known("/dx") is None


def test_a_removed_path_loses_its_name_at_once() -> None:
    t = Inodes()
    d, f = t.looked_up("/d"), t.looked_up("/d/f")
    t.removed("/d")
    assert t.path(d) is None and t.path(f) is None
    assert t.looked_up("/d") not in (d, f)  # a new /d is a new inode
    t.forget(f, 1)  # forgetting a removed inode is harmless
    assert t.known("/d") is not None


def test_stat_results_from_meta_entries() -> None:
    pytest.importorskip("pyfuse3", reason="the [mount] extra (pyfuse3) is not installed")
    from dfs.mount.attrs import entry_attributes
    f = entry_attributes(5, {"type": "file", "size": 1000, "mtime": 1.5})
    assert stat.S_ISREG(f.st_mode) and stat.S_IMODE(f.st_mode) == 0o644
    assert (f.st_ino, f.st_size, f.st_blocks, f.st_mtime_ns) == (5, 1000, 2, 1_500_000_000)
    assert (f.st_uid, f.st_gid) == (os.getuid(), os.getgid())
    d = entry_attributes(6, {"type": "dir", "size": 0, "mtime": 0, "mode": 0o700, "uid": 7,
                             "gid": 8})
    assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o700
    assert (d.st_uid, d.st_gid, d.st_nlink) == (7, 8, 1)
    ln = entry_attributes(7, {"type": "symlink", "target": "héllo", "mtime": 0})
    assert stat.S_ISLNK(ln.st_mode) and ln.st_size == len("héllo".encode())
