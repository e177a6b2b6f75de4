"""A real dfs-mount for the tests: the command in its own process on a real FUSE mount point,
waited for by reading /proc/self/mountinfo, and always taken down (fusermount3 -u, then a lazy
unmount and SIGKILL if that did not do it) so a failed test never leaves a mount behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster import Cluster, wait_until

MOUNT = [sys.executable, "-m", "dfs.mount.cli"]


def mounted(path: Path | str) -> bool:
    """Is a dfs FUSE file system mounted at `path` now?"""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == target and fields[sep + 1] == "fuse.dfs":
                return True
    return False


class Mount:
    def __init__(self, cluster: Cluster, path: Path, *extra: str) -> None:
        self.cluster = cluster
        self.path = path
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = path.parent / f"{path.name}.mount.log"

    def start(self) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*MOUNT, "--meta", self.cluster.meta_addr, str(self.path), "--foreground",
                 *self.extra], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: mounted(self.path) or self.proc.poll() is not None, 30,
                   f"dfs-mount on {self.path}")
        assert mounted(self.path), f"dfs-mount exited: {self.log.read_text()[-2000:]}"
        return self

    def unmount(self) -> int:
        """fusermount3 -u; returns dfs-mount's exit status."""
        subprocess.run(["fusermount3", "-u", str(self.path)], check=True, timeout=30)
        assert self.proc is not None
        return self.proc.wait(timeout=30)

    def close(self) -> None:
        if mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], timeout=30)
        if mounted(self.path):
            subprocess.run(["fusermount3", "-uz", str(self.path)], timeout=30)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Mount":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
