"""`DFSFile`: what `DFSFileSystem.open` returns, an fsspec `AbstractBufferedFile`.

Reading ("rb") goes through one `FileReader`, opened with the file (one `stat`: the file's
blocks, their replicas and read tokens), with read-ahead sized by the access pattern:
- a read that does not start where the last one ended (a parquet footer, a column chunk, a
  record looked up by offset) fetches exactly the checksum units it covers, nothing ahead;
- each read that continues the last doubles the segments kept in flight (2, 4, ... up to
  READ_WINDOW of READ_SIZE), so a sequential scan (read_csv, a copy) streams at full speed
  while the caller works on what it has.
Writing ("wb", "xb") streams through one `FileWriter`: the upload starts at open (so "xb"
fails at once if the path exists), buffers are sent as they fill, and the file appears, whole
and atomically, at close. A `with` block that raises aborts the upload: nothing half-written is
ever published. dfs files are write-once: "ab" and "r+b" raise io.UnsupportedOperation.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from fsspec.asyn import AbstractAsyncStreamedFile
from fsspec.caching import caches
from fsspec.spec import AbstractBufferedFile

from .. import config
from ..client.reader import FileReader
from ..client.writer import FileWriter
from .errors import translated, write_once
from .filesystem import DFSFileSystem, entry, run

log = logging.getLogger(__name__)

WRITE_BUFFER = 4 * config.PACKET_SIZE  # bytes gathered in the caller's thread per hop


class ReadPattern:
    """Tells a read that continues the last one from a jump, and sizes read-ahead by it."""

    def __init__(self) -> None:
        self.next = -1  # where the last read ended
        self.streak = 0  # reads in a row that continued the last one

    def window(self, start: int, end: int) -> int:
        """Segments to keep in flight for a read of [start, end); 0: read exactly that."""
        self.streak = self.streak + 1 if start == self.next else 0
        self.next = end
        return min(config.READ_WINDOW, 2 ** self.streak) if self.streak else 0


async def read_range(reader: FileReader, pattern: ReadPattern, path: str, start: int,
                     end: int) -> bytes:
    """Bytes [start, end) of an open file, read as `pattern` says (on the reader's loop)."""
    window = pattern.window(start, end)
    with translated(path):
        if not window:  # a jump: exactly what was asked, nothing ahead
            return await reader.pread(start, end - start)
        reader.window = window
        reader.seek(start)
        return await reader.read(end - start)


class DFSFile(AbstractBufferedFile):
    def __init__(self, fs: DFSFileSystem, path: str, mode: str = "rb",
                 block_size: Any = None, autocommit: bool = True,
                 options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if mode not in ("rb", "wb", "xb"):
            raise write_once(path, mode)
        self._reader: Any = None
        self._writer: Any = None
        self._pattern = ReadPattern()
        if mode == "rb":
            self._reader = run(fs, fs._open_reader, path)
            info = {"path": path, "type": "file", "size": self._reader.size,
                    "block_size": self._reader.block_size, "mtime": self._reader.mtime,
                    "replication": self._reader.replication}
            super().__init__(fs, path, mode, block_size=block_size, autocommit=autocommit,
                             cache_type="none", size=self._reader.size, **kwargs)
            self.details = entry(info)
            # The cache must not hold this file strongly: pyarrow never closes the files it
            # opens, and a file in a reference cycle lingers until a garbage collection,
            # perhaps at interpreter exit, where pyarrow then aborts. Freed by reference
            # count, an unclosed file is closed as soon as its reader lets go of it.
            self.cache = caches["none"](self.blocksize, _weak_fetcher(self), self.size)
        else:
            # First: if this fails ("xb" onto an existing file), no half-made file object
            # is left for __del__ to close.
            self._writer = run(fs, fs._open_writer, path, mode == "xb", options or {})
            super().__init__(fs, path, mode, block_size=block_size or WRITE_BUFFER,
                             autocommit=autocommit, **kwargs)
            self.offset = 0  # the upload is open: flush() must not start another

    # reading -----------------------------------------------------------------------------
    def _fetch_range(self, start: int, end: int) -> bytes:
        return run(self.fs, read_range, self._reader, self._pattern, self.path, start, end)

    # writing -----------------------------------------------------------------------------
    def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        run(self.fs, self._send, data, final and self.autocommit)
        return True

    async def _send(self, data: bytes, commit: bool) -> None:
        with translated(self.path):
            if data:
                await self._writer.write(data)
            if commit:
                await self._writer.close()
        if commit:
            self.fs.invalidate_cache(self.path)

    def commit(self) -> None:
        """Publish a file written with autocommit=False (inside `fs.transaction`)."""
        run(self.fs, self._send, b"", True)

    def discard(self) -> None:
        """Give up the upload: the file never appears."""
        if self._writer is not None:
            run(self.fs, self._writer.abort)

    # closing -----------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "_closed", True):  # AbstractBufferedFile.closed, typed for mypy
            return
        if self._reader is not None:
            self.closed = True
            self.cache = None
            self._call_soon(self._reader.abandon)
            return
        if self._on_io_thread():
            # Garbage-collected unclosed on fsspec's IO thread (where nothing may wait for
            # the loop): a file never closed is not published.
            self.closed = True
            log.warning("%s was never closed: its upload is abandoned", self.path)
            self._call_soon(lambda: asyncio.ensure_future(self._writer.abort()))
            return
        try:
            super().close()
        finally:
            if self.autocommit and not self._writer.closed:
                run(self.fs, self._writer.abort)  # the commit failed: let meta reclaim

    def _on_io_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.fs.loop
        except RuntimeError:
            return False

    def _call_soon(self, fn: Any) -> None:
        try:
            self.fs.loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass  # the loop is closed (interpreter exit): nothing is running to stop

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self.writable():
            self.discard()
            self.closed = True
            return
        self.close()


class DFSAsyncFile(AbstractAsyncStreamedFile):
    """What `await fs.open_async(path, mode)` returns on an asynchronous filesystem: the
    same reads (ReadPattern) and the same write-once upload as DFSFile, awaited on the
    caller's own loop. Opened by DFSFileSystem.open_async with its reader or writer."""

    def __init__(self, fs: DFSFileSystem, path: str, reader: FileReader | None = None,
                 writer: FileWriter | None = None) -> None:
        self._reader, self._writer = reader, writer
        self._pattern = ReadPattern()
        if reader is not None:
            super().__init__(fs, path, "rb", cache_type="none", size=reader.size)
            self.cache = None  # reads go straight to _fetch_range: no cycle through a cache
            self.details = entry({"path": path, "type": "file", "size": reader.size,
                                  "block_size": reader.block_size, "mtime": reader.mtime,
                                  "replication": reader.replication})
        else:
            super().__init__(fs, path, "wb", block_size=WRITE_BUFFER)
            self.offset = 0  # the upload is open

    async def _fetch_range(self, start: int, end: int) -> bytes:
        assert self._reader is not None
        return await read_range(self._reader, self._pattern, self.path, start, end)

    async def _upload_chunk(self, final: bool = False) -> bool:
        assert self._writer is not None
        data = self.buffer.getvalue()
        with translated(self.path):
            if data:
                await self._writer.write(data)
            if final:
                await self._writer.close()
        return True

    async def close(self) -> None:
        if getattr(self, "_closed", True):  # AbstractBufferedFile.closed, typed for mypy
            return
        if self._reader is not None:
            self._reader.abandon()
            self.closed = True
            return
        assert self._writer is not None
        try:
            await super().close()
        finally:
            if not self._writer.closed:
                await self._writer.abort()  # the commit failed: let meta reclaim

    async def __aexit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and self._writer is not None:
            await self._writer.abort()  # nothing half-written is published
            self.closed = True
            return
        await self.close()


def _weak_fetcher(f: DFSFile) -> Any:
    """f._fetch_range, without keeping f alive."""
    ref = weakref.WeakMethod(f._fetch_range)

    def fetch(start: int, end: int) -> bytes:
        method = ref()
        if method is None:
            raise ValueError("I/O operation on a closed dfs file")
        return bytes(method(start, end))
    return fetch
