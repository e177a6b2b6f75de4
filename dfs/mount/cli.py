"""`dfs-mount`: mount a dfs cluster with FUSE 3.

    dfs-mount [--meta HOST:PORT] [--secret-file F] [--tls-*] MOUNTPOINT [--foreground]
              [--read-only] [--cache-dir DIR] [--cache-size SIZE] [--replication N]

Without --foreground it detaches once the mount is up (the command returns when the mount can
be used, or prints why it could not). It unmounts cleanly on `fusermount3 -u MOUNTPOINT`,
SIGTERM, SIGINT or Ctrl-C; after a SIGKILL, `fusermount3 -u` frees the mount point.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile

from .. import __version__, config
from ..errors import DFSError
from ..malloc_tuning import keep_freed_memory

log = logging.getLogger("dfs.mount")

DEFAULT_CACHE_SIZE = 10 * config.GiB
# A dead meta fails a call with EIO after this long (a refused connection fails at once).
DEFAULT_TIMEOUT = 10.0
READAHEAD_KIB = 8 * 1024  # as the client's own read-ahead window (8 segments of 1 MiB)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfs-mount", description="Mount a dfs cluster (FUSE).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--meta", metavar="HOST:PORT",
                   help="meta server (default: $DFS_META, else 127.0.0.1:5000); several, "
                        "comma-separated, for an HA cluster's metas")
    p.add_argument("--secret-file", metavar="PATH",
                   help="the cluster secret (default: $DFS_SECRET_FILE)")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS: our certificate")
    p.add_argument("--tls-key", metavar="PEM", help="TLS: its private key")
    p.add_argument("--tls-ca", metavar="PEM", help="TLS: the cluster's CA")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (logs to stderr) instead of detaching")
    p.add_argument("--read-only", action="store_true", help="refuse every change (EROFS)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where files open for writing are spooled until they are closed "
                   "(default: the system's temp dir)")
    p.add_argument("--cache-size", type=config.parse_size, default=DEFAULT_CACHE_SIZE,
                   metavar="SIZE", help="the most those spools may hold together; past it "
                   "writes fail with ENOSPC (default: 10GiB)")
    p.add_argument("-r", "--replication", type=int, default=config.DEFAULT_REPLICATION,
                   help=f"replicas of each file written (default: "
                   f"{config.DEFAULT_REPLICATION})")
    p.add_argument("--block-size", type=config.parse_size, default=config.DEFAULT_BLOCK_SIZE,
                   metavar="SIZE", help="block size of files written (default: "
                   f"{config.format_size(config.DEFAULT_BLOCK_SIZE)})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="how long a call waits for meta before failing with EIO "
                   f"(default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--log-file", metavar="PATH",
                   help="where a detached dfs-mount logs (default: nowhere)")
    p.add_argument("--debug", action="store_true", help="log every failure in detail")
    return p


def fail(msg: str) -> int:
    print(f"dfs-mount: error: {msg}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return fail("pyfuse3 is not installed: pip install 'dfs[mount]' (it needs libfuse3 "
                    "and its headers: apt install fuse3 libfuse3-dev pkg-config)")
    mountpoint = os.path.abspath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        return fail(f"mount point {mountpoint} is not a directory")
    cache_dir = args.cache_dir or tempfile.gettempdir()
    if not os.path.isdir(cache_dir) or not os.access(cache_dir, os.W_OK):
        return fail(f"cache dir {cache_dir} is not a writable directory")
    if args.log_file:
        args.log_file = os.path.abspath(args.log_file)
    if not 1 <= args.replication <= config.MAX_REPLICATION:
        return fail(f"--replication must be 1..{config.MAX_REPLICATION}")
    if not (config.MIN_BLOCK_SIZE <= args.block_size <= config.MAX_BLOCK_SIZE
            and args.block_size % config.CHECKSUM_UNIT == 0):
        return fail(f"--block-size must be a multiple of {config.CHECKSUM_UNIT} between "
                    f"{config.format_size(config.MIN_BLOCK_SIZE)} and "
                    f"{config.format_size(config.MAX_BLOCK_SIZE)}")
    try:
        _client(args)  # checks the address and security files now
    except (DFSError, ValueError, OSError) as exc:
        return fail(str(exc))
    if args.foreground:
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s dfs-mount %(levelname)s %(message)s")
        return _serve(args, mountpoint, cache_dir, None)
    return _detach(args, mountpoint, cache_dir)


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..client import AsyncClient
    return AsyncClient(args.meta, secret_file=args.secret_file, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, tls_ca=args.tls_ca, timeout=args.timeout)


def _detach(args: argparse.Namespace, mountpoint: str, cache_dir: str) -> int:
    """Fork; the child mounts and says "ok" (or why not) through a pipe, and the parent
    returns only then, so a script can use the mount as soon as dfs-mount has returned."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            word = pipe.read().decode(errors="replace").strip()
        if word == "ok":
            return 0
        return fail(word or "the mount process ended before mounting")
    os.close(r)
    os.setsid()
    # Let go of the caller's terminal and pipes (a shell's $(dfs-mount ...) would wait for
    # them otherwise); what goes wrong later goes to --log-file, if given.
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(args.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) \
        if args.log_file else devnull
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s dfs-mount %(levelname)s %(message)s")
    code = _serve(args, mountpoint, cache_dir, w)
    os._exit(code)


