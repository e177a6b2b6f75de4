"""`dfs-bench tree`: put and get whole directory trees as a user would, one client process per
transfer: `dfs-cli put TREE REMOTE --parallel N` and `dfs-cli get REMOTE OUT --parallel N`,
and with `--compare seaweedfs`, in the same run, `weed upload -dir=TREE` and `weed download`
of the file ids that upload printed.

Owns the local source trees, the order of the timed phases and the check of every download;
starts no server (dfs.bench.cli does) and judges no figure.

Two trees are built under the run's dir: many small files spread over nested directories, and
a few large files of random bytes. Every name is unique across its tree, because `weed
download` writes each file flat into one directory under the name it was uploaded with.

Fairness of the order: both systems run in the same phase before the next phase starts, which
system goes first alternates from tree to tree, the gets are repeated (keeping each system's
fastest, see dfs.bench.cli.GETS) with the systems taking turns, and the page cache's dirty data
is written back (sync(2), untimed) before every timed command, so one system's write-back never
runs inside the other's timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .measure import peaks, random_file, run_timed

if TYPE_CHECKING:
    from .seaweedfs import SeaweedCluster

#: Top-level directories of the small-file tree; each holds a nested `sub` directory too.
SUBDIRS = 10

#: (size, sha256 hex) of each file, by path relative to the tree's root.
Digest = dict[str, tuple[int, str]]


@dataclass
class Tree:
    """One local source tree: what it holds and the digest every download is checked against."""

    name: str
    path: str
    files: int
    bytes: int
    digest: Digest

    @property
    def flat(self) -> Digest:
        """The digest by file name alone, as `weed download` writes the files."""
        return {os.path.basename(rel): v for rel, v in self.digest.items()}


def make_small(root: str, files: int, size: int) -> Tree:
    """`files` files of `size` random bytes, spread evenly over dNN/ and dNN/sub/."""
    for i in range(files):
        d = os.path.join(root, f"d{i % SUBDIRS:02d}", *(["sub"] if i // SUBDIRS % 2 else []))
        os.makedirs(d, exist_ok=True)
        random_file(os.path.join(d, f"f{i:06d}.bin"), size)
    return Tree("small", root, files, files * size, digest(root))


def make_large(root: str, files: int, size: int) -> Tree:
    """`files` files of `size` random bytes in one directory."""
    os.makedirs(root, exist_ok=True)
    for i in range(files):
        random_file(os.path.join(root, f"large{i:03d}.bin"), size)
    return Tree("large", root, files, files * size, digest(root))


def digest(root: str) -> Digest:
    out: Digest = {}
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[os.path.relpath(path, root)] = (os.path.getsize(path), h.hexdigest())
    return out


def check(who: str, want: Digest, got: Digest) -> None:
    """A figure counts only if every file came back whole: RuntimeError otherwise."""
    if want == got:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    example = (missing or extra or differ)[0]
    raise RuntimeError(f"{who}: the tree read back differs from the one put: {len(missing)} "
                       f"missing, {len(extra)} unexpected, {len(differ)} with other bytes "
                       f"(e.g. {example})")


@dataclass
class Side(ABC):
    """One system under test: how it puts and gets a tree, and what it measured."""

    name: str
    pids: dict[str, int]  # its servers, for their peak RSS
    rss: dict[str, float] = field(default_factory=dict)

    @abstractmethod
    def put(self, tree: Tree) -> tuple[float, float]:
        """Put the tree; (wall seconds, client peak RSS MiB)."""

    @abstractmethod
    def get(self, tree: Tree, out: str) -> tuple[float, float]:
        """Get the tree into the new directory `out` and check it; (seconds, client RSS)."""


class DfsSide(Side):
    """dfs-cli, one process per put or get, each with one client moving `parallel` files."""

    def __init__(self, cli: Callable[..., list[str]], parallel: int,
                 pids: dict[str, int]) -> None:
        super().__init__("dfs", pids)
        self.cli = cli
        self.parallel = str(parallel)
        self.remotes: list[str] = []

    def _remote(self, tree: Tree) -> str:
        return f"/bench-tree-{os.getpid()}-{tree.name}"

    def put(self, tree: Tree) -> tuple[float, float]:
        remote = self._remote(tree)
        self.remotes.append(remote)
        seconds, rss, out = run_timed(self.cli("put", tree.path, remote,
                                               "--parallel", self.parallel))
        if not out.startswith(f"put: {tree.files} files,") or ", 0 failed" not in out:
            raise RuntimeError(f"dfs-cli put of {tree.files} files said: {out.strip()}")
        return seconds, rss

    def get(self, tree: Tree, out: str) -> tuple[float, float]:
        seconds, rss, _ = run_timed(self.cli("get", self._remote(tree), out,
                                             "--parallel", self.parallel))
        check("dfs-cli get", tree.digest, digest(out))
        return seconds, rss

    def remove(self) -> list[str]:
        """rm -r what was put (it matters with --meta: that cluster outlives the run); the
        paths that could not be removed, so a failed run still reports its own error."""
        left = []
        for remote in self.remotes:
            try:
                run_timed(self.cli("rm", "-r", remote))
            except RuntimeError:
                left.append(remote)
        self.remotes = []
        return left


class WeedSide(Side):
    """SeaweedFS's own client tools. Both move one file at a time: neither has an option to
    run several transfers at once. `weed upload -dir` asks the master for a file id and posts
    the file, file by file, splitting any file over -maxMB into chunks plus a manifest;
    `weed download` takes file ids (there is no namespace without a filer), looks up each
    volume and writes the files flat into one directory, merging a chunked file's parts."""

    def __init__(self, cluster: SeaweedCluster) -> None:
        super().__init__("seaweedfs", cluster.pids())
        self.cluster = cluster
        self.fids: dict[str, list[str]] = {}

    def _weed(self, tool: str, *args: str) -> list[str]:
        # flags before the file ids: Go's flag parsing stops at the first non-flag
        return [self.cluster.weed, "-logtostderr", tool, f"-master={self.cluster.master}",
                *args]

    def put(self, tree: Tree) -> tuple[float, float]:
        from .seaweedfs import REPLICATION, UPLOAD_MAX_MB
        seconds, rss, out = run_timed(self._weed("upload", f"-maxMB={UPLOAD_MAX_MB}",
                                                 f"-replication={REPLICATION}",
                                                 f"-dir={tree.path}"))
        if self.cluster.fsync:  # weed upload cannot ask for fsync: see dfs.bench.seaweedfs
            t0 = time.perf_counter()
            self.cluster.fsync_volume_files()
            seconds += time.perf_counter() - t0
        self.fids[tree.name] = _uploaded(out, tree)
        return seconds, rss

    def get(self, tree: Tree, out: str) -> tuple[float, float]:
        os.makedirs(out)
        seconds, rss, _ = run_timed(self._weed("download", f"-dir={out}",
                                               *self.fids[tree.name]))
        # weed download reports a missing file on stdout and exits 0: the check catches it
        check("weed download", tree.flat, digest(out))
        return seconds, rss


