"""dfsd as an operator sees it: start-up failures are one clear line and a non-zero exit;
SIGTERM/SIGINT stop it cleanly and promptly."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cluster import HOST, Cluster, free_ports, port_open, wait_until

import dfs
from dfs.meta.journal_codec import read_records

ROLES = ["meta", "chunk"]


def dfsd() -> list[str]:
    exe = shutil.which("dfsd")
    return [exe] if exe else [sys.executable, "-m", "dfs.daemon"]


def run_dfsd(args: list[str], cwd: Path, timeout: float = 60.0
             ) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = subprocess.run(dfsd() + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    # (Start-up failures must be prompt: no retry loop. The callers' ceilings are generous
    # because a cold interpreter start alone can take seconds on a busy machine.)
    return proc, time.monotonic() - t0


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def role_args(role: str, port: int, data_dir: Path, meta_port: int = 1) -> list[str]:
    args = ["--role", role, "--port", str(port), "--data-dir", str(data_dir),
            "--http-port", "0"]
    if role == "chunk":
        args += ["--meta", f"{HOST}:{meta_port}"]
    return args


@pytest.mark.parametrize("host", [None, HOST], ids=["default_host", "loopback"])
@pytest.mark.parametrize("role", ROLES)
def test_port_in_use_is_one_line_and_nonzero(tmp_path: Path, role: str,
                                             host: str | None) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = role_args(role, port, tmp_path / "d") + (["--host", host] if host else [])
        proc, elapsed = run_dfsd(args, tmp_path)
    assert proc.returncode != 0
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"
    line = one_line(proc.stderr)
    assert str(port) in line, line
    assert "in use" in line.lower(), line


@pytest.mark.parametrize("role", ROLES)
def test_data_dir_that_is_a_file_is_one_line_and_nonzero(tmp_path: Path, role: str) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("I am a file\n")
    (port,) = free_ports(1)
    proc, elapsed = run_dfsd(role_args(role, port, not_a_dir), tmp_path)
    assert proc.returncode != 0
    assert elapsed < 15, elapsed
    line = one_line(proc.stderr)
    assert str(not_a_dir) in line or "plain-file" in line, line
    assert not_a_dir.read_text() == "I am a file\n"


@pytest.mark.parametrize("role", ROLES)
def test_data_dir_below_a_file_is_one_line_and_nonzero(tmp_path: Path, role: str) -> None:
    (tmp_path / "f").write_text("x")
    (port,) = free_ports(1)
    proc, _ = run_dfsd(role_args(role, port, tmp_path / "f" / "sub"), tmp_path)
    assert proc.returncode != 0
    one_line(proc.stderr)


def test_sigterm_and_sigint_stop_promptly_with_status_0(cluster: Cluster) -> None:
    client = cluster.client()
    client.put_bytes(b"before shutdown", "/x")  # leaves pooled connections open
    for name, sig in (("chunk0", signal.SIGTERM), ("chunk1", signal.SIGINT),
                      ("meta", signal.SIGTERM)):
        t0 = time.monotonic()
        cluster.kill(name, sig)
        assert cluster[name].wait(30) == 0, cluster[name].tail()
        # Nothing is in flight, so nothing waits out the 5 s grace for open requests
        # (idle pooled connections must not hold the stop up); it takes ~0.05 s.
        took = time.monotonic() - t0
        assert took < 5, f"{name} took {took:.1f}s: it waited for idle connections?"
    cluster.restart("meta")
    cluster.restart("chunk0")
    cluster.restart("chunk1")
    assert client.get_bytes("/x") == b"before shutdown"


def test_sigterm_during_an_upload_exits_0(cluster: Cluster) -> None:
    """Stopping meta while uploads are in flight must neither hang nor crash."""
    client = cluster.client()
    errors: list[BaseException] = []
    unexpected: list[BaseException] = []
    late: list[str] = []  # puts begun after meta had exited that still succeeded
    done = [0]
    meta_down = threading.Event()

    def upload() -> None:
        try:
            while True:  # until meta goes away
                was_down = meta_down.is_set()
                client.put_bytes(b"z" * 200_000, f"/busy/{done[0]}")
                done[0] += 1
                if was_down:
                    late.append(f"/busy/{done[0] - 1}")
                    return
        except dfs.DFSError as exc:
            errors.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported below
            unexpected.append(exc)

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    # The uploader is in its loop (two puts done: the next one is on its way) ...
    wait_until(lambda: done[0] >= 2 or not t.is_alive(), 30, "the uploader to get going")
    assert t.is_alive(), (errors, unexpected)
    t0 = time.monotonic()
    cluster.kill("meta", signal.SIGTERM)
    assert cluster["meta"].wait(30) == 0, cluster["meta"].tail()
    took = time.monotonic() - t0
    meta_down.set()
    t.join(60)
    assert not t.is_alive(), "the client hung after meta stopped"
    assert not unexpected, unexpected
    assert not late, f"a put begun after meta exited succeeded: {late}"
    assert errors, "the uploader stopped without an error"
    # Open requests get up to 5 s of grace, then meta exits.
    assert took < 15, f"meta took {took:.1f}s to stop"


def _meta_with_journal(make_cluster) -> Cluster:
    cluster = make_cluster(0)
    client = cluster.client()
    for i in range(5):
        client.mkdir(f"/dir{i}")
    cluster.kill("meta")
    return cluster


def test_corrupt_journal_stops_start_up_with_one_line(make_cluster) -> None:
    cluster = _meta_with_journal(make_cluster)
    journal = cluster["meta"].data_dir / "journal"
    raw = bytearray(journal.read_bytes())
    end = read_records(bytes(raw))[1]  # the records; zeros (room allocated ahead) follow
    raw[end // 2] ^= 0xFF  # a record in the middle: damage, not a torn tail
    journal.write_bytes(bytes(raw))
    proc, elapsed = run_dfsd(cluster["meta"].args, cluster.base)
    assert proc.returncode != 0
    assert elapsed < 15, elapsed
    line = one_line(proc.stderr)
    assert "journal" in line and "offset" in line, line
    assert bytes(raw) == journal.read_bytes(), "a refused start-up must not touch the journal"


def test_garbage_after_the_last_record_is_a_torn_tail_kept_aside(make_cluster) -> None:
    """37 random bytes after the last record (a sector the disk never finished): meta starts,
    warns once, keeps the bytes beside the journal, and appends cleanly after its records."""
    cluster = _meta_with_journal(make_cluster)
    journal = cluster["meta"].data_dir / "journal"
    end = read_records(journal.read_bytes())[1]
    garbage = random.Random(37).randbytes(37)
    with open(journal, "r+b") as f:
        f.seek(end)
        f.write(garbage)
    mark = cluster.log_size("meta")
    cluster.restart("meta")
    log = cluster["meta"].log_text()[mark:]
    assert log.count("torn tail") == 1, log
    kept = list(journal.parent.glob("journal.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == garbage
    client = cluster.client()
    assert sorted(e["path"] for e in client.ls("/")) == [f"/dir{i}" for i in range(5)]
    client.mkdir("/after")
    cluster.kill("meta")
    records, good, why = read_records(journal.read_bytes())
    assert why is None and ["mkdir", "/after"] == records[-1][:2]
    cluster.restart("meta")
    assert "/after" in [e["path"] for e in cluster.client().ls("/")]


def test_unreadable_journal_stops_start_up_with_one_line(make_cluster) -> None:
    cluster = _meta_with_journal(make_cluster)
    journal = cluster["meta"].data_dir / "journal"
    journal.unlink()
    journal.mkdir()  # EISDIR where the journal should be: unreadable for root as well
    proc, _ = run_dfsd(cluster["meta"].args, cluster.base)
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert "journal" in line and "cannot read" in line, line


def test_journal_with_bad_magic_stops_start_up_with_one_line(make_cluster) -> None:
    cluster = _meta_with_journal(make_cluster)
    journal = cluster["meta"].data_dir / "journal"
    journal.write_bytes(b"NOTDFS!!" + journal.read_bytes()[8:])
    proc, _ = run_dfsd(cluster["meta"].args, cluster.base)
    assert proc.returncode != 0
    assert "journal" in one_line(proc.stderr)


@pytest.mark.parametrize("role", ["meta", "chunk0"])
def test_second_daemon_on_a_data_dir_in_use_is_refused(cluster: Cluster, role: str) -> None:
    """Two daemons on one data dir would interleave journal appends (meta) or share one
    chunkserver id (chunk): the second must refuse to start."""
    first = cluster[role]
    (port,) = free_ports(1)
    args = list(first.args)
    args[args.index("--port") + 1] = str(port)
    second = cluster.track(subprocess.Popen(dfsd() + args, cwd=cluster.base,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True))
    # It either refuses (exits) or, wrongly, starts serving: wait for whichever comes first.
    wait_until(lambda: second.poll() is not None or port_open(port), 60,
               "the second dfsd to exit or to listen")
    if second.poll() is None:
        second.kill()
        second.communicate()
        pytest.fail(f"a second dfsd --role {first.role} ran on {first.data_dir}, "
                    "which the first one is using")
    _, err = second.communicate()
    assert second.returncode != 0
    one_line(err)
    assert first.running()
