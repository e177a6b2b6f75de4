"""A chunkserver that runs out of room (its --capacity, or its disk less --reserve): writes fail
with `no space` and one CLI line, partial replicas are removed, stored files are unharmed,
meta places no new blocks there, and the same upload succeeds once space is freed.

A chunkserver computes its room from its --capacity and from statvfs less --reserve through
one code path (BlockStore.stats/claim); --capacity makes "full" deterministic on a shared
disk, and a --reserve larger than the disk's free space shows the reserve is honoured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cluster import Cluster, MiB, data_of, wait_until

CLI = [sys.executable, "-m", "dfs.cli"]


def cli(meta: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(CLI + ["--meta", meta, *args], input=stdin, capture_output=True,
                          timeout=120)


def one_line_error(run: subprocess.CompletedProcess[bytes], word: str) -> None:
    err = run.stderr.decode()
    assert run.returncode == 1, (run.returncode, err)
    assert err.count("\n") == 1 and err.startswith("dfs-cli: error:") and word in err, err
    assert "Traceback" not in err


def no_tmp_files(cluster: Cluster) -> bool:
    return all(not cluster.tmp_files(d.name) for d in cluster.chunkservers)


def used(cluster: Cluster) -> dict[str, int]:
    return {cs["addr"]: cs["used"] for cs in cluster.status()["chunkservers"]}


def test_full_chunkservers_fail_cleanly_and_recover_when_space_is_freed(
        make_cluster, tmp_path: Path) -> None:
    # The failed upload's finished blocks may reach meta only after its abort: they are then
    # orphans, deleted after --orphan-grace (30 s by default; 2 s here to keep the test short).
    c: Cluster = make_cluster(2, chunk_args=["--capacity", "6MiB", "--reserve", "0"],
                              meta_args=["--orphan-grace", "2s"])
    meta = c.meta_addr
    first = data_of(3 * MiB, 1)
    assert cli(meta, "put", "-", "/first", "--block-size", "1MiB", stdin=first).returncode == 0
    second = data_of(4 * MiB, 2)
    run = cli(meta, "put", "-", "/second", "--block-size", "1MiB", stdin=second)
    one_line_error(run, "no space")
    # Nothing stored was harmed; the failed upload left no file and no partial replica.
    assert cli(meta, "cat", "/first").stdout == first
    assert cli(meta, "stat", "/second").returncode == 2
    wait_until(lambda: no_tmp_files(c), 10, "partial replicas removed")
    # Their heartbeats tell meta what /first uses, so it knows how little room is left.
    wait_until(lambda: all(cs["used"] >= 3 * MiB and cs["free"] < 3 * MiB
                           for cs in c.status()["chunkservers"]), 20, "full servers reported")
    # Free space, and the same upload succeeds.
    assert cli(meta, "rm", "/first").returncode == 0
    wait_until(lambda: all(u < MiB for u in used(c).values()), 20,
               "space of the removed file and the failed upload freed on both chunkservers")
    run = cli(meta, "put", "-", "/second", "--block-size", "1MiB", stdin=second)
    assert run.returncode == 0, run.stderr
    assert cli(meta, "cat", "/second").stdout == second
    assert no_tmp_files(c)


def test_a_full_server_gets_no_new_blocks_while_others_have_room(make_cluster) -> None:
    """A server with room for only two 1 MiB blocks fills up first (with only one other
    server, every block goes to both); once a third server with room joins, every new block
    gets its 2 replicas there and on the other, none on the full one."""
    c: Cluster = make_cluster(2, start=False)
    small = c.chunkservers[0]
    small.args += ["--capacity", "3MiB", "--reserve", "0"]  # 2 blocks + checksums fit, not 3
    c.start()
    meta = c.meta_addr
    files = {f"/f{i}": data_of(MiB, 10 + i) for i in range(8)}
    filling, later = list(files)[:3], list(files)[3:]
    for path in filling:
        run = cli(meta, "put", "-", path, "--block-size", "1MiB", stdin=files[path])
        assert run.returncode == 0, run.stderr
    # It really is full: two replicas on its disk, and it reports less room than a block.
    assert len(c.block_files(small.name)) == 2, c.block_files(small.name)
    wait_until(lambda: (st := {cs["addr"]: cs for cs in c.status()["chunkservers"]}
                        [small.addr])["free"] < MiB and st["used"] > 2 * MiB,
               20, "the small server to report itself full")
    full_ids = c.stored_block_ids(small.name)
    with c.client() as client:
        # The third fill went to the other server only (or was re-replicated nowhere).
        (b,) = client.stat(filling[2])["blocks"]
        assert small.addr not in b["replicas"], b
    c.add_chunkserver()  # a third server with room
    for path in later:
        run = cli(meta, "put", "-", path, "--block-size", "1MiB", stdin=files[path])
        assert run.returncode == 0, run.stderr
        assert b"under-replicated" not in run.stderr, run.stderr
    for path, data in files.items():
        assert cli(meta, "cat", path).stdout == data
    st = {cs["addr"]: cs for cs in c.status()["chunkservers"]}
    assert st[small.addr]["used"] <= 3 * MiB  # never past its capacity
    assert c.stored_block_ids(small.name) == full_ids, "a full server got new blocks"
    with c.client() as client:
        for path in later:  # every new block got its 2 replicas, on the servers with room
            for b in client.stat(path)["blocks"]:
                assert len(b["replicas"]) == 2 and small.addr not in b["replicas"], b
    assert no_tmp_files(c)


def test_the_reserve_is_never_used_for_blocks(make_cluster) -> None:
    """A reserve bigger than the whole disk leaves that server no room at all: puts land on
    the other server only (under-replicated, with the CLI's warning)."""
    c: Cluster = make_cluster(2, start=False)
    greedy, other = c.chunkservers
    greedy.args += ["--reserve", "100000GiB"]
    c.start()
    st = {cs["addr"]: cs for cs in c.status()["chunkservers"]}
    assert st[greedy.addr]["free"] == 0, st[greedy.addr]  # no room at all
    assert st[other.addr]["free"] > MiB, st[other.addr]
    run = cli(c.meta_addr, "put", "-", "/x", stdin=data_of(300_000, 3))
    assert run.returncode == 0 and b"under-replicated" in run.stderr, run.stderr
    with c.client() as client:
        assert client.stat("/x")["blocks"][0]["replicas"] == [other.addr]
    assert not c.block_files(greedy.name)
    assert len(c.block_files(other.name)) == 1