def _uploaded(out: str, tree: Tree) -> list[str]:
    """The file ids from `weed upload -dir` output (a JSON list per file, one per line),
    checked against the tree: it reports a failed file in its JSON and still exits 0."""
    fids: list[str] = []
    want = tree.flat
    for line in out.splitlines():
        if not line.startswith("["):
            continue
        for entry in json.loads(line):
            name, size = entry.get("fileName"), entry.get("size")
            if entry.get("error") or not entry.get("fid") or want.get(name, (-1,))[0] != size:
                raise RuntimeError(f"weed upload of {tree.path}: {entry}")
            fids.append(str(entry["fid"]))
    if len(fids) != tree.files:
        raise RuntimeError(f"weed upload of {tree.path} stored {len(fids)} of {tree.files} "
                           f"files")
    return fids


def _timed(side: Side, op: Callable[..., tuple[float, float]],
           *args: Any) -> tuple[float, float]:
    os.sync()  # write back every dirty page first, untimed: see the module docstring
    with peaks(side.pids, side.rss):
        seconds, client_rss = op(*args)
    side.rss["client"] = max(side.rss.get("client", 0.0), client_rss)
    return seconds, client_rss


def run(trees: list[Tree], sides: list[Side], workdir: str, gets: int,
        log: Callable[[str], None]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Put every tree with every side, then get it back `gets` times, the sides taking turns.

    Returns ({side name: {tree name: figures, "rss_mib": peaks}}, {tree name: [side names in
    the order they ran]}). Figures: files/s and MB/s (10**6 bytes) of the put and of the
    fastest get, their seconds, and the client's peak RSS (MiB) in the put and the gets."""
    figures: dict[str, dict[str, Any]] = {s.name: {} for s in sides}
    orders: dict[str, list[str]] = {}
    for i, tree in enumerate(trees):
        order = sides if i % 2 == 0 else sides[::-1]
        orders[tree.name] = [s.name for s in order]
        put_s: dict[str, float] = {}
        get_s = {s.name: float("inf") for s in order}
        client: dict[str, dict[str, float]] = {s.name: {"put": 0.0, "get": 0.0} for s in order}
        for side in order:
            log(f"{side.name}: put {tree.files} files, {tree.bytes / 1e6:.1f} MB")
            put_s[side.name], client[side.name]["put"] = _timed(side, side.put, tree)
        for n in range(gets):
            for side in order:
                log(f"{side.name}: get {tree.files} files ({n + 1} of {gets})")
                out = os.path.join(workdir, f"{side.name}-{tree.name}")
                seconds, rss = _timed(side, side.get, tree, out)
                shutil.rmtree(out)
                get_s[side.name] = min(get_s[side.name], seconds)
                client[side.name]["get"] = max(client[side.name]["get"], rss)
        for side in order:
            put, get = put_s[side.name], get_s[side.name]
            figures[side.name][tree.name] = {
                "put_ops": round(tree.files / put, 1),
                "put_MBps": round(tree.bytes / put / 1e6, 1),
                "get_ops": round(tree.files / get, 1),
                "get_MBps": round(tree.bytes / get / 1e6, 1),
                "put_s": round(put, 3), "get_s": round(get, 3),
                "client_rss_mib": client[side.name]}
    for side in sides:
        figures[side.name]["rss_mib"] = side.rss
    return figures, orders
