"""`dfs.AsyncClient`: the asyncio client. One instance may be shared by many tasks.

Metadata requests go to meta over one multiplexed connection; block bytes go straight to
chunkservers over pooled connections (see writer.py and reader.py). Given several meta
addresses (metadata HA: one active, the others standbys), `meta_call` finds the active one
and follows it across a failover.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat as stat_mod
import tempfile
from typing import Any, BinaryIO, Callable

from .. import config
from ..errors import (
    BadRequest,
    DFSError,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotLeader,
    Timeout,
    Unavailable,
)
from ..net import Connection, ConnectionPool, Security, SecurityError
from . import blocklist, tree, treesync
from .filechecksum import file_checksum
from .localfile import DirectFile, Drain, Pump, open_direct, read_full
from .reader import FileReader
from .writer import FileWriter

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

# Requests that change nothing may be retried once on a fresh connection after meta restarts.
_IDEMPOTENT = frozenset({"stat", "ls", "status", "fsck", "renew", "du"})
# Requests a new active meta may be sent again when the old one went away with the request in
# flight: the read-only ones, commit (meta answers a commit that already took effect as it did
# the first time) and commit_part (likewise), create (a fresh upload; the first one just
# expires), abort. mkdir is one too with parents=True (see _resendable).
_RESENDABLE = _IDEMPOTENT | {"commit", "commit_part", "create", "abort"}


def meta_addresses(meta: str | None) -> list[str]:
    """Each address of `HOST:PORT[,HOST:PORT...]` (or of $DFS_META, else 127.0.0.1:5000),
    normalised as meta_address does, in order, without duplicates. ValueError names a bad
    one."""
    text = meta or os.environ.get("DFS_META") or \
        f"{config.DEFAULT_META_HOST}:{config.DEFAULT_META_PORT}"
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"not an address: {text!r}")
    out: list[str] = []
    for part in parts:
        addr = config.format_addr(*config.parse_addr(part))
        if addr not in out:
            out.append(addr)
    return out


def meta_address(meta: str | None) -> str:
    """Normalise `HOST:PORT`, `http://HOST:PORT` or None ($DFS_META, else 127.0.0.1:5000);
    a comma-separated list (several metas, one active) comes back as one, each normalised."""
    return ",".join(meta_addresses(meta))


def _resendable(op: str, fields: dict[str, Any]) -> bool:
    """Whether a request may be sent again without knowing if the first one took effect."""
    return op in _RESENDABLE or (op == "mkdir" and bool(fields.get("parents")))


def _why(exc: DFSError) -> str:
    """A failure as the "no active meta" message lists it ("unavailable: " goes without
    saying there)."""
    return exc.msg if isinstance(exc, Unavailable) else str(exc)


def _size_of(f: BinaryIO) -> int | None:
    """Bytes left to read in a regular file; None for a pipe, stdin or an in-memory stream."""
    try:
        st = os.fstat(f.fileno())
        return st.st_size - f.tell() if stat_mod.S_ISREG(st.st_mode) else None
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _ls_rows(page: dict[str, Any]) -> list[dict[str, Any]]:
    """A columnar `ls` page (see docs/PROTOCOL.md) as the dicts `ls --json` shows."""
    prefix = ("" if page["path"] == "/" else page["path"]) + "/"
    links = page.get("links") or {}
    names, dirs = page["names"], page["dir"]
    if not links and not any(dirs):  # files only, the usual page: one comprehension
        return [{"path": prefix + name, "type": "file", "size": size, "replication": repl,
                 "block_size": bsize, "mtime": mtime}
                for name, size, mtime, repl, bsize in zip(
                    names, page["size"], page["mtime"], page["replication"],
                    page["block_size"], strict=True)]
    rows: list[dict[str, Any]] = []
    for name, is_dir, size, mtime, repl, bsize in zip(
            names, dirs, page["size"], page["mtime"], page["replication"],
            page["block_size"], strict=True):
        if is_dir:
            rows.append({"path": prefix + name, "type": "dir", "size": 0, "mtime": mtime,
                         "entries": size})
        elif name in links:
            rows.append({"path": prefix + name, "type": "symlink", "size": size,
                         "target": links[name], "mtime": mtime})
        else:
            rows.append({"path": prefix + name, "type": "file", "size": size,
                         "replication": repl, "block_size": bsize, "mtime": mtime})
    return rows


class AsyncClient:
    """Talks to one dfs cluster. Use as `async with dfs.AsyncClient(addr) as c:`."""

    def __init__(self, meta: str | None = None, *, timeout: float = config.RPC_TIMEOUT,
                 secret_file: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None,
                 failover_wait: float = config.META_FAILOVER_WAIT) -> None:
        """meta: HOST:PORT, or a comma-separated list of the metas of an HA cluster;
        secret_file: the cluster secret (default $DFS_SECRET_FILE); tls_*: PEM files for
        TLS to every server (all three, or none), see docs/SECURITY.md; failover_wait: with
        several metas, how long a request keeps looking for the active one."""
        self.meta_addrs = meta_addresses(meta)
        self.meta_addr = self.meta_addrs[0]  # the meta in use: moves on failover
        self.failover_wait = failover_wait
        self.timeout = timeout
        try:
            self.security = Security.from_options(secret_file, tls_cert, tls_key, tls_ca)
        except SecurityError as exc:  # our own configuration, not the server's verdict
            raise BadRequest(str(exc)) from None
        self.pool = ConnectionPool(security=self.security)
        # One connection per meta address, opened on first use. A standby's stays open: other
        # requests may still be waiting on it for their `not_leader` (nothing done), and
        # closing it would turn those into "outcome unknown".
        self._metas: dict[str, Connection] = {}
        self._meta_locks: dict[str, asyncio.Lock] = {}
        self.bytes_read = 0  # block bytes received from chunkservers (verified), all readers

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for conn in self._metas.values():
            conn.close()
        self._metas.clear()
        self.pool.close()

    # metadata -------------------------------------------------------------------------
    async def _meta_conn(self, addr: str) -> Connection:
        """The connection to the meta at `addr`, (re)opened if need be. Concurrent callers
        share one attempt to open it."""
        conn = self._metas.get(addr)
        if conn is not None and not conn.closed:
            return conn
        lock = self._meta_locks.setdefault(addr, asyncio.Lock())
        async with lock:
            conn = self._metas.get(addr)
            if conn is None or conn.closed:
                try:
                    conn = self._metas[addr] = await Connection.open(
                        addr, security=self.security)
                except Unavailable as exc:
                    raise Unavailable(f"meta server: {exc.msg}") from None
            return conn

    async def _request(self, conn: Connection, op: str,
                       fields: dict[str, Any]) -> dict[str, Any]:
        reply = await conn.call(op, timeout=self.timeout, **fields)
        header = reply.header
        reply.release()
        header.pop("id", None)
        return header

    async def meta_call(self, op: str, **fields: Any) -> dict[str, Any]:
        """One metadata request; the reply header without its id. With several metas, the
        request goes to the active one, wherever it is (see _failover_call)."""
        if len(self.meta_addrs) > 1:
            return await self._failover_call(op, fields)
        for attempt in (0, 1):
            conn = await self._meta_conn(self.meta_addr)
            try:
                return await self._request(conn, op, fields)
            except Unavailable:
                if attempt == 0 and op in _IDEMPOTENT and conn.closed:
                    continue
                raise
        raise AssertionError("unreachable")

    async def _failover_call(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        """`meta_call` across several metas, one active: stay on the meta in use while it
        answers; when it says `not_leader` (nothing was done), go to the leader it names, else
        to the next address; when it cannot be reached, to the next address; when it went
        away with the request in flight, again only if the request is safe to repeat (else
        the outcome is unknown, and the caller must be told). Any other reply, error or not,
        is the answer. Addresses are retried with a backoff for `failover_wait` seconds,
        which covers the time a standby takes to become active."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        # abort is best effort (the upload's lease expires anyway): one pass, no waiting, so
        # a writer failing because no meta answers does not wait out failover_wait twice.
        deadline = started + (0.0 if op == "abort" else self.failover_wait)
        delay = 0.1
        tried: dict[str, str] = {}  # address -> its last failure, in the order first tried
        while True:
            addr = self.meta_addr
            leader: str | None = None
            try:
                conn = await self._meta_conn(addr)
            except (Unavailable, NotLeader, Timeout) as exc:  # refused, unreachable, hung
                tried[addr] = _why(exc)
                leader = exc.details.get("leader") if isinstance(exc, NotLeader) else None
            else:
                try:
                    return await self._request(conn, op, fields)
                except NotLeader as exc:
                    tried[addr] = _why(exc)
                    leader = exc.details.get("leader")
                except Unavailable as exc:
                    if not conn.closed:
                        raise  # meta's own answer, not a lost connection
                    if not _resendable(op, fields):
                        raise Unavailable(f"meta {addr} went away during {op}; it may or may "
                                          "not have been done") from None
                    tried[addr] = _why(exc)
                except Timeout as exc:
                    # A paused or cut-off active: another meta may lead by now. Its
                    # connection goes (replies to requests left on it would be stale).
                    conn.close()
                    if not _resendable(op, fields):
                        raise Unavailable(f"meta {addr} did not answer {op} in "
                                          f"{self.timeout:g}s; it may or may not have been "
                                          "done") from None
                    tried[addr] = _why(exc)
            self._move_from(addr, leader)
            if self.meta_addr in tried:  # a whole round failed: give the cluster time
                left = deadline - loop.time()
                if left <= 0:
                    raise self._no_active_meta(tried, loop.time() - started)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)

    def _move_from(self, failed: str, leader: str | None) -> None:
        """Use the next meta after `failed`: the leader it named, if any (trusted even when
        not in our list: the cluster knows its members), else the next in the list. Another
        task may have moved on already; then its choice stands."""
        if self.meta_addr != failed:
            return
        if leader:
            try:
                named = config.format_addr(*config.parse_addr(leader))
            except ValueError:
                named = ""
            if named and named != failed:
                self.meta_addr = named
                return
        addrs = self.meta_addrs
        i = addrs.index(failed) + 1 if failed in addrs else 0
        self.meta_addr = addrs[i % len(addrs)]

    def _no_active_meta(self, tried: dict[str, str], seconds: float) -> Unavailable:
        names = self.meta_addrs + [a for a in tried if a not in self.meta_addrs]
        why = "; ".join(f"{a}: {e}" for a, e in tried.items())
        return Unavailable(f"no active meta among {', '.join(names)} (tried for "
                           f"{seconds:.1f}s): {why}", tried=list(tried))

    def report_bad(self, block_id: int, addr: str) -> None:
        """Tell meta (in the background) that a replica returned bad bytes."""
        async def report() -> None:
            try:
                await self.meta_call("report_bad", block=block_id, replica=addr)
            except DFSError as exc:
                log.warning("could not report bad replica to meta: %s", exc)
        asyncio.ensure_future(report())

    async def stat(self, path: str, blocks: bool = True) -> dict[str, Any]:
        """A dict like `dfs-cli stat --json`: type, size, replication, blocks with replicas
        (`blocks=False`: the entry alone, as `ls` shows it). A file's blocks come a page at a
        time underneath, however many there are."""
        if not blocks:
            return await self.meta_call("stat", path=path, blocks=False)
        return await blocklist.whole(self, path)

    async def stat_page(self, path: str, block_start: int = 0,
                        block_limit: int | None = None) -> dict[str, Any]:
        """One `stat` reply: a file's blocks from index `block_start` (at most `block_limit`
        of them, and no more than fit in a frame), with `block_count`, `blocks_more` and
        `first_block` (docs/PROTOCOL.md, `stat`)."""
        fields: dict[str, Any] = {} if block_limit is None else {"block_limit": block_limit}
        return await self.meta_call("stat", path=path, block_start=block_start, **fields)

    async def ls(self, path: str = "/") -> list[dict[str, Any]]:
        """Entries of a directory (or the file itself), shaped like `dfs-cli ls --json`."""
        out: list[dict[str, Any]] = []
        reply = await self._ls_page(path, "")
        while True:
            if "names" not in reply:  # not a directory: the entry itself
                out.extend(reply["entries"])
                return out
            names = reply["names"]
            if not reply.get("more") or not names:
                out.extend(_ls_rows(reply))
                return out
            # Ask for the next page before turning this one into rows: meta builds it
            # meanwhile (on the other core, if there is one) instead of waiting for us.
            following = asyncio.ensure_future(self._ls_page(path, names[-1]))
            await asyncio.sleep(0)  # let it send the request
            try:
                out.extend(_ls_rows(reply))
            except BaseException:
                following.cancel()
                raise
            reply = await following

    async def _ls_page(self, path: str, start_after: str) -> dict[str, Any]:
        return await self.meta_call("ls", path=path, start_after=start_after,
                                    limit=config.MAX_LS_PAGE, columns=True)

    async def mkdir(self, path: str, parents: bool = False) -> None:
        """Create a directory; with parents=True, missing parents too and no error if it exists."""
        await self.meta_call("mkdir", path=path, parents=parents)

    async def rm(self, path: str, recursive: bool = False) -> int:
        """Remove a file or directory; returns how many files were removed."""
        reply = await self.meta_call("rm", path=path, recursive=recursive)
        return int(reply.get("files", 0))

    async def mv(self, src: str, dst: str) -> str:
        """Rename a file or directory; into `dst` if it is a directory. Returns the new path."""
        reply = await self.meta_call("mv", src=src, dst=dst)
        return str(reply["path"])

    async def fsck(self, path: str = "/") -> dict[str, Any]:
        """Health of every block under `path`, shaped like `dfs-cli fsck --json`."""
        return await self.meta_call("fsck", path=path)

    async def decommission(self, addr: str, cancel: bool = False) -> dict[str, Any]:
        """Start draining the chunkserver at HOST:PORT (`cancel`: put it back in service);
        returns once meta has journaled it, not when the drain is done (see `status`)."""
        if cancel:
            return await self.meta_call("decommission", addr=addr, cancel=True)
        return await self.meta_call("decommission", addr=addr)

    async def status(self) -> dict[str, Any]:
        """Cluster summary shaped like `dfs-cli status --json`. A standby answers status
        for itself; given several metas, the client asks the active one it names instead
        (the cluster's view), falling back to the standby's answer if that fails."""
        st = await self.meta_call("status")
        ha = st.get("ha") or {}
        leader = ha.get("leader")
        if len(self.meta_addrs) > 1 and ha.get("role") == "standby" and leader:
            try:
                conn = await self._meta_conn(leader)
                active = await self._request(conn, "status", {})
            except DFSError:
                return st
            self.meta_addr = leader
            return active
        return st

    async def cp(self, src: str, dst: str, recursive: bool = False) -> str:
        """Copy inside the cluster, moving no bytes: the copy shares the source's blocks
        (a file, or a directory tree with recursive=True). Returns the copy's path."""
        reply = await self.meta_call("cp", src=src, dst=dst, recursive=recursive)
        return str(reply["path"])

    async def setrep(self, path: str, replication: int, recursive: bool = False,
                     wait: bool = False, poll: float = 0.25) -> int:
        """Set the replication of a file (every file under a directory with recursive=True);
        meta adds or trims replicas in the background. `wait`: return once every block has
        the replicas asked for. Returns how many files changed."""
        reply = await self.meta_call("setrep", path=path, replication=replication,
                                     recursive=recursive)
        while wait:
            report = await self.fsck(path)
            if report["missing"] or report["corrupt"]:
                raise Unavailable(f"{report['missing'] + report['corrupt']} blocks under "
                                  f"{path} have no good replica left to copy from")
            if not report["under_replicated"]:
                break
            live = [s for s in (await self.status())["chunkservers"] if s["state"] == "live"]
            if len(live) < replication:
                raise Unavailable(f"{replication} replicas asked, {len(live)} chunkservers "
                                  "live: waiting would never end")
            await asyncio.sleep(poll)
        return int(reply["files"])

    async def du(self, path: str, summary: bool = True) -> list[dict[str, Any]]:
        """Space used: for `path` itself ([one dict]) or, with summary=False, for each entry
        of the directory. Each dict: path, type, size (logical bytes, copies counted in
        full), replicated (bytes on live chunkservers, shared blocks once), files, dirs."""
        if summary:
            return [await self.meta_call("du", path=path)]
        out: list[dict[str, Any]] = []
        start_after = ""
        while True:
            page = await self.meta_call("du", path=path, children=True,
                                        start_after=start_after, limit=config.MAX_LS_PAGE)
            out.extend(page["entries"])
            if not page.get("more") or not page["entries"]:
                return out
            start_after = page["entries"][-1]["path"].rsplit("/", 1)[-1]

    async def df(self) -> dict[str, int]:
        """Cluster capacity, used and free bytes, over chunkservers in service."""
        servers = [s for s in (await self.status())["chunkservers"]
                   if s["state"] == "live"]
        return {"capacity": sum(s["capacity"] for s in servers),
                "used": sum(s["used"] for s in servers),
                "free": sum(s.get("free", 0) for s in servers), "chunkservers": len(servers)}

    async def chattr(self, path: str, *, mode: int | None = None, uid: int | None = None,
                     gid: int | None = None) -> None:
        """Record the permission bits, owner and/or group of an entry (chmod, chown). dfs
        keeps and shows them; it does not enforce them."""
        fields = {k: v for k, v in (("mode", mode), ("uid", uid), ("gid", gid))
                  if v is not None}
        await self.meta_call("chattr", path=path, **fields)

    async def symlink(self, target: str, path: str, *, uid: int | None = None,
                      gid: int | None = None) -> None:
        """Make `path` a symbolic link holding `target` (as ln -s TARGET PATH). Meta stores
        it and never follows it; dfs-mount shows it to programs as a link."""
        owner = {k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None}
        await self.meta_call("symlink", path=path, target=target,
                             **({"attrs": owner} if owner else {}))

    async def touch(self, path: str, mtime: float | None = None) -> None:
        """Create an empty file, or set an existing entry's mtime (default: now). As touch(1),
        a missing parent directory is an error (NotFound), not created."""
        try:
            await self.meta_call("touch", path=path,
                                 **({} if mtime is None else {"mtime": mtime}))
        except NotFound:
            parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
            if (await self.stat(parent, blocks=False))["type"] != "dir":
                raise NotADirectory(f"{parent} is a file") from None
            writer = await self.open_write(path, size=0)
            writer.mtime = mtime
            await writer.close()

    async def checksum(self, path: str) -> dict[str, Any]:
        """The file's composite CRC32C (independent of block size, equal to
        dfs.local_checksum of the same bytes), from stored CRCs: no data is read."""
        return await file_checksum(self, path)

    async def walk(self, path: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Every file under a directory (`ls` entries plus `rel`, the path relative to it)
        and every directory (relative, "" for itself)."""
        return await tree.walk_remote(self, path)

    async def glob(self, pattern: str) -> list[dict[str, Any]]:
        """Entries matching a remote glob (`*`, `?`, `[...]`), as `ls` shapes them."""
        return await tree.glob_remote(self, pattern)

    async def put_tree(self, sources: list[str] | str, remote: str, *,
                       parallel: int = tree.DEFAULT_PARALLEL,
                       replication: int = config.DEFAULT_REPLICATION,
                       block_size: int = config.DEFAULT_BLOCK_SIZE, preserve: bool = False,
                       tally: tree.Tally | None = None) -> tree.TreeResult:
        """Upload local files and directories (recursively), `parallel` at a time; see
        client/tree.py for where each lands. Failures are in the result, not raised."""
        return await tree.put_tree(self, [sources] if isinstance(sources, str) else sources,
                                   remote, parallel=parallel, replication=replication,
                                   block_size=block_size, preserve=preserve, tally=tally)

    async def get_tree(self, sources: list[str] | str, local: str, *,
                       parallel: int = tree.DEFAULT_PARALLEL, preserve: bool = False,
                       tally: tree.Tally | None = None) -> tree.TreeResult:
        """Download remote files, directories and globs, `parallel` at a time."""
        return await tree.get_tree(self, [sources] if isinstance(sources, str) else sources,
                                   local, parallel=parallel, preserve=preserve, tally=tally)

    async def sync(self, src: str, dst: str, *, delete: bool = False, dry_run: bool = False,
                   checksum: bool = False, parallel: int = tree.DEFAULT_PARALLEL,
                   replication: int = config.DEFAULT_REPLICATION,
                   block_size: int = config.DEFAULT_BLOCK_SIZE,
                   tally: tree.Tally | None = None) -> tree.TreeResult:
        """Make DST match SRC, copying only what differs (see client/treesync.py; the dfs
        side is written `dfs:/path`, else SRC is local and DST remote)."""
        return await treesync.sync(self, src, dst, delete=delete, dry_run=dry_run,
                                   checksum=checksum, parallel=parallel,
                                   replication=replication, block_size=block_size,
                                   tally=tally)

    # files ----------------------------------------------------------------------------
    def open(self, path: str, mode: str = "rb", *, replication: int = config.DEFAULT_REPLICATION,
             block_size: int = config.DEFAULT_BLOCK_SIZE) -> "_Opener":
        """`await c.open(p)` or `async with c.open(p) as f`: a FileReader ("rb") or a
        FileWriter ("wb", visible only once closed)."""
        if mode not in ("rb", "wb"):
            raise ValueError("mode must be 'rb' or 'wb'")
        return _Opener(self, path, mode, replication, block_size)

    async def open_read(self, path: str) -> FileReader:
        # The first page of the block list: the reader loads the rest as it gets there.
        info = await self.stat_page(path, 0, blocklist.PAGE_LIMIT)
        if info["type"] == "symlink":
            raise BadRequest(f"{info['path']} is a symbolic link to {info['target']}")
        if info["type"] != "file":
            raise IsADirectory(info["path"])
        return FileReader(self, info)

    async def open_write(self, path: str, replication: int = config.DEFAULT_REPLICATION,
                         block_size: int = config.DEFAULT_BLOCK_SIZE,
                         size: int | None = None, exclusive: bool = False) -> FileWriter:
        """A writer for a new file; `size`, if known, is the file's size (see FileWriter).
        `exclusive`: AlreadyExists, at open or at close, if anything is at `path`."""
        writer = FileWriter(self, path, replication, block_size)
        writer.exclusive = exclusive
        return await writer.open(size)

    async def put_stream(self, f: BinaryIO, remote: str, *,
                         replication: int = config.DEFAULT_REPLICATION,
                         block_size: int = config.DEFAULT_BLOCK_SIZE,
                         progress: Progress | None = None,
                         mtime: float | None = None,
                         exclusive: bool = False,
                         attrs: dict[str, int] | None = None) -> dict[str, Any]:
        """Upload everything a binary stream yields. Reads of a file or pipe run off the loop.
        `mtime`: the time the file is published with (default: meta's clock at commit);
        `exclusive`: AlreadyExists, and nothing written, if anything is at `remote`;
        `attrs`: mode, uid and/or gid the file is published with (see chattr)."""
        try:
            pump: Pump | None = Pump(f, config.PACKET_SIZE)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pump = None  # an in-memory stream: reading it never blocks
        writer = await self.open_write(remote, replication, block_size, _size_of(f),
                                       exclusive)
        writer.mtime = mtime
        writer.attrs = attrs
        try:
            while True:
                if pump is None:
                    data = read_full(f, config.PACKET_SIZE)
                else:
                    data = await pump.next()
                if not data:
                    break
                await writer.write_packet(data)
                if progress is not None:
                    progress(len(data))
            return await writer.close()
        except BaseException:
            await writer.abort()
            raise

    async def put(self, local: str, remote: str, *,
                  replication: int = config.DEFAULT_REPLICATION,
                  block_size: int = config.DEFAULT_BLOCK_SIZE,
                  progress: Progress | None = None,
                  preserve: bool = False, exclusive: bool = False) -> dict[str, Any]:
        """Upload a local file; replaces `remote` atomically. Returns path, size, blocks and
        `under_replicated` (ids of blocks stored on fewer servers than asked). `preserve`
        publishes it with the local file's mtime."""
        with open(local, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime if preserve else None
            return await self.put_stream(f, remote, replication=replication,
                                         block_size=block_size, progress=progress,
                                         mtime=mtime, exclusive=exclusive)

    async def put_bytes(self, data: bytes, remote: str, *,
                        replication: int = config.DEFAULT_REPLICATION,
                        block_size: int = config.DEFAULT_BLOCK_SIZE,
                        exclusive: bool = False) -> dict[str, Any]:
        """Upload bytes held in memory; replaces `remote` atomically (with `exclusive`,
        AlreadyExists instead if anything is there)."""
        writer = await self.open_write(remote, replication, block_size, len(data), exclusive)
        try:
            view = memoryview(data)
            for i in range(0, len(view), config.PACKET_SIZE):
                await writer.write_packet(bytes(view[i:i + config.PACKET_SIZE]))
            return await writer.close()
        except BaseException:
            await writer.abort()
            raise

    async def get_stream(self, remote: str, f: BinaryIO,
                         progress: Progress | None = None,
                         on_open: Callable[[int], None] | None = None,
                         direct: bool = False) -> int:
        """Download `remote` into a binary stream; returns the byte count. With `direct`
        (f is a new, empty regular file) a large download bypasses the page cache
        (see localfile.py)."""
        reader = await self.open_read(remote)
        if on_open is not None:
            on_open(reader.size)
        sink: BinaryIO | DirectFile | None = None
        if direct:
            f.flush()
            sink = open_direct(f.fileno(), reader.size)
        drain = Drain(sink or f)
        try:
            total = 0
            while True:
                data = await reader.read1()
                if not data:
                    await drain.finish()
                    return total
                await drain.write(data)
                total += len(data)
                if progress is not None:
                    progress(len(data))
        except BaseException:
            drain.abandon()
            raise
        finally:
            await reader.close()

    async def get(self, remote: str, local: str, *, progress: Progress | None = None,
                  on_open: Callable[[int], None] | None = None) -> int:
        """Download to a local file, which appears only once complete (temp file + rename).

        A local path that is not a regular file (/dev/null, a FIFO, a terminal) is written
        straight through: renaming over a device node would replace the device itself."""
        try:
            mode = os.stat(local).st_mode
        except FileNotFoundError:
            mode = stat_mod.S_IFREG
        if not stat_mod.S_ISREG(mode) and not stat_mod.S_ISDIR(mode):
            with open(local, "wb") as out:
                return await self.get_stream(remote, out, progress, on_open)
        directory = os.path.dirname(os.path.abspath(local))
        fd, tmp = tempfile.mkstemp(prefix=".dfs-get-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                n = await self.get_stream(remote, f, progress, on_open, direct=True)
            os.replace(tmp, local)
            return n
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    async def get_bytes(self, remote: str, start: int = 0, end: int | None = None) -> bytes:
        """The whole file in memory; or bytes [start, end) of it, which reads only the
        checksum units that range covers (negative offsets count from the end)."""
        reader = await self.open_read(remote)
        try:
            if start == 0 and end is None:
                return await reader.read()
            return await reader.pread(*reader.span(start, end))
        finally:
            await reader.close()


class _Opener:
    """What `AsyncClient.open` returns: awaitable, or an async context manager."""

    def __init__(self, client: AsyncClient, path: str, mode: str, replication: int,
                 block_size: int) -> None:
        self.client, self.path, self.mode = client, path, mode
        self.replication, self.block_size = replication, block_size
        self.file: FileReader | FileWriter | None = None

    async def _open(self) -> FileReader | FileWriter:
        if self.mode == "rb":
            return await self.client.open_read(self.path)
        return await self.client.open_write(self.path, self.replication, self.block_size)

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._open().__await__()

    async def __aenter__(self) -> Any:
        self.file = await self._open()
        return self.file

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.file is not None
        if isinstance(self.file, FileWriter):
            if exc_type is None:
                await self.file.close()
            else:
                await self.file.abort()
        else:
            await self.file.close()
