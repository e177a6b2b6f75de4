"""`dfsd`: parse flags, build the meta or chunk role, run it until SIGTERM/SIGINT.

Thin on purpose: the logic lives in dfs.meta and dfs.chunk. Anything that stops a role from
starting (port in use, unusable data dir, corrupt journal) is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import resource
import signal
import sys
import time
import uuid
from typing import Any

from . import __version__, config
from .chunk.blockstore import BlockStore
from .chunk.diskcheck import DiskChecker
from .chunk.heartbeat import MetaLinks
from .chunk.scrubber import Scrubber
from .chunk.service import ChunkService
from .fsutil import CorruptFile, atomic_write, read_text
from .meta.journal import FileJournal
from .meta.service import MetaService
from .net import Connection, Security, SecurityError, Server
from .startup import FatalError, StartupError

log = logging.getLogger("dfsd")


def build_parser() -> argparse.ArgumentParser:
    d, s = config.format_duration, config.format_size
    p = argparse.ArgumentParser(prog="dfsd", description="dfs metadata server or chunkserver")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--role", choices=("meta", "chunk"), required=True,
                   help="run the metadata server or a chunkserver (required: no default)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, help=f"port to listen on (default: "
                   f"{config.DEFAULT_META_PORT} for meta, {config.DEFAULT_CHUNK_PORT} for chunk)")
    p.add_argument("--data-dir", help="where the journal or the blocks live "
                   "(default: ./dfs-data/<role>-<port>); chunk: a comma-separated list of "
                   "dirs, one per disk (DIR1,DIR2,...), puts new blocks in each at random "
                   "weighted by its free space, and keeps serving from the others when one "
                   "fails (EIO, read-only): its blocks are reported lost and re-replicated")
    p.add_argument("--meta", default=f"{config.DEFAULT_META_HOST}:{config.DEFAULT_META_PORT}",
                   help="chunk: the meta server HOST:PORT, or a comma-separated list of "
                        "them (HA: every meta hears from this server, only the active one "
                        "commands it) (default: %(default)s)")
    p.add_argument("--ha", metavar="etcd://HOST:PORT[,HOST:PORT...][/PREFIX]",
                   help="meta: run as one of several metas coordinated through this etcd "
                        "cluster (one active, the others hot standbys); PREFIX keeps this "
                        "cluster's keys apart (default: /dfs/; default mode: one meta, local "
                        "journal)")
    p.add_argument("--ha-ttl", type=int, default=config.HA_LEASE_TTL,
                   help="meta, with --ha: seconds of the active's etcd lease: a standby takes "
                        "over within about this long after the active stops renewing it "
                        "(default: %(default)s)")
    p.add_argument("--advertise", help="chunk: HOST:PORT clients should use to reach this "
                   "server (default: the listen address, or the address used to reach meta); "
                   "meta with --ha: the address other metas name when they send clients here "
                   "(default: the listen address, 127.0.0.1 for a wildcard)")
    p.add_argument("--capacity", type=config.parse_size, default=0,
                   help="chunk: bytes this server may use, across all its data dirs "
                        "(default: the disks' free space)")
    p.add_argument("--dir-check-interval", type=config.parse_duration,
                   default=config.DIR_CHECK_INTERVAL,
                   help="chunk: probe each data dir (write, fsync, remove a small file) this "
                        "often; a dir that fails the probe is marked failed "
                        f"(default: {d(config.DIR_CHECK_INTERVAL)})")
    p.add_argument("--reserve", type=config.parse_size, default=None,
                   help="chunk: space never used for blocks on each disk (default: the "
                        "smaller of "
                        f"{s(config.DEFAULT_RESERVE)} and "
                        f"{config.DEFAULT_RESERVE_FRACTION * 100:g}%% of the disk)")
    p.add_argument("--heartbeat-interval", type=config.parse_duration,
                   default=config.DEFAULT_HEARTBEAT_INTERVAL,
                   help="chunk: send meta a heartbeat this often; meta: the interval it "
                        f"expects (default: {d(config.DEFAULT_HEARTBEAT_INTERVAL)})")
    p.add_argument("--dead-timeout", type=config.parse_duration,
                   default=config.DEFAULT_DEAD_TIMEOUT,
                   help="meta: a chunkserver silent this long is dead and its blocks are "
                        f"re-replicated (default: {d(config.DEFAULT_DEAD_TIMEOUT)})")
    p.add_argument("--orphan-grace", type=config.parse_duration, default=config.ORPHAN_GRACE,
                   help="meta: delete a replica no file refers to after this long "
                        f"(default: {d(config.ORPHAN_GRACE)})")
    p.add_argument("--delete-grace", type=config.parse_duration, default=config.DELETE_GRACE,
                   help="meta: keep the blocks of a removed or replaced file this long for "
                        f"readers that opened it (default: {d(config.DELETE_GRACE)})")
    p.add_argument("--checkpoint-interval", type=config.parse_duration,
                   default=config.CHECKPOINT_INTERVAL,
                   help="meta: checkpoint the namespace this often "
                        f"(default: {d(config.CHECKPOINT_INTERVAL)})")
    p.add_argument("--checkpoint-records", type=int, default=config.CHECKPOINT_RECORDS,
                   help="meta: ... or once the journal holds this many records "
                        "(default: %(default)s)")
    p.add_argument("--block-report-interval", type=config.parse_duration,
                   default=config.BLOCK_REPORT_INTERVAL,
                   help="chunk: send a full block report this often "
                        f"(default: {d(config.BLOCK_REPORT_INTERVAL)})")
    p.add_argument("--replication-rate", type=config.parse_size,
                   default=config.DEFAULT_REPLICATION_RATE,
                   help="chunk: bytes per second for re-replication copies it sends "
                        "(default: 0 = unlimited; repair runs at most "
                        f"{config.MAX_COPIES} copies per server at once either way)")
    p.add_argument("--scrub-rate", type=config.parse_size, default=config.DEFAULT_SCRUB_RATE,
                   help="chunk: bytes per second the scrubber re-reads "
                        f"(default: {s(config.DEFAULT_SCRUB_RATE)})")
    p.add_argument("--scrub-interval", type=config.parse_duration,
                   default=config.DEFAULT_SCRUB_INTERVAL,
                   help="chunk: start a full scrub pass this often "
                        f"(default: {d(config.DEFAULT_SCRUB_INTERVAL)})")
    p.add_argument("--upload-lease", type=config.parse_duration, default=config.UPLOAD_LEASE,
                   help=argparse.SUPPRESS)
    p.add_argument("--secret-file", help="the cluster secret (default: $DFS_SECRET_FILE); "
                   "without one, anyone who can reach the port can read and write")
    p.add_argument("--token-lifetime", type=config.parse_duration,
                   default=config.TOKEN_LIFETIME,
                   help="meta: how long a block token stays valid "
                        f"(default: {d(config.TOKEN_LIFETIME)})")
    p.add_argument("--tls-cert", help="this server's certificate (PEM); TLS on every "
                   "connection (default: none, plain TCP)")
    p.add_argument("--tls-key", help="its private key (PEM) (default: none)")
    p.add_argument("--tls-ca", help="the CA that signed every member's certificate (PEM) "
                   "(default: none)")
    p.add_argument("--http-port", type=int, default=None,
                   help=f"port of the HTTP side door: health, metrics, status JSON, file "
                        f"downloads (default: {config.DEFAULT_META_HTTP_PORT} for meta, --port + "
                        f"{config.CHUNK_HTTP_OFFSET} for a chunkserver; 0 turns it off)")
    p.add_argument("--http-host", help="address the HTTP side door listens on "
                   "(default: --host)")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)")
    return p


def load_security(args: argparse.Namespace) -> Security:
    """The secret and TLS files, or one clear start-up error."""
    try:
        return Security.from_options(args.secret_file, args.tls_cert, args.tls_key,
                                     args.tls_ca, token_lifetime=args.token_lifetime)
    except SecurityError as exc:
        raise StartupError(str(exc)) from None


def warn_if_open(sec: Security, args: argparse.Namespace) -> None:
    """One warning once listening (a dfsd that cannot start prints only its error line)."""
    if sec.authenticating:
        return
    if sec.tls:
        log.warning("no --secret-file (or $DFS_SECRET_FILE): only holders of a certificate "
                    "from the cluster's CA can connect, but chunkservers check no block "
                    "tokens")
    else:
        log.warning("no --secret-file (or $DFS_SECRET_FILE): this cluster does not "
                    "authenticate; anyone who can reach port %d can read, write and delete "
                    "data", args.port)


def warn_if_small(store: BlockStore) -> None:
    """One line at start when this chunkserver cannot take even one default-sized block."""
    capacity, used, free = store.stats()
    if free < config.DEFAULT_BLOCK_SIZE:
        mib = config.MiB
        log.warning("only %d MiB of %s is usable for blocks (capacity %d MiB, %d MiB used, "
                    "reserve %d MiB): less than one %d MiB block, so only files with a "
                    "smaller --block-size can be stored here", free // mib, store.root,
                    capacity // mib, used // mib, store.reserve // mib,
                    config.DEFAULT_BLOCK_SIZE // mib)


def data_dir(args: argparse.Namespace) -> str:
    path = args.data_dir or os.path.join("dfs-data", f"{args.role}-{args.port}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise StartupError(f"data dir {path} is unusable: it is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"data dir {path} is unusable: {exc.strerror or exc}") from None
    lock_data_dir(path)
    return path


def chunk_data_dirs(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """A chunkserver's data dirs (--data-dir, comma-separated), each made, probed and locked,
    and those unusable now (path -> why). One dir that is unusable stops the start, as does
    a dir locked by another dfsd; of several, an unusable one starts failed (status shows it)
    so the server still serves the blocks of the others."""
    if not args.data_dir:
        return [data_dir(args)], {}
    paths = [p.strip() for p in args.data_dir.split(",")]
    if any(not p for p in paths):
        raise StartupError(f"--data-dir {args.data_dir!r}: an empty dir in the list")
    real = [os.path.realpath(p) for p in paths]
    if len(set(real)) != len(real):
        raise StartupError(f"--data-dir {args.data_dir!r}: a dir is listed twice")
    if len(paths) == 1:
        return [data_dir(args)], {}
    failed: dict[str, str] = {}
    for path in paths:
        try:
            data_dir(argparse.Namespace(data_dir=path, role=args.role, port=args.port))
        except StartupError as exc:
            if "in use by another dfsd" in str(exc):
                raise
            why = str(exc).removeprefix(f"data dir {path} is unusable: ")
            failed[path] = f"unusable at start: {why}"
            log.error("%s: starting without it", exc)
    if len(failed) == len(paths):
        raise StartupError("every data dir is unusable: " + "; ".join(failed.values()))
    return paths, failed


_LOCKS: list[int] = []  # held open for the life of the process


def lock_data_dir(path: str) -> None:
    """One dfsd per data dir: two metas appending to one journal corrupt it, two
    chunkservers would share one identity. The lock dies with the process, even on SIGKILL."""
    try:
        fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StartupError(f"data dir {path} is unusable: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(f"data dir {path} is in use by another dfsd (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS.append(fd)


def connection_limit() -> int:
    """Raise the open-file limit as far as allowed and keep connections well inside it, so
    a flood of connections is refused politely instead of failing accept() or block I/O."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else 65536
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return max(64, min(config.MAX_CONNECTIONS, soft - 256))


