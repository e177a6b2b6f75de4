"""Meta's entries (`stat`, `ls` rows) as the stat results the kernel caches.

Meta keeps mode, uid and gid only once something set them (chmod, chown, a create through the
mount); until then a file shows 0644, a directory 0755, and both belong to whoever mounted.
dfs has no per-user permissions yet, so modes are recorded and shown, never enforced.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import pyfuse3

# How long the kernel may trust a name or an attribute without asking again. Short: other
# clients change the namespace too, and a file replaced elsewhere is seen at the next open
# (close-to-open) whatever this says, because open always asks meta.
TIMEOUT = 1.0
# What cp, dd and friends size their buffers by: with 1 MiB, each write(2) is one FUSE
# request of up to 1 MiB (the most FUSE takes), not eight of 128 KiB.
BLKSIZE = 1024 * 1024

_DEFAULT_MODE = {"file": 0o644, "dir": 0o755, "symlink": 0o777}
_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def entry_attributes(ino: int, entry: dict[str, Any], uid: int = -1,
                     gid: int = -1) -> pyfuse3.EntryAttributes:
    """uid/gid: shown for entries whose owner was never set (default: this process's)."""
    a = pyfuse3.EntryAttributes()
    kind = entry.get("type", "file")
    mode = entry.get("mode")
    a.st_ino = ino
    a.generation = 0
    a.entry_timeout = TIMEOUT
    a.attr_timeout = TIMEOUT
    a.st_mode = _TYPE_BITS.get(kind, stat.S_IFREG) | (
        _DEFAULT_MODE.get(kind, 0o644) if mode is None else mode & 0o7777)
    # 1 for directories too: with 2 + subdirectories, find(1) would skip entries it
    # believes are not directories; 1 tells it to look at each (as btrfs does).
    a.st_nlink = 1
    a.st_uid = entry.get("uid", os.getuid() if uid < 0 else uid)
    a.st_gid = entry.get("gid", os.getgid() if gid < 0 else gid)
    a.st_rdev = 0
    size = len(os.fsencode(entry["target"])) if kind == "symlink" else \
        (entry.get("size", 0) if kind == "file" else 0)
    a.st_size = size
    a.st_blksize = BLKSIZE
    a.st_blocks = -(-size // 512)
    ns = int(entry.get("mtime", 0.0) * 1e9)
    a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = ns
    return a
