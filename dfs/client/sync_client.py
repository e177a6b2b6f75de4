"""`dfs.Client`: the blocking client, a thin layer over AsyncClient.

It runs one event loop in a daemon thread and submits each call to it, so connections are
reused across calls and the client works inside programs that have their own event loop.
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any, Coroutine, TypeVar

from .. import config
from .async_client import AsyncClient, Progress
from .reader import FileReader
from .tree import TreeResult
from .writer import FileWriter

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        try:
            import uvloop
            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a declared dependency
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dfs-client",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class Client:
    """Blocking dfs client: `dfs.Client("127.0.0.1:5000")`, `dfs.Client("h1:5000,h2:5000")`
    for an HA cluster's metas, or `dfs.Client()` for $DFS_META."""

    def __init__(self, meta: str | None = None, *, timeout: float = config.RPC_TIMEOUT,
                 secret_file: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None,
                 failover_wait: float = config.META_FAILOVER_WAIT) -> None:
        self._async = AsyncClient(meta, timeout=timeout, secret_file=secret_file,
                                  tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                  failover_wait=failover_wait)
        self._thread = _LoopThread()
        self.meta_addrs = self._async.meta_addrs

    @property
    def meta_addr(self) -> str:
        """The meta in use (HOST:PORT); with several, it moves when the active one does."""
        return self._async.meta_addr

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._thread.run(coro)

    def close(self) -> None:
        """Close connections and stop the loop thread; closing twice is harmless."""
        if self._thread.loop.is_closed():
            return
        self._run(self._async.close())
        self._thread.stop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, local: str, remote: str, *, replication: int = config.DEFAULT_REPLICATION,
            block_size: int = config.DEFAULT_BLOCK_SIZE,
            progress: Progress | None = None) -> dict[str, Any]:
        """Upload a local file to `remote`, replacing it atomically."""
        return self._run(self._async.put(local, remote, replication=replication,
                                         block_size=block_size, progress=progress))

    def put_bytes(self, data: bytes, remote: str, *,
                  replication: int = config.DEFAULT_REPLICATION,
                  block_size: int = config.DEFAULT_BLOCK_SIZE) -> dict[str, Any]:
        """Upload bytes to `remote`, replacing it atomically."""
        return self._run(self._async.put_bytes(data, remote, replication=replication,
                                               block_size=block_size))

    def put_stream(self, f: Any, remote: str, *, replication: int = config.DEFAULT_REPLICATION,
                   block_size: int = config.DEFAULT_BLOCK_SIZE,
                   progress: Progress | None = None) -> dict[str, Any]:
        """Upload everything a binary stream yields."""
        return self._run(self._async.put_stream(f, remote, replication=replication,
                                                block_size=block_size, progress=progress))

    def get(self, remote: str, local: str, *, progress: Progress | None = None) -> int:
        """Download `remote` to a local file (which appears only once complete)."""
        return self._run(self._async.get(remote, local, progress=progress))

    def get_stream(self, remote: str, f: Any, *, progress: Progress | None = None) -> int:
        """Download `remote` into a binary stream."""
        return self._run(self._async.get_stream(remote, f, progress))

    def get_bytes(self, remote: str) -> bytes:
        """The whole file in memory."""
        return self._run(self._async.get_bytes(remote))

    def open(self, path: str, mode: str = "rb", *,
             replication: int = config.DEFAULT_REPLICATION,
             block_size: int = config.DEFAULT_BLOCK_SIZE) -> "SyncFile":
        """A seekable reader ("rb") or a streaming writer ("wb", visible after close)."""
        f = self._run(self._async.open(path, mode, replication=replication,
                                       block_size=block_size)._open())
        return SyncFile(self, f)

    def ls(self, path: str = "/") -> list[dict[str, Any]]:
        return self._run(self._async.ls(path))

    def stat(self, path: str) -> dict[str, Any]:
        return self._run(self._async.stat(path))

    def mkdir(self, path: str, parents: bool = False) -> None:
        self._run(self._async.mkdir(path, parents))

    def mv(self, src: str, dst: str) -> str:
        return self._run(self._async.mv(src, dst))

    def rm(self, path: str, recursive: bool = False) -> int:
        return self._run(self._async.rm(path, recursive))

    def fsck(self, path: str = "/") -> dict[str, Any]:
        return self._run(self._async.fsck(path))

    def decommission(self, addr: str, cancel: bool = False) -> dict[str, Any]:
        return self._run(self._async.decommission(addr, cancel))

    def status(self) -> dict[str, Any]:
        return self._run(self._async.status())

    # many files, and cluster-side operations (same semantics as AsyncClient's) ----------
    def put_tree(self, sources: list[str] | str, remote: str, **kw: Any) -> TreeResult:
        """Upload files and directories recursively, in parallel; failures in the result."""
        return self._run(self._async.put_tree(sources, remote, **kw))

    def get_tree(self, sources: list[str] | str, local: str, **kw: Any) -> TreeResult:
        """Download files, directories and globs recursively, in parallel."""
        return self._run(self._async.get_tree(sources, local, **kw))

    def sync(self, src: str, dst: str, **kw: Any) -> TreeResult:
        """Make DST match SRC, copying only what differs (`dfs:/path` marks the dfs side)."""
        return self._run(self._async.sync(src, dst, **kw))

    def cp(self, src: str, dst: str, recursive: bool = False) -> str:
        """Copy inside the cluster, sharing blocks (no bytes move)."""
        return self._run(self._async.cp(src, dst, recursive))

    def du(self, path: str, summary: bool = True) -> list[dict[str, Any]]:
        return self._run(self._async.du(path, summary))

    def df(self) -> dict[str, int]:
        return self._run(self._async.df())

    def setrep(self, path: str, replication: int, recursive: bool = False,
               wait: bool = False) -> int:
        return self._run(self._async.setrep(path, replication, recursive, wait))

    def checksum(self, path: str) -> dict[str, Any]:
        """The file's composite CRC32C, from stored CRCs (see dfs.local_checksum)."""
        return self._run(self._async.checksum(path))

    def touch(self, path: str, mtime: float | None = None) -> None:
        self._run(self._async.touch(path, mtime))

    def walk(self, path: str) -> tuple[list[dict[str, Any]], list[str]]:
        return self._run(self._async.walk(path))

    def glob(self, pattern: str) -> list[dict[str, Any]]:
        return self._run(self._async.glob(pattern))


