"""Issue 18, slow and lossy links. One campaign (writers and readers, campaign.py) runs
through a schedule of link faults on one cluster, and in each phase one big transfer (a put
and a get of one file on a client host of its own, checked by its SHA-256) is timed:

    clean         every client's connections to the chunkservers, and theirs to each other,
                  through relays at no delay
    loss          2% of packets dropped each way on every host's link
    delay         the relays hold every byte 50 ms ± 10 ms each way
    nat restart   the relays removed: every relayed connection reset at once (a NAT box
                  restarts); no put may fail for it (pooled connections that died idle)
    direct        clean again, now without relays (the reference for the next two)
    rate          chunk0 sends at most 20 mbit/s
    black hole    chunk0 heartbeats on (meta keeps it live) but, for every client and its
                  pipeline peers, open connections hang and new ones are never answered

Correctness is asserted, never a speed: each copy reads back byte for byte, the history has
no violation, no put fails in the nat restart, and during the black hole no operation
outlasts the bound dfs/config.py's timeouts give. The slowdown of each phase against its
clean reference is printed, with the campaign's figures per phase.

The suite form moves 32 MiB per transfer and holds each fault for 6 acknowledged
operations; the long form (`DFS_FAULTS_SECONDS`, or `DFS_FAULTS_BIG=1`) moves 1 GiB and holds
each fault at least DFS_FAULTS_SECONDS. One cluster and one campaign for the whole schedule:
the suite cannot afford a cluster, a start and a repair check per fault.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import netns
import pytest
from campaign import Campaign, fault_cluster, seconds
from history import Op, load

from dfs import config
from dfs.config import GiB, MiB

pytestmark = pytest.mark.skipif(netns.available() is not None,
                                reason=str(netns.available()))

LONG = bool(os.environ.get("DFS_FAULTS_BIG") or os.environ.get("DFS_FAULTS_SECONDS"))
BIG = 1 * GiB if LONG else 32 * MiB
BIG_BLOCK = "64MiB" if LONG else "8MiB"
HOLD_OPS = 10 if LONG else 6  # acknowledged operations each fault is held for, at least
ROOT = Path(__file__).resolve().parents[2]
LIMIT = 3600 if LONG else 330  # pytest-timeout, seconds (campaign.finish may wait ~150)


class Bulk:
    """A client host that moves one big file: `dfs-cli put`, then `dfs-cli get`, each timed,
    the copy checked against the original's SHA-256."""

    def __init__(self, net: netns.Network, meta: str, base: Path, size: int = BIG) -> None:
        self.host = net.add_host("bulk")
        self.meta, self.base, self.size = meta, base, size
        self.src = base / "bulk.src"
        digest = hashlib.sha256()
        with open(self.src, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MiB))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        self.sha = digest.hexdigest()
        self.times: dict[str, tuple[float, float | None]] = {}  # label -> put, get

    def cli(self, *args: str, timeout: float) -> float:
        argv = [*self.host.prefix, sys.executable, str(ROOT / "bin" / "dfs-cli"),
                "--meta", self.meta, *args]
        t0 = time.monotonic()
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        assert res.returncode == 0, f"dfs-cli {' '.join(args)}: {res.stderr[-2000:]}"
        return took

    def run(self, label: str, get: bool = True, timeout: float = LIMIT) -> None:
        """Put the file as /bulk/<label>, get it back (unless not `get`) and check it."""
        put = self.cli("put", "--block-size", BIG_BLOCK, str(self.src), f"/bulk/{label}",
                       timeout=timeout)
        took = None
        if get:
            dst = self.base / f"bulk.{label}"
            took = self.cli("get", f"/bulk/{label}", str(dst), timeout=timeout)
            assert dst.stat().st_size == self.size
            assert sha256(dst) == self.sha, f"{label}: the copy read back differs"
            dst.unlink()
        self.cli("rm", f"/bulk/{label}", timeout=timeout)  # disks stay small
        self.times[label] = (put, took)
        mb = self.size / MiB
        print(f"bulk {label}: put {mb:.0f} MiB in {put:.1f}s ({mb / put:.1f} MiB/s)"
              + (f", get in {took:.1f}s ({mb / took:.1f} MiB/s)" if took else ""))

    def slowdown(self, clean: str, faulted: str) -> dict[str, float]:
        """How many times longer each transfer took under `faulted` than under `clean`."""
        ratio: dict[str, float] = {}
        for k, what in enumerate(("put", "get")):
            before, after = self.times[clean][k], self.times[faulted][k]
            if before and after:
                ratio[what] = round(after / before, 2)
                print(f"slowdown of the {what} under {faulted} (against {clean}): "
                      f"x{ratio[what]:.2f} ({before:.1f}s -> {after:.1f}s)")
        return ratio


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


