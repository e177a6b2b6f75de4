"""dfs-mount on a real FUSE mount over a real cluster: ordinary programs (cp, cat, ls, stat,
df, mkdir, mv, rm, tar, rsync, zip, git, a shell's >>) against dfs-cli's and dfs.Client's view
of the same files, a chunkserver killed under a reader, meta killed and back, and the ways a
mount ends (fusermount3 -u, SIGTERM, SIGKILL then fusermount3 -u, the detached mode).

DFS_MOUNT_TREE_FILES sets the size of the tar/rsync tree: 400 files in the suite, which
must finish in CI's 15 minutes; DFS_MOUNT_TREE_FILES=5000 is the full-size run."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cli_runner import cli, ok
from cluster import MiB, data_of, wait_until
from mounting import MOUNT, Mount, mounted

pytest.importorskip("pyfuse3", reason="the [mount] extra (pyfuse3) is not installed")
if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("no FUSE 3 here (Debian: apt install fuse3)", allow_module_level=True)

TREE_FILES = int(os.environ.get("DFS_MOUNT_TREE_FILES", "400"))


def run(*cmd: str, cwd: Path | str | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def cluster(make_cluster):
    # A fixed --capacity: by default it follows the disk's free space, which other tests
    # writing at the same time move between the `df` and the `status` compared below.
    return make_cluster(2, chunk_args=["--capacity", "64GiB"])


@pytest.fixture
def mnt(cluster, tmp_path):
    with Mount(cluster, tmp_path / "mnt") as m:
        yield m


def test_everyday_commands_agree_with_dfs_cli(cluster, mnt, tmp_path):
    root = mnt.path
    meta = cluster.meta_addr
    local = tmp_path / "local.bin"
    local.write_bytes(data_of(3 * MiB + 17))
    run("mkdir", "-p", str(root / "a/b/c"))
    run("cp", str(local), str(root / "a/b/c/copy.bin"))
    assert (root / "a/b/c/copy.bin").read_bytes() == local.read_bytes()
    assert ok(cli("cat", "/a/b/c/copy.bin", meta=meta)).out == local.read_bytes()
    entry = ok(cli("stat", "--json", "/a/b/c/copy.bin", meta=meta)).json()
    st = os.stat(root / "a/b/c/copy.bin")
    assert st.st_size == entry["size"] == 3 * MiB + 17
    assert abs(st.st_mtime - entry["mtime"]) < 1e-3
    assert stat.S_ISREG(st.st_mode) and stat.S_ISDIR(os.stat(root / "a/b").st_mode)
    listing = run("ls", "-l", str(root / "a/b/c")).stdout
    assert str(3 * MiB + 17) in listing and "copy.bin" in listing

    # The other way round: what dfs-cli writes, the mount shows.
    ok(cli("put", str(local), "/from-cli.bin", meta=meta))
    assert (root / "from-cli.bin").read_bytes() == local.read_bytes()
    assert sorted(os.listdir(root)) == ["a", "from-cli.bin"]

    run("mv", str(root / "a/b/c/copy.bin"), str(root / "a/moved.bin"))
    assert ok(cli("cat", "/a/moved.bin", meta=meta)).out == local.read_bytes()
    assert cli("stat", "/a/b/c/copy.bin", meta=meta).code != 0
    run("mv", str(root / "a/b"), str(root / "b2"))  # a directory
    assert os.path.isdir(root / "b2/c") and not os.path.exists(root / "a/b")

    df = run("df", "-B1", str(root)).stdout.splitlines()[1].split()
    status = cluster.status()
    capacity = sum(s["capacity"] for s in status["chunkservers"] if s["state"] == "live")
    assert int(df[1]) == capacity // 4096 * 4096

    with pytest.raises(OSError) as e:
        os.rmdir(root / "a")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileNotFoundError):
        (root / "nope").read_bytes()
    with pytest.raises(OSError) as e:
        os.unlink(root / "b2")
    assert e.value.errno == errno.EISDIR
    with pytest.raises(OSError) as e:
        os.link(root / "from-cli.bin", root / "hard")
    assert e.value.errno == errno.EPERM

    run("rm", "-r", str(root / "a"), str(root / "b2"))
    assert [e["path"] for e in ok(cli("ls", "--json", "/", meta=meta)).json()] == \
        ["/from-cli.bin"]


def test_attributes_and_links_are_kept_by_meta(cluster, mnt):
    root = mnt.path
    meta = cluster.meta_addr
    (root / "f").write_bytes(b"x" * 10)
    os.chmod(root / "f", 0o640)
    os.chown(root / "f", 1234, 5678)
    os.utime(root / "f", (1_000_000_000, 1_000_000_000))
    os.mkdir(root / "d", 0o700)
    os.symlink("f", root / "ln")
    os.symlink("/etc/passwd", root / "abs")  # stored as text; meta never follows it

    def check() -> None:
        st = os.lstat(root / "f")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
        assert st.st_mtime == 1_000_000_000
        assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o700
        assert os.readlink(root / "ln") == "f" and (root / "ln").read_bytes() == b"x" * 10
        assert os.readlink(root / "abs") == "/etc/passwd"
        entry = ok(cli("stat", "--json", "/f", meta=meta)).json()
        assert (entry["mode"], entry["uid"], entry["gid"]) == (0o640, 1234, 5678)
        link = ok(cli("stat", "--json", "/ln", meta=meta)).json()
        assert link["type"] == "symlink" and link["target"] == "f"

    check()
    # Journaled and checkpointed: a meta restart (which checkpoints at a clean stop, and
    # replays after a kill) keeps them.
    cluster.kill("meta")
    cluster.restart("meta")
    cluster.wait_live()
    wait_until(lambda: not cluster.status()["safe_mode"], 30, "meta out of safe mode")
    check()
    # A new version of the file keeps its mode and owner.
    with open(root / "f", "ab") as f:
        f.write(b"y")
    st = os.stat(root / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_size) == (0o640, 1234, 11)
    cluster.kill("meta", signal.SIGTERM)
    cluster["meta"].wait(30)
    cluster.restart("meta")
    cluster.wait_live()
    check_after = ok(cli("stat", "--json", "/f", meta=meta)).json()
    assert (check_after["mode"], check_after["size"]) == (0o640, 11)


def test_appends_seeks_and_truncation(cluster, mnt):
    root = mnt.path
    p = root / "log.txt"
    subprocess.run(f"echo one > {p}; echo two >> {p}; echo three >> {p}", shell=True,
                   check=True)
    assert p.read_text() == "one\ntwo\nthree\n"
    assert cluster.client().get_bytes("/log.txt") == b"one\ntwo\nthree\n"
    with open(p, "r+b") as f:  # write in the middle, then past the end (a hole)
        f.seek(4)
        f.write(b"TWO")
        f.seek(20)
        f.write(b"!")
    assert p.read_bytes() == b"one\nTWO\nthree\n" + b"\0" * 6 + b"!"
    os.truncate(p, 3)
    assert cluster.client().get_bytes("/log.txt") == b"one"
    with open(p, "wb"):
        pass
    assert cluster.client().stat("/log.txt")["size"] == 0


@pytest.mark.parametrize("written", [200 * 1024, 3 * MiB + 5000])
def test_a_streamed_file_written_out_of_order_falls_back_to_the_spool(cluster, tmp_path,
                                                                        written):
    """Sequential writes stream into the pipeline with no local copy; a seek back (as zip
    does to finish a header) moves what was streamed into the spool: the finished blocks
    read back from the chunkservers (1 MiB blocks here: three of them), the rest from the
    writer's memory."""
    with Mount(cluster, tmp_path / "mnt", "--block-size", "1MiB") as m:
        body = data_of(written, 3)
        with open(m.path / "z.bin", "wb", buffering=0) as f:
            for i in range(0, written, 64 * 1024):
                f.write(body[i:i + 64 * 1024])
            f.seek(10)
            f.write(b"HEADER")
            f.seek(0, os.SEEK_END)
            f.write(b"tail")
        want = body[:10] + b"HEADER" + body[16:] + b"tail"
        assert cluster.client().get_bytes("/z.bin") == want
        assert (m.path / "z.bin").read_bytes() == want
        entry = cluster.client().stat("/z.bin")
        assert entry["block_size"] == MiB and len(entry["blocks"]) == -(-len(want) // MiB)


def test_a_failed_streamed_upload_is_never_published_without_its_bytes(cluster, tmp_path):
    """Every chunkserver gone in the middle of a streamed file: the write that needs them
    fails with EIO, so does close, and nothing (no short file) appears in dfs."""
    cluster.client().put_bytes(b"old version", "/w.bin")
    with Mount(cluster, tmp_path / "mnt", "--block-size", "1MiB") as m:
        f = open(m.path / "w.bin", "wb", buffering=0)
        try:
            f.write(data_of(2 * MiB, 1))  # two blocks finished on both servers
            for d in cluster.chunkservers:
                cluster.kill(d.name)
            with pytest.raises(OSError) as e:
                for _ in range(4):  # the next block needs a pipeline
                    f.write(data_of(MiB, 2))
            assert e.value.errno == errno.EIO
        finally:
            with pytest.raises(OSError) as e:
                f.close()
        assert e.value.errno == errno.EIO
    assert cluster.client().stat("/w.bin")["size"] == len(b"old version")


def test_a_sequential_writer_needs_no_local_copy(cluster, tmp_path):
    """With a 64 KiB write cache, an 8 MiB file written front to back still goes through
    (it streams); written out of order it needs the cache, and the program sees ENOSPC."""
    with Mount(cluster, tmp_path / "mnt", "--cache-size", "64KiB") as m:
        body = data_of(8 * MiB, 4)
        with open(m.path / "seq.bin", "wb") as f:
            f.write(body)
        assert cluster.client().get_bytes("/seq.bin") == body
        with pytest.raises(OSError) as e:
            with open(m.path / "seq.bin", "r+b") as f:  # starts as a copy: 8 MiB > 64 KiB
                f.write(b"x")
        assert e.value.errno == errno.ENOSPC
        assert cluster.client().get_bytes("/seq.bin") == body  # the old version stands


def _tree(where: Path, files: int) -> Path:
    """A source tree of `files` small files in nested directories, with modes and times."""
    src = where / "src"
    for i in range(files):
        d = src / f"d{i % 40:02d}" / f"e{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"file{i}.txt"
        f.write_bytes(data_of(50 + i % 3000, i))
        os.chmod(f, 0o600 if i % 5 == 0 else 0o644)
        os.utime(f, (1_600_000_000 + i, 1_600_000_000 + i))
    (src / "empty").touch()
    os.symlink("d00/e0/file0.txt", src / "link")
    return src


@pytest.mark.timeout(600)
def test_tar_and_rsync_of_a_real_tree(cluster, mnt, tmp_path):
    src = _tree(tmp_path, TREE_FILES)
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src, arcname="src")
    into = mnt.path / "untar"
    into.mkdir()
    run("tar", "xf", str(archive), "-C", str(into), timeout=500)
    run("diff", "-r", "--no-dereference", str(src), str(into / "src"))
    st_src, st_dst = os.stat(src / "d03/e3/file3.txt"), os.stat(into / "src/d03/e3/file3.txt")
    assert st_dst.st_mtime == st_src.st_mtime
    assert stat.S_IMODE(st_dst.st_mode) == stat.S_IMODE(st_src.st_mode)
    assert cluster.client().du("/untar")[0]["files"] == TREE_FILES + 1

    target = mnt.path / "rsynced"
    run("rsync", "-a", f"{src}/", f"{target}/", timeout=500)
    run("diff", "-r", "--no-dereference", str(src), str(target))
    again = run("rsync", "-a", "--stats", f"{src}/", f"{target}/").stdout
    assert "Number of regular files transferred: 0" in again, again


