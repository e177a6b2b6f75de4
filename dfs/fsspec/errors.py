"""dfs errors as the OSError subclasses fsspec and every Python data tool expect.

fsspec's generic code tests for FileNotFoundError (exists, expand_path, copy's on_error) and
FileExistsError (open "xb", pipe mode="create"); pandas and pyarrow show an OSError's message
as is. The dfs exception stays attached as __cause__ for callers that want the code."""

from __future__ import annotations

import errno
import io
from contextlib import contextmanager
from typing import Iterator

from .. import errors


def to_oserror(exc: errors.DFSError, path: str | None = None) -> OSError:
    """The OSError (FileNotFoundError, FileExistsError, ...) for a dfs error on `path`."""
    code = errors.ERRNO.get(type(exc), errno.EIO)  # unavailable, checksum, internal: EIO
    return OSError(code, str(exc), path) if path else OSError(code, str(exc))


@contextmanager
def translated(path: str | None = None) -> Iterator[None]:
    """Raise dfs errors from the block as OSErrors (naming `path`)."""
    try:
        yield
    except errors.DFSError as exc:
        raise to_oserror(exc, path) from exc


def write_once(path: str, mode: str) -> io.UnsupportedOperation:
    """The error for a mode dfs cannot give: files are written whole, once."""
    return io.UnsupportedOperation(
        f"dfs cannot open {path} with mode {mode!r}: dfs files are write-once; read with "
        "'rb', or write a whole new file with 'wb' (or 'xb')")
