"""Which errno a program sees for each dfs error: the one it would get from a local disk."""

from __future__ import annotations

import errno

from .. import errors

# As everywhere in dfs (errors.ERRNO), except a timeout: a program reading or writing a file
# expects EIO for "the storage did not answer", not ETIMEDOUT.
_BY_CLASS: dict[type[errors.DFSError], int] = {**errors.ERRNO, errors.Timeout: errno.EIO}


def to_errno(exc: BaseException) -> int:
    """The errno for a dfs error (EIO for anything without a closer match), or for an
    OSError from the local spool (its own errno)."""
    if isinstance(exc, errors.DFSError):
        return _BY_CLASS.get(type(exc), errno.EIO)
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
