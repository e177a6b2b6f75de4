"""A chunkserver with two data dirs, each a small ext4 file system on a loop device, loses one
of them while clients write (and, in the second test, while they read):

- read-only: ext4 mounted `errors=remount-ro` takes an error (`trigger_fs_error`, the kernel's
  own test hook) and remounts itself read-only with replicas open for writing (a plain
  `mount -o remount,ro` refuses then: "mount point is busy"); every write there gets EROFS.
- EIO on read: the image is truncated and the loop device told (`losetup -c`): it shrinks
  to nothing, and every read of a block file whose pages are not cached gets a real EIO from
  the block layer ("beyond end of device"). The periodic probe is off on that server, so only
  the read path can notice. (Truncating alone is not enough: a loop device reads past the
  end of its file as zeros, which the readers take for corrupt replicas, not a failed disk.)

Either way the chunkserver keeps running and serving from the other dir, status shows the
failed dir, every acknowledged file reads back byte for byte, meta re-replicates the lost
replicas (fsck clean) and no new block lands in the failed dir. Each test prints its history
(operations tried, acknowledged, failed with an error, lost: must be 0) — `pytest -s` shows it.

The suite form is short; DFS_FAULTS_SECONDS=N runs the writers for N seconds around the fault.
Needs root, losetup, mkfs.ext4 and mount (Debian: mount, e2fsprogs); skipped with the reason
otherwise. Mounts and loop devices are removed even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.request import urlopen

import pytest
from cli_runner import cli
from cluster import Cluster, wait_until

import dfs

KiB = 1024
BLOCK_SIZE = 256 * KiB
LONG = float(os.environ.get("DFS_FAULTS_SECONDS") or 0)  # the long form's writer seconds
IMAGE_MIB = 512 if LONG else 96  # each loop disk (a sparse file: only what is written costs)
# The plain chunkservers offer about what chunk2's two disks have: meta places blocks on the
# servers with the most room first, and chunk2 must take its share.
PLAIN_CAPACITY = f"{IMAGE_MIB * 17 // 10}MiB"
WRITER_BYTES = 8 << 20  # each writer keeps at most this much (a long run removes the oldest)


@dataclass
class Disk:
    image: Path
    dev: str
    mnt: Path

    @property
    def data(self) -> Path:
        return self.mnt / "dfs"

    def block_files(self) -> set[str]:
        out: set[str] = set()
        for _, _, files in os.walk(self.data / "blocks"):
            out.update(f for f in files if f.startswith("blk_") and not f.endswith(".tmp"))
        return out


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


@pytest.fixture
def loop_disks(tmp_path: Path) -> Iterator[Callable[[int], list[Disk]]]:
    """make(n): n ext4 file systems of IMAGE_MIB on loop devices, mounted errors=remount-ro
    under tmp_path; all unmounted and detached after."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting a file system needs root (CI runs as root)")
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: mount, e2fsprogs)")
    disks: list[Disk] = []

    def make(n: int) -> list[Disk]:
        for i in range(n):
            image = tmp_path / f"disk{i}.img"
            with open(image, "wb") as f:
                f.truncate(IMAGE_MIB << 20)
            r = run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
            if r.returncode:
                pytest.skip(f"mkfs.ext4 failed: {r.stderr.strip()}")
            r = run("losetup", "-f", "--show", str(image))
            if r.returncode:
                pytest.skip(f"no loop device here: {r.stderr.strip()}")
            disk = Disk(image, r.stdout.strip(), tmp_path / f"mnt{i}")
            disks.append(disk)
            disk.mnt.mkdir()
            r = run("mount", "-o", "errors=remount-ro", disk.dev, str(disk.mnt))
            if r.returncode:
                pytest.skip(f"cannot mount a loop device here: {r.stderr.strip()}")
            disk.data.mkdir()
        return disks

    try:
        yield make
    finally:
        for disk in reversed(disks):
            if run("umount", str(disk.mnt)).returncode and os.path.ismount(disk.mnt):
                run("umount", "-l", str(disk.mnt))
            run("losetup", "-d", disk.dev)