def test_zip_git_and_a_shell_inside_the_mount(cluster, mnt, tmp_path):
    work = mnt.path / "work"
    work.mkdir()
    for i in range(20):
        (work / f"m{i}.py").write_text(f"print({i})\n" * (i + 1))
    run(sys.executable, "-m", "zipfile", "-c", str(work / "all.zip"),
        *[f"m{i}.py" for i in range(20)], cwd=work)
    run("unzip", "-t", str(work / "all.zip"))
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    repo = mnt.path / "repo"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "add", "."],
                ["git", "commit", "-q", "-m", "first"]):
        (repo / "a.txt").write_text("hello\n")
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr
    (repo / "a.txt").write_text("hello again\n")
    subprocess.run(["git", "commit", "-qam", "second"], cwd=repo, check=True, timeout=120,
                   env={**os.environ, **env})
    run("git", "fsck", "--strict", cwd=repo)
    log = run("git", "log", "--oneline", cwd=repo).stdout
    assert "second" in log and "first" in log


def test_close_to_open_sees_a_file_replaced_elsewhere(cluster, mnt):
    c = cluster.client()
    c.put_bytes(b"version one\n" * 1000, "/cto.txt")
    assert (mnt.path / "cto.txt").read_bytes() == b"version one\n" * 1000  # now cached
    c.put_bytes(b"v2\n", "/cto.txt")  # replaced by another client, shorter
    assert (mnt.path / "cto.txt").read_bytes() == b"v2\n"
    c.put_bytes(b"version three, longer than before\n" * 2000, "/cto.txt")
    assert (mnt.path / "cto.txt").read_bytes() == b"version three, longer than before\n" * 2000


