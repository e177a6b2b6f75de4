"""Which errno a program sees for each dfs error: the one it would get from a local disk."""

from __future__ import annotations

import errno

from .. import errors

_BY_CLASS: dict[type[errors.DFSError], int] = {
    errors.NotFound: errno.ENOENT,
    errors.AlreadyExists: errno.EEXIST,
    errors.NotADirectory: errno.ENOTDIR,
    errors.IsADirectory: errno.EISDIR,
    errors.DirectoryNotEmpty: errno.ENOTEMPTY,
    errors.NoSpace: errno.ENOSPC,
    errors.Unavailable: errno.EIO,  # no replica could be read, or meta is unreachable
    errors.ChecksumError: errno.EIO,
    errors.Timeout: errno.EIO,
    errors.Unauthorized: errno.EACCES,
    errors.TooLarge: errno.EFBIG,
    errors.BadRequest: errno.EINVAL,
}


def to_errno(exc: BaseException) -> int:
    """The errno for a dfs error (EIO for anything without a closer match), or for an
    OSError from the local spool (its own errno)."""
    if isinstance(exc, errors.DFSError):
        for cls in type(exc).__mro__:
            if cls in _BY_CLASS:
                return _BY_CLASS[cls]
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