def bind(server: Server) -> None:
    try:
        server.bind()
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.format_addr(server.host, server.port)}: "
                           f"{(exc.strerror or str(exc)).lower()}") from None


def http_server(args: argparse.Namespace, sec: Security, routes: Any) -> Any:
    """The HTTP side door (dfs/web), its port claimed now; started later."""
    from .web.httpd import HttpServer
    host = args.http_host or args.host
    http = HttpServer(routes, host, args.http_port, sec, args.tls_cert, args.tls_key)
    try:
        http.bind()
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.format_addr(host, args.http_port)} "
                           f"(HTTP): {(exc.strerror or str(exc)).lower()}") from None
    return http


def cluster_id(path: str) -> str:
    """The cluster id kept in meta's data dir, made (durably: file and directory synced) at
    the first start. Chunkservers remember it and meta refuses those of another cluster."""
    id_file = os.path.join(path, "cluster.id")
    try:
        cid = read_text(id_file)
        if not cid:
            cid = uuid.uuid4().hex
            atomic_write(id_file, (cid + "\n").encode())
    except OSError as exc:
        raise StartupError(f"cannot use {id_file}: {exc.strerror or exc}") from None
    return cid


async def run_meta(args: argparse.Namespace, stop: asyncio.Event) -> None:
    if args.ha:
        from .ha.run import run_ha_meta
        await run_ha_meta(args, stop)
        return
    sec = load_security(args)
    path = data_dir(args)
    cid = cluster_id(path)
    addr = config.format_addr(args.host if args.host not in ("0.0.0.0", "::", "") else
                              "127.0.0.1", args.port)
    jpath = os.path.join(path, "journal")
    fatal: list[BaseException] = []

    def journal_failed(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()
    journal = FileJournal(jpath, on_fatal=journal_failed)
    service = MetaService(journal, addr, cluster_id=cid, dead_timeout=args.dead_timeout,
                          heartbeat_interval=args.heartbeat_interval,
                          upload_lease=args.upload_lease,
                          checkpoint_path=os.path.join(path, "checkpoint"),
                          checkpoint_interval=args.checkpoint_interval,
                          checkpoint_records=args.checkpoint_records,
                          orphan_grace=args.orphan_grace, delete_grace=args.delete_grace,
                          security=sec)
    server = Server("meta", args.host, args.port, connection_limit(), security=sec)
    bind(server)
    http: Any = None
    web_client: Any = None
    if args.http_port:
        from prometheus_client import CollectorRegistry

        from .client.async_client import AsyncClient
        from .web import meta_routes
        from .web.metrics import MetaCounters, RequestMetrics
        registry = CollectorRegistry()
        server.observe = RequestMetrics(registry, "dfs").observe
        registry.register(MetaCounters(journal, service.replicator))

        def client() -> AsyncClient:  # what /files reads through: the normal client path
            nonlocal web_client
            if web_client is None:
                web_client = AsyncClient(addr, secret_file=args.secret_file,
                                         tls_cert=args.tls_cert, tls_key=args.tls_key,
                                         tls_ca=args.tls_ca)
            return web_client
        http = http_server(args, sec, meta_routes.routes(service, client, registry))
    try:
        await service.start()
    except CorruptFile as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        if exc.filename:  # reading the journal or checkpoint
            raise StartupError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
        raise StartupError(f"journal {jpath}: {exc}") from None  # its first append failed
    if http is not None:
        await http.start()
    await server.start(service)
    log.info("meta listening on %s, data in %s%s", addr, path,
             f"; HTTP on port {args.http_port}" if http else "")
    warn_if_open(sec, args)
    await stop.wait()
    if http is not None:
        await http.close()
    if web_client is not None:
        await web_client.close()
    if fatal:
        await server.close(grace=0)
        raise FatalError(f"journal {jpath} failed: {fatal[0]}; meta stopped without "
                         "acknowledging the changes it could not make durable (restart it: "
                         "it recovers from the journal)")
    log.info("meta shutting down")
    service.reports.release_polls()  # held requests: answer them, do not wait them out
    await server.close()
    await service.stop()


async def run_chunk(args: argparse.Namespace, stop: asyncio.Event) -> None:
    # --meta: one address, or a comma-separated list of them (HA), each one normalised.
    metas: list[str] = []
    for text in args.meta.split(","):
        try:
            meta = config.format_addr(*config.parse_addr(text))
        except ValueError as exc:
            raise StartupError(f"--meta {args.meta!r}: {exc}") from None
        if meta in metas:
            raise StartupError(f"--meta {args.meta!r}: {meta} is listed twice")
        metas.append(meta)
    sec = load_security(args)
    paths, unusable = chunk_data_dirs(args)
    path = ",".join(paths)
    server = Server("chunk", args.host, args.port, connection_limit(), security=sec)
    bind(server)
    try:
        store = BlockStore(paths, capacity=args.capacity, reserve=args.reserve,
                           failed=unusable)
    except OSError as exc:
        raise StartupError(f"data dir {path} is unusable: {exc.strerror or exc}") from None
    except ValueError as exc:  # dirs of different chunkservers
        raise StartupError(str(exc)) from None
    warn_if_small(store)
    wildcard = args.host in ("0.0.0.0", "::", "")
    addr = args.advertise or ("" if wildcard else config.format_addr(args.host, args.port))
    link: MetaLinks

    def advertise(meta_conn: Connection) -> str:
        if addr:
            return addr
        sock = meta_conn.protocol.transport.get_extra_info("sockname")  # type: ignore[union-attr]
        service.addr = config.format_addr(sock[0], args.port)
        return service.addr

    service = ChunkService(store, addr or f"127.0.0.1:{args.port}",
                           on_block=lambda b, r: link.block_received(b, r),
                           copy_rate=args.replication_rate, security=sec)
    link = MetaLinks(store, metas, args.heartbeat_interval, advertise,
                     writing=lambda: service.writing, replicate=service.replicate,
                     block_report_interval=args.block_report_interval, security=sec)
    http: Any = None
    scrubber: Scrubber | None = None
    if args.http_port:
        from prometheus_client import CollectorRegistry

        from .web import chunk_routes, pages
        from .web.metrics import ChunkCounters, RequestMetrics
        registry = CollectorRegistry()
        server.observe = RequestMetrics(registry, "dfs_chunk").observe
        registry.register(ChunkCounters(service, lambda: scrubber))
        started = time.monotonic()

        def page() -> str:
            return pages.chunk_overview(store, service.addr, ", ".join(metas),
                                        service.writing, len(service.copier.copies),
                                        scrubber.passes if scrubber else 0, started)
        http = http_server(args, sec, chunk_routes.routes(
            store, lambda: service.writing, registry, page))
        await http.start()
    await server.start(service)
    log.info("chunkserver %s listening on port %d, %d blocks in %s%s", store.server_id,
             args.port, len(store.index), path,
             f"; HTTP on port {args.http_port}" if http else "")
    warn_if_open(sec, args)
    link.start()
    scrubber = Scrubber(store, args.scrub_rate, args.scrub_interval, link.block_corrupt,
                        service.disk)
    scrubber.start()
    checker = DiskChecker(store, lambda dirs: link.report_now(), args.dir_check_interval)
    checker.start()
    await stop.wait()
    log.info("chunkserver shutting down")
    if http is not None:
        await http.close()
    await checker.stop()
    await scrubber.stop()
    await server.close()
    await link.stop()


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.role == "meta":
        await run_meta(args, stop)
    else:
        await run_chunk(args, stop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.port is None:
        args.port = config.DEFAULT_META_PORT if args.role == "meta" else config.DEFAULT_CHUNK_PORT
    if args.http_port is None:
        args.http_port = config.DEFAULT_META_HTTP_PORT if args.role == "meta" else \
            args.port + config.CHUNK_HTTP_OFFSET
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.role}:{args.port} %(levelname)s "
                               "%(name)s: %(message)s")
    try:
        run: Any
        try:
            import uvloop
            run = uvloop.run
        except ImportError:  # pragma: no cover - uvloop is a declared dependency
            run = asyncio.run
        run(main_async(args))
    except (StartupError, FatalError) as exc:
        print(f"dfsd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