class Schedule:
    """The phases of the campaign, each a window of wall-clock time, and what the clients
    did in each."""

    def __init__(self, camp: Campaign) -> None:
        self.camp = camp
        self.windows: dict[str, tuple[float, float]] = {}
        self.started: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.started[name] = time.time()
        print(f"phase {name} from {time.strftime('%H:%M:%S')}")
        try:
            yield
        finally:
            self.windows[name] = (start, time.time())

    def hold(self, name: str, short: float = 0.0) -> None:
        """Keep the fault while the clients go on: HOLD_OPS more acknowledged operations,
        and in the long form until DFS_FAULTS_SECONDS have passed since the phase began."""
        self.camp.wait_ops(HOLD_OPS, timeout=120)
        while time.time() - self.started[name] < seconds(short):
            self.camp.wait_ops(3, timeout=120)

    def ops(self, name: str) -> list[Op]:
        """The operations that overlapped the phase."""
        start, end = self.windows[name]
        ops = load(self.camp.history_file(n) for n in self.camp.names)
        return [o for o in ops if o.end >= start and o.start <= end]

    def figures(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name in self.windows:
            ops = self.ops(name)
            took = sorted(o.end - o.start for o in ops) or [0.0]
            out[name] = {"ops": len(ops), "ok": sum(o.outcome == "ok" for o in ops),
                         "median_s": round(took[len(took) // 2], 3),
                         "longest_s": round(took[-1], 1)}
        return out


def black_hole_bound() -> float:
    """The longest an operation may take while a chunkserver is a black hole. A put waits at
    most one write_block or packet ack from a chain of two, packet_timeout(1) (the server is
    then excluded for the rest of its upload; a peer forwarding to it names it after
    packet_timeout(0), sooner). A get waits READ_TIMEOUT on a hung connection or
    CONNECT_TIMEOUT for the hello on a new one, per replica, the read-ahead of a file's blocks
    at once. Margin: one more hello, and 5 s for the operation's own work."""
    return max(config.packet_timeout(1), config.READ_TIMEOUT + config.CONNECT_TIMEOUT) \
        + config.CONNECT_TIMEOUT + 5.0


@pytest.mark.timeout(LIMIT)
def test_slow_and_lossy_links(tmp_path: Path) -> None:
    with fault_cluster(tmp_path) as (net, cluster):
        camp = Campaign(net, cluster, tmp_path, writers=2, readers=1)
        bulk = Bulk(net, cluster.meta_addr, tmp_path)
        clients = [*camp.clients, bulk.host.name]
        # From the start, so the campaign's pooled connections go through them too (a
        # relay only takes connections made after it): the clean figure includes the
        # relays' own cost, and the delay is switched on later.
        relays = [net.relay(host, cs.name, cs.port, seed=k)
                  for k, host in enumerate(clients) for cs in cluster.chunkservers]
        # Pipelines too (never delayed): the NAT restart resets the chunkservers' pooled
        # connections to each other as well.
        for a in cluster.chunkservers:
            for b in cluster.chunkservers:
                if a is not b:
                    net.relay(a.name, b.name, b.port)
        plan = Schedule(camp)
        camp.start()
        camp.wait_ops(10)
        with plan.phase("clean"):
            bulk.run("clean")

        with plan.phase("loss"):
            for name in net.hosts:
                net.loss(name, 0.02)
            bulk.run("loss")
            plan.hold("loss")
            net.heal_all()

        with plan.phase("delay"):
            for relay in relays:
                relay.delay, relay.jitter = 0.05, 0.01
            bulk.run("delay")
            plan.hold("delay")
        assert all(r.connections for r in relays[-3:]), "the big transfer bypassed the relays"
        relayed = sum(r.bytes for r in relays)

        with plan.phase("nat restart"):
            net.heal_all(relays=True)  # every relayed connection breaks
            plan.hold("nat restart")

        with plan.phase("direct"):
            bulk.run("direct")

        with plan.phase("rate"):
            net.rate("chunk0", "20mbit")
            bulk.run("rate", get=LONG)  # a read crawls at 20 mbit: too slow for the suite
            plan.hold("rate")
            net.heal_all()

        with plan.phase("black hole"):
            hole = cluster["chunk0"]
            for host in [*clients, "chunk1", "chunk2"]:
                net.block(host, ["chunk0"])  # open connections hang ...
                net.relay(host, "chunk0", hole.port, blackhole=True)  # ... new ones too
            bulk.run("black hole")
            plan.hold("black hole")
            cluster.wait_state("chunk0", "live", timeout=1)  # meta never saw it go
        net.heal_all(relays=True)

        report = camp.finish()
        phases = plan.figures()
        slowdown = {name: bulk.slowdown("clean", name) for name in ("loss", "delay")}
        slowdown |= {name: bulk.slowdown("direct", name) for name in ("rate", "black hole")}
        print("figures:", json.dumps({"history": report.as_dict(), "phases": phases,
                                      "slowdown": slowdown, "bulk_mib": BIG // MiB,
                                      "relayed_mib": relayed // MiB}))
        # A connection the NAT box reset is found dead at its next use, which may come
        # phases later: no put may ever fail for want of a server, and none right after.
        after = plan.ops("nat restart") + plan.ops("direct")
        failed = [f"{o.path}: {o.error}" for o in load(camp.history_file(n) for n in camp.names)
                  if o.kind == "put" and o.outcome != "ok"
                  and ("no chunkserver left" in o.error or o in after)]
        assert not failed, f"puts failed after the NAT box restarted: {failed[:5]}"
        idle = sum((tmp_path / f"client-{n}.log").read_text().count("died while idle")
                   for n in camp.names)
        print(f"pooled connections found dead after the NAT restart: {idle}")
        assert idle, "the NAT box reset no pooled connection: that phase tested nothing"
        bound = black_hole_bound()  # for operations the black hole alone slowed:
        since = plan.started["black hole"]  # earlier ones may have met the faults before it
        longest = max((o for o in plan.ops("black hole") if o.start >= since),
                      key=lambda o: o.end - o.start)
        print(f"longest op begun in the black hole: {longest.kind} {longest.path} "
              f"{longest.end - longest.start:.1f}s ({longest.outcome}; bound {bound:g}s); "
              f"of all it overlapped: {phases['black hole']['longest_s']}s")
        assert longest.end - longest.start < bound, longest