@dataclass
class History:
    tried: int = 0
    acked_total: int = 0
    acked: dict[str, str] = field(default_factory=dict)  # kept: path -> sha256 of what was put
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    acked_after_fault: int = 0
    lost: list[str] = field(default_factory=list)
    removed: int = 0  # acknowledged files a long run removed again (not read back)
    times: dict[str, float] = field(default_factory=dict)

    def show(self, title: str) -> str:
        errors = sorted({e.split(":")[0] for _, e in self.failed})
        lines = [f"---- {title}",
                 f"writes tried {self.tried}, acknowledged {self.acked_total} "
                 f"({self.acked_after_fault} after the fault), failed with an error "
                 f"{len(self.failed)}{' ' + str(errors) if errors else ''}; read back "
                 f"{len(self.acked)}, lost {len(self.lost)}"
                 + (f" ({self.removed} acknowledged files removed again to keep the small "
                    "disks from filling)" if self.removed else "")]
        lines += [f"{k}: {v:.2f}s" for k, v in self.times.items()]
        text = "\n".join(lines)
        print(text)
        return text


class Watcher(threading.Thread):
    """From the fault on, polls meta (its own client) and notes in the history when status
    first shows chunk2's failed dir and when fsck is next clean, while the writers go on."""

    def __init__(self, c: Cluster, h: History, fault: float) -> None:
        super().__init__(daemon=True)
        self.c, self.h, self.fault = c, h, fault
        self.client = c.client()
        self.halt = threading.Event()

    def run(self) -> None:
        addr = self.c["chunk2"].addr
        while not self.halt.wait(0.05):
            with contextlib.suppress(dfs.DFSError):
                if "status shows the failed dir" not in self.h.times:
                    row = next(s for s in self.client.status()["chunkservers"]
                               if s["addr"] == addr)
                    if row.get("failed_dirs"):
                        self.h.times["status shows the failed dir"] = \
                            time.monotonic() - self.fault
                    continue
                report = self.client.fsck("/")
                if report["healthy"] == report["blocks"]:
                    self.h.times["fsck clean (lost replicas re-replicated)"] = \
                        time.monotonic() - self.fault
                    return

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def start(make_cluster: Callable[..., Cluster], disks: list[Disk],
          check: str = "0.3s") -> Cluster:
    """meta, two plain chunkservers, and chunk2 on both loop disks. Meta places blocks on the
    servers with the most free space first: the plain ones get a --capacity near what chunk2's
    two small disks have, so chunk2 takes its share."""
    c: Cluster = make_cluster(2, chunk_args=["--dir-check-interval", "0.3s",
                                             "--capacity", PLAIN_CAPACITY])
    c.add_chunkserver(chunk_args=["--dir-check-interval", check, "--data-dir",
                                  ",".join(str(d.data) for d in disks)])
    return c


def server_row(c: Cluster, name: str) -> dict[str, Any]:
    addr = c[name].addr
    return next(s for s in c.status()["chunkservers"] if s["addr"] == addr)


def failed_dirs(c: Cluster, name: str) -> list[dict[str, Any]]:
    return [d for d in server_row(c, name).get("dirs", []) if d["state"] == "failed"]


async def write_files(c: Cluster, h: History, writers: int, until: Callable[[], bool],
                      seed: int) -> None:
    """`writers` concurrent writers, each putting files of 1 KiB .. 1 MiB (R=2, 256 KiB
    blocks) until `until()`; each outcome goes into the history."""
    async with dfs.AsyncClient(c.meta_addr, timeout=20) as client:
        async def writer(w: int) -> None:
            rng = random.Random(seed * 100 + w)
            i = 0
            mine: list[tuple[str, int]] = []
            while not until():
                # A long run keeps at most WRITER_BYTES of its files: the disks are small.
                while sum(n for _, n in mine) > WRITER_BYTES:
                    old, _ = mine.pop(0)
                    await client.rm(old)
                    del h.acked[old]
                    h.removed += 1
                path = f"/w{w}/f{seed}-{i}"
                data = rng.randbytes(rng.randint(1 * KiB, 1024 * KiB))
                i += 1
                h.tried += 1
                try:
                    await client.put_bytes(data, path, replication=2, block_size=BLOCK_SIZE)
                except dfs.DFSError as exc:
                    h.failed.append((path, f"{type(exc).__name__}: {exc}"))
                    continue
                h.acked[path] = hashlib.sha256(data).hexdigest()
                h.acked_total += 1
                mine.append((path, len(data)))
                if "fault" in h.times:
                    h.acked_after_fault += 1
        await asyncio.gather(*(writer(w) for w in range(writers)))


def read_back(c: Cluster, h: History) -> None:
    client = c.client()
    for path, digest in h.acked.items():
        try:
            got = client.get_bytes(path)
        except dfs.DFSError as exc:
            h.lost.append(f"{path}: {exc}")
            continue
        if hashlib.sha256(got).hexdigest() != digest:
            h.lost.append(f"{path}: different bytes")


