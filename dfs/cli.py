"""`dfs-cli`: parse the command line, call the async client, print results or one error line.

Thin on purpose: every operation is a method of dfs.AsyncClient. Failures print exactly one
line, `dfs-cli: error: <what happened>`, and exit non-zero (2 when a remote path does not
exist); a traceback here is a bug (set DFS_DEBUG=1 to see one anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from typing import Any, Callable, NoReturn

from . import config
from .client.async_client import AsyncClient
from .errors import DFSError, NotFound

EXIT_OK, EXIT_ERROR, EXIT_NOT_FOUND = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # stdout closed early (`| head`): 128 + SIGPIPE, as for `cat`

# A trailing meta address, as in the classic `dfs-cli put a /a http://127.0.0.1:5000`.
_URL = re.compile(r"^(https?://)[^/\s]+/?$|^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")
_VALUE_OPTIONS = {"--meta", "-r", "--replication", "--block-size", "--secret-file",
                  "--tls-cert", "--tls-key", "--tls-ca"}
# Positionals each command needs before a trailing HOST:PORT can be the meta address (ls's
# path is optional, and a remote path is absolute, so HOST:PORT is never an ls path).
_POSITIONALS = {"put": 2, "get": 2, "cat": 1, "ls": 0, "stat": 1, "mkdir": 1, "rm": 1,
                "mv": 2, "status": 0, "fsck": 0, "decommission": 1}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line and exit 1, like every other failure (2 means a remote
    path does not exist)."""

    def error(self, message: str) -> NoReturn:
        print(f"dfs-cli: error: {message} (see dfs-cli --help)", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _size(text: str) -> int:
    try:
        return config.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument("--meta", default=default, metavar="HOST:PORT",
                   help="meta server (default: $DFS_META, else 127.0.0.1:5000)")
    p.add_argument("--secret-file", default=default, metavar="PATH",
                   help="the cluster secret (default: $DFS_SECRET_FILE)")
    p.add_argument("--tls-cert", default=default, metavar="PEM", help="TLS: our certificate")
    p.add_argument("--tls-key", default=default, metavar="PEM", help="TLS: its private key")
    p.add_argument("--tls-ca", default=default, metavar="PEM", help="TLS: the cluster's CA")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dfs-cli", description="Use a dfs cluster.")
    _global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        _global_options(sp, suppress=True)
        return sp

    sp = cmd("put", "upload a local file (- for stdin); replaces REMOTE atomically")
    sp.add_argument("local")
    sp.add_argument("remote")
    sp.add_argument("-r", "--replication", type=int, default=config.DEFAULT_REPLICATION)
    sp.add_argument("--block-size", type=_size, default=config.DEFAULT_BLOCK_SIZE)
    sp = cmd("get", "download REMOTE to a local file (- for stdout)")
    sp.add_argument("remote")
    sp.add_argument("local")
    sp = cmd("cat", "write a file to stdout")
    sp.add_argument("remote")
    sp = cmd("ls", "list a directory")
    sp.add_argument("-l", dest="long", action="store_true", help="long listing")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("path", nargs="?", default="/")
    sp = cmd("stat", "show a file's or directory's metadata and block locations")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("path")
    sp = cmd("mkdir", "create a directory")
    sp.add_argument("-p", dest="parents", action="store_true", help="create parents; no error "
                    "if it exists")
    sp.add_argument("path")
    sp = cmd("rm", "remove a file, or a directory with -r")
    sp.add_argument("-r", dest="recursive", action="store_true")
    sp.add_argument("path")
    sp = cmd("mv", "rename or move a file or directory")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = cmd("fsck", "check the health of every block under PATH (exit 1 unless all healthy)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("path", nargs="?", default="/")
    sp = cmd("decommission", "drain a chunkserver's blocks elsewhere, then mark it "
             "decommissioned (returns at once; watch `status`)")
    sp.add_argument("addr", metavar="HOST:PORT")
    sp = cmd("status", "show the cluster: chunkservers, their state and capacity")
    sp.add_argument("--json", action="store_true")
    return p


def split_trailing_address(argv: list[str]) -> tuple[list[str], str | None]:
    """Take a trailing meta address (`http://HOST:PORT` or `HOST:PORT`) off the command line,
    as the classic three-process example passes it."""
    if len(argv) < 2 or not _URL.match(argv[-1]) or argv[-2] in _VALUE_OPTIONS:
        return argv, None
    command = next((a for a in argv if a in _POSITIONALS), None)
    if command is None:
        return argv, None
    after = argv[argv.index(command) + 1:-1]
    positionals = [a for a in after if not a.startswith("-") or a == "-"]
    if argv[-1].lower().startswith("http") or len(positionals) >= _POSITIONALS[command]:
        return argv[:-1], argv[-1]
    return argv, None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class Progress:
    """A tqdm bar on stderr when it is a terminal; otherwise nothing at all."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a declared dependency
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False, file=sys.stderr)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# commands ---------------------------------------------------------------------------------
async def cmd_put(c: AsyncClient, a: argparse.Namespace) -> int:
    remote = a.remote
    if a.local != "-" and remote.endswith("/"):
        remote += os.path.basename(a.local)
    elif a.local != "-":
        try:
            if (await c.stat(remote))["type"] == "dir":
                remote = remote.rstrip("/") + "/" + os.path.basename(a.local)
        except NotFound:
            pass
    if a.local == "-":
        bar = Progress(None, remote)
        try:
            result = await c.put_stream(sys.stdin.buffer, remote, replication=a.replication,
                                        block_size=a.block_size, progress=bar.update)
        finally:
            bar.close()
    else:
        try:
            f = open(a.local, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read {a.local}: {exc.strerror}") from None
        with f:
            if os.path.isdir(a.local):
                raise UsageError(f"cannot read {a.local}: Is a directory")
            bar = Progress(os.fstat(f.fileno()).st_size, remote)
            try:
                result = await c.put_stream(f, remote, replication=a.replication,
                                            block_size=a.block_size, progress=bar.update)
            finally:
                bar.close()
    under = result.get("under_replicated") or []
    if under:
        print(f"dfs-cli: warning: {result['path']} is under-replicated: {len(under)} of "
              f"{result['blocks']} blocks have fewer than {a.replication} live replicas",
              file=sys.stderr)
    return EXIT_OK


async def cmd_get(c: AsyncClient, a: argparse.Namespace) -> int:
    bar = Progress(None, a.remote)
    try:
        if a.local == "-":
            await c.get_stream(a.remote, sys.stdout.buffer, bar.update, bar.set_total)
            sys.stdout.buffer.flush()
        else:
            local = a.local
            if os.path.isdir(local):
                local = os.path.join(local, os.path.basename(a.remote.rstrip("/")))
            try:
                await c.get(a.remote, local, progress=bar.update, on_open=bar.set_total)
            except OSError as exc:
                raise UsageError(f"cannot write {local}: {exc.strerror}") from None
    finally:
        bar.close()
    return EXIT_OK


async def cmd_cat(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.get_stream(a.remote, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return EXIT_OK


async def cmd_ls(c: AsyncClient, a: argparse.Namespace) -> int:
    entries = await c.ls(a.path)
    if a.json:
        _print_json(entries)
    elif a.long:
        for e in entries:
            kind = "d" if e["type"] == "dir" else "-"
            repl = str(e.get("replication", "-"))
            print(f"{kind} {repl:>2} {e['size']:>14} {_when(e['mtime'])} {e['path']}")
    else:
        for e in entries:
            print(e["path"].rsplit("/", 1)[-1] + ("/" if e["type"] == "dir" else ""))
    return EXIT_OK


async def cmd_stat(c: AsyncClient, a: argparse.Namespace) -> int:
    info = await c.stat(a.path)
    for b in info.get("blocks", []):
        b.pop("token", None)  # a read credential: not for printing
    if a.json:
        _print_json(info)
        return EXIT_OK
    print(f"path:        {info['path']}")
    print(f"type:        {info['type']}")
    if info["type"] == "file":
        print(f"size:        {info['size']} ({human(info['size'])})")
        print(f"replication: {info['replication']}")
        print(f"block size:  {info['block_size']} ({human(info['block_size'])})")
    else:
        print(f"entries:     {info.get('entries', 0)}")
    print(f"modified:    {_when(info['mtime'])}")
    for b in info.get("blocks", []):
        replicas = ", ".join(b["replicas"]) or "NO LIVE REPLICA"
        print(f"block {b['id']}: {b['size']} bytes on {replicas}")
    return EXIT_OK


async def cmd_mkdir(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.mkdir(a.path, parents=a.parents)
    return EXIT_OK


async def cmd_rm(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.rm(a.path, recursive=a.recursive)
    return EXIT_OK


async def cmd_mv(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.mv(a.src, a.dst)
    return EXIT_OK


async def cmd_status(c: AsyncClient, a: argparse.Namespace) -> int:
    st = await c.status()
    if a.json:
        _print_json(st)
        return EXIT_OK
    live = sum(1 for s in st["chunkservers"] if s["state"] == "live")
    print(f"meta {st['meta']}: {st['files']} files, {st['blocks']} blocks, "
          f"{live}/{len(st['chunkservers'])} chunkservers live")
    if st.get("safe_mode"):
        print(f"  SAFE MODE: waiting for block reports ({st.get('safe_mode_s', 0):.0f}s left); "
              "no repair or orphan deletion until then")
    if st.get("read_only"):
        print(f"  READ-ONLY: {st.get('read_only_reason') or 'meta takes no changes'}")
    for s in st["chunkservers"]:
        print(f"  {s['addr']:<22} {s['state']:<15} {s['blocks']:>8} blocks  "
              f"{human(s['used']):>10} used of {human(s['capacity']):>10}  "
              f"heartbeat {s['last_heartbeat_s']:.1f}s ago")
    return EXIT_OK


async def cmd_fsck(c: AsyncClient, a: argparse.Namespace) -> int:
    report = await c.fsck(a.path)
    sick = report["blocks"] - report["healthy"]
    if a.json:
        _print_json(report)
    else:
        print(f"{report['path']}: {report['files']} files, {report['blocks']} blocks: "
              f"{report['healthy']} healthy, {report['under_replicated']} under-replicated, "
              f"{report['missing']} missing, {report['corrupt']} corrupt")
        for p in report["problems"]:
            where = ", ".join(p["replicas"]) or "no live replica"
            print(f"  {p['state']:<17} block {p['block']} of {p['path']} ({where})")
        if report.get("problems_truncated"):
            print("  ... more problems not listed")
        print("HEALTHY" if not sick else "NOT HEALTHY")
    return EXIT_OK if not sick else EXIT_ERROR


async def cmd_decommission(c: AsyncClient, a: argparse.Namespace) -> int:
    r = await c.decommission(a.addr)
    print(f"{r['addr']}: {r['state']} ({r['blocks']} blocks to keep elsewhere)")
    return EXIT_OK


COMMANDS: dict[str, Callable[[AsyncClient, argparse.Namespace], Any]] = {
    "put": cmd_put, "get": cmd_get, "cat": cmd_cat, "ls": cmd_ls, "stat": cmd_stat,
    "mkdir": cmd_mkdir, "rm": cmd_rm, "mv": cmd_mv, "status": cmd_status, "fsck": cmd_fsck,
    "decommission": cmd_decommission,
}


def _client(args: argparse.Namespace) -> AsyncClient:
    return AsyncClient(args.meta, secret_file=args.secret_file, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, tls_ca=args.tls_ca)


async def run(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        code: int = await COMMANDS[args.command](client, args)
        return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, trailing = split_trailing_address(argv)
    args = build_parser().parse_args(argv)
    if trailing and not args.meta:
        args.meta = trailing
    try:
        args.meta = _client(args).meta_addr  # validate the address and files early
    except ValueError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except DFSError as exc:
        return _fail(str(exc), EXIT_ERROR)
    try:
        try:
            import uvloop
            return uvloop.run(run(args))
        except ImportError:  # pragma: no cover - uvloop is a declared dependency
            return asyncio.run(run(args))
    except NotFound as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except DFSError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except UsageError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except BrokenPipeError:
        # The reader went away (`dfs-cli cat f | head`): end quietly, as `cat` does, with the
        # status a shell reports for a command ended by SIGPIPE. Later flushes of stdout go
        # nowhere instead of failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # a bug of ours; still one line unless debugging
        if os.environ.get("DFS_DEBUG"):
            raise
        return _fail(f"internal error: {exc.__class__.__name__}: {exc}", EXIT_ERROR)


def _fail(msg: str, code: int) -> int:
    print(f"dfs-cli: error: {msg}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
