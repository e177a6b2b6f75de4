"""dfs-cli with many files, as users run it: whole directories, several sources, globs,
parallel transfers with per-file failures, and sync. Real processes, judged by exit code,
output and the bytes that come back (`diff -r`)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Callable

from cli_runner import cli, ok
from cluster import Cluster

# Names a shell user makes: spaces, unicode, leading dashes, dots, quotes, brackets.
ODD = ["plain", "with space", "ünïcödé-名前", "-leading-dash", "--double", ".hidden",
       "it's", "[brackets]", "tab\there", "semi;colon", "star*", "q?mark", "emoji-🙂"]


def make_tree(root: Path, files: int, seed: int = 1) -> int:
    """`files` files in nested directories with odd names and sizes 0..20 KiB, plus an
    empty directory; returns the bytes written."""
    rng = random.Random(seed)
    dirs = [root]
    total = 0
    for i in range(files):
        if i % 40 == 0:  # a new directory now and then, nested under an existing one
            parent = rng.choice(dirs)
            d = parent / f"{rng.choice(ODD)} {i}"
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
        target = rng.choice(dirs) / f"{rng.choice(ODD)}-{i}"
        data = rng.randbytes(rng.choice([0, 1, 100, 4096, 20_000]))
        target.write_bytes(data)
        total += len(data)
    (root / "empty dir" / "-also empty").mkdir(parents=True)
    return total


def diff_r(a: Path, b: Path) -> None:
    proc = subprocess.run(["diff", "-r", str(a), str(b)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def summary(run) -> str:
    line = run.text.strip().splitlines()[-1]
    return line


def test_a_tree_of_a_thousand_odd_names_round_trips(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    total = make_tree(src, 1000)
    m = cluster.meta_addr
    run = ok(cli("put", str(src), "/up", "--parallel", "16", meta=m, timeout=120))
    assert summary(run).startswith("put: 1000 files"), run
    assert ", 0 failed" in summary(run), run
    listing = ok(cli("ls", "-R", "--json", "/up", meta=m)).json()
    assert sum(1 for e in listing if e["type"] == "file") == 1000
    assert sum(e["size"] for e in listing if e["type"] == "file") == total
    # The destination did not exist: it became the copy of src (hdfs dfs -put rules) ...
    ok(cli("get", "/up", str(tmp_path / "down"), meta=m, timeout=120))
    diff_r(src, tmp_path / "down")
    # ... and into an existing directory, the tree goes inside it under its own name.
    (tmp_path / "into").mkdir()
    ok(cli("get", "/up", str(tmp_path / "into"), meta=m, timeout=120))
    diff_r(src, tmp_path / "into" / "up")
    du = ok(cli("du", "-s", "--json", "/up", meta=m)).json()
    assert du[0]["size"] == total and du[0]["files"] == 1000


def test_one_unreadable_file_is_reported_and_the_rest_go_up(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 60, seed=2)
    # Reading /proc/self/mem at offset 0 fails with EIO, even for root (a disk read error,
    # for the CLI); a dangling link cannot be opened at all; a FIFO is no regular file.
    (src / "bad-io").symlink_to("/proc/self/mem")
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(src / "fifo")
    expected_bad = ["bad-io", "dangling", "fifo"]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        (src / "mode-000").write_bytes(b"secret")
        (src / "mode-000").chmod(0)
        expected_bad.append("mode-000")
    run = cli("put", str(src), "/up", "--parallel", "8", meta=cluster.meta_addr)
    assert run.code == 1, run
    assert "Traceback" not in run.err, run
    assert f"{len(expected_bad)} failed" in summary(run), run
    for name in expected_bad:
        assert any(line.startswith("dfs-cli: error: ") and line.split(":")[2].strip()
                   .endswith(name) for line in run.err.splitlines()), (name, run)
    assert "Input/output error" in run.err, run
    assert summary(run).startswith("put: 60 files"), run
    ok(cli("get", "/up", str(tmp_path / "down"), meta=cluster.meta_addr))
    for name in expected_bad:
        p = src / name
        p.unlink()
    diff_r(src, tmp_path / "down")


def test_several_sources_globs_and_missing_ones(cluster: Cluster, tmp_path: Path) -> None:
    m = cluster.meta_addr
    for name in ("2026-01.log", "2026-02.log", "2025-12.log", "notes.txt"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    logs = [str(tmp_path / n) for n in ("2026-01.log", "2026-02.log", "2025-12.log")]
    ok(cli("put", *logs, "/logs", meta=m))  # several sources: /logs becomes a directory
    assert sorted(ok(cli("ls", "/logs", meta=m)).text.split()) == \
        ["2025-12.log", "2026-01.log", "2026-02.log"]
    run = ok(cli("get", "/logs/2026-*", str(tmp_path / "got"), meta=m))
    assert sorted(os.listdir(tmp_path / "got")) == ["2026-01.log", "2026-02.log"], run
    assert (tmp_path / "got" / "2026-02.log").read_bytes() == b"2026-02.log" * 100
    # A glob with no match, and a missing source among good ones: the rest still arrive,
    # each failure is named, and a missing remote path exits 2 as everywhere.
    run = cli("get", "/logs/2027-*", str(tmp_path / "none"), meta=m)
    assert run.code == 2 and "/logs/2027-*" in run.err and "no match" in run.err, run
    run = cli("get", "/logs/2025-12.log", "/nope", str(tmp_path / "mixed"), meta=m)
    assert run.code == 2 and "/nope" in run.err, run
    assert os.listdir(tmp_path / "mixed") == ["2025-12.log"]
    run = cli("put", str(tmp_path / "notes.txt"), str(tmp_path / "absent"), "/mixed", meta=m)
    assert run.code == 1 and "absent: No such file or directory" in run.err, run
    assert ok(cli("test", "-f", "/mixed/notes.txt", meta=m))
    # One file keeps the single-file rules: to a path that is not a directory, it is the path.
    ok(cli("put", str(tmp_path / "notes.txt"), "/single.txt", meta=m))
    assert cli("test", "-f", "/single.txt", meta=m).code == 0


def test_sync_moves_only_what_changed(cluster: Cluster, tmp_path: Path) -> None:
    m = cluster.meta_addr
    src = tmp_path / "src"
    make_tree(src, 120, seed=3)
    first = ok(cli("sync", str(src), "/mirror", meta=m))
    assert summary(first).startswith("sync: 120 files"), first

    client = cluster.client()

    def ids() -> dict[str, list[str]]:
        files, _ = client.walk("/mirror")
        return {f["path"]: [b["id"] for b in client.stat(f["path"])["blocks"]] for f in files}
    before = ids()
    again = ok(cli("sync", str(src), "/mirror", meta=m))
    assert summary(again).startswith("sync: 0 files, 0 B"), again
    assert "120 unchanged" in summary(again), again
    assert ids() == before  # nothing was rewritten
    # One file changes (same size, new mtime), one is deleted locally.
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.stat().st_size > 0)
    changed, deleted = files[0], files[1]
    changed.write_bytes(bytes(b ^ 0xFF for b in changed.read_bytes()))
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 10))
    deleted.unlink()
    rel_deleted = "/mirror/" + deleted.relative_to(src).as_posix()
    dry = ok(cli("sync", "--dry-run", "--delete", str(src), "/mirror", meta=m))
    assert f"delete {rel_deleted}" in dry.text.splitlines(), dry
    assert "upload /mirror/" + changed.relative_to(src).as_posix() in dry.text, dry
    assert cli("test", "-e", rel_deleted, meta=m).code == 0  # a dry run changes nothing
    run = ok(cli("sync", str(src), "/mirror", meta=m))  # without --delete: kept
    assert summary(run).startswith("sync: 1 files"), run
    assert cli("test", "-e", rel_deleted, meta=m).code == 0
    run = ok(cli("sync", "--delete", str(src), "/mirror", meta=m))
    assert "1 deleted" in summary(run) and summary(run).startswith("sync: 0 files"), run
    assert cli("test", "-e", rel_deleted, meta=m).code == 1
    # The other direction, into an empty local directory, then again: nothing moves.
    back = tmp_path / "back"
    ok(cli("sync", "dfs:/mirror", str(back), meta=m))
    diff_r(src, back)
    run = ok(cli("sync", "dfs:/mirror", str(back), meta=m))
    assert summary(run).startswith("sync: 0 files"), run
    # --checksum: same size and mtime but other bytes is found, and only that file moves.
    victim = sorted(p for p in back.rglob("*") if p.is_file() and p.stat().st_size > 8)[0]
    st = victim.stat()
    victim.write_bytes(b"X" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert summary(ok(cli("sync", "dfs:/mirror", str(back), meta=m))).startswith(
        "sync: 0 files")  # size and mtime agree: not seen without --checksum
    run = ok(cli("sync", "--checksum", "dfs:/mirror", str(back), meta=m))
    assert summary(run).startswith("sync: 1 files"), run
    diff_r(src, back)


def test_du_df_touch_test_tail(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    # A fixed --capacity: by default capacity follows the disk's free space, which anything
    # else writing on this machine moves between the `df` and `status` below.
    cluster = make_cluster(2, chunk_args=["--capacity", "1GiB"])
    m = cluster.meta_addr
    (tmp_path / "f").write_bytes(bytes(range(256)) * 40)
    ok(cli("put", str(tmp_path / "f"), "/d/f", meta=m))
    ok(cli("touch", "/d/empty", meta=m))
    assert cli("test", "-z", "/d/empty", meta=m).code == 0
    assert cli("test", "-s", "/d/f", meta=m).code == 0
    assert cli("test", "-d", "/d", meta=m).code == 0
    assert cli("test", "-f", "/d", meta=m).code == 1
    assert cli("test", "-e", "/nope", meta=m).code == 1  # test says no; not an error
    run = cli("test", "-e", "/d/f/child", meta=m)  # under a file: no such path either
    assert run.code == 1 and run.err == "", run
    run = cli("touch", "/no/such/dir/f", meta=m)  # as touch(1): parents are not made
    assert run.code == 2 and cli("test", "-e", "/no", meta=m).code == 1, run
    assert ok(cli("tail", "-c", "3", "/d/f", meta=m)).out == bytes([253, 254, 255])
    assert ok(cli("tail", "-c", "1MiB", "/d/f", meta=m)).out == bytes(range(256)) * 40
    rows = ok(cli("du", "--json", "/d", meta=m)).json()
    assert [(r["path"], r["size"], r["replicated"]) for r in rows] == \
        [("/d/empty", 0, 0), ("/d/f", 10240, 20480)]
    text = ok(cli("du", "-s", "-h", "--replicated", "/d", meta=m)).text
    assert text.split() == ["10.0", "KiB", "20.0", "KiB", "/d"], text
    df = ok(cli("df", "--json", meta=m)).json()
    st = ok(cli("status", "--json", meta=m)).json()
    assert df["capacity"] == sum(s["capacity"] for s in st["chunkservers"]) > 0
    assert "Use%" in ok(cli("df", "-h", meta=m)).text
    before = ok(cli("stat", "--json", "/d/f", meta=m)).json()["mtime"]
    ok(cli("touch", "/d/f", meta=m))
    assert ok(cli("stat", "--json", "/d/f", meta=m)).json()["mtime"] >= before
    long = ok(cli("ls", "-l", "-h", "/d", meta=m)).text
    assert "10.0 KiB" in long, long


def test_put_of_dot_and_dotdot_uses_their_real_names(cluster: Cluster, tmp_path: Path) -> None:
    m = cluster.meta_addr
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "f").write_bytes(b"f")
    ok(cli("mkdir", "/into", meta=m))
    ok(cli("put", ".", "/into", meta=m, cwd=work / "sub"))
    assert cli("test", "-f", "/into/sub/f", meta=m).code == 0
    ok(cli("put", "..", "/into", meta=m, cwd=work / "sub"))
    assert cli("test", "-f", "/into/work/sub/f", meta=m).code == 0


def test_version_help_and_completion() -> None:
    run = ok(cli("--version"))
    assert run.text.startswith("dfs-cli "), run
    for command in ("put", "get", "sync", "cp", "du", "df", "setrep", "checksum", "ls"):
        text = ok(cli(command, "--help")).text
        assert "default" in text or command in ("cp", "checksum", "df"), (command, text)
    script = ok(cli("completion", "bash")).text
    assert "complete " in script and "setrep" in script
