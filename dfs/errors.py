"""Wire error codes and the exception classes they map to: the one table.

Two families, as in h11: `DFSError` subclasses are what a peer told us (or what we tell a
peer) through an error frame; `ProtocolViolation` is raised by the codec when the bytes a
peer sent break the framing rules. Every error code on the wire appears in `_CODES` below
and nowhere else.
"""

from __future__ import annotations

import errno
from typing import Any


class DFSError(Exception):
    """Base of every error the dfs client raises. `code` is the wire word."""

    code = "internal"
    words = "internal error"

    def __init__(self, msg: str = "", **details: Any) -> None:
        super().__init__(msg or self.words)
        self.msg = msg or self.words
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"err": self.code, "msg": self.msg}
        out.update(self.details)
        return out

    def __str__(self) -> str:
        if self.msg.startswith(self.words):
            return self.msg
        return f"{self.words}: {self.msg}"


class NotFound(DFSError):
    code, words = "not_found", "not found"


class AlreadyExists(DFSError):
    code, words = "exists", "already exists"


class NotADirectory(DFSError):
    code, words = "not_a_directory", "not a directory"


class IsADirectory(DFSError):
    code, words = "is_a_directory", "is a directory"


class DirectoryNotEmpty(DFSError):
    code, words = "not_empty", "directory not empty"


class NoSpace(DFSError):
    code, words = "no_space", "no space"


class Unavailable(DFSError):
    code, words = "unavailable", "unavailable"


class ChecksumError(DFSError):
    code, words = "checksum", "checksum mismatch"


class BadRequest(DFSError):
    code, words = "bad_request", "bad request"


class Unauthorized(DFSError):
    code, words = "unauthorized", "unauthorized"


class TooLarge(DFSError):
    code, words = "too_large", "too large"


class VersionMismatch(DFSError):
    code, words = "version", "protocol version mismatch"


class StaleGeneration(DFSError):
    code, words = "stale", "stale replica"


class Timeout(DFSError):
    code, words = "timeout", "timed out"


class NotLeader(DFSError):
    """This meta is a standby (or has just lost the lead): nothing was done. The reply's
    `leader` detail names the active meta when this one knows it; clients retry there."""

    code, words = "not_leader", "not the active meta"


class InternalError(DFSError):
    code, words = "internal", "internal error"


_CODES: dict[str, type[DFSError]] = {
    cls.code: cls
    for cls in (
        NotFound, AlreadyExists, NotADirectory, IsADirectory, DirectoryNotEmpty, NoSpace,
        Unavailable, ChecksumError, BadRequest, Unauthorized, TooLarge, VersionMismatch,
        StaleGeneration, Timeout, NotLeader, InternalError,
    )
}

ERROR_CODES = tuple(_CODES)

# The errno a local file system would give for each dfs error; any other (unavailable,
# checksum, internal, ...) is an I/O error (EIO). dfs://'s OSErrors and dfs-mount's replies
# both come from here.
ERRNO: dict[type[DFSError], int] = {
    NotFound: errno.ENOENT,
    AlreadyExists: errno.EEXIST,
    NotADirectory: errno.ENOTDIR,
    IsADirectory: errno.EISDIR,
    DirectoryNotEmpty: errno.ENOTEMPTY,
    NoSpace: errno.ENOSPC,
    Unauthorized: errno.EACCES,
    Timeout: errno.ETIMEDOUT,
    BadRequest: errno.EINVAL,
    TooLarge: errno.EFBIG,
}


def from_wire(header: dict[str, Any]) -> DFSError:
    """Build the exception for an error reply `{"err": CODE, "msg": ...}`."""
    code = header.get("err")
    cls = _CODES.get(code, InternalError) if isinstance(code, str) else InternalError
    msg = header.get("msg")
    details = {k: v for k, v in header.items() if k not in ("err", "msg", "id", "op")}
    err = cls(msg if isinstance(msg, str) else "", **details)
    if cls is InternalError and code != "internal":
        err.msg = f"unknown error code {code!r}: {err.msg}"
    return err


class ProtocolViolation(Exception):
    """The peer broke the framing rules; the connection cannot continue.

    `code` is the wire code sent back in the final error frame before closing.
    """

    def __init__(self, msg: str, code: str = "bad_request") -> None:
        super().__init__(msg)
        self.code = code
