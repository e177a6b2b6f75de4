"""A fault campaign: a cluster on hosts of their own, writers and readers running through the
faults a test injects, and the check of their history once the faults heal.

    with fault_cluster(tmp_path) as (net, cluster):
        camp = Campaign(net, cluster, tmp_path, writers=2, readers=1)
        camp.start()
        camp.wait_ops(20)                 # the clients are well under way
        net.block("chunk0", ["meta"])     # ... the fault ...
        camp.wait_ops(40)                 # they go on through it
        net.heal_all()
        report = camp.finish()            # stop, wait for repair, check; asserts nothing lost

`seconds()` is how long a scenario keeps its fault: short in the suite, `DFS_FAULTS_SECONDS`
for the long form.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import history
from netns import Network

import dfs
from dfs import config
from dfs.local_cluster import Cluster, wait_until

HERE = Path(__file__).parent


def seconds(short: float) -> float:
    """How long to hold a fault: `short` in the suite, DFS_FAULTS_SECONDS when set."""
    return float(os.environ.get("DFS_FAULTS_SECONDS") or short)


@contextlib.contextmanager
def fault_cluster(base: Path, chunkservers: int = 3,
                  **kwargs: Any) -> Iterator[tuple[Network, Cluster]]:
    """A meta and `chunkservers` chunkservers, each on its own host; removed afterwards,
    namespaces and all, whatever happens."""
    net = Network.create()
    cluster = Cluster(base / "cluster", chunkservers, placement=net.place, **kwargs)
    try:
        cluster.start()
        yield net, cluster
    finally:
        cluster.stop_all()
        net.close()


class Campaign:
    """Writers and readers as processes, each on a client host of its own (made at once, so
    faults can be placed on them, `clients`, before `start()`)."""

    def __init__(self, net: Network, cluster: Cluster, base: Path, *, writers: int = 2,
                 readers: int = 1, seed: int | None = None, max_size: int = 300_000,
                 block_size: int = 128 * 1024, timeout: float = 10.0) -> None:
        self.net, self.cluster, self.base = net, cluster, base
        self.seed = int(os.environ.get("DFS_FAULTS_SEED") or seed or time.time_ns() % 10**6)
        self.stop_file = base / "stop-clients"
        self.names = [f"w{i}" for i in range(writers)] + [f"r{i}" for i in range(readers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.opts = ["--max-size", str(max_size), "--block-size", str(block_size),
                     "--timeout", str(timeout), "--seed", str(self.seed)]
        self.report: history.Report | None = None
        self.clients = [net.add_host(f"client-{name}").name for name in self.names]

    def history_file(self, name: str) -> Path:
        return self.base / f"history-{name}.jsonl"

    def start(self) -> None:
        print(f"campaign seed {self.seed} (DFS_FAULTS_SEED to replay)")
        for name in self.names:
            host = self.net[f"client-{name}"]
            argv = [*host.prefix, sys.executable, str(HERE / "history_worker.py"),
                    "--meta", self.cluster.meta_addr, "--out", str(self.history_file(name)),
                    "--name", name, "--mode", "write" if name[0] == "w" else "read",
                    "--stop", str(self.stop_file), *self.opts]
            log = open(self.base / f"client-{name}.log", "ab")
            self.procs.append(self.cluster.track(subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)))
            log.close()

    def ops(self, outcome: str | None = None) -> int:
        """Operations ended so far (with this outcome)."""
        n = 0
        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                for line in self.history_file(name).read_text().splitlines():
                    n += outcome is None or f'"outcome": "{outcome}"' in line
        return n

    def wait_ops(self, more: int, timeout: float = 60.0, outcome: str | None = "ok") -> None:
        """Until `more` further operations ended (acknowledged ones, by default)."""
        target = self.ops(outcome) + more
        self._check_alive()
        wait_until(lambda: self._check_alive() or self.ops(outcome) >= target, timeout,
                   f"{more} more {outcome or 'finished'} client operations")

    def _check_alive(self) -> bool:
        for name, proc in zip(self.names, self.procs, strict=False):
            if proc.poll() not in (None, 0):
                log = (self.base / f"client-{name}.log").read_text(errors="replace")
                raise AssertionError(f"client {name} died ({proc.returncode}):\n{log[-2000:]}")
        return False

    def stop(self, timeout: float = 60.0) -> None:
        self.stop_file.touch()
        for proc in self.procs:
            proc.wait(timeout)
        self._check_alive()

    def state(self, client: dfs.Client) -> dict[str, str | None]:
        """Every file under /hist -> the put whose bytes it holds ("torn: ..." if none)."""
        actual: dict[str, str | None] = {}
        with contextlib.suppress(dfs.NotFound):
            for d in client.ls(history.ROOT_DIR):
                for f in client.ls(d["path"]) if d["type"] == "dir" else [d]:
                    try:
                        actual[f["path"]] = history.identify(client.get_bytes(f["path"]))
                    except ValueError as exc:
                        actual[f["path"]] = f"torn: {exc}"
        return actual

    def finish(self, repair_timeout: float = config.COPY_TIMEOUT + 30) -> history.Report:
        """Stop the clients, wait until meta has repaired everything (fsck clean), check the
        history, print the figures and fail on any violation. (Meta orders a copy that
        failed without a word again only once its copy timeout has passed, hence the wait:
        normally fsck is clean within seconds.)"""
        self.stop()
        client = self.cluster.client()
        fsck = wait_until(lambda: _clean(client.fsck("/")), repair_timeout,
                          "fsck to come back clean after the faults healed")
        assert fsck is not None
        ops = history.load(self.history_file(n) for n in self.names)
        self.report = history.check(ops, self.state(client))
        print(f"history: {self.report.summary()}; fsck {fsck['healthy']} healthy blocks")
        print("clear errors seen:", json.dumps(dict(self.report.errors.most_common(8))))
        assert not self.report.violations, "\n".join(self.report.violations[:20])
        assert self.report.acked["put"] > 0, "no put was acknowledged at all"
        return self.report


def _clean(fsck: dict[str, Any]) -> dict[str, Any]:
    """fsck's reply when it is clean; else ValueError saying what is not (wait_until shows
    the last one when it gives up)."""
    bad = fsck["under_replicated"] + fsck["missing"] + fsck["corrupt"]
    if bad:
        counts = {k: fsck[k] for k in ("under_replicated", "missing", "corrupt")}
        raise ValueError(f"fsck: {counts}, e.g. {fsck['problems'][:3]}")
    return fsck