async def read_replicas(addr: str, names: set[str]) -> None:
    """read_block, straight to the chunkserver at `addr`, of each replica file named (blk_<id
    hex>_<gen>); failures are the point, and are ignored."""
    from dfs.net import Connection
    conn = await Connection.open(addr)
    try:
        for name in sorted(names):
            _, block, gen = name.split("_")[:3]
            with contextlib.suppress(dfs.DFSError):
                ids = {"block": int(block, 16), "gen": int(gen)}
                info = await conn.call("block_info", timeout=10, **ids)
                size = info.header["size"]
                info.release()
                reply = await conn.call("read_block", offset=0, length=min(size, 65536),
                                        timeout=10, **ids)
                reply.release()
    finally:
        conn.close()


def healthy(c: Cluster) -> bool:
    report = c.client().fsck("/")
    return report["blocks"] > 0 and report["healthy"] == report["blocks"]


def test_a_disk_going_read_only_under_writers(loop_disks, make_cluster) -> None:
    disks = loop_disks(2)
    good, bad = disks
    trigger = Path(f"/sys/fs/ext4/{os.path.basename(bad.dev)}/trigger_fs_error")
    if not trigger.exists():
        pytest.skip(f"{trigger} is missing: this kernel cannot make ext4 fail on demand")
    c = start(make_cluster, disks)
    h = History()
    run_for = LONG or 0.0
    state: dict[str, float] = {}
    watchers: list[Watcher] = []

    def until() -> bool:
        now = time.monotonic()
        if "fault" not in state:
            # the fault comes once both dirs hold blocks (and, long form, after half the run)
            if len(h.acked) >= 10 and bad.block_files() and good.block_files() and \
                    now - state.setdefault("began", now) >= run_for / 2:
                state["fault"] = now
                h.times["fault"] = 0.0
                trigger.write_text("dfs test: disk goes read-only\n")
                watchers.append(Watcher(c, h, now))
                watchers[0].start()
            return False
        if h.acked_after_fault >= 10 and now - state["fault"] >= run_for / 2:
            state.setdefault("stopped", now)
            return True
        return False

    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(write_files(c, h, 6, until, 1), 60 + 2 * run_for))
    fault = state["fault"]
    before = bad.block_files()
    assert "emergency_ro" in Path("/proc/mounts").read_text() or \
        " ro," in Path("/proc/mounts").read_text()
    rows = wait_until(lambda: failed_dirs(c, "chunk2"), 10, "status to show the failed dir")
    # the first error met: EROFS from a write, or EIO from a sync of the aborted journal
    assert rows[0]["path"] == str(bad.data), rows
    assert "Read-only" in rows[0]["error"] or "Input/output" in rows[0]["error"], rows
    wait_until(lambda: healthy(c), 30, "fsck healthy (lost replicas re-replicated)")
    h.times["writers stopped"] = state["stopped"] - fault
    watchers[0].join(10)
    watchers[0].stop()
    read_back(c, h)
    h.times["whole run"] = time.monotonic() - t0
    h.show("disk goes read-only under 6 writers")
    assert not h.lost, h.lost[:5]
    assert c["chunk2"].running()
    row = server_row(c, "chunk2")
    assert row["state"] == "live" and row["failed_dirs"] == 1
    ok = [d for d in row["dirs"] if d["state"] == "ok"]
    assert [d["path"] for d in ok] == [str(good.data)]
    if not h.removed:  # it still holds (and served, in read_back) the blocks of its good dir
        assert ok[0]["blocks"] > 0, ok
    assert bad.block_files() <= before  # nothing new landed on the failed dir
    # the status line for operators, and the chunkserver's own gauge
    out = cli("status", meta=c.meta_addr).text
    assert f"FAILED DATA DIR {bad.data}" in out, out