def _serve(args: argparse.Namespace, mountpoint: str, cache_dir: str,
           ready_fd: int | None) -> int:
    import pyfuse3
    import pyfuse3.asyncio

    from .handles import SpoolBudget
    from .ops import DFSOperations

    pyfuse3.asyncio.enable()
    keep_freed_memory()
    client = _client(args)
    ops = DFSOperations(client, SpoolBudget(cache_dir, args.cache_size),
                        read_only=args.read_only, replication=args.replication,
                        block_size=args.block_size)
    options = {"fsname=dfs", "subtype=dfs", "noatime"}
    mounted = False
    if args.read_only:
        options.add("ro")
    if os.getuid() == 0:
        options.add("allow_other")  # root mounts for everyone, as an fstab entry would

    def tell(word: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, word.encode())
            os.close(ready_fd)

    async def run() -> None:
        try:
            await client.status()  # the cluster answers, before anything is mounted
        except DFSError as exc:
            raise _Refused(f"cannot reach meta at {client.meta_addr}: {exc}") from None
        nonlocal mounted
        try:
            pyfuse3.init(ops, mountpoint, options)
        except RuntimeError as exc:
            raise _Refused(f"cannot mount on {mountpoint}: {exc}") from None
        mounted = True
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        log.info("dfs mounted on %s (meta %s)", mountpoint, client.meta_addr)
        # In a thread: finding the mount's device asks this very loop for getattr.
        readahead = loop.run_in_executor(None, _raise_readahead, mountpoint, READAHEAD_KIB)
        readahead.add_done_callback(lambda f: f.exception())
        tell("ok")
        try:
            await pyfuse3.main(min_tasks=4, max_tasks=64)
        finally:
            await ops.close_all()
            await client.close()

    try:
        try:
            import uvloop
            uvloop.run(run())
        except ImportError:  # pragma: no cover - uvloop is a declared dependency
            asyncio.run(run())
    except _Refused as exc:
        tell(str(exc))
        return fail(str(exc)) if ready_fd is None else 1
    except KeyboardInterrupt:
        pass
    finally:
        if mounted:
            pyfuse3.close(unmount=True)
    return 0


def _raise_readahead(mountpoint: str, kib: int) -> None:
    """Let the kernel read ahead `kib` KiB of a file being read sequentially, in requests
    of up to 1 MiB, instead of its default 128 KiB one request at a time: the mount's
    sequential reads are then bounded by dfs, not by FUSE round trips. Root only (sysfs);
    otherwise the default stays."""
    try:
        dev = os.stat(mountpoint).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.debug("kernel read-ahead left at its default: %s", exc)


class _Refused(Exception):
    """The mount could not start: one line for the user."""


if __name__ == "__main__":
    sys.exit(main())
