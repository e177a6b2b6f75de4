"""dfs: a GFS-style distributed file system.

    import dfs
    c = dfs.Client("127.0.0.1:5000")
    c.put_bytes(b"hello", "/greeting.txt")
    assert c.get_bytes("/greeting.txt") == b"hello"
"""

from .client import AsyncClient, Client
from .client.filechecksum import local_checksum
from .client.tree import Tally, TreeResult
from .errors import (
    AlreadyExists,
    BadRequest,
    ChecksumError,
    DFSError,
    DirectoryNotEmpty,
    InternalError,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotFound,
    NotLeader,
    StaleGeneration,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    VersionMismatch,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`dfs.DFSFileSystem`, imported on first use: fsspec is not loaded by every `import dfs`
    (dfsd and dfs-cli never need it)."""
    if name == "DFSFileSystem":
        from .fsspec import DFSFileSystem
        return DFSFileSystem
    raise AttributeError(f"module 'dfs' has no attribute {name!r}")


__all__ = [
    "AlreadyExists", "AsyncClient", "BadRequest", "ChecksumError", "Client", "DFSError",
    "DirectoryNotEmpty", "InternalError", "IsADirectory", "NoSpace", "NotADirectory",
    "NotFound", "NotLeader", "StaleGeneration", "Timeout", "TooLarge", "Unauthorized",
    "Unavailable", "VersionMismatch", "DFSFileSystem", "Tally", "TreeResult", "local_checksum",
    "__version__",
]