def test_a_disk_failing_reads_is_found_by_the_read_path(loop_disks, make_cluster) -> None:
    disks = loop_disks(2)
    good, bad = disks
    c = start(make_cluster, disks, check="1h")  # no probe: only a read can find it
    h = History()
    run_for = LONG or 0.0
    began = time.monotonic()

    def enough() -> bool:
        return len(h.acked) >= 24 and len(bad.block_files()) >= 4 and \
            time.monotonic() - began >= run_for

    asyncio.run(asyncio.wait_for(write_files(c, h, 6, enough, 2), 60 + run_for))
    # The disk loses every sector it holds, and the pages of the block files leave the cache
    # (they are clean: every acknowledged replica was synced), so reads must go to the disk.
    before = bad.block_files()
    for root, _, files in os.walk(bad.data / "blocks"):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
    os.truncate(bad.image, 0)
    r = run("losetup", "-c", bad.dev)
    assert not r.returncode, r.stderr
    fault = time.monotonic()
    h.times["fault"] = 0.0
    assert not failed_dirs(c, "chunk2")  # nobody has noticed yet
    watcher = Watcher(c, h, fault)
    watcher.start()
    read_back(c, h)  # chunk2 may serve some of these from the bad dir and meet EIO
    # Which replica a client reads is not up to the test: also ask chunk2 itself for each
    # replica the bad dir held, so the read path meets the EIO whatever the clients chose.
    asyncio.run(read_replicas(c["chunk2"].addr, before))
    h.times["reads done"] = time.monotonic() - fault
    rows = wait_until(lambda: failed_dirs(c, "chunk2"), 10, "status to show the failed dir")
    assert rows[0]["path"] == str(bad.data), rows
    assert "Input/output error" in rows[0]["error"], rows
    # writers go on after the failure; nothing they write may land in the failed dir
    more = History()
    asyncio.run(asyncio.wait_for(write_files(
        c, more, 4, lambda: len(more.acked) >= 12 and time.monotonic() - fault >= run_for,
        3), 60 + run_for))
    h.times["writers stopped"] = time.monotonic() - fault
    wait_until(lambda: healthy(c), 30, "fsck healthy (lost replicas re-replicated)")
    watcher.join(10)
    watcher.stop()
    read_back(c, more)
    h.tried += more.tried
    h.acked_total += more.acked_total
    h.acked_after_fault = more.acked_total
    h.acked.update(more.acked)
    h.failed += more.failed
    h.lost += more.lost
    h.removed += more.removed
    h.show("disk fails reads (EIO) after 6 writers")
    assert not h.lost, h.lost[:5]
    assert c["chunk2"].running() and server_row(c, "chunk2")["state"] == "live"
    assert bad.block_files() <= before
    assert "FAILED" in c["chunk2"].log_text()


def test_a_chunkserver_whose_only_disk_fails_stays_up_and_takes_no_writes(
        loop_disks, make_cluster) -> None:
    (disk,) = loop_disks(1)
    trigger = Path(f"/sys/fs/ext4/{os.path.basename(disk.dev)}/trigger_fs_error")
    if not trigger.exists():
        pytest.skip(f"{trigger} is missing: this kernel cannot make ext4 fail on demand")
    c: Cluster = make_cluster(2, http=True, chunk_args=["--capacity", "80MiB"])
    c.add_chunkserver(chunk_args=["--dir-check-interval", "0.3s", "--data-dir",
                                  str(disk.data)])
    client = c.client()
    for i in range(6):
        client.put_bytes(os.urandom(300 * KiB), f"/before/{i}", replication=3,
                         block_size=BLOCK_SIZE)
    assert disk.block_files()
    trigger.write_text("dfs test: the only disk goes read-only\n")
    wait_until(lambda: failed_dirs(c, "chunk2"), 10, "status to show the failed dir")
    # (the heartbeat naming the failed dir may arrive just before the full block report)
    row = wait_until(lambda: (r := server_row(c, "chunk2"))["blocks"] == 0 and r, 10,
                     "meta to forget chunk2's replicas")
    assert row["state"] == "live" and row["free"] == 0, row
    out = cli("status", meta=c.meta_addr).text
    assert "every data dir of this chunkserver has failed: it takes no writes" in out, out
    # R=2 files still go to the two others; nothing is placed on chunk2
    for i in range(6):
        client.put_bytes(os.urandom(300 * KiB), f"/after/{i}", replication=2,
                         block_size=BLOCK_SIZE)
        assert c["chunk2"].addr not in str(client.stat(f"/after/{i}")["blocks"])
    assert c["chunk2"].running()

    def gauge(port: int, name: str) -> float:
        text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith(name + " "))
    assert gauge(c["chunk2"].http_port, "dfs_chunk_failed_dirs") == 1
    assert gauge(c.meta.http_port, "dfs_chunkserver_failed_dirs") == 1
    page = urlopen(f"http://127.0.0.1:{c.meta.http_port}/chunkservers", timeout=5).read()
    assert f"failed data dir {disk.data}".encode() in page
