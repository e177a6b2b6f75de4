"""Metadata HA through a real etcd: two metas (`--ha`), chunkservers reporting to both, clients
given both addresses. Faults are real: SIGKILL and SIGSTOP of the active meta, SIGKILL of
etcd, and every meta killed at once.

`DFS_HA_KILLS` sets how many times the failover test kills the active (1 in the suite; the
closing figures come from 12); `DFS_HA_TIMES` names a file the measured failover times are
written to (JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import dfs
from dfs.errors import DFSError, NotLeader, Unavailable
from dfs.local_cluster import Cluster, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from etcd_server import EtcdServer  # noqa: E402

TTL = int(os.environ.get("DFS_HA_TTL", "3"))  # --ha-ttl here: failover within TTL + 2 s
KILLS = int(os.environ.get("DFS_HA_KILLS", "1"))


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(str(tmp_path / "etcd"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def ha_cluster(tmp_path: Path, etcd: EtcdServer, *extra: str) -> Cluster:
    return Cluster(tmp_path / "c", chunkservers=2, metas=2, ha=etcd.url, heartbeat="0.5s",
                   dead_timeout="4s", meta_args=["--ha-ttl", str(TTL), *extra])


def ha_status(addr: str) -> dict[str, Any] | None:
    """The `ha` section of one meta's own status, or None if it does not answer."""
    try:
        with dfs.Client(addr, timeout=2) as c:
            return c.status()["ha"]
    except DFSError:
        return None


def role_of(addr: str) -> str:
    return (ha_status(addr) or {}).get("role", "")


def active_name(cluster: Cluster) -> str:
    def find() -> str:
        for m in cluster.metas:
            if m.running():
                st = ha_status(m.addr)
                if st is not None and st["role"] == "active":
                    return m.name
        return ""
    return wait_until(find, 20, "an active meta")