@pytest.mark.timeout(180)
def test_a_read_survives_a_chunkserver_killed_under_it(make_cluster, tmp_path):
    cluster = make_cluster(3)
    data = data_of(48 * MiB, 7)
    c = cluster.client()
    with c.open("/big.bin", "wb", block_size=4 * MiB) as f:
        f.write(data)
    with Mount(cluster, tmp_path / "mnt") as m:
        digest = hashlib.sha256()
        with open(m.path / "big.bin", "rb", buffering=0) as f:
            first = f.read(4 * MiB)
            digest.update(first)
            cluster.kill("chunk1")  # holds about two thirds of the replicas
            while True:
                piece = f.read(1 * MiB)
                if not piece:
                    break
                digest.update(piece)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(180)
def test_dead_meta_gives_eio_in_bounded_time_then_the_mount_recovers(cluster, tmp_path):
    with Mount(cluster, tmp_path / "mnt", "--timeout", "3") as m:
        (m.path / "before").write_bytes(b"1")
        cluster.kill("meta")
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            os.stat(m.path / "never-seen")
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            (m.path / "new").write_bytes(b"2")
        assert e.value.errno == errno.EIO
        assert time.monotonic() - t0 < 30
        cluster.restart("meta")
        cluster.wait_live()
        wait_until(lambda: _works(m.path / "after"), 60, "the mount working again")
        assert (m.path / "before").read_bytes() == b"1"


