"""Power loss: dfsd runs on lazyfs (tests/lazyfs.py), a FUSE file system that keeps whatever
was not fsynced in memory and drops it on command. While writers put, move and remove files,
the power is cut at a seeded random moment: the dfsd processes on the lazyfs mounts are
SIGKILLed and then, at once, lazyfs throws away everything not durable (in some cuts it keeps
a random prefix of the unsynced writes instead: a torn disk). Then the nodes boot again on
what is left. After every cut: meta's journal must start; every block of every file
acknowledged while all chunkservers were up must be on the cut chunkservers' disks with
exactly its bytes, and no block file there may hold bytes its own checksums reject (that is
what its block report would advertise). At the end: every acknowledged put reads back with
exactly its bytes, every acknowledged mv and rm holds, and fsck is clean.

Every node runs on its own lazyfs; the kinds of cut: one chunkserver (the other keeps a
replica, but the cut one must not have lost or torn what it acknowledged), meta (journal
durability), and the whole cluster at once (the only copies left are what was fsynced). The
suite makes one cut of each kind, in a seeded order; DFS_POWER_CUTS=n makes n cuts and
DFS_FAULTS_SECONDS=s goes on cutting for at least s seconds. The seed is printed;
DFS_POWER_SEED replays one. Figures per kind of cut are printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cluster import Cluster, KiB, wait_until

import dfs
from dfs import checksum

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lazyfs_mount import LazyMount, skip_reason  # noqa: E402

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

CUTS = int(os.environ.get("DFS_POWER_CUTS", "3"))
SECONDS = float(os.environ.get("DFS_FAULTS_SECONDS", "0"))
SEED = int(os.environ.get("DFS_POWER_SEED", str(random.SystemRandom().randrange(10**6))))
PACE = 0.02  # seconds between one writer's ops: repair after a cut stays a few seconds
BLOCK = 128 * KiB  # multi-block files stay small; every block is "small" (group sync)
FOOTER = struct.Struct(">4sIQ")


@dataclass
class File:
    """A file a writer owns: its bytes, and whether an acknowledged put made it certain."""

    data: bytes
    acked_epoch: int  # the epoch its put was acknowledged in
    phase: int  # the phase its put began in
    full: bool  # acknowledged while every chunkserver was up (so every one holds it)


@dataclass
class History:
    seed: int
    epoch: int = 0  # power cuts so far; ops are tagged with it
    full: bool = True  # every chunkserver up and live (false from a cut until all are back)
    phase: int = 0  # boots completed: phase p holds cut p+1 and its outage
    counts: dict[int, list[int]] = field(default_factory=dict)  # phase -> tried, acked,
    # failed (with a DFSError: a clear error)
    unclear: list[str] = field(default_factory=list)  # anything else: a bug
    files: dict[str, File] = field(default_factory=dict)  # acknowledged state, by path
    maybe: dict[str, set[bytes]] = field(default_factory=dict)  # after a failed op: may be
    errors: dict[int, list[str]] = field(default_factory=dict)  # phase -> clear errors
    gone: set[str] = field(default_factory=set)  # acknowledged rm / mv source: must not exist
    dirs: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    since_cut: int = 0  # acknowledged ops in this epoch


class Writer(threading.Thread):
    """Random puts (small and multi-block), mkdirs, mvs and rms under /w<k>, each recorded
    as tried, then acknowledged or failed. Only paths it owns, so the history is exact."""

    def __init__(self, k: int, cluster: Cluster, h: History, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"writer{k}")
        self.k, self.cluster, self.h, self.stop_ev = k, cluster, h, stop
        self.rng = random.Random(h.seed * 100 + k)
        self.n = 0

    def run(self) -> None:
        try:
            with dfs.Client(self.cluster.meta_addr, timeout=5) as client:
                while not self.stop_ev.wait(PACE):
                    self.step(client)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            with self.h.lock:
                self.h.unclear.append(f"writer {self.k} died: {exc!r}")

    def mine(self) -> list[str]:
        with self.h.lock:
            return [p for p, f in self.h.files.items()
                    if p.startswith(f"/w{self.k}/") and p not in self.h.maybe]

    def step(self, client: dfs.Client) -> None:
        self.n += 1
        r = self.rng.random()
        base = f"/w{self.k}"
        own = self.mine()
        if r < 0.05 or self.n == 1:
            path = f"{base}/d{self.n}"
            self.do(lambda: client.mkdir(path, parents=True), "mkdir", path)
        elif r < 0.15 and own:
            src = self.rng.choice(own)
            self.do(lambda: client.mv(src, f"{base}/m{self.n}"), "mv", src, f"{base}/m{self.n}")
        elif r < 0.22 and own:
            path = self.rng.choice(own)
            self.do(lambda: client.rm(path), "rm", path)
        else:
            size = self.rng.choice([0, 1, 100, 4000, 70_000]) if r < 0.75 else \
                self.rng.randint(BLOCK + 1, 3 * BLOCK + 5000)
            data = self.rng.randbytes(size)
            path = f"{base}/f{self.n}"
            self.do(lambda: client.put_bytes(data, path, block_size=BLOCK), "put", path,
                    data=data)

    def do(self, call: Callable[[], Any], op: str, path: str, dst: str = "",
           data: bytes = b"") -> None:
        h = self.h
        with h.lock:
            counts = h.counts.setdefault(h.phase, [0, 0, 0])
            counts[0] += 1
            epoch, full, phase = h.epoch, h.full, h.phase
            before = h.files.get(path)
        try:
            call()
        except dfs.DFSError as exc:
            with h.lock:
                counts[2] += 1
                h.errors.setdefault(phase, []).append(f"{op}: {type(exc).__name__}: {exc}")
                # Not acknowledged: it may or may not have happened.
                if op == "put":
                    h.maybe.setdefault(path, {b""}).add(data)  # b"": absent
                elif op in ("mv", "rm") and before is not None:
                    h.maybe.setdefault(path, {b""}).add(before.data)
                    if op == "mv":
                        h.maybe.setdefault(dst, {b""}).add(before.data)
            self.stop_ev.wait(0.05)  # pacing while a node is down
            return
        except Exception as exc:  # noqa: BLE001 - an unclear error is a finding
            with h.lock:
                h.unclear.append(f"{op} {path}: {exc!r}")
            return
        with h.lock:
            counts[1] += 1
            h.since_cut += 1
            if op == "put":
                h.files[path] = File(data, epoch, phase, full and h.full and h.epoch == epoch)
                h.gone.discard(path)
            elif op == "mv" and before is not None:
                h.files[dst] = h.files.pop(path)
                h.gone.add(path)
            elif op == "rm":
                h.files.pop(path, None)
                h.gone.add(path)
            elif op == "mkdir":
                h.dirs.add(path)


def block_file_errors(root: Path) -> tuple[dict[int, bytes], list[str]]:
    """Every finalized block file under a chunkserver's data dir (read directly from the
    backing directory, nothing running on it): block id -> data, for those whose footer a
    restart would accept; and the ones whose data its own CRC table rejects."""
    blocks: dict[int, bytes] = {}
    bad: list[str] = []
    for p in sorted((root / "blocks").glob("*/blk_*")):
        if p.name.endswith(".tmp"):
            continue
        raw = p.read_bytes()
        if len(raw) < FOOTER.size:
            continue  # start-up ignores it: never advertised
        magic, unit, size = FOOTER.unpack(raw[-FOOTER.size:])
        if magic != b"DFSB" or len(raw) != checksum.units(size) * 4 + size + FOOTER.size:
            continue
        data, table = raw[:size], raw[size:size + 4 * checksum.units(size)]
        if checksum.pack_table(checksum.crcs_of(data)) != table:
            bad.append(f"{p.name}: data does not match its own checksums")
        blocks[int(p.name.split("_")[1], 16)] = data
    return blocks, bad


def boot(mounts: list[LazyMount]) -> None:
    """Start several lazyfs processes at once, then wait for every mount."""
    for m in mounts:
        m.spawn()
    for m in mounts:
        m.wait_mounted()


@contextlib.contextmanager
def on_lazyfs(cluster: Cluster, names: list[str]) -> Iterator[dict[str, LazyMount]]:
    mounts = {n: LazyMount(cluster.base / f"{n}.backing", cluster[n].data_dir,
                           cluster.base / f"{n}.lazyfs.sock") for n in names}
    try:
        boot(list(mounts.values()))
        yield mounts
    finally:
        cluster.stop_all()
        for m in mounts.values():
            m.close()


KINDS = {"chunkserver": ["chunk0"], "meta": ["meta"], "whole cluster": ["meta", "chunk0", "chunk1"]}


def schedule(rng: random.Random, n: int) -> list[str]:
    """Which power cut comes when: each kind once (in a seeded order), then seeded choices."""
    first = list(KINDS)
    rng.shuffle(first)
    return first[:n] + [rng.choice(list(KINDS)) for _ in range(n - len(first))]


def run_power_cuts(make_cluster: Callable[..., Cluster], seed: int) -> list[str]:
    """Every node on lazyfs; writers run throughout; power cuts of one chunkserver, of meta
    and of the whole cluster. Returns one line of figures per kind of cut."""
    rng = random.Random(seed)
    # Frequent checkpoints, so cuts also land in the checkpoint's rename and the journal's
    # rotation to a new generation.
    cluster = make_cluster(2, start=False, meta_args=["--upload-lease", "5s",
                                                      "--checkpoint-records", "40"])
    with on_lazyfs(cluster, ["meta", "chunk0", "chunk1"]) as mounts:
        cluster.start()
        h = History(seed)
        stop = threading.Event()
        writers = [Writer(k, cluster, h, stop) for k in range(3)]
        for w in writers:
            w.start()
        started = time.monotonic()
        phases: dict[str, float] = {}

        def lap(name: str, since: float) -> float:
            now = time.monotonic()
            phases[name] = phases.get(name, 0.0) + now - since
            return now
        plan = schedule(rng, CUTS)
        kinds: list[str] = []  # kinds[p]: the cut in phase p
        dropped: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
        try:
            while len(kinds) < CUTS or time.monotonic() - started < SECONDS:
                assert not h.unclear, h.unclear
                kind = plan[len(kinds)] if len(kinds) < len(plan) else rng.choice(list(KINDS))
                victims = KINDS[kind]
                chunks = [v for v in victims if cluster[v].role == "chunk"]
                kinds.append(kind)
                target = rng.randint(3, 20)  # the random moment: after this many acks
                t0 = time.monotonic()
                wait_until(lambda t=target: h.since_cut >= t or h.unclear, 60,
                           f"{target} acknowledged ops before cut {h.epoch + 1}")
                t0 = lap("writing", t0)
                torn = rng.random() < 0.5
                with h.lock:  # the cut: no op is tagged with a half-cut state
                    for v in victims:  # processes first, then their unsynced writes
                        cluster.kill(v)
                    seeds = [rng.randrange(1 << 30) if torn else None for _ in victims]
                    with ThreadPoolExecutor(len(victims)) as pool:  # every disk at once
                        for got in pool.map(lambda v, sd: mounts[v].crash(sd), victims, seeds):
                            dropped[kind][0] += got["files"]
                            dropped[kind][1] += got["dirs"]
                    h.epoch += 1
                    h.since_cut = 0
                    # Until every chunkserver is registered again (with a new meta too: a
                    # meta that restarts knows none), a put may land on one of them only.
                    h.full = False
                    must = {p: f for p, f in h.files.items() if f.full and p not in h.maybe}
                t0 = lap("cut", t0)
                # Boot: the file systems, meta (whose journal must start), then, once their
                # disks are checked, the chunkservers.
                boot([mounts[v] for v in victims])
                if "meta" in victims:
                    cluster.restart("meta")
                t0 = lap("boot meta", t0)
                check_disks(cluster, mounts, chunks, must)
                t0 = lap("check disks", t0)
                logs = {v: cluster.log_size(v) for v in chunks}
                for v in chunks:
                    cluster.restart(v, wait=False)
                for v in chunks:  # live in status is not enough: that may still be the old
                    cluster.wait_log(v, "registered with meta", timeout=30,  # process
                                     after=logs[v])
                cluster.wait_live(timeout=30)
                with h.lock:
                    h.full = True
                    h.phase += 1
                lap("boot chunkservers", t0)
        finally:
            stop.set()
            for w in writers:
                w.join(60)
        assert not h.unclear, h.unclear
        assert not any(w.is_alive() for w in writers), "a writer hung"
        assert "corrupt" not in cluster["meta"].log_text(), cluster["meta"].tail()
        t0 = time.monotonic()
        lost = check_final(cluster, h)
        lap("final check", t0)
    lines = []
    for kind in KINDS:
        ps = [p for p, k in enumerate(kinds) if k == kind]
        if kind == kinds[-1]:
            ps.append(len(kinds))  # the few ops after the last boot
        tried, acked, failed = (sum(h.counts.get(p, [0, 0, 0])[i] for p in ps)
                                for i in range(3))
        lines.append(
            f"{kind}: power cuts {kinds.count(kind)}, ops tried {tried}, acknowledged "
            f"{acked}, failed with a clear error {failed}, lost {lost}; unsynced at the "
            f"cuts: {dropped[kind][0]} files, {dropped[kind][1]} directories")
        errors = sorted({e[:100] for p in ps for e in h.errors.get(p, [])})
        if errors:  # what the clear errors said, a few of them
            lines.append("    errors: " + "; ".join(errors[:4]))
    meta_log = cluster["meta"].log_text()
    lines.append(f"meta start-ups that dropped a torn journal tail: "
                 f"{meta_log.count('dropped a torn tail')}; checkpoints written: "
                 f"{meta_log.count('checkpoint written')}")
    lines.append(f"seed {seed}, {time.monotonic() - started:.1f}s: "
                 + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
    print("\npower loss: " + "\n  ".join(lines))
    return lines


def check_disks(cluster: Cluster, mounts: dict[str, LazyMount], chunks: list[str],
                must: dict[str, File]) -> None:
    """After a cut, before the cut chunkservers restart: what their disks hold now is what
    they will advertise. Every block of a file acknowledged while all chunkservers were up
    must be there, whole; no block file may hold data its own checksums reject."""
    client = cluster.admin()
    for name in chunks:
        blocks, bad = block_file_errors(mounts[name].backing)
        assert not bad, f"{name} would advertise replicas its checksums reject: {bad}"
        for path, f in must.items():
            try:
                st = client.stat(path)
            except dfs.NotFound:
                continue  # removed since by an rm in flight at the cut
            offset = 0
            for b in st["blocks"]:
                want = f.data[offset:offset + b["size"]]
                offset += b["size"]
                got = blocks.get(int(b["id"]))
                assert got == want, (
                    f"{name} lost block {b['id']} of {path} (acknowledged in epoch "
                    f"{f.acked_epoch}): {'missing' if got is None else 'wrong bytes'}")


def check_final(cluster: Cluster, h: History) -> int:
    client = cluster.client()
    lost: list[str] = []
    for path, f in sorted(h.files.items()):
        try:
            got = client.get_bytes(path)
        except dfs.NotFound:
            got = None
        if path in h.maybe:
            if (got or b"") not in h.maybe[path] | {f.data}:
                lost.append(f"{path}: unexpected content after a failed op")
        elif got != f.data:
            lost.append(f"{path}: acknowledged put {'missing' if got is None else 'differs'}")
    for path in sorted(h.gone - set(h.files)):
        if path in h.maybe:
            continue
        with contextlib.suppress(dfs.NotFound):
            client.stat(path)
            lost.append(f"{path}: acknowledged rm/mv undone")
    for path in sorted(h.dirs):
        if client.stat(path)["type"] != "dir":
            lost.append(f"{path}: acknowledged mkdir lost")
    assert not lost, f"seed {h.seed}: {len(lost)} acknowledged ops lost: {lost[:20]}"

    last: list[dict[str, Any]] = [{}]

    def healthy() -> bool:
        f = last[0] = client.fsck("/")
        return f["healthy"] == f["blocks"] and not f["missing"] and not f["corrupt"]
    t0 = time.monotonic()
    try:
        wait_until(healthy, 60, "fsck healthy after the power cuts")
    except AssertionError:
        raise AssertionError(f"seed {h.seed}: fsck never became clean: {last[0]}") from None
    print(f"\nfsck clean after {time.monotonic() - t0:.1f}s")
    return len(lost)


@pytest.mark.timeout(int(SECONDS) * 2 + 240)
def test_power_loss_keeps_every_acknowledged_change(
        make_cluster: Callable[..., Cluster]) -> None:
    print(f"\npower loss seed {SEED} (DFS_POWER_SEED={SEED} replays it)")
    run_power_cuts(make_cluster, SEED)