class Writers:
    """Threads putting small files through a client that knows every meta, keeping a
    history: what each path was to hold, and which puts were acknowledged."""

    def __init__(self, cluster: Cluster, n: int = 2) -> None:
        self.cluster = cluster
        self.meant: dict[str, bytes] = {}
        self.acked: dict[str, str] = {}
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]
        self.lock = threading.Lock()

    def _run(self, i: int) -> None:
        with dfs.Client(self.cluster.meta_addr, timeout=15) as c:
            k = 0
            while not self.stop.is_set():
                path = f"/w{i}/f{k:05d}"
                data = os.urandom(20_000 + k % 7 * 10_000)
                with self.lock:
                    self.meant[path] = data
                try:
                    c.put_bytes(data, path)
                except DFSError as exc:  # failed cleanly: one clear error, nothing promised
                    with self.lock:
                        self.failed.append(f"{path}: {exc}")
                else:
                    with self.lock:
                        self.acked[path] = hashlib.sha256(data).hexdigest()
                k += 1

    def __enter__(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def wait_acked(self, more: int) -> None:
        start = len(self.acked)
        wait_until(lambda: len(self.acked) >= start + more, 60, f"{more} more acknowledged puts")

    def check(self, client: dfs.Client) -> None:
        """Every acknowledged put reads back exactly; every file that is visible holds
        exactly what one put meant (an unacknowledged commit may have landed, but never
        half of one)."""
        for path, digest in self.acked.items():
            assert hashlib.sha256(client.get_bytes(path)).hexdigest() == digest, path
        for i in range(len(self.threads)):
            try:
                entries = client.ls(f"/w{i}")
            except dfs.NotFound:
                continue
            for e in entries:
                assert client.get_bytes(e["path"]) == self.meant[e["path"]], e["path"]


def test_sigkill_of_the_active_fails_over_within_the_lease(tmp_path: Path,
                                                          etcd: EtcdServer) -> None:
    times: list[float] = []
    with ha_cluster(tmp_path, etcd) as cluster, Writers(cluster) as writers:
        writers.wait_acked(20)
        for _ in range(KILLS):
            old = active_name(cluster)
            survivor = next(m for m in cluster.metas if m.name != old)
            killed = time.monotonic()
            cluster.kill(old)

            wait_until(lambda s=survivor: role_of(s.addr) == "active", TTL + 10,
                       "the standby to take over")
            times.append(time.monotonic() - killed)
            writers.wait_acked(20)  # the writers go on through the new active
            cluster.restart(old)  # back as a standby, following the journal
            wait_until(lambda o=old: role_of(cluster[o].addr) == "standby", 20,
                       "the restarted meta to follow as a standby")
        writers.__exit__()
        if os.environ.get("DFS_HA_TIMES"):
            Path(os.environ["DFS_HA_TIMES"]).write_text(json.dumps(
                {"failover_s": times, "acked": len(writers.acked),
                 "failed": len(writers.failed), "failures": writers.failed}))
        print(f"failover after SIGKILL of the active ({len(times)} kills): " +
              ", ".join(f"{t:.2f}s" for t in times) + f"; {len(writers.acked)} puts "
              f"acknowledged, {len(writers.failed)} failed with a clear error")
        writers.check(cluster.client())
        assert len(writers.acked) >= 20 * (KILLS + 1)
    assert max(times) <= TTL + 2, times


def test_a_paused_active_never_acknowledges_and_steps_down(tmp_path: Path,
                                                          etcd: EtcdServer) -> None:
    with ha_cluster(tmp_path, etcd) as cluster:
        c = cluster.client(timeout=4)  # a request stuck at the paused meta moves on after it
        c.put_bytes(b"before", "/before")
        old = active_name(cluster)
        other = next(m for m in cluster.metas if m.name != old)
        cluster.kill(old, signal.SIGSTOP)
        try:
            wait_until(lambda: (ha_status(other.addr) or {}).get("role") == "active",
                       TTL + 10, "the standby to take over from the paused active")
            c.put_bytes(b"after", "/after")  # the cluster goes on meanwhile
        finally:
            cluster.kill(old, signal.SIGCONT)
        with dfs.Client(cluster[old].addr, timeout=10) as pinned:
            for i in range(5):  # right after it wakes, and on
                with pytest.raises((NotLeader, Unavailable)):
                    pinned.mkdir(f"/pinned{i}")
                with pytest.raises((NotLeader, Unavailable)):
                    pinned.put_bytes(b"x", f"/pinned-file{i}")
        wait_until(lambda: (ha_status(cluster[old].addr) or {}).get("role") == "standby",
                   20, "the old active to step down by itself")
        assert ha_status(other.addr)["role"] == "active"
        names = sorted(e["path"] for e in c.ls("/"))
        assert names == ["/after", "/before"], names
        assert c.get_bytes("/before") == b"before" and c.get_bytes("/after") == b"after"
    assert "stepping down to standby" in cluster[old].log_text()


def test_etcd_down_stops_changes_and_they_resume(tmp_path: Path, etcd: EtcdServer) -> None:
    with ha_cluster(tmp_path, etcd) as cluster:
        c = cluster.client()
        acked = {}
        for i in range(10):
            data = os.urandom(5000)
            c.put_bytes(data, f"/a/f{i}")
            acked[f"/a/f{i}"] = data
        active = cluster[active_name(cluster)]
        etcd.kill()
        with dfs.Client(active.addr, timeout=3) as pinned:
            def refused() -> bool:
                try:
                    pinned.mkdir("/during")
                except Unavailable as exc:
                    return "etcd" in str(exc)
                except DFSError:  # timed out waiting for etcd: outcome unknown
                    return False
                return False
            wait_until(refused, TTL + 10, "the active to refuse changes without etcd")
            assert pinned.get_bytes("/a/f3") == acked["/a/f3"]  # reads go on
        etcd.restart()

        def accepted() -> bool:
            try:
                c.put_bytes(b"back", "/back")
                return True
            except DFSError:
                return False
        wait_until(accepted, 30, "changes to be taken again once etcd is back")
        acked["/back"] = b"back"
        for path, data in acked.items():
            assert c.get_bytes(path) == data, path


def test_every_meta_restarted_at_once_comes_back_from_etcd(tmp_path: Path,
                                                          etcd: EtcdServer) -> None:
    # Checkpoints every 20 records: most of the history is compacted away into the
    # checkpoint in etcd, so the namespace comes back from it plus the batches after it.
    with ha_cluster(tmp_path, etcd, "--checkpoint-records", "20") as cluster:
        c = cluster.client()
        want: dict[str, bytes] = {}
        for i in range(60):
            data = os.urandom(3000 + i)
            c.put_bytes(data, f"/d{i % 3}/f{i}")
            want[f"/d{i % 3}/f{i}"] = data
        c.mv("/d0/f0", "/moved")
        want["/moved"] = want.pop("/d0/f0")
        c.rm("/d2", recursive=True)
        want = {p: d for p, d in want.items() if not p.startswith("/d2/")}
        c.mkdir("/empty")
        wait_until(lambda: etcd_has_checkpoint(cluster), 20, "a checkpoint in etcd")
        for m in cluster.metas:
            cluster.kill(m.name)
        shutil.rmtree(cluster.metas[1].data_dir)  # this one must fetch etcd's checkpoint
        for m in cluster.metas:
            cluster.restart(m.name)
        active_name(cluster)
        c2 = cluster.client()
        wait_until(lambda: ok_get(c2, "/moved"), 30, "reads after the restart")
        for path, data in want.items():
            assert c2.get_bytes(path) == data, path
        assert sorted(e["path"] for e in c2.ls("/")) == ["/d0", "/d1", "/empty", "/moved"]
        # And the one with a fresh data dir, once it leads, has it all too.
        for m in cluster.metas:
            if m is not cluster.metas[1]:
                cluster.kill(m.name)
        wait_until(lambda: (ha_status(cluster.metas[1].addr) or {}).get("role") == "active",
                   TTL + 10, "meta1 to take over")
        c3 = cluster.client()
        for path, data in want.items():
            assert c3.get_bytes(path) == data, path


def etcd_has_checkpoint(cluster: Cluster) -> bool:
    return any("checkpoint stored in etcd" in m.log_text() for m in cluster.metas)


def ok_get(c: dfs.Client, path: str) -> bool:
    try:
        c.get_bytes(path)
        return True
    except DFSError:
        return False


def test_status_metrics_and_readyz_show_each_role(tmp_path: Path, etcd: EtcdServer) -> None:
    import urllib.error
    import urllib.request

    def get(port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    with Cluster(tmp_path / "c", chunkservers=1, metas=2, ha=etcd.url, heartbeat="0.5s",
                 http=True, meta_args=["--ha-ttl", str(TTL)]) as cluster:
        active = cluster[active_name(cluster)]
        standby = next(m for m in cluster.metas if m is not active)
        wait_until(lambda: role_of(standby.addr) == "standby", 20, "a standby")
        wait_until(lambda: len((ha_status(active.addr) or {}).get("metas", [])) == 2, 20,
                   "both metas listed by the active")
        st = ha_status(active.addr)
        assert st is not None and st["leader"] == active.addr and st["term"] >= 1
        assert sorted((m["addr"], m["role"]) for m in st["metas"]) == sorted(
            [(active.addr, "active"), (standby.addr, "standby")])
        assert ha_status(standby.addr)["leader"] == active.addr
        with dfs.Client(standby.addr, timeout=5) as pinned:
            with pytest.raises(NotLeader) as err:
                pinned.mkdir("/x")
            assert err.value.details["leader"] == active.addr
        with dfs.Client(f"{standby.addr},{active.addr}", timeout=5) as both:
            assert both.status()["ha"]["role"] == "active"  # the cluster's view, not ours
        out = subprocess.run(["dfs-cli", "--meta", f"{standby.addr},{active.addr}", "status"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and f"HA: this meta is active, term {st['term']}, " \
            f"leader {active.addr}; also {standby.addr} (standby)" in out.stdout, out
        code, text = get(active.http_port, "/metrics")
        assert code == 200 and "dfs_ha_is_active 1.0" in text and "dfs_ha_term " in text
        assert "dfs_ha_failovers_total 1.0" in text and "dfs_files " in text
        code, text = get(standby.http_port, "/metrics")
        assert code == 200 and "dfs_ha_is_active 0.0" in text
        assert "dfs_ha_failovers_total 0.0" in text
        wait_until(lambda: get(active.http_port, "/readyz")[0] == 200, 20, "active ready")
        c = cluster.client()
        c.put_bytes(b"seen on the page", "/page/file")
        code, text = get(active.http_port, "/browse?path=/page")
        assert code == 200 and "file" in text
        assert get(active.http_port, "/files/page/file") == (200, "seen on the page")
        assert get(active.http_port, "/")[0] == 200
        code, text = get(standby.http_port, "/")
        assert code == 503 and active.addr in text
        assert get(standby.http_port, "/readyz")[0] == 503
        assert get(standby.http_port, "/api/status")[1].count('"standby"') >= 1


def test_a_single_metas_data_dir_is_refused(tmp_path: Path, etcd: EtcdServer) -> None:
    """Its cluster id would become the group's, and the old chunkservers' blocks, unknown to
    the empty namespace in etcd, would be deleted as orphans: refused with one line."""
    old = tmp_path / "old-meta"
    old.mkdir()
    (old / "journal").write_bytes(b"DFSJRNL1")
    out = subprocess.run([sys.executable, "-m", "dfs.daemon", "--role", "meta", "--ha",
                          etcd.url, "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
                          "--data-dir", str(old)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "single meta's journal" in lines[0], out.stderr


def test_decommission_survives_failover_and_every_meta_restarting(tmp_path: Path,
                                                                  etcd: EtcdServer) -> None:
    """A decommission is a journal record like any change: the standby applies it, so the
    meta that takes over drains the same chunkserver (never `live` in between); a checkpoint
    in etcd keeps it once its record is compacted away, so metas that all restart at once
    have it too; and `cancel` puts the server back in service across a failover."""
    with ha_cluster(tmp_path, etcd, "--checkpoint-records", "20") as cluster:
        leaving = cluster.add_chunkserver()  # three servers: the drain can finish
        c = cluster.client()
        want = {f"/f{i}": os.urandom(3000 + i) for i in range(5)}
        for path, data in want.items():
            c.put_bytes(data, path)
        c.decommission(leaving.addr)
        wait_until(lambda: cluster.states().get(leaving.addr) == "decommissioned", 30,
                   "the drain to finish")

        def drained_again(what: str) -> None:
            def drained() -> bool:
                state = cluster.states().get(leaving.addr)
                assert state in (None, "decommissioning", "decommissioned"), state
                return state == "decommissioned"
            wait_until(drained, 30, f"the server decommissioned again after {what}")

        old = active_name(cluster)
        survivor = next(m for m in cluster.metas if m.name != old)
        cluster.kill(old)
        wait_until(lambda: role_of(survivor.addr) == "active", TTL + 10, "the takeover")
        drained_again("a failover")
        cluster.restart(old)
        wait_until(lambda: role_of(cluster[old].addr) == "standby", 20, "a standby again")
        # Enough changes for a checkpoint that covers the decommission record: etcd then
        # holds the state in that checkpoint only.
        offsets = {m.name: len(m.log_text()) for m in cluster.metas}
        for i in range(30):
            c.mkdir(f"/more{i}")
        wait_until(lambda: any("checkpoint stored in etcd" in m.log_text()[offsets[m.name]:]
                               for m in cluster.metas), 20, "a checkpoint in etcd")
        for m in cluster.metas:
            cluster.kill(m.name)
        for m in cluster.metas:
            cluster.restart(m.name)
        active_name(cluster)
        drained_again("every meta restarted")
        c2 = cluster.client()
        assert c2.decommission(leaving.addr, cancel=True)["state"] == "live"
        old = active_name(cluster)
        survivor = next(m for m in cluster.metas if m.name != old)
        cluster.kill(old)
        wait_until(lambda: role_of(survivor.addr) == "active", TTL + 10, "the takeover")
        wait_until(lambda: cluster.states().get(leaving.addr) == "live", 20,
                   "the server in service after the takeover")
        c2.put_bytes(b"three", "/three", replication=3)
        assert leaving.addr in c2.stat("/three")["blocks"][0]["replicas"]
        for path, data in want.items():
            assert c2.get_bytes(path) == data, path