class SyncFile(io.RawIOBase):
    """A file object over a FileReader or FileWriter."""

    def __init__(self, client: Client, f: FileReader | FileWriter) -> None:
        super().__init__()
        self._client = client
        self._f = f

    def readable(self) -> bool:
        return isinstance(self._f, FileReader)

    def writable(self) -> bool:
        return isinstance(self._f, FileWriter)

    def seekable(self) -> bool:
        return isinstance(self._f, FileReader)

    def read(self, n: int = -1) -> bytes:
        if not isinstance(self._f, FileReader):
            raise io.UnsupportedOperation("not readable")
        return self._client._run(self._f.read(n))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if not isinstance(self._f, FileReader):
            raise io.UnsupportedOperation("not seekable")
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        if isinstance(self._f, FileReader):
            return self._f.tell()
        return self._f.size + len(self._f.buf)

    def write(self, data: Any) -> int:
        if not isinstance(self._f, FileWriter):
            raise io.UnsupportedOperation("not writable")
        return self._client._run(self._f.write(data))

    def abort(self) -> None:
        """Writers only: drop the upload instead of publishing it."""
        if isinstance(self._f, FileWriter):
            self._client._run(self._f.abort())
        super().close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if isinstance(self._f, FileWriter):
                self._client._run(self._f.close())
            else:
                self._client._run(self._f.close())
        finally:
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and isinstance(self._f, FileWriter):
            self.abort()
        else:
            self.close()
