"""`dfs.DFSFileSystem`: dfs as an fsspec filesystem, so `pd.read_parquet("dfs://...")` works.

An `fsspec.asyn.AsyncFileSystem` over `AsyncClient`: every operation is a coroutine on the
client, mapped to the cheapest dfs request (a rename for `mv`, a block-sharing copy for
`cp_file`, one recursive `rm`, a range read for `cat_file(start, end)`). The synchronous
methods fsspec derives from them run on fsspec's IO thread; from an event loop, pass
`asynchronous=True` and await the `_` methods.

One AsyncClient per event loop, made on first use: a pickled filesystem (dask ships it to its
workers) carries only its options (the meta address, file names for the secret and TLS, the
defaults for new files), never a connection, a listing or secret bytes.

Listings are not cached by default (dfs answers `stat` and `ls` from memory); with
`use_listings_cache=True` every write this process makes invalidates what it touched.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import weakref
from typing import Any

from fsspec.asyn import AsyncFileSystem, sync, sync_wrapper
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import make_instance
from fsspec.utils import isfilelike

from .. import config
from ..client.async_client import AsyncClient, meta_address
from ..client.blocklist import identity
from ..client.reader import FileReader
from ..client.writer import FileWriter
from ..errors import IsADirectory, NotADirectory, NotFound
from .errors import translated, write_once
from .urls import PROTOCOL, join_url, split_url


def entry(row: dict[str, Any]) -> dict[str, Any]:
    """An fsspec info/ls entry from a dfs `stat` or `ls` row (the same for both, so
    `info(p) == [e for e in ls(parent) if e["name"] == p][0]`)."""
    if row["type"] == "dir":
        return {"name": row["path"], "size": 0, "type": "directory", "mtime": row["mtime"]}
    return {"name": row["path"], "size": row["size"], "type": "file", "mtime": row["mtime"],
            "replication": row["replication"], "block_size": row["block_size"]}


class DFSFileSystem(AsyncFileSystem):
    """A dfs cluster as an fsspec filesystem (protocol "dfs").

    meta: HOST:PORT of meta, or a comma-separated list of an HA cluster's metas (default: the
    URL's, as in dfs://h1:5000,h2:5000/path, else $DFS_META, else 127.0.0.1:5000);
    secret_file, tls_cert, tls_key, tls_ca: as for dfs.Client (see docs/SECURITY.md);
    replication, block_size: what new files are written with; timeout: per request.
    """

    protocol = PROTOCOL
    root_marker = "/"
    sep = "/"

    def __init__(self, meta: str | None = None, *, secret_file: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 tls_ca: str | None = None, replication: int = config.DEFAULT_REPLICATION,
                 block_size: int = config.DEFAULT_BLOCK_SIZE,
                 timeout: float = config.RPC_TIMEOUT, use_listings_cache: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(use_listings_cache=use_listings_cache, **kwargs)
        self.meta = meta_address(meta)
        self.replication = replication
        self.dfs_block_size = block_size
        self.client_options: dict[str, Any] = {
            "timeout": timeout, "tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca,
            "secret_file": secret_file or os.environ.get("DFS_SECRET_FILE") or None}
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = \
            weakref.WeakKeyDictionary()

    def __reduce__(self) -> Any:
        """Pickled: the options alone, with the meta address and secret file resolved here
        (a worker elsewhere may have another $DFS_META, or none). A secret is named by its
        file, never copied; connections are made again on first use."""
        options = {**self.storage_options, "meta": self.meta,  # meta may have been args[0]
                   "secret_file": self.client_options["secret_file"]}
        return make_instance, (type(self), (), options)

    # URLs ---------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, (list, tuple)):
            return [cls._strip_protocol(p) for p in path]
        return split_url(os.fspath(path))[1]

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        meta = split_url(os.fspath(path))[0]
        return {"meta": meta} if meta else {}

    def unstrip_protocol(self, name: str) -> str:
        """The full URL, meta address included: `dfs://HOST:PORT/path`."""
        return join_url(self.meta, self._strip_protocol(name))

    # the client ---------------------------------------------------------------------------
    def client(self) -> AsyncClient:
        """The AsyncClient of the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = AsyncClient(self.meta, **self.client_options)
        return client

    async def _close(self) -> None:
        """Close the running loop's connections (they reopen if the filesystem is used)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()

    close = sync_wrapper(_close)

    # listings -----------------------------------------------------------------------------
    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        rows: list[dict[str, Any]] | None = None
        if self.dircache.use_listings_cache:
            try:
                rows = self._ls_from_cache(path)
            except KeyError:
                rows = None
        if rows is None:
            with translated(path):
                rows = [entry(r) for r in await self.client().ls(path)]
            if self.dircache.use_listings_cache and (len(rows) != 1 or rows[0]["name"] != path):
                self.dircache[path] = rows
        return rows if detail else [r["name"] for r in rows]

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if self.dircache.use_listings_cache and path != "/":
            try:
                cached = self._ls_from_cache(path)
                if cached is not None:
                    found = [e for e in cached if e["name"] == path]
                    if found:
                        return found[0]
            except KeyError:
                pass
        with translated(path):
            return entry(await self.client().stat(path, blocks=False))

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        try:
            await self._info(path)
            return True
        except (FileNotFoundError, NotADirectoryError):  # a parent is a file: not there
            return False

    async def _modified(self, path: str) -> datetime.datetime:
        info = await self._info(path)
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)

    modified = sync_wrapper(_modified)

    async def _du(self, path: str, total: bool = True, maxdepth: int | None = None,
                  **kwargs: Any) -> Any:
        if total and maxdepth is None and not kwargs.get("withdirs"):
            with translated(path):  # one request: meta sums the subtree
                return (await self.client().du(self._strip_protocol(path)))[0]["size"]
        return await super()._du(path, total=total, maxdepth=maxdepth, **kwargs)

    async def _ukey(self, path: str) -> str:
        """Changes whenever the file is replaced (new block ids), equal otherwise."""
        path = self._strip_protocol(path)
        with translated(path):
            info = await self.client().stat_page(path, block_limit=1)
        # A published block list never changes: its length and first block id name it.
        key = repr((path, info["type"], info["size"], info["mtime"], identity(info)))
        return hashlib.sha256(key.encode()).hexdigest()

    ukey = sync_wrapper(_ukey)

    def checksum(self, path: str) -> int:
        """Equal as long as the file is the same version (fsspec's caches key on it)."""
        return int(self.ukey(path)[:32], 16)

    # reading ------------------------------------------------------------------------------
    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None,
                        **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        with translated(path):
            return await self.client().get_bytes(path, start or 0, end)

    async def _cat_ranges(self, paths: list[str], starts: Any, ends: Any,
                          max_gap: int | None = None, batch_size: int | None = None,
                          on_error: str = "return", **kwargs: Any) -> list[Any]:
        """Every range at once (up to `batch_size` in flight), each file looked up once."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        count = len(paths)
        starts = list(starts) if isinstance(starts, (list, tuple)) else [starts] * count
        ends = list(ends) if isinstance(ends, (list, tuple)) else [ends] * count
        if len(starts) != count or len(ends) != count:
            raise ValueError("paths, starts and ends must have the same length")
        paths = [self._strip_protocol(p) for p in paths]
        client = self.client()
        readers: dict[str, asyncio.Task[FileReader]] = {
            p: asyncio.ensure_future(client.open_read(p)) for p in dict.fromkeys(paths)}
        gate = asyncio.Semaphore(batch_size if batch_size and batch_size > 0 else 64)

        async def one(path: str, start: int | None, end: int | None) -> bytes:
            async with gate:
                with translated(path):
                    reader = await readers[path]
                    return await reader.pread(*reader.span(start, end))
        try:
            out = await asyncio.gather(*(one(*r) for r in zip(paths, starts, ends, strict=True)),
                                       return_exceptions=True)
        finally:
            for task in readers.values():
                if task.done() and not task.cancelled() and task.exception() is None:
                    await task.result().close()
                else:
                    task.cancel()
        if on_error != "return":
            for result in out:
                if isinstance(result, BaseException):
                    raise result
        return out

    async def _get_file(self, rpath: str, lpath: Any, callback: Any = DEFAULT_CALLBACK,
                        **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        client = self.client()
        with translated(rpath):
            if isfilelike(lpath):
                await client.get_stream(rpath, lpath, progress=callback.relative_update,
                                        on_open=callback.set_size)
                return
            try:
                await client.get(rpath, os.fspath(lpath), progress=callback.relative_update,
                                 on_open=callback.set_size)
            except IsADirectory:  # found out by the download's own stat: no extra request
                os.makedirs(lpath, exist_ok=True)

    # writing ------------------------------------------------------------------------------
    def _new_file_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"replication": int(kwargs.get("replication") or self.replication),
                "block_size": int(kwargs.get("dfs_block_size") or self.dfs_block_size)}

    async def _pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                         **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        with translated(path):
            await self.client().put_bytes(bytes(value), path, exclusive=mode == "create",
                                          **self._new_file_options(kwargs))
        self.invalidate_cache(path)

    async def _put_file(self, lpath: str, rpath: str, callback: Any = DEFAULT_CALLBACK,
                        mode: str = "overwrite", **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            await self._makedirs(rpath, exist_ok=True)
            return
        callback.set_size(os.path.getsize(lpath))
        with translated(rpath):
            await self.client().put(os.fspath(lpath), rpath, progress=callback.relative_update,
                                    exclusive=mode == "create",
                                    **self._new_file_options(kwargs))
        self.invalidate_cache(rpath)

    async def _open_writer(self, path: str, exclusive: bool,
                           options: dict[str, Any]) -> FileWriter:
        with translated(path):
            return await self.client().open_write(path, options["replication"],
                                                  options["block_size"], exclusive=exclusive)

    async def _open_reader(self, path: str) -> FileReader:
        with translated(path):
            return await self.client().open_read(path)

    def _open(self, path: str, mode: str = "rb", block_size: Any = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Any:
        from .files import DFSFile  # here: files.py imports this module
        return DFSFile(self, self._strip_protocol(path), mode, block_size=block_size,
                       autocommit=autocommit, options=self._new_file_options(kwargs))

    async def open_async(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        """An async file on the running loop (`asynchronous=True`): `await f.read(n)`,
        `f.seek`, `await f.write(b)`; modes "rb", "wb", "xb" as `open`."""
        from .files import DFSAsyncFile
        if kwargs.get("compression"):
            raise ValueError("open_async does not decompress: use open() on a sync filesystem")
        path = self._strip_protocol(path)
        if mode == "rb":
            return DFSAsyncFile(self, path, reader=await self._open_reader(path))
        if mode in ("wb", "xb"):
            writer = await self._open_writer(path, mode == "xb", self._new_file_options(kwargs))
            return DFSAsyncFile(self, path, writer=writer)
        raise write_once(path, mode)

    async def _touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate:
            await self._pipe_file(path, b"", **kwargs)
            return
        with translated(path):
            await self.client().touch(path)
        self.invalidate_cache(path)

    touch = sync_wrapper(_touch)

    # namespace ----------------------------------------------------------------------------
    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """As os.mkdir (with os.makedirs's parents): FileExistsError if already there."""
        path = self._strip_protocol(path)
        with translated(path):
            reply = await self.client().meta_call("mkdir", path=path, parents=create_parents)
        if not reply.get("created", True):
            raise FileExistsError(path)
        self.invalidate_cache(path)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        with translated(path):
            reply = await self.client().meta_call("mkdir", path=path, parents=True)
        if not reply.get("created", True) and not exist_ok:
            raise FileExistsError(path)
        self.invalidate_cache(path)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        with translated(path):
            if (await self.client().stat(path, blocks=False))["type"] == "dir":
                raise IsADirectoryError(path)
            await self.client().rm(path)
        self.invalidate_cache(path)

    async def _rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        with translated(path):
            if (await self.client().stat(path, blocks=False))["type"] != "dir":
                raise NotADirectoryError(path)
            await self.client().rm(path)  # DirectoryNotEmpty unless empty
        self.invalidate_cache(path)

    rmdir = sync_wrapper(_rmdir)

    async def _rm(self, path: Any, recursive: bool = False, batch_size: int | None = None,
                  maxdepth: int | None = None, **kwargs: Any) -> None:
        """One `rm` request per path given (a whole tree with recursive=True); globs are
        expanded first."""
        if maxdepth is not None:
            await super()._rm(path, recursive=recursive, batch_size=batch_size,
                              maxdepth=maxdepth, **kwargs)
            return
        globbed = self._has_glob(path)
        paths = await self._expand_path(path) if globbed else \
            self._strip_protocol(path if isinstance(path, list) else [path])
        client = self.client()
        # Deepest first: a glob may list a directory and entries inside it.
        for p in sorted(paths, key=lambda p: -p.count("/")):
            with translated(p):
                try:
                    await client.rm(p, recursive=recursive)
                except NotFound:
                    if not globbed:  # a glob's match may have gone since: fine
                        raise
            self.invalidate_cache(p)

    @staticmethod
    def _has_glob(path: Any) -> bool:
        return any(any(c in p for c in "*?[") for p in
                   (path if isinstance(path, list) else [path]))

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """A copy inside the cluster: the new file shares the source's blocks."""
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        client = self.client()
        with translated(path1):
            if (await client.stat(path1, blocks=False))["type"] == "dir":
                await self._makedirs(path2, exist_ok=True)
                return
            try:
                if (await client.stat(path2, blocks=False))["type"] == "dir":
                    raise IsADirectoryError(path2)  # a copy never lands inside it here
            except (NotFound, NotADirectory):
                pass
            await client.cp(path1, path2)
        self.invalidate_cache(path2)

    async def _mv_file(self, path1: str, path2: str) -> None:
        await self._mv(path1, path2)

    async def _mv(self, path1: Any, path2: Any, recursive: bool = False,
                  maxdepth: int | None = None, **kwargs: Any) -> None:
        """A rename in meta: atomic, no bytes move. Into `path2` if it is a directory (or
        ends with "/"); several sources (a list, a glob) go into the directory path2."""
        client = self.client()
        if isinstance(path1, list) or self._has_glob(path1):
            sources = await self._expand_path(path1)
            sources = [p for p in sources if not any(p.startswith(q + "/") for q in sources)]
            targets = path2 if isinstance(path2, list) else None
            if targets is None and sources:
                await self._makedirs(path2, exist_ok=True)
            for i, src in enumerate(sources):
                await self._mv(src, targets[i] if targets else path2.rstrip("/") + "/")
            return
        src = self._strip_protocol(path1)
        dst = self._strip_protocol(path2)
        if src == dst:
            return
        with translated(src):
            if isinstance(path2, str) and path2.endswith("/"):
                await client.mkdir(dst, parents=True)
            await client.mv(src, dst)
        self.invalidate_cache(src)
        self.invalidate_cache(dst)

    mv = sync_wrapper(_mv)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget cached listings of `path`, its parents and everything under it."""
        if path is None:
            self.dircache.clear()
            return
        path = self._strip_protocol(path)
        for key in [k for k in self.dircache if k == path or k.startswith(path + "/")]:
            self.dircache.pop(key, None)
        while path != "/":
            path = self._parent(path) or "/"
            self.dircache.pop(path, None)


def run(fs: DFSFileSystem, coro_fn: Any, *args: Any) -> Any:
    """Run a coroutine function of this filesystem's client on its IO loop (files.py)."""
    if fs.asynchronous:
        raise NotImplementedError("dfs files need a synchronous filesystem; with "
                                  "asynchronous=True use the coroutine methods (_cat_file, ...)")
    return sync(fs.loop, coro_fn, *args)
