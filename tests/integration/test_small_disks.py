"""Daemons on small, real file systems (tmpfs mounts of a few MiB, so "full" is a real ENOSPC,
not a flag) and a journal whose disk fails:

- chunkservers on 64 MiB disks store files: the default reserve scales with the disk, and a
  server that cannot hold one default block says so at start;
- meta whose journal disk fills stays up read-only: reads and listings go on, every change gets
  `no space` naming the journal's disk, `status` says so, and changes resume by themselves once
  space is freed;
- meta whose journal fsync fails (EIO, injected at the syscall) exits non-zero with one line
  and recovers from its journal at the next start.

Mounting needs root, as CI runs; elsewhere these tests are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cli_runner import cli, ok, one_error_line
from cluster import Cluster, MiB, data_of, port_open, wait_until

import dfs

Mount = Callable[[Path, str], Path]


@pytest.fixture
def tmpfs() -> Iterator[Mount]:
    """mount(path, size): a tmpfs of that size on path (made if missing), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       check=True, capture_output=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave: int) -> None:
    """Fill the file system holding `path` with one file, leaving about `leave` bytes free."""
    st = os.statvfs(path.parent)
    size = st.f_bavail * st.f_frsize - leave
    with open(path, "wb") as f:
        chunk = b"\0" * MiB
        while size > 0:
            try:
                size -= f.write(chunk[:min(size, MiB)])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break


def test_chunkservers_on_64MiB_disks_store_files(make_cluster, tmpfs: Mount,
                                                 tmp_path: Path) -> None:
    c: Cluster = make_cluster(2, start=False)
    for d in c.chunkservers:
        tmpfs(d.data_dir, "64m")
    c.start()
    for d in c.chunkservers:  # one warning line at start: less than a 64 MiB block usable
        log = d.log_text()
        assert log.count("less than one 64 MiB block") == 1, log
    status = c.status()["chunkservers"]
    # Reserve min(1 GiB, 5%): about 60 MiB of each 64 MiB disk is usable.
    assert all(55 * MiB < s["free"] < 62 * MiB for s in status), status
    # A 10 MiB local file (its size known: placement needs room for 10 MiB, not 64).
    src = tmp_path / "ten"
    src.write_bytes(data_of(10 * MiB, 1))
    ok(cli("put", str(src), "/ten", meta=c.meta_addr))
    # From a pipe, with small blocks: placement needs room for one small block.
    ok(cli("put", "-", "/piped", "--block-size", "1MiB", meta=c.meta_addr,
           stdin=data_of(10 * MiB, 2)))
    client = c.client()
    assert client.get_bytes("/ten") == data_of(10 * MiB, 1)
    assert client.get_bytes("/piped") == data_of(10 * MiB, 2)
    assert all(len(b["replicas"]) == 2 for p in ("/ten", "/piped")
               for b in client.stat(p)["blocks"])
    # A pipe of unknown length with 64 MiB blocks cannot be placed: one clear line.
    one_error_line(cli("put", "-", "/big", meta=c.meta_addr, stdin=data_of(MiB, 3)),
                   "no space")


def test_meta_with_a_full_journal_disk_is_read_only_until_space_is_freed(
        make_cluster, tmpfs: Mount) -> None:
    c: Cluster = make_cluster(2, start=False)
    tmpfs(c.meta.data_dir, "8m")
    c.start()
    client = c.client()
    client.put_bytes(b"before", "/before")
    client.mkdir("/d")
    filler = c.meta.data_dir / "filler"
    fill(filler, leave=0)
    # The room allocated ahead of the journal takes the changes in flight; once meta cannot
    # allocate more, it refuses every change before making it.
    acknowledged = []

    def refused() -> bool:
        try:
            client.mkdir(f"/d/m{len(acknowledged)}")
        except dfs.NoSpace as exc:
            assert "journal" in str(exc) and str(c.meta.data_dir) in str(exc), exc
            return True
        acknowledged.append(f"/d/m{len(acknowledged)}")
        return False
    wait_until(refused, 30, "meta to refuse changes with no space", interval=0)
    assert len(acknowledged) < 1000  # what fitted in the room meta had already allocated
    status = client.status()
    assert status["read_only"] is True and "journal" in status["read_only_reason"]
    assert "READ-ONLY" in ok(cli("status", meta=c.meta_addr)).text
    # Everything else goes on: reads, listings, stat; changes get one clear line.
    assert client.get_bytes("/before") == b"before"
    assert sorted(e["path"] for e in client.ls("/d")) == sorted(acknowledged)
    for args in (["mkdir", "/x"], ["rm", "/before"], ["mv", "/before", "/after"],
                 ["put", "-", "/new"]):
        one_error_line(cli(*args, meta=c.meta_addr, stdin=b"data"), "no space", "journal")
    with pytest.raises(dfs.NoSpace):
        client.put_bytes(b"x", "/x")
    assert c.meta.running()
    # Free the space: changes resume by themselves.
    filler.unlink()
    wait_until(lambda: client.mkdir("/after-space") is None, 10, "meta to take changes again")
    assert client.status()["read_only"] is False
    client.put_bytes(b"after", "/after")
    # Every acknowledged change survives a crash.
    c.kill("meta")
    c.restart("meta")
    fresh = c.client()
    names = {e["path"] for e in fresh.ls("/")}
    assert {"/before", "/d", "/after-space", "/after"} <= names
    assert sorted(e["path"] for e in fresh.ls("/d")) == sorted(acknowledged)


# Runs dfsd with os.fdatasync failing (EIO) once FLAG exists: a disk error injected at the
# syscall, everything else real.
_EIO_DFSD = """
import errno, os, sys
flag, real = sys.argv[1], os.fdatasync
def fdatasync(fd):
    if os.path.exists(flag):
        raise OSError(errno.EIO, "Input/output error")
    return real(fd)
os.fdatasync = fdatasync
from dfs.daemon import main
sys.exit(main(sys.argv[2:]))
"""


def test_meta_whose_journal_fsync_fails_exits_nonzero_and_recovers(make_cluster,
                                                                   tmp_path: Path) -> None:
    c: Cluster = make_cluster(0, start=False)
    flag = tmp_path / "fail-fsync"
    proc = c.track(subprocess.Popen(
        [sys.executable, "-c", _EIO_DFSD, str(flag), *c.meta.args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=tmp_path))
    wait_until(lambda: port_open(c.meta.port) or proc.poll() is not None, 15, "meta listening")
    client = c.client()
    client.mkdir("/durable")
    flag.touch()
    t0 = time.monotonic()
    with pytest.raises(dfs.DFSError):
        client.mkdir("/unacknowledged")
    assert proc.wait(15) == 1
    assert time.monotonic() - t0 < 15
    assert proc.stderr is not None
    lines = proc.stderr.read().decode().strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("dfsd: error: journal ") and "failed" in lines[-1], lines
    c.restart("meta")
    # What was acknowledged is there. The change whose fsync failed was never acknowledged;
    # like any request that fails, it may or may not have reached the disk.
    assert "/durable" in {e["path"] for e in c.client().ls("/")}
    with contextlib.suppress(Exception):
        client.close()
