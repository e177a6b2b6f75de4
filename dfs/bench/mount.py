"""`dfs-bench mount`: what reaching dfs through dfs-mount (FUSE) costs, as ratios measured in
one run against one cluster.

1. Large file, A against B, the same bytes to the same cluster:
   - write: `dfs-cli put` of a --size file against `cp` of it into the mount (the time until
     cp returns, which includes the close that publishes the file);
   - read: `dfs-cli get FILE /dev/null` against `dd if=MOUNT/COPY of=/dev/null bs=1M` of a
     fresh copy each time (`dfs-cli cp` shares the blocks), so the kernel has none of it
     cached and every byte crosses FUSE; before each pair the page cache is emptied (as
     root; see _drop_page_cache) and one untimed get brings the blocks back into the
     chunkservers' cache for both.
2. Many small files: `tar x` of an archive of --files files (1-8 KiB, in nested directories)
   into the mount, against the same `tar x` into a directory on the local disk (the disk this
   run's data dir is on), reported with and without a `sync` after it: dfs makes every file
   durable on every replica before close returns, a local `tar x` makes nothing durable.
   SeaweedFS's `weed mount` needs a filer, which `dfs-bench --compare seaweedfs` does not run;
   the local disk is the comparison.

Fairness: each timed step is the median of --runs repetitions, the A/B order alternating,
dirty pages written back (sync(2), untimed) before each; every file written is read back and
compared. dfs-mount runs in its own process (as users run it), started and stopped here.

Owns the mount, the inputs and the order of the timed steps; starts no dfs server
(dfs.bench.cli does) and judges no figure: the targets are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from typing import Any

from .measure import random_file, run_timed, same_file

Log = Callable[[str], None]
Cli = Callable[..., list[str]]


class Mounted:
    """dfs-mount --foreground on `where`, until close()."""

    def __init__(self, meta: str, where: str, options: list[str], log_path: str) -> None:
        os.makedirs(where, exist_ok=True)
        self.where = where
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dfs.mount.cli", "--meta", meta, where, "--foreground",
                 *options], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.ismount(where):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"dfs-mount did not mount {where} (see {log_path})")
            time.sleep(0.05)

    def close(self) -> None:
        if os.path.ismount(self.where):
            subprocess.run(["fusermount3", "-u", self.where], check=False)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _timed(cmd: list[str]) -> float:
    os.sync()
    seconds, _rss, _out = run_timed(cmd)
    return seconds


def _drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only; False if not allowed). A read through FUSE
    puts every page it reads into the page cache, which dfs-cli get to /dev/null does not;
    on this VM that insertion got 2-3x dearer once several GiB of other files were cached
    (the mount's CPU per GiB read went from 0.9 to 3 s, and back when the cache was
    emptied), so each read pair starts from the same, empty cache."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def _small_tree(where: str, files: int) -> str:
    """An archive of `files` files of 1-8 KiB in nested directories (as a source tree)."""
    rng = random.Random(files)
    src = os.path.join(where, "small-src")
    for i in range(files):
        d = os.path.join(src, f"d{i % 50:02d}", f"e{i % 9}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randint(1024, 8192)))
    archive = os.path.join(where, "small.tar")
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname="tree")
    shutil.rmtree(src)
    return archive


def run(meta: str, cli: Cli, security: list[str], base: str, args: Any,
        log: Log) -> dict[str, Any]:
    """security: the --secret-file / --tls-* options of this run, for dfs-mount too."""
    if shutil.which("fusermount3") is None:
        raise RuntimeError("fusermount3 not found: apt install fuse3 (and pip install "
                           "'dfs[mount]')")
    mnt = os.path.join(base, "mnt")
    src = os.path.join(base, "large.src")
    log(f"writing a {args.size >> 20} MiB random source file and a {args.files}-file archive")
    random_file(src, args.size)
    archive = _small_tree(base, args.files)
    mount = Mounted(meta, mnt, security, os.path.join(base, "dfs-mount.log"))
    times: dict[str, list[float]] = {k: [] for k in (
        "put_cli", "put_mount", "get_cli", "get_mount", "tar_mount", "tar_local",
        "tar_local_sync")}
    try:
        cli_file = "/bench-mount/cli.bin"
        mount_file = "/bench-mount/mount.bin"
        for i in range(args.runs):
            log(f"large write, run {i + 1} of {args.runs}")
            steps = [("put_cli", cli("put", src, cli_file)),
                     ("put_mount", ["cp", src, os.path.join(mnt, mount_file[1:])])]
            os.makedirs(os.path.join(mnt, "bench-mount"), exist_ok=True)
            for key, cmd in steps if i % 2 == 0 else steps[::-1]:
                times[key].append(_timed(cmd))
        if not same_file(src, os.path.join(mnt, mount_file[1:])):
            raise RuntimeError("the file cp wrote through the mount reads back wrong")
        # Reads of the same blocks, warm in the chunkservers' page cache for both sides (an
        # untimed get after the page cache is emptied). The mount reads a fresh copy each
        # time (`dfs-cli cp` shares the blocks, moves no bytes), so every byte crosses FUSE.
        read_cli = cli("get", cli_file, "/dev/null")
        dropped = True
        for i in range(args.runs):
            log(f"large read, run {i + 1} of {args.runs}")
            copy = f"/bench-mount/read-{i}.bin"
            run_timed(cli("cp", cli_file, copy))
            dropped = not args.keep_page_cache and _drop_page_cache() and dropped
            run_timed(read_cli)  # the blocks back in the chunkservers' cache, for both
            read_mount = ["dd", f"if={os.path.join(mnt, copy[1:])}", "of=/dev/null", "bs=1M"]
            steps = [("get_cli", read_cli), ("get_mount", read_mount)]
            for key, cmd in steps if i % 2 == 0 else steps[::-1]:
                times[key].append(_timed(cmd))
        for i in range(args.runs):
            log(f"tar x of {args.files} files, run {i + 1} of {args.runs}")
            into_mount = os.path.join(mnt, f"tar-{i}")
            into_local = os.path.join(base, f"tar-{i}")
            os.makedirs(into_mount)
            os.makedirs(into_local)
            steps = [("tar_mount", ["tar", "xf", archive, "-C", into_mount]),
                     ("tar_local", ["tar", "xf", archive, "-C", into_local])]
            for key, cmd in steps if i % 2 == 0 else steps[::-1]:
                times[key].append(_timed(cmd))
                if key == "tar_local":  # and what making those files durable takes
                    t0 = time.perf_counter()
                    os.sync()
                    times["tar_local_sync"].append(times[key][-1] + time.perf_counter() - t0)
        check = subprocess.run(["diff", "-r", os.path.join(base, "tar-0"),
                                os.path.join(mnt, "tar-0")], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError("the tree tar wrote into the mount differs from the local one")
    finally:
        mount.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    mb = args.size / 1e6
    out: dict[str, Any] = {
        "workload": "mount", "size": args.size, "files": args.files, "runs": args.runs,
        "times_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "put_cli_MBps": round(mb / med["put_cli"], 1),
        "put_mount_MBps": round(mb / med["put_mount"], 1),
        "get_cli_MBps": round(mb / med["get_cli"], 1),
        "get_mount_MBps": round(mb / med["get_mount"], 1),
        "tar_mount_files_s": round(args.files / med["tar_mount"], 1),
        "tar_local_files_s": round(args.files / med["tar_local"], 1),
        "tar_local_sync_files_s": round(args.files / med["tar_local_sync"], 1),
    }
    out["page_cache_dropped"] = dropped
    out["put_ratio"] = round(out["put_mount_MBps"] / out["put_cli_MBps"], 3)
    out["get_ratio"] = round(out["get_mount_MBps"] / out["get_cli_MBps"], 3)
    return out


def render(r: dict[str, Any]) -> str:
    return "\n".join([
        f"dfs-bench mount: {r['size'] >> 20} MiB file, {r['files']} small files, median of "
        f"{r['runs']} runs (A/B order alternating)",
        f"  write  dfs-cli put       {r['put_cli_MBps']:>8.1f} MB/s",
        f"         cp into mount     {r['put_mount_MBps']:>8.1f} MB/s   ratio "
        f"{r['put_ratio']:.2f}",
        f"  read   dfs-cli get >null {r['get_cli_MBps']:>8.1f} MB/s"
        + ("" if r["page_cache_dropped"] else "   (page cache not emptied before reads)"),
        f"         dd from mount     {r['get_mount_MBps']:>8.1f} MB/s   ratio "
        f"{r['get_ratio']:.2f}",
        f"  tar x  into the mount    {r['tar_mount_files_s']:>8.1f} files/s",
        f"         into local disk   {r['tar_local_files_s']:>8.1f} files/s "
        f"({r['tar_local_sync_files_s']:.1f} with a sync after it)",
    ])
