"""Running tests/lazyfs.py for a test: mount it in its own process, send it control commands,
cut the power, and always take it down (fusermount3 -u, then a lazy unmount and SIGKILL).
No pyfuse3 import here: `skip_reason()` says why lazyfs cannot run before anything tries."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from dfs.local_cluster import guarded

LAZYFS = Path(__file__).with_name("lazyfs.py")


def skip_reason() -> str | None:
    """Why lazyfs cannot be mounted here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "lazyfs needs Linux FUSE"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if os.geteuid() != 0:
        return "lazyfs tests run as root (FUSE mounts, and dfsd on them)"
    for module in ("pyfuse3", "trio"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def mounted(path: Path | str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == target and fields[sep + 1] == "fuse.lazyfs":
                return True
    return False


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


class LazyMount:
    """One lazyfs: BACKING holds the files, MOUNTPOINT shows them, CONTROL takes commands.
    `crash()` cuts the power (the process exits); `start()` boots it again on what is left."""

    def __init__(self, backing: Path, mountpoint: Path, control: Path) -> None:
        self.backing, self.mountpoint, self.control = backing, mountpoint, control
        self.log = backing.with_name(backing.name + ".lazyfs.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes = 0

    def start(self) -> "LazyMount":
        return self.spawn().wait_mounted()

    def spawn(self) -> "LazyMount":
        """Start the lazyfs process; `wait_mounted` waits for its mount (start several at
        once, then wait for each)."""
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        with open(self.log, "ab") as log:
            # Behind dfsd's parent-death guard: a runner killed by a timeout leaves no lazyfs
            # process behind.
            self.proc = subprocess.Popen(
                guarded([sys.executable, str(LAZYFS), str(self.backing), str(self.mountpoint),
                         str(self.control)]), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def wait_mounted(self) -> "LazyMount":
        assert self.proc is not None
        proc = self.proc
        _wait(lambda: (mounted(self.mountpoint) and self.control.exists())
              or proc.poll() is not None, 30, f"lazyfs on {self.mountpoint}")
        if proc.poll() is not None:
            raise RuntimeError(f"lazyfs exited with {proc.returncode}: {self.log_tail()}")
        return self

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(str(self.control))
            s.sendall(line.encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                got = s.recv(4096)
                if not got:
                    break
                reply += got
        text = reply.decode().strip()
        if not text.startswith("ok"):
            raise RuntimeError(f"lazyfs {line!r}: {text or 'no answer'}; {self.log_tail()}")
        return text

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (w.split("=") for w in self.command("stats").split()[1:])}

    def crash(self, torn_seed: int | None = None) -> dict[str, int]:
        """Power loss: lazyfs drops what was not durable and exits; returns what it dropped.
        Kill the programs using the mount first (their in-flight writes die with them)."""
        line = "crash" if torn_seed is None else f"crash torn {torn_seed}"
        reply = self.command(line)
        self.wait_down()
        return {k: int(v) for k, v in (w.split("=") for w in reply.split()[1:])}

    def wait_down(self) -> None:
        assert self.proc is not None
        self.proc.wait(30)
        _wait(lambda: not mounted(self.mountpoint), 30, f"{self.mountpoint} unmounted")
        self.crashes += 1

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return "(no log)"

    def close(self) -> None:
        """Unmount and stop, whatever state it is in (safe to call twice)."""
        if mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], timeout=30,
                           capture_output=True)
        if mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], timeout=30,
                           capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self) -> "LazyMount":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