def _works(path: Path) -> bool:
    try:
        path.write_bytes(b"3")
        return path.read_bytes() == b"3"
    except OSError:
        return False


def test_the_ways_a_mount_ends(cluster, tmp_path):
    m = Mount(cluster, tmp_path / "m1").start()
    try:
        assert m.unmount() == 0 and not mounted(m.path)
    finally:
        m.close()
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT: Ctrl-C in the foreground
        m = Mount(cluster, tmp_path / f"m-{sig.name}").start()
        try:
            m.proc.send_signal(sig)
            assert m.proc.wait(timeout=30) == 0
            assert not mounted(m.path)
        finally:
            m.close()
    m = Mount(cluster, tmp_path / "m3").start()
    try:
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=30)
        run("fusermount3", "-u", str(m.path))
        assert not mounted(m.path)
    finally:
        m.close()
    # Detached: the command returns once the mount works, and fusermount3 -u ends it.
    where = tmp_path / "m4"
    where.mkdir()
    try:
        run(*MOUNT, "--meta", cluster.meta_addr, str(where))
        assert mounted(where)
        (where / "x").write_bytes(b"detached")
        assert cluster.client().get_bytes("/x") == b"detached"
        run("fusermount3", "-u", str(where))
        assert not mounted(where)
    finally:
        if mounted(where):
            subprocess.run(["fusermount3", "-uz", str(where)])


def test_mount_refusals_are_one_line(cluster, tmp_path):
    proc = subprocess.run([*MOUNT, "--meta", "127.0.0.1:1", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("dfs-mount: error: cannot reach meta"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([*MOUNT, "--meta", cluster.meta_addr, str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not a directory" in proc.stderr


def test_readdir_pages_through_a_large_directory(cluster, mnt, tmp_path):
    names = {f"n{i:05d}" for i in range(2500)}  # three pages of meta's ls
    local = tmp_path / "big"
    local.mkdir()
    for n in names:
        (local / n).touch()
    cluster.client().put_tree(str(local), "/")
    assert set(os.listdir(mnt.path / "big")) == names


def test_a_secured_cluster_mounts_with_its_secret_only(make_cluster, tmp_path):
    """With a cluster secret: refused in one line without it; with it, reads carry block
    tokens, and a streamed file written out of order reads its finished blocks back with the
    read token meta handed the writer."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    flag = ["--secret-file", str(secret)]
    cluster = make_cluster(2, meta_args=flag, chunk_args=flag,
                           client_options={"secret_file": str(secret)})
    where = tmp_path / "refused"
    where.mkdir()
    proc = subprocess.run([*MOUNT, "--meta", cluster.meta_addr, str(where)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot reach meta" in proc.stderr and not mounted(where)
    with Mount(cluster, tmp_path / "mnt", *flag, "--block-size", "1MiB") as m:
        body = data_of(2 * MiB + 300, 9)
        with open(m.path / "s.bin", "wb", buffering=0) as f:
            f.write(body)
            f.seek(0)
            f.write(b"HEAD")
        want = b"HEAD" + body[4:]
        assert cluster.client().get_bytes("/s.bin") == want
        rng = random.Random(5)
        with open(m.path / "s.bin", "rb", buffering=0) as f:  # random preads
            for _ in range(50):
                off = rng.randrange(len(want))
                n = rng.randrange(1, 200_000)
                assert os.pread(f.fileno(), n, off) == want[off:off + n]
