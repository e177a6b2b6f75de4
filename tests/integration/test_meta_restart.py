"""Meta dies by SIGKILL and comes back on the same port and data dir: what was acknowledged is
there, and the chunkservers find their way back without being restarted."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
from typing import Any

import pytest
from cli_runner import cli
from cluster import Cluster, MiB, data_of, wait_until

import dfs
from dfs.meta.journal_codec import encode_record, read_records


def snapshot(client: dfs.Client, path: str = "/") -> dict[str, dict[str, Any]]:
    """Every entry under `path`: its stat, without replica locations (those are rebuilt from
    block reports, not journaled)."""
    out: dict[str, dict[str, Any]] = {}
    for e in client.ls(path):
        st = client.stat(e["path"])
        for b in st.get("blocks", []):
            b.pop("replicas")
        out[e["path"]] = st
        if e["type"] == "dir":
            out.update(snapshot(client, e["path"]))
    return out


def fully_replicated(client: dfs.Client, paths: list[str]) -> bool:
    for p in paths:
        st = client.stat(p)
        if any(len(b["replicas"]) < st["replication"] for b in st["blocks"]):
            return False
    return True


def restart_meta(cluster: Cluster) -> None:
    cluster.kill("meta")
    cluster.restart("meta")


def test_namespace_and_data_survive_meta_sigkill(cluster: Cluster) -> None:
    client = cluster.client()
    files = {
        "/a/one": data_of(10, 1),
        "/a/two": data_of(3 * MiB + 17, 2),
        "/b/c/empty": b"",
        "/d/gone": data_of(5000, 3),
        "/g/sub/deep": data_of(MiB, 4),
    }
    for path, data in files.items():
        client.put_bytes(data, path, block_size=MiB)
    client.mkdir("/e/f", parents=True)
    client.mkdir("/lonely")
    assert client.mv("/a/two", "/e/f") == "/e/f/two"
    assert client.mv("/b", "/h") == "/h"
    assert client.rm("/d/gone") == 1
    assert client.rm("/g", recursive=True) == 1
    client.put_bytes(b"replaced", "/a/one")  # replaces, journaled as a publish
    expected = {"/a/one": b"replaced", "/e/f/two": files["/a/two"], "/h/c/empty": b""}
    before = snapshot(client)
    assert set(before) == {"/a", "/a/one", "/d", "/e", "/e/f", "/e/f/two", "/h", "/h/c",
                           "/h/c/empty", "/lonely"}
    status_before = client.status()

    restart_meta(cluster)

    # The same client object reconnects by itself.
    assert snapshot(client) == before
    st = client.status()
    assert (st["files"], st["blocks"]) == (status_before["files"], status_before["blocks"])
    # The chunkservers were not restarted: they re-register and report their blocks.
    wait_until(lambda: all(s == "live" for s in cluster.states().values())
               and len(cluster.states()) == 2, 30, "chunkservers to re-register")
    wait_until(lambda: fully_replicated(client, list(expected)), 30,
               "block reports to restore every replica")
    for path, data in expected.items():
        assert client.get_bytes(path) == data
    # And the cluster takes new writes, whose block ids do not collide with old ones.
    client.put_bytes(data_of(MiB + 1, 9), "/after", block_size=MiB)
    assert client.get_bytes("/after") == data_of(MiB + 1, 9)
    old_ids = {b["id"] for s in before.values() for b in s.get("blocks", [])}
    assert not old_ids & {b["id"] for b in client.stat("/after")["blocks"]}
    for path, data in expected.items():
        assert client.get_bytes(path) == data


def test_concurrent_small_puts_acknowledged_just_before_sigkill(cluster: Cluster) -> None:
    blobs = {f"/many/d{i % 7}/f{i:03d}": data_of(50 + 37 * i, i) for i in range(200)}

    async def put_all() -> None:
        async with dfs.AsyncClient(cluster.meta_addr) as ac:
            await asyncio.gather(*(ac.put_bytes(b, p) for p, b in blobs.items()))
    asyncio.run(put_all())
    cluster.kill("meta")  # right after the last acknowledgement
    cluster.restart("meta")

    client = cluster.client()
    listed = {e["path"] for d in range(7) for e in client.ls(f"/many/d{d}")}
    assert listed == set(blobs)
    for path, data in blobs.items():
        assert client.stat(path)["size"] == len(data)
    wait_until(lambda: fully_replicated(client, list(blobs)), 30,
               "block reports to restore every replica")

    async def get_all() -> list[bytes]:
        async with dfs.AsyncClient(cluster.meta_addr) as ac:
            return await asyncio.gather(*(ac.get_bytes(p) for p in blobs))
    assert asyncio.run(get_all()) == list(blobs.values())


def _torn(how: str) -> bytes:
    """The bytes a crash may leave after the last good record (a cut that keeps a non-zero
    byte out: the file's room ahead is zeros, so a record missing only zeros is whole)."""
    record = encode_record(["mkdir", "/never-acknowledged", False, 1.0])
    return {"body_cut": record[:-9], "prefix_cut": record[:5],
            "zeros": b"\x00" * 4096}[how]


@pytest.mark.parametrize("how", ["body_cut", "prefix_cut", "zeros"])
def test_torn_journal_tail_is_dropped_and_appends_continue(cluster: Cluster, how: str) -> None:
    client = cluster.client()
    client.put_bytes(b"one", "/one")
    client.mkdir("/dir")
    before = snapshot(client)
    cluster.kill("meta")
    journal = cluster["meta"].data_dir / "journal"
    with open(journal, "r+b") as f:  # where the next record would have gone
        f.seek(read_records(journal.read_bytes())[1])
        f.write(_torn(how))
    cluster.restart("meta")
    assert snapshot(client) == before
    cluster.wait_live()  # writes need the chunkservers back
    # New records go after the good prefix, not after the torn bytes: they survive a restart.
    client.put_bytes(b"two", "/two")
    client.rm("/dir")
    after = snapshot(client)
    restart_meta(cluster)
    assert snapshot(client) == after
    assert set(after) == {"/one", "/two"}
    wait_until(lambda: fully_replicated(client, ["/one", "/two"]), 30, "replicas reported")
    assert client.get_bytes("/two") == b"two"


def test_whole_cluster_restart_keeps_everything(cluster: Cluster) -> None:
    client = cluster.client()
    data = data_of(2 * MiB + 5, 5)
    client.put_bytes(data, "/x/y.bin", block_size=MiB)
    for name in ("chunk0", "chunk1", "meta"):
        cluster.kill(name, signal.SIGTERM)
        assert cluster[name].wait(10) == 0
    cluster.restart("meta")
    cluster.restart("chunk0")
    cluster.restart("chunk1")
    wait_until(lambda: fully_replicated(client, ["/x/y.bin"]), 30, "replicas reported")
    assert client.get_bytes("/x/y.bin") == data


def test_open_reader_keeps_reading_while_meta_is_down(cluster: Cluster) -> None:
    client = cluster.client()
    data = data_of(3 * MiB + 3, 6)
    client.put_bytes(data, "/r.bin", block_size=MiB)
    with client.open("/r.bin", "rb") as f:
        head = f.read(100)
        cluster.kill("meta")  # block locations are already known: bytes need no meta
        rest = f.read()
    assert head + rest == data


def test_meta_killed_mid_upload_fails_the_put_cleanly(cluster: Cluster) -> None:
    client = cluster.client()
    outcome: dict[str, Any] = {}
    started = threading.Event()
    meta_restarted = threading.Event()

    def progress(n: int) -> None:
        # The writer holds after its first packet until meta has died and come back, so
        # meta surely dies while the upload is mid-file.
        started.set()
        meta_restarted.wait(60)

    local = cluster.base / "src.bin"
    local.write_bytes(data_of(30 * MiB, 7))

    def upload() -> None:
        try:
            outcome["result"] = client.put(str(local), "/mid.bin", block_size=MiB,
                                           progress=progress)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert started.wait(20)
    cluster.kill("meta")
    cluster.restart("meta")
    meta_restarted.set()
    t.join(60)
    assert not t.is_alive(), "put hung after meta restarted"
    # (Which error depends on timing; test_writer_whose_upload_meta_forgot... pins the word.)
    assert isinstance(outcome.get("error"), dfs.DFSError), outcome
    with pytest.raises(dfs.NotFound):
        client.stat("/mid.bin")
    cluster.wait_live()
    client.put(str(local), "/mid.bin", block_size=MiB)
    assert client.get_bytes("/mid.bin") == local.read_bytes()


def test_writer_whose_upload_meta_forgot_fails_without_saying_not_found(
        cluster: Cluster) -> None:
    """A meta restart forgets uploads in flight. The writer's close must fail, but not with
    NotFound: that word (and dfs-cli's exit status 2) means the remote path does not exist."""
    client = cluster.client()
    f = client.open("/w.bin", "wb", block_size=MiB)
    f.write(data_of(MiB + 5, 8))
    restart_meta(cluster)
    cluster.wait_live()
    with pytest.raises(dfs.DFSError) as err:
        f.close()
    with pytest.raises(dfs.NotFound):
        client.stat("/w.bin")
    assert not isinstance(err.value, dfs.NotFound), repr(err.value)
    client.put_bytes(b"retry works", "/w.bin")
    assert client.get_bytes("/w.bin") == b"retry works"


def test_checkpoints_keep_the_journal_short_and_survive_sigkill(make_cluster) -> None:
    cluster = make_cluster(2, meta_args=["--checkpoint-records", "40"])
    client = cluster.client()
    for i in range(150):
        client.put_bytes(f"file {i}".encode(), f"/ck/{i % 7}/f{i}")
    client.rm("/ck/6", recursive=True)
    client.mv("/ck/5", "/ck/five")
    want = sorted((e["path"], e["size"]) for d in client.ls("/ck") for e in client.ls(d["path"]))
    meta_dir = cluster.meta.data_dir
    wait_until(lambda: (meta_dir / "checkpoint").exists(), 30, "a checkpoint to be written")
    cluster.kill("meta")
    journal_size = read_records((meta_dir / "journal").read_bytes())[1]  # less the room ahead
    cluster.restart("meta")
    client = cluster.client()
    got = sorted((e["path"], e["size"]) for d in client.ls("/ck") for e in client.ls(d["path"]))
    assert got == want
    assert client.get_bytes("/ck/five/f5") == b"file 5"
    # 150 publishes alone would be ~15 KB of journal; a checkpoint every 40 records keeps
    # only the tail since the last one.
    assert journal_size < 8000, journal_size


def test_a_restored_meta_never_serves_bytes_of_an_older_file(make_cluster, tmp_path) -> None:
    """Restoring meta's data dir from a backup drops the journal records written after it.
    Block ids must still never repeat: the chunkservers keep the blocks of the files written
    after the backup (orphans now, kept by a long --orphan-grace, as OPERATIONS.md advises),
    and a new file must never be served one of those under its own id. (Regression: new ids
    repeated the old ones, a full block report adopted the orphans, and with one chunkserver
    up a read of a new file returned 100,000 bytes of an older one, exit status 0.)"""
    c = make_cluster(2, meta_args=["--orphan-grace", "1h"])
    backup = tmp_path / "meta-backup"
    c.kill("meta", signal.SIGTERM)
    c["meta"].wait(10)
    shutil.copytree(c.meta.data_dir, backup)
    c.restart("meta")
    c.wait_live()
    client = c.client()
    for i in range(30):
        client.put_bytes(data_of(100_000, 1000 + i), f"/old/{i}")
    c.kill("meta")
    shutil.rmtree(c.meta.data_dir)
    shutil.copytree(backup, c.meta.data_dir)
    c.restart("meta")
    c.wait_live()
    client = c.client()
    new = {f"/new/{i}": data_of(100_000, 2000 + i) for i in range(12)}
    for path, data in new.items():
        client.put_bytes(data, path)
    for name in ("chunk0", "chunk1"):  # full block reports, orphans and all
        c.restart(name)
    for alone in ("chunk0", "chunk1"):
        other = "chunk1" if alone == "chunk0" else "chunk0"
        c.kill(other)
        c.wait_state(other, "dead")
        reader = c.client()
        for path, data in new.items():
            try:
                got = reader.get_bytes(path)
            except dfs.DFSError:
                continue  # not on this server: an error, never another file's bytes
            assert got == data, f"{path} read from {alone} returned other bytes"
        c.restart(other)
    for path, data in new.items():
        assert client.get_bytes(path) == data


def test_decommission_survives_meta_restarts_and_can_be_cancelled(make_cluster) -> None:
    """A drained chunkserver stays out of service through a SIGKILL of meta (the journal has
    it) and a clean restart (the checkpoint has it): as soon as it registers again it is
    draining, then drained once the others have reported, never `live`, and it takes no new
    block. `decommission --cancel`, journaled too, puts it back in service for good."""
    cluster = make_cluster(3)
    client = cluster.client()
    data = data_of(4 * MiB + 3, 12)
    client.put_bytes(data, "/d.bin", block_size=MiB)
    leaving = cluster["chunk2"]
    client.decommission(leaving.addr)
    cluster.wait_state("chunk2", "decommissioned", 40)

    def never_live_until_drained() -> None:
        def drained() -> bool:
            state = cluster.states().get(leaving.addr)
            assert state in (None, "decommissioning", "decommissioned"), state
            return state == "decommissioned"
        wait_until(drained, 30, "chunk2 decommissioned again after meta's restart")

    for sig in (signal.SIGKILL, signal.SIGTERM):  # the journal, then the checkpoint
        cluster.kill("meta", sig)
        assert cluster["meta"].wait(10) in (0, -signal.SIGKILL)
        cluster.restart("meta")
        never_live_until_drained()
        wait_until(lambda: [cluster.states().get(d.addr) for d in cluster.chunkservers[:2]]
                   == ["live", "live"], 30, "the other two chunkservers back")
        client.put_bytes(b"new", f"/new-{sig}", replication=2)
        assert leaving.addr not in client.stat(f"/new-{sig}")["blocks"][0]["replicas"]
    assert "checkpoint written" in cluster["meta"].log_text()
    run = cli("decommission", "--cancel", leaving.addr, meta=cluster.meta_addr)
    assert run.code == 0 and f"{leaving.addr}: in service again (live" in run.out.decode(), run
    assert cluster.states()[leaving.addr] == "live"
    restart_meta(cluster)
    cluster.wait_live()
    assert cluster.states()[leaving.addr] == "live"
    client.put_bytes(b"three", "/three", replication=3)  # three servers in service again
    assert leaving.addr in client.stat("/three")["blocks"][0]["replicas"]
    assert client.get_bytes("/d.bin") == data
