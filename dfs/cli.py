"""`dfs-cli`: parse the command line, call the async client, print results or one error line.

Thin on purpose: every operation is a method of dfs.AsyncClient. Failures print exactly one
line, `dfs-cli: error: <what happened>`, and exit non-zero (2 when a remote path does not
exist); a traceback here is a bug (set DFS_DEBUG=1 to see one anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from typing import Any, Callable, NoReturn

from . import __version__, completion, config
from .cli_admin import (
    cmd_decommission,
    cmd_df,
    cmd_du,
    cmd_fsck,
    cmd_setrep,
    cmd_status,
    print_json,
    size_text,
    when,
)
from .cli_transfers import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    UsageError,
    cmd_cat,
    cmd_get,
    cmd_put,
    cmd_sync,
    cmd_tail,
    human,
)
from .client.async_client import AsyncClient
from .client.filechecksum import ALGORITHM, local_checksum
from .client.tree import DEFAULT_PARALLEL
from .errors import DFSError, NotADirectory, NotFound
from .malloc_tuning import keep_freed_memory

EXIT_BROKEN_PIPE = 128 + 13  # stdout closed early (`| head`): 128 + SIGPIPE, as for `cat`

# A trailing meta address, as in the classic `dfs-cli put a /a http://127.0.0.1:5000`.
_URL = re.compile(r"^(https?://)[^/\s]+/?$|^[A-Za-z0-9_.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")
_VALUE_OPTIONS = {"--meta", "-r", "--replication", "--block-size", "--secret-file",
                  "--tls-cert", "--tls-key", "--tls-ca", "--parallel", "-c"}
# Positionals each command needs before a trailing HOST:PORT can be the meta address (ls's
# path is optional, and a remote path is absolute, so HOST:PORT is never an ls path).
_POSITIONALS = {"put": 2, "get": 2, "cat": 1, "ls": 0, "stat": 1, "mkdir": 1, "rm": 1,
                "mv": 2, "status": 0, "fsck": 0, "decommission": 1, "sync": 2, "cp": 2,
                "tail": 1, "touch": 1, "test": 1, "du": 0, "df": 0, "setrep": 2,
                "checksum": 1}


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
                   help="meta server (default: $DFS_META, else 127.0.0.1:5000); several, "
                        "comma-separated, for an HA cluster's metas")
    p.add_argument("--secret-file", default=default, metavar="PATH",
                   help="the cluster secret (default: $DFS_SECRET_FILE)")
    p.add_argument("--tls-cert", default=default, metavar="PEM", help="TLS: our certificate")
    p.add_argument("--tls-key", default=default, metavar="PEM", help="TLS: its private key")
    p.add_argument("--tls-ca", default=default, metavar="PEM", help="TLS: the cluster's CA")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dfs-cli", description="Use a dfs cluster.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name: str, help: str, human: bool = False) -> argparse.ArgumentParser:
        """A subcommand; `human`: -h means human-readable sizes (as in ls, du and df), so
        help is --help alone."""
        sp = sub.add_parser(name, help=help, description=help, add_help=not human)
        if human:
            sp.add_argument("--help", action="help", help="show this help and exit")
            sp.add_argument("-h", "--human", dest="human", action="store_true",
                            help="sizes as KiB/MiB/GiB (default: bytes)")
        _global_options(sp, suppress=True)
        return sp

    def parallel(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                        help="files moved at once (default: %(default)s)")

    def writing(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-r", "--replication", type=int, default=config.DEFAULT_REPLICATION,
                        metavar="N", help="replicas of each new file (default: %(default)s)")
        sp.add_argument("--block-size", type=_size, default=config.DEFAULT_BLOCK_SIZE,
                        metavar="SIZE", help="block size of new files (default: "
                        f"{config.format_size(config.DEFAULT_BLOCK_SIZE)})")

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print JSON (default: text)")

    sp = cmd("put", "upload local files and directories (recursively; - for stdin); each "
             "file replaces its remote path atomically. Several sources or a directory: "
             "REMOTE is a directory, created if missing")
    sp.add_argument("sources", nargs="+", metavar="LOCAL")
    sp.add_argument("remote", metavar="REMOTE")
    writing(sp)
    parallel(sp)
    sp.add_argument("-p", "--preserve", action="store_true",
                    help="keep each local file's mtime (default: the upload time)")
    sp = cmd("get", "download remote files, directories (recursively) and globs "
             "('/logs/2026-*'); - for stdout. Several sources, a glob or a directory: LOCAL "
             "is a directory, created if missing")
    sp.add_argument("sources", nargs="+", metavar="REMOTE")
    sp.add_argument("local", metavar="LOCAL")
    parallel(sp)
    sp.add_argument("-p", "--preserve", action="store_true",
                    help="keep each remote file's mtime (default: the download time)")
    sp = cmd("sync", "make DST match SRC, copying only new and changed files (size or "
             "mtime; content with --checksum). The dfs side may be written dfs:/PATH; "
             "without it SRC is local and DST remote")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp.add_argument("--delete", action="store_true",
                    help="remove what SRC no longer has (default: keep it)")
    sp.add_argument("--dry-run", action="store_true", help="list what would change, change "
                    "nothing")
    sp.add_argument("--checksum", action="store_true", help="compare content by checksum "
                    "instead of mtime (default: size and mtime)")
    writing(sp)
    parallel(sp)
    sp = cmd("cat", "write a file to stdout")
    sp.add_argument("remote")
    sp = cmd("tail", "write the last bytes of a file to stdout (one range read)")
    sp.add_argument("-c", dest="bytes", type=_size, default=1024, metavar="N",
                    help="how many bytes (default: 1024)")
    sp.add_argument("remote")
    sp = cmd("ls", "list a directory", human=True)
    sp.add_argument("-l", dest="long", action="store_true", help="long listing")
    sp.add_argument("-R", dest="recursive", action="store_true",
                    help="list subdirectories too, with full paths")
    json_flag(sp)
    sp.add_argument("path", nargs="?", default="/")
    sp = cmd("stat", "show a file's or directory's metadata, block locations and checksum")
    json_flag(sp)
    sp.add_argument("--no-checksum", dest="checksum", action="store_false",
                    help="leave out the checksum, which asks a chunkserver per block for its "
                    "stored CRCs (default: include it)")
    sp.add_argument("path")
    sp = cmd("mkdir", "create a directory")
    sp.add_argument("-p", dest="parents", action="store_true", help="create parents; no error "
                    "if it exists")
    sp.add_argument("path")
    sp = cmd("rm", "remove a file, or a directory with -r")
    sp.add_argument("-r", dest="recursive", action="store_true", help="a directory and "
                    "everything in it")
    sp.add_argument("path")
    sp = cmd("mv", "rename or move a file or directory")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = cmd("cp", "copy inside the cluster without moving bytes: the copy shares the "
             "source's blocks (milliseconds, whatever the size)")
    sp.add_argument("-r", dest="recursive", action="store_true", help="copy a directory tree")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = cmd("touch", "create an empty file, or set an existing one's mtime to now")
    sp.add_argument("path")
    sp = cmd("test", "exit 0 if PATH is what is asked, else 1 (prints nothing)")
    kind = sp.add_mutually_exclusive_group(required=True)
    for flag, what in (("-e", "exists"), ("-f", "is a file"), ("-d", "is a directory"),
                       ("-s", "is a file that is not empty"), ("-z", "is an empty file")):
        kind.add_argument(flag, dest="test", action="store_const", const=flag[1], help=what)
    sp.add_argument("path")
    sp = cmd("du", "space used by each entry of PATH (or PATH itself with -s): logical bytes, "
             "and with --replicated the bytes stored on live chunkservers", human=True)
    sp.add_argument("-s", dest="summary", action="store_true", help="one total for PATH")
    sp.add_argument("--replicated", action="store_true", help="also bytes on disk, every "
                    "replica counted, shared blocks once")
    json_flag(sp)
    sp.add_argument("path", nargs="?", default="/")
    sp = cmd("df", "the cluster's capacity, used and free bytes (chunkservers that are live)",
             human=True)
    json_flag(sp)
    sp = cmd("setrep", "change the replication of a file, or of every file under a directory "
             "with -R; meta adds or trims replicas in the background")
    sp.add_argument("replication", type=int, metavar="N")
    sp.add_argument("path")
    sp.add_argument("-R", dest="recursive", action="store_true", help="every file under PATH")
    sp.add_argument("--wait", action="store_true", help="return once every block has N "
                    "replicas (default: return at once)")
    sp = cmd("checksum", "a file's COMPOSITE-CRC32C from the stored checksums (no data is "
             "read); equal for equal bytes whatever the block size, and equal to "
             "`checksum --local` of the same local file")
    sp.add_argument("--local", action="store_true", help="checksum local files instead")
    json_flag(sp)
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp = cmd("fsck", "check the health of every block under PATH (exit 1 unless all healthy)")
    json_flag(sp)
    sp.add_argument("path", nargs="?", default="/")
    sp = cmd("decommission", "drain a chunkserver's blocks elsewhere, then mark it "
             "decommissioned (returns at once; watch `status`); kept across meta restarts")
    sp.add_argument("--cancel", action="store_true",
                    help="put the chunkserver back in service instead")
    sp.add_argument("addr", metavar="HOST:PORT")
    sp = cmd("status", "show the cluster: chunkservers, their state and capacity")
    json_flag(sp)
    sp = cmd("completion", "print a shell completion script: "
             "`source <(dfs-cli completion bash)`, or for zsh "
             "`dfs-cli completion zsh > ~/.zfunc/_dfs-cli`")
    sp.add_argument("shell", choices=("bash", "zsh"))
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


# commands ---------------------------------------------------------------------------------
async def cmd_ls(c: AsyncClient, a: argparse.Namespace) -> int:
    entries = await c.ls(a.path)
    if a.recursive:  # depth first, each directory followed by what it holds, as ls -R
        out: list[dict[str, Any]] = []
        stack = list(reversed(entries))
        while stack:
            e = stack.pop()
            out.append(e)
            if e["type"] == "dir":
                stack.extend(reversed(await c.ls(e["path"])))
        entries = out
    if a.json:
        print_json(entries)
    elif a.long:
        for e in entries:
            kind = {"dir": "d", "symlink": "l"}.get(e["type"], "-")
            repl = str(e.get("replication", "-"))
            link = f" -> {e['target']}" if e["type"] == "symlink" else ""
            print(f"{kind} {repl:>2} {size_text(e['size'], a):>14} {when(e['mtime'])} "
                  f"{e['path']}{link}")
    else:
        for e in entries:
            name = e["path"] if a.recursive else e["path"].rsplit("/", 1)[-1]
            print(name + ("/" if e["type"] == "dir" else ""))
    return EXIT_OK


async def cmd_stat(c: AsyncClient, a: argparse.Namespace) -> int:
    info = await c.stat(a.path)
    for b in info.get("blocks", []):
        b.pop("token", None)  # a read credential: not for printing
    if info["type"] == "file" and a.checksum:
        try:
            info["checksum"] = (await c.checksum(info["path"]))["checksum"]
        except DFSError:  # a block with no replica answering: the rest still shows
            info["checksum"] = None
        info["checksum_algorithm"] = ALGORITHM
    if a.json:
        print_json(info)
        return EXIT_OK
    print(f"path:        {info['path']}")
    print(f"type:        {info['type']}")
    if info["type"] == "file":
        print(f"size:        {info['size']} ({human(info['size'])})")
        print(f"replication: {info['replication']}")
        print(f"block size:  {info['block_size']} ({human(info['block_size'])})")
        if "checksum" in info:
            print(f"checksum:    {info['checksum'] or 'unavailable'} ({ALGORITHM})")
    else:
        print(f"entries:     {info.get('entries', 0)}")
    print(f"modified:    {when(info['mtime'])}")
    for b in info.get("blocks", []):
        replicas = ", ".join(b["replicas"]) or "NO LIVE REPLICA"
        print(f"block {b['id']}: {b['size']} bytes on {replicas}")
    return EXIT_OK


async def cmd_cp(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.cp(a.src, a.dst, recursive=a.recursive)
    return EXIT_OK


async def cmd_touch(c: AsyncClient, a: argparse.Namespace) -> int:
    await c.touch(a.path)
    return EXIT_OK


async def cmd_test(c: AsyncClient, a: argparse.Namespace) -> int:
    """Exit status only, as test(1) and `hdfs dfs -test`: a missing path is 1, not 2."""
    try:
        e = await c.stat(a.path, blocks=False)
    except (NotFound, NotADirectory):  # no such path: false, silently
        return EXIT_ERROR
    ok = {"e": True, "f": e["type"] == "file", "d": e["type"] == "dir",
          "s": e["type"] == "file" and e["size"] > 0,
          "z": e["type"] == "file" and e["size"] == 0}[a.test]
    return EXIT_OK if ok else EXIT_ERROR


async def cmd_checksum(c: AsyncClient, a: argparse.Namespace) -> int:
    out = []
    for path in a.paths:
        if a.local:
            try:
                out.append(local_checksum(path))
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        else:
            out.append(await c.checksum(path))
    if a.json:
        print_json(out if len(out) > 1 else out[0])
    else:
        for r in out:
            print(f"{r['checksum']}  {r['path']}")
    return EXIT_OK


async def cmd_completion(c: AsyncClient, a: argparse.Namespace) -> int:
    print(completion.script(build_parser(), a.shell, "dfs-cli"), end="")
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


COMMANDS: dict[str, Callable[[AsyncClient, argparse.Namespace], Any]] = {
    "put": cmd_put, "get": cmd_get, "sync": cmd_sync, "cat": cmd_cat, "tail": cmd_tail,
    "ls": cmd_ls, "stat": cmd_stat, "mkdir": cmd_mkdir, "rm": cmd_rm, "mv": cmd_mv,
    "cp": cmd_cp, "touch": cmd_touch, "test": cmd_test, "du": cmd_du, "df": cmd_df,
    "setrep": cmd_setrep, "checksum": cmd_checksum, "status": cmd_status, "fsck": cmd_fsck,
    "decommission": cmd_decommission, "completion": cmd_completion,
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
        # Validate the addresses and files early; every meta of a list is kept.
        args.meta = ",".join(_client(args).meta_addrs)
    except ValueError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except DFSError as exc:
        return _fail(str(exc), EXIT_ERROR)
    keep_freed_memory()
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
