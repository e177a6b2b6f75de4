"""`dfs-cli` and `dfs-demo` as users run them: real subprocesses against real clusters, judged by
exit code, stdout and stderr only (INTERFACE.md, "dfs-cli" and "dfs-demo").

Most tests share one module-wide cluster and never kill anything; the tests that SIGKILL a
chunkserver get a cluster of their own (`cluster` fixture).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_runner import CLI, ERROR_PREFIX, Run, clean_env, cli, ok, one_error_line
from cluster import Cluster, KiB, MiB, data_of, free_ports, wait_until

import dfs

STAT_FILE_KEYS = {"path", "type", "size", "replication", "block_size", "mtime", "blocks"}
BLOCK_KEYS = {"id", "size", "replicas"}
STATUS_KEYS = {"meta", "files", "blocks", "chunkservers"}
CHUNKSERVER_KEYS = {"id", "addr", "state", "blocks", "used", "capacity", "last_heartbeat_s"}


def dead_addr() -> str:
    """A loopback address nothing listens on."""
    (port,) = free_ports(1)
    return f"127.0.0.1:{port}"


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (and we could bind it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def cli_states(meta: str) -> dict[str, str]:
    return {cs["addr"]: cs["state"] for cs in cli("status", "--json", meta=meta).json()
            ["chunkservers"]}


def wait_cli_state(meta: str, addr: str, state: str, timeout: float = 15) -> None:
    wait_until(lambda: cli_states(meta).get(addr) == state, timeout,
               f"{addr} to show {state} in `dfs-cli status --json`", interval=0.3)


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def meta(shared_cluster: Cluster) -> str:
    return shared_cluster.meta_addr


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    """An empty local working directory (tmp_path itself may hold a cluster's data)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def root(request: pytest.FixtureRequest) -> str:
    """A remote directory of this test's own on the shared cluster."""
    return "/cli/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)


# -- 1. the classic three-process example -----------------------------------------------

@pytest.mark.parametrize("victim", [0, 1], ids=["first-replica", "second-replica"])
def test_classic_workflow_get_after_sigkill_of_a_replica(cluster: Cluster, wd: Path,
                                                      victim: int) -> None:
    url = f"http://{cluster.meta_addr}"
    sample = (b"Hello from dfs!\n" * 20000) + data_of(300 * KiB + 11, victim)
    (wd / "sample.txt").write_bytes(sample)

    put = cli("put", "sample.txt", "/remote/sample.txt", url, cwd=wd)
    assert ok(put).out == b"", put

    st = cli("stat", "--json", "/remote/sample.txt", url, cwd=wd).json()
    assert st["path"] == "/remote/sample.txt" and st["type"] == "file"
    assert st["size"] == len(sample) and st["replication"] == 2
    assert len(st["blocks"]) == 1
    replicas = st["blocks"][0]["replicas"]
    assert len(replicas) == 2 and len(set(replicas)) == 2, st
    assert set(replicas) == {d.addr for d in cluster.chunkservers}, st

    cluster.kill(cluster.by_addr(replicas[victim]).name)

    get = cli("get", "/remote/sample.txt", "downloaded.txt", url, cwd=wd, timeout=60)
    assert ok(get).out == b"", get
    assert (wd / "downloaded.txt").read_bytes() == sample
    assert sorted(p.name for p in wd.iterdir()) == ["downloaded.txt", "sample.txt"]


# -- 2. where the meta address comes from ----------------------------------------------------

@pytest.fixture(scope="module")
def addressed_file(meta: str) -> tuple[str, bytes]:
    data = b"which meta server answered?\n"
    ok(cli("put", "-", "/cli/addressing/f.txt", meta=meta, stdin=data))
    return "/cli/addressing/f.txt", data


@pytest.mark.parametrize("how", [
    "--meta before the command",
    "--meta after the command",
    "--meta=ADDR after the arguments",
    "$DFS_META",
    "trailing HOST:PORT",
    "trailing http://HOST:PORT",
    "trailing http://HOST:PORT/",
    "--meta beats $DFS_META",
    "trailing address beats $DFS_META",
])
def test_meta_address_selection(meta: str, addressed_file: tuple[str, bytes],
                                how: str) -> None:
    path, data = addressed_file
    env = clean_env()
    if "beats" in how:
        env["DFS_META"] = dead_addr()  # must not be used
    args = {
        "--meta before the command": ["--meta", meta, "cat", path],
        "--meta after the command": ["cat", "--meta", meta, path],
        "--meta=ADDR after the arguments": ["cat", path, f"--meta={meta}"],
        "$DFS_META": ["cat", path],
        "trailing HOST:PORT": ["cat", path, meta],
        "trailing http://HOST:PORT": ["cat", path, f"http://{meta}"],
        "trailing http://HOST:PORT/": ["cat", path, f"http://{meta}/"],
        "--meta beats $DFS_META": ["--meta", meta, "cat", path],
        "trailing address beats $DFS_META": ["cat", path, meta],
    }[how]
    if how == "$DFS_META":
        env["DFS_META"] = meta
    run = cli(*args, env=env)
    assert ok(run).out == data, run


@pytest.mark.parametrize("args", [
    ["stat", "--json", "{path}", "{meta}"],
    ["get", "{path}", "-", "{meta}"],
    ["ls", "--json", "/cli/addressing", "{meta}"],
    ["status", "--json", "{meta}"],
    ["status", "--json", "--meta", "{meta}"],
], ids=["stat", "get", "ls", "status", "status --meta after"])
def test_trailing_host_port_on_other_commands(meta: str, addressed_file: tuple[str, bytes],
                                              args: list[str]) -> None:
    path, data = addressed_file
    run = ok(cli(*[a.format(path=path, meta=meta) for a in args]))
    if args[0] == "get":
        assert run.out == data
    else:
        assert json.loads(run.out)


def test_trailing_host_port_with_put_and_get_of_local_files(meta: str, root: str,
                                                            wd: Path) -> None:
    (wd / "a.bin").write_bytes(data_of(1000, 1))
    ok(cli("put", "a.bin", f"{root}/a.bin", meta, cwd=wd))
    ok(cli("get", f"{root}/a.bin", "b.bin", meta, cwd=wd))
    assert (wd / "b.bin").read_bytes() == data_of(1000, 1)


def test_ls_with_only_a_trailing_host_port_lists_the_root(meta: str,
                                                          addressed_file: object) -> None:
    """`dfs-cli ls HOST:PORT`: the path is optional (default /) and remote paths are absolute,
    so a trailing HOST:PORT can only be the meta server (INTERFACE.md: a trailing `HOST:PORT`
    argument names the meta server)."""
    run = cli("ls", meta)
    assert ok(run).text.splitlines().count("cli/") == 1, run


def test_no_meta_anywhere_means_127_0_0_1_5000(wd: Path) -> None:
    if not port_free(5000):
        pytest.skip("something listens on 127.0.0.1:5000 on this machine")
    run = cli("ls", "/", cwd=wd)
    line = one_error_line(run, "unavailable")
    assert "5000" in line, run


@pytest.mark.parametrize("bad", ["not-an-address:xx", "http://", "host:99999"])
def test_unparseable_meta_address_is_one_line(bad: str) -> None:
    one_error_line(cli("--meta", bad, "ls", "/"), "address")


def test_meta_that_is_down_is_unavailable_within_seconds(wd: Path) -> None:
    run = cli("get", "/x", "out", f"http://{dead_addr()}", cwd=wd)
    one_error_line(run, "unavailable")
    assert run.seconds < 10, run
    assert list(wd.iterdir()) == []


# -- 3. stdin and stdout ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 3 * MiB + 12345], ids=["empty", "1B", "3MiB+"])
def test_stdin_put_and_stdout_get_and_cat_are_binary_exact(meta: str, root: str,
                                                           size: int) -> None:
    data = data_of(size, 3)
    if size > 5:
        data = b"\r\n\x00\xff\x1a" + data[5:]  # bytes a text layer would mangle
    path = f"{root}/blob.bin"
    assert ok(cli("put", "-", path, "--block-size", "1MiB", meta=meta, stdin=data)).out == b""
    got = ok(cli("get", path, "-", meta=meta))
    assert len(got.out) == size and got.out == data
    cat = ok(cli("cat", path, meta=meta))
    assert len(cat.out) == size and cat.out == data
    st = cli("stat", "--json", path, meta=meta).json()
    assert st["size"] == size and len(st["blocks"]) == -(-size // MiB)


def test_put_of_a_local_file_reads_back_through_stdout(meta: str, root: str,
                                                       wd: Path) -> None:
    data = data_of(2 * MiB + 1, 4)
    (wd / "in.bin").write_bytes(data)
    ok(cli("put", str(wd / "in.bin"), f"{root}/in.bin", meta=meta))
    assert ok(cli("cat", f"{root}/in.bin", meta=meta)).out == data


@pytest.mark.parametrize("command", [["get", "{f}", "-"], ["cat", "{f}"], ["ls", "{d}"]],
                         ids=["get-stdout", "cat", "ls"])
def test_a_closed_stdout_ends_the_command_quietly(meta: str, root: str, command: list[str],
                                                  wd: Path) -> None:
    """`dfs-cli get /f - | head -c 1000`: the reader goes away; the command ends as `cat`
    does, with no traceback and no error line, and exit status 141 (128 + SIGPIPE)."""
    d = f"{root}/pipe-{command[0]}"
    ok(cli("put", "-", f"{d}/big", "--block-size", "1MiB", meta=meta,
           stdin=data_of(8 * MiB, 5)))
    if command[0] == "ls":  # enough names to overflow the pipe's buffer
        client = dfs.Client(meta)
        try:
            for i in range(400):
                client.mkdir(f"{d}/{'n' * 200}{i}", parents=True)
        finally:
            client.close()
    argv = " ".join(shlex.quote(a) for a in CLI + ["--meta", meta] +
                    [a.format(f=f"{d}/big", d=d) for a in command])
    errfile = wd / "stderr"
    proc = subprocess.run(["bash", "-c", f"{argv} 2>{errfile} | head -c 1000 >/dev/null; "
                           "exit ${PIPESTATUS[0]}"], env=clean_env(), timeout=60,
                          stdin=subprocess.DEVNULL)
    err = errfile.read_text()
    assert err == "", err
    assert proc.returncode == 141, (proc.returncode, err)


def test_ctrl_c_during_put_from_an_idle_stdin_exits_promptly(meta: str, root: str,
                                                             shared_cluster: Cluster) -> None:
    """`producer | dfs-cli put - /p`, producer stalls, user presses Ctrl-C: the CLI says
    `interrupted` (cli.py maps KeyboardInterrupt to exit 130) and exits, without waiting for
    more input; nothing appears at the remote path."""
    uploads_before = shared_cluster.status()["uploads"]
    # As a terminal starts it: a suite run from a background shell (`cmd &`, nohup) has
    # SIGINT ignored, children inherit that, and a CLI that ignores Ctrl-C is then correct.
    proc = subprocess.Popen(CLI + ["--meta", meta, "put", "-", f"{root}/p"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(data_of(100 * KiB, 14))
        proc.stdin.flush()
        # Started, upload open at meta (so the CLI is past its imports and its handlers),
        # then blocked reading stdin: Ctrl-C now.
        wait_until(lambda: proc.poll() is not None or
                   shared_cluster.status()["uploads"] > uploads_before, 60,
                   "the CLI's upload to be open at meta")
        assert proc.poll() is None, f"the CLI exited early: {proc.returncode}"
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)  # a ceiling: it exits at once; a hung CLI waits forever
        except subprocess.TimeoutExpired:
            code = None
    finally:
        proc.stdin.close()  # EOF lets a hung CLI finish so we can read its stderr
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    assert code is not None, f"still running 30 s after SIGINT (then: {proc.returncode}, {err!r})"
    run = Run(["put", "-", f"{root}/p"], code, b"", err, 0)
    one_error_line(run, "interrupted")
    assert run.code == 130, run
    assert cli("stat", f"{root}/p", meta=meta).code == 2

# -- 4. JSON shapes and listings -------------------------------------------------------------

def test_stat_json_of_file_empty_file_and_dir(meta: str, root: str,
                                              shared_cluster: Cluster) -> None:
    data = data_of(2 * MiB + 100, 6)
    ok(cli("put", "-", f"{root}/f", "--block-size", "1MiB", meta=meta, stdin=data))
    ok(cli("put", "-", f"{root}/empty", meta=meta, stdin=b""))

    st = cli("stat", "--json", f"{root}/f", meta=meta).json()
    assert STAT_FILE_KEYS <= st.keys(), st
    assert st["path"] == f"{root}/f" and st["type"] == "file"
    assert st["size"] == len(data) and st["replication"] == 2 and st["block_size"] == MiB
    assert isinstance(st["mtime"], float) and abs(st["mtime"] - time.time()) < 300
    addrs = {d.addr for d in shared_cluster.chunkservers}
    assert [b["size"] for b in st["blocks"]] == [MiB, MiB, 100]
    for b in st["blocks"]:
        assert BLOCK_KEYS <= b.keys(), b
        assert isinstance(b["id"], str) and b["id"].isdigit(), b
        assert set(b["replicas"]) == addrs and len(b["replicas"]) == 2, b
    assert len({b["id"] for b in st["blocks"]}) == 3

    empty = cli("stat", "--json", f"{root}/empty", meta=meta).json()
    assert empty["type"] == "file" and empty["size"] == 0 and empty["blocks"] == [], empty
    assert ok(cli("cat", f"{root}/empty", meta=meta)).out == b""

    d = cli("stat", "--json", root, meta=meta).json()
    assert d["type"] == "dir" and d["path"] == root and "blocks" not in d, d
    root_dir = cli("stat", "--json", "/", meta=meta).json()
    assert root_dir["type"] == "dir" and "blocks" not in root_dir, root_dir


def test_stat_plain_output(meta: str, root: str) -> None:
    ok(cli("put", "-", f"{root}/f", meta=meta, stdin=b"0123456789"))
    text = ok(cli("stat", f"{root}/f", meta=meta)).text
    assert re.search(rf"^path:\s+{re.escape(root)}/f$", text, re.M), text
    assert re.search(r"^type:\s+file$", text, re.M), text
    assert re.search(r"^replication:\s+2$", text, re.M), text
    assert re.search(r"^size:\s+10\b", text, re.M), text
    assert len(re.findall(r"^block \d+: 10 bytes on ", text, re.M)) == 1, text
    dtext = ok(cli("stat", root, meta=meta)).text
    assert re.search(r"^type:\s+dir$", dtext, re.M) and "block " not in dtext, dtext


def test_ls_json_long_and_plain(meta: str, root: str) -> None:
    ok(cli("put", "-", f"{root}/a.txt", "-r", "1", meta=meta, stdin=b"a" * 1234))
    ok(cli("put", "-", f"{root}/b.bin", meta=meta, stdin=b""))
    ok(cli("mkdir", f"{root}/sub", meta=meta))
    ok(cli("put", "-", f"{root}/sub/hidden", meta=meta, stdin=b"x"))

    entries = cli("ls", "--json", root, meta=meta).json()
    assert isinstance(entries, list)
    by_path = {e["path"]: e for e in entries}
    assert set(by_path) == {f"{root}/a.txt", f"{root}/b.bin", f"{root}/sub"}, entries
    for e in entries:
        assert "blocks" not in e, e
        assert {"path", "type", "mtime"} <= e.keys(), e
    a = by_path[f"{root}/a.txt"]
    assert STAT_FILE_KEYS - {"blocks"} <= a.keys(), a
    assert a["type"] == "file" and a["size"] == 1234 and a["replication"] == 1, a
    assert by_path[f"{root}/b.bin"]["size"] == 0
    assert by_path[f"{root}/sub"]["type"] == "dir"

    plain = ok(cli("ls", root, meta=meta)).text.splitlines()
    assert sorted(plain) == ["a.txt", "b.bin", "sub/"], plain

    long = ok(cli("ls", "-l", root, meta=meta)).text.splitlines()
    assert len(long) == 3, long
    rows = {line.split()[-1]: line.split() for line in long}
    assert set(rows) == set(by_path), long
    kind, repl, size = rows[f"{root}/a.txt"][:3]
    assert (kind, repl, size) == ("-", "1", "1234"), long
    assert rows[f"{root}/sub"][0] == "d", long
    for row in rows.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", row[3]) and re.fullmatch(r"\d\d:\d\d", row[4])

    # Options after the path work too, and ls of a file lists that file.
    assert cli("ls", root, "--json", meta=meta).json() == entries
    one = cli("ls", "--json", f"{root}/a.txt", meta=meta).json()
    assert [e["path"] for e in one] == [f"{root}/a.txt"], one


def test_status_json_shape(meta: str, shared_cluster: Cluster) -> None:
    st = cli("status", "--json", meta=meta).json()
    assert STATUS_KEYS <= st.keys(), st
    assert st["meta"] == meta
    assert isinstance(st["files"], int) and isinstance(st["blocks"], int)
    assert {cs["addr"] for cs in st["chunkservers"]} == {d.addr for d in
                                                         shared_cluster.chunkservers}
    for cs in st["chunkservers"]:
        assert CHUNKSERVER_KEYS <= cs.keys(), cs
        assert isinstance(cs["id"], str) and cs["id"], cs
        assert cs["state"] == "live", cs
        for k in ("blocks", "used", "capacity"):
            assert isinstance(cs[k], int) and cs[k] >= 0, cs
        assert isinstance(cs["last_heartbeat_s"], (int, float))
        assert 0 <= cs["last_heartbeat_s"] < 3, cs
    assert len({cs["id"] for cs in st["chunkservers"]}) == 2

    text = ok(cli("status", meta=meta)).text
    assert meta in text and "2/2" in text, text
    for d in shared_cluster.chunkservers:
        assert re.search(rf"{re.escape(d.addr)}\s+live\b", text), text


# -- 5. replication and block size -----------------------------------------------------------

@pytest.mark.parametrize("form", ["options first", "options last, trailing address"])
def test_put_replication_1_and_64KiB_blocks(meta: str, root: str, wd: Path,
                                            form: str) -> None:
    data = data_of(200 * KiB + 1, 7)
    (wd / "f.bin").write_bytes(data)
    if form == "options first":
        run = cli("put", "-r", "1", "--block-size", "64KiB", "f.bin", f"{root}/f.bin",
                  meta=meta, cwd=wd)
    else:
        run = cli("put", "f.bin", f"{root}/f.bin", "--block-size", "64K", "-r", "1", meta,
                  cwd=wd)
    assert ok(run).out == b""
    st = cli("stat", "--json", f"{root}/f.bin", meta=meta).json()
    assert st["replication"] == 1 and st["block_size"] == 64 * KiB, st
    assert [b["size"] for b in st["blocks"]] == [64 * KiB] * 3 + [8 * KiB + 1], st
    assert all(len(b["replicas"]) == 1 for b in st["blocks"]), st
    assert ok(cli("cat", f"{root}/f.bin", meta=meta)).out == data


@pytest.mark.parametrize("value", ["bad", "64XB", "1.5"])
def test_unparseable_block_size_is_one_line(meta: str, root: str, value: str) -> None:
    run = cli("put", "-", f"{root}/x", "--block-size", value, meta=meta, stdin=b"x")
    one_error_line(run, "block")
    assert cli("stat", f"{root}/x", meta=meta).code == 2


@pytest.mark.parametrize("args", [["--block-size", "1"], ["--block-size", "100000"],
                                  ["--block-size", "2GiB"], ["-r", "0"], ["-r", "17"]],
                         ids=["bs=1", "bs=100000", "bs=2GiB", "r=0", "r=17"])
def test_out_of_range_block_size_or_replication_is_one_line(meta: str, root: str,
                                                            args: list[str]) -> None:
    run = cli("put", "-", f"{root}/x", *args, meta=meta, stdin=b"x")
    one_error_line(run, "block size" if "--block-size" in args else "replication")
    assert run.code != 2, run
    assert cli("stat", f"{root}/x", meta=meta).code == 2


@pytest.mark.parametrize("args", [["put", "only-one-arg"], ["frobnicate", "/"],
                                  ["put", "-", "/x", "-r", "two"], []],
                         ids=["missing-arg", "unknown-command", "bad-int", "no-command"])
def test_usage_errors_are_one_line(meta: str, args: list[str]) -> None:
    one_error_line(cli(*args, meta=meta, stdin=b""))


# -- 6. exit codes and one-line errors -------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["get", "{root}/nope", "out.bin"],
    ["get", "{root}/nope", "-"],
    ["cat", "{root}/nope"],
    ["ls", "{root}/nope"],
    ["ls", "--json", "{root}/nope"],
    ["stat", "{root}/nope"],
    ["stat", "--json", "{root}/nope"],
    ["rm", "{root}/nope"],
    ["rm", "-r", "{root}/nope"],
    ["mv", "{root}/nope", "{root}/other"],
], ids=lambda a: " ".join(a).replace("{root}/", ""))
def test_missing_remote_path_exits_2(meta: str, root: str, wd: Path,
                                     args: list[str]) -> None:
    ok(cli("mkdir", "-p", root, meta=meta))
    run = cli(*[a.format(root=root) for a in args], meta=meta, cwd=wd)
    one_error_line(run, "not found", "nope", code=2)
    assert run.out == b"", run
    assert list(wd.iterdir()) == [], "a failed get left a local file behind"


def test_missing_parent_of_remote_path_exits_2(meta: str, root: str) -> None:
    one_error_line(cli("cat", f"{root}/no/such/dir/f", meta=meta), "not found", code=2)


def test_put_of_missing_local_file_names_it(meta: str, root: str, wd: Path) -> None:
    run = cli("put", "no-such-file.txt", f"{root}/x", meta=meta, cwd=wd)
    one_error_line(run, "no-such-file.txt")
    assert run.code != 2, run
    assert cli("stat", f"{root}/x", meta=meta).code == 2


def test_put_of_a_local_directory_uploads_the_tree(meta: str, root: str, wd: Path) -> None:
    """(Once a one-line error; directories are uploaded recursively since issue 12, see
    test_cli_tree.py.) An empty directory arrives as an empty directory."""
    (wd / "empty").mkdir()
    run = ok(cli("put", str(wd / "empty"), f"{root}/x", meta=meta))
    assert run.text.startswith("put: 0 files"), run
    assert ok(cli("stat", "--json", f"{root}/x", meta=meta)).json()["type"] == "dir"


def test_get_into_a_missing_local_directory_is_one_line(meta: str, root: str,
                                                        wd: Path) -> None:
    ok(cli("put", "-", f"{root}/f", meta=meta, stdin=b"data"))
    run = cli("get", f"{root}/f", str(wd / "no" / "such" / "out"), meta=meta)
    one_error_line(run, "no/such/out")
    assert run.code != 2, run


def test_get_into_a_fifo_writes_through_it(meta: str, root: str, wd: Path) -> None:
    """A local path that is not a regular file (a FIFO here, /dev/null in dfs-bench) is
    written through, not replaced by a renamed temp file (which, as root, would have
    replaced /dev/null itself)."""
    data = os.urandom(3 * MiB + 5)
    ok(cli("put", "-", f"{root}/f", meta=meta, stdin=data))
    fifo = wd / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    ok(cli("get", f"{root}/f", str(fifo), meta=meta))
    reader.join(timeout=30)
    assert got == [data]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert os.listdir(wd) == ["pipe"]  # no temp file left beside it


def test_rm_of_non_empty_directory_needs_r(meta: str, root: str) -> None:
    ok(cli("put", "-", f"{root}/d/f", meta=meta, stdin=b"x"))
    run = cli("rm", f"{root}/d", meta=meta)
    one_error_line(run, "not empty")
    assert run.code != 2, run
    assert cli("cat", f"{root}/d/f", meta=meta).out == b"x"


def test_mkdir_of_existing_path(meta: str, root: str) -> None:
    ok(cli("mkdir", "-p", f"{root}/d", meta=meta))
    ok(cli("put", "-", f"{root}/file", meta=meta, stdin=b"x"))
    for path in (f"{root}/d", f"{root}/file"):
        run = cli("mkdir", path, meta=meta)
        one_error_line(run, "exists")
        assert run.code != 2, run
    assert ok(cli("mkdir", "-p", f"{root}/d", meta=meta)).out == b""
    # -p accepts an existing directory, not an existing file
    run = cli("mkdir", "-p", f"{root}/file", meta=meta)
    one_error_line(run)
    assert cli("cat", f"{root}/file", meta=meta).out == b"x"


@pytest.mark.parametrize("args", [["cat", "{root}"], ["get", "{root}", "-"],
                                  ["put", "-", "{root}/file/below"]],
                         ids=["cat-dir", "get-dir", "put-below-file"])
def test_wrong_kind_of_path_is_one_line_not_2(meta: str, root: str,
                                              args: list[str]) -> None:
    ok(cli("put", "-", f"{root}/file", meta=meta, stdin=b"x"))
    run = cli(*[a.format(root=root) for a in args], meta=meta, stdin=b"y")
    one_error_line(run, "directory")
    assert run.code != 2, run


def test_put_with_one_chunkserver_down_warns_under_replicated(cluster: Cluster,
                                                             wd: Path) -> None:
    meta = cluster.meta_addr
    victim, survivor = cluster.chunkservers
    data = data_of(2 * MiB + 3, 8)
    (wd / "f.bin").write_bytes(data)
    cluster.kill(victim.name)

    # Right after the SIGKILL meta still thinks it is live; the put must work around it.
    for attempt in ("before meta notices", "after meta marks it dead"):
        if attempt == "after meta marks it dead":
            wait_cli_state(meta, victim.addr, "dead")
        path = f"/u/{attempt.replace(' ', '_')}.bin"
        run = cli("put", "f.bin", path, meta=meta, cwd=wd, timeout=60)
        assert run.code == 0, run
        assert run.out == b"", run
        assert "Traceback" not in run.err, run
        lines = run.err.splitlines()
        assert len(lines) == 1 and "under-replicated" in lines[0], run
        assert "warning" in lines[0] and ERROR_PREFIX not in lines[0], run
        st = cli("stat", "--json", path, meta=meta).json()
        assert st["replication"] == 2
        assert [b["replicas"] for b in st["blocks"]] == [[survivor.addr]], st
        assert ok(cli("cat", path, meta=meta)).out == data

    st = cli("status", "--json", meta=meta).json()
    states = {cs["addr"]: cs for cs in st["chunkservers"]}
    assert states[victim.addr]["state"] == "dead", st
    assert states[victim.addr]["last_heartbeat_s"] >= 2, st
    assert states[survivor.addr]["state"] == "live", st
    assert CHUNKSERVER_KEYS <= states[victim.addr].keys()
    text = ok(cli("status", meta=meta)).text
    assert re.search(rf"{re.escape(victim.addr)}\s+dead\b", text) and "1/2" in text, text


def test_put_with_no_live_chunkserver_fails_fast_with_unavailable(cluster: Cluster,
                                                                  wd: Path) -> None:
    meta = cluster.meta_addr
    data = data_of(MiB + 1, 9)
    (wd / "f.bin").write_bytes(data)
    for d in cluster.chunkservers:
        cluster.kill(d.name)

    run = cli("put", "f.bin", "/x/early.bin", meta=meta, cwd=wd, timeout=60)
    one_error_line(run, "unavailable")
    assert run.seconds < 10, run

    for d in cluster.chunkservers:
        wait_cli_state(meta, d.addr, "dead")
    for src, stdin in (("f.bin", None), ("-", data)):
        run = cli("put", src, "/x/late.bin", meta=meta, cwd=wd, stdin=stdin, timeout=60)
        one_error_line(run, "unavailable")
        assert run.code != 2, run
        assert run.seconds < 10, run
    assert cli("stat", "/x/late.bin", meta=meta).code == 2
    assert cli("stat", "/x/early.bin", meta=meta).code == 2


# -- 7. namespace commands -------------------------------------------------------------------

def test_mv_file_and_directory(meta: str, root: str) -> None:
    ok(cli("put", "-", f"{root}/a.txt", meta=meta, stdin=b"A"))
    ok(cli("mkdir", f"{root}/d", meta=meta))

    ok(cli("mv", f"{root}/a.txt", f"{root}/b.txt", meta=meta))
    assert cli("stat", f"{root}/a.txt", meta=meta).code == 2
    assert ok(cli("cat", f"{root}/b.txt", meta=meta)).out == b"A"

    ok(cli("mv", f"{root}/b.txt", f"{root}/d", meta=meta))  # into an existing directory
    assert ok(cli("cat", f"{root}/d/b.txt", meta=meta)).out == b"A"
    assert cli("stat", f"{root}/b.txt", meta=meta).code == 2

    ok(cli("mv", f"{root}/d", f"{root}/e", meta=meta))  # rename a directory with contents
    assert ok(cli("cat", f"{root}/e/b.txt", meta=meta)).out == b"A"
    assert cli("stat", f"{root}/d", meta=meta).code == 2
    assert cli("ls", f"{root}/d", meta=meta).code == 2

    assert sorted(ok(cli("ls", root, meta=meta)).text.splitlines()) == ["e/"]


def test_rm_file_and_rm_r_tree(meta: str, root: str) -> None:
    for p in ("t/a", "t/b/c", "t/b/d/e", "keep"):
        ok(cli("put", "-", f"{root}/{p}", meta=meta, stdin=p.encode()))
    ok(cli("rm", f"{root}/keep", meta=meta))
    assert cli("stat", f"{root}/keep", meta=meta).code == 2
    ok(cli("rm", "-r", f"{root}/t", meta=meta))
    for p in ("t", "t/a", "t/b", "t/b/d/e"):
        one_error_line(cli("stat", f"{root}/{p}", meta=meta), "not found", code=2)
    assert ok(cli("ls", root, meta=meta)).out == b""


def test_mkdir_p_deep(meta: str, root: str) -> None:
    deep = f"{root}/a/b/c/d/e/f"
    ok(cli("mkdir", "-p", deep, meta=meta))
    path = root
    for part in "abcdef":
        path += "/" + part
        assert cli("stat", "--json", path, meta=meta).json()["type"] == "dir"
    ok(cli("mkdir", "-p", deep, meta=meta))
    one_error_line(cli("mkdir", f"{root}/x/y", meta=meta))  # no -p, missing parent


def test_put_creates_parents_and_replaces_existing_file(meta: str, root: str,
                                                        wd: Path) -> None:
    path = f"{root}/deep/er/f.bin"
    old, new = data_of(3 * MiB + 5, 10), data_of(MiB + 7, 11)
    (wd / "old").write_bytes(old)
    (wd / "new").write_bytes(new)
    ok(cli("put", "--block-size", "1MiB", "old", path, meta=meta, cwd=wd))
    assert ok(cli("cat", path, meta=meta)).out == old
    ok(cli("put", "--block-size", "1MiB", "new", path, meta=meta, cwd=wd))
    assert ok(cli("cat", path, meta=meta)).out == new
    st = cli("stat", "--json", path, meta=meta).json()
    assert st["size"] == len(new) and len(st["blocks"]) == 2, st
    ok(cli("get", path, "back", meta=meta, cwd=wd))
    assert (wd / "back").read_bytes() == new


def test_readers_see_old_or_new_never_a_mix_while_put_replaces(meta: str, root: str) -> None:
    path = f"{root}/f"
    versions = [data_of(MiB + 4 * KiB, 20), data_of(MiB + 4 * KiB, 21)]
    ok(cli("put", "-", path, "--block-size", "64KiB", meta=meta, stdin=versions[0]))

    def writer() -> list[Run]:
        return [cli("put", "-", path, "--block-size", "64KiB", meta=meta,
                    stdin=versions[(i + 1) % 2]) for i in range(6)]

    def reader() -> list[Run]:
        return [cli("cat", path, meta=meta) for _ in range(6)]

    with ThreadPoolExecutor(4) as pool:
        w = pool.submit(writer)
        readers = [pool.submit(reader) for _ in range(3)]
        puts = w.result()
        cats = [r for f in readers for r in f.result()]
    for run in puts:
        ok(run)
    for run in cats:
        assert run.code == 0, run
        assert run.out in versions, f"a reader saw a mix: {len(run.out)} bytes"
    assert ok(cli("cat", path, meta=meta)).out == versions[0]


def test_put_into_an_existing_directory_keeps_the_file_name(meta: str, root: str,
                                                            wd: Path) -> None:
    ok(cli("mkdir", "-p", f"{root}/d", meta=meta))
    (wd / "n.txt").write_bytes(b"named")
    ok(cli("put", "n.txt", f"{root}/d", meta=meta, cwd=wd))
    ok(cli("put", "n.txt", f"{root}/e/", meta=meta, cwd=wd))
    assert ok(cli("cat", f"{root}/d/n.txt", meta=meta)).out == b"named"
    assert ok(cli("cat", f"{root}/e/n.txt", meta=meta)).out == b"named"


# -- 8. quiet when not on a terminal; a bar when on one ---------------------------------------

def test_put_and_get_print_nothing_when_not_a_tty(meta: str, root: str,
                                                  wd: Path) -> None:
    data = data_of(5 * MiB, 12)
    (wd / "in.bin").write_bytes(data)
    for args in (["put", "in.bin", f"{root}/f"], ["get", f"{root}/f", "out.bin"],
                 ["put", "-", f"{root}/g"]):
        run = cli(*args, meta=meta, cwd=wd, stdin=data if "-" in args else None)
        assert run.code == 0 and run.out == b"" and run.err == "", run
    assert (wd / "out.bin").read_bytes() == data


def run_with_tty_stderr(args: list[str], cwd: Path) -> tuple[int, bytes, bytes]:
    """Run dfs-cli with stderr on a pseudo-terminal (80x24); returns (code, stdout, tty)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once every slave end is closed
                return
            if not data:
                return
            chunks.append(data)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        proc = subprocess.run(CLI + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=slave, cwd=cwd, env=clean_env(), timeout=60)
    finally:
        os.close(slave)
        t.join(5)
        os.close(master)
    return proc.returncode, proc.stdout, b"".join(chunks)


def test_put_and_get_show_a_progress_bar_on_a_terminal(meta: str, root: str,
                                                       wd: Path) -> None:
    data = data_of(3 * MiB, 13)
    (wd / "in.bin").write_bytes(data)
    code, out, tty = run_with_tty_stderr(["--meta", meta, "put", "in.bin", f"{root}/f"],
                                         wd)
    assert code == 0 and out == b"", (code, out, tty)
    assert b"%|" in tty or b"B/s" in tty, tty
    code, out, tty = run_with_tty_stderr(["--meta", meta, "get", f"{root}/f", "out.bin"],
                                         wd)
    assert code == 0 and out == b"", (code, out, tty)
    assert b"%|" in tty or b"B/s" in tty, tty
    assert (wd / "out.bin").read_bytes() == data


# -- 9. dfs-demo -----------------------------------------------------------------------------

@pytest.mark.timeout(150)
def test_dfs_demo_exits_0_and_ends_with_ok(wd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dfs.demo"], stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=wd, env=clean_env(), timeout=120)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, (proc.returncode, out, err)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines and "OK" in lines[-1], out
    assert "Traceback" not in out + err, err
    assert list(wd.iterdir()) == [], "dfs-demo left files in the current directory"


@pytest.mark.timeout(150)
def test_dfs_demo_ha_survives_the_active_meta_and_ends_with_ok(wd: Path) -> None:
    """`dfs-demo --ha`: etcd and two metas; the file is read back after the active meta is
    SIGKILLed and the standby has taken over (and says how long that took)."""
    proc = subprocess.run([sys.executable, "-m", "dfs.demo", "--ha"], stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=wd, env=clean_env(), timeout=120)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, (proc.returncode, out, err)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines and "OK" in lines[-1], out
    assert "(SIGKILL)" in out and re.search(r"took over \d+\.\d\d s after the SIGKILL", out), out
    assert out.count("sha256 downloaded") == 2, out
    assert "Traceback" not in out + err, err
    assert list(wd.iterdir()) == [], "dfs-demo left files in the current directory"



# -- fsck -------------------------------------------------------------------------------------

FSCK_KEYS = {"files", "blocks", "healthy", "under_replicated", "missing", "corrupt", "problems"}


def test_fsck_reports_health_and_exits_by_it(cluster: Cluster) -> None:
    meta = cluster.meta_addr
    ok(cli("put", "-", "/f/a.bin", "--block-size", "64KiB", meta=meta,
           stdin=data_of(200 * KiB, 21)))
    ok(cli("put", "-", "/f/sub/b.bin", meta=meta, stdin=b"small"))
    ok(cli("put", "-", "/g.bin", "-r", "1", meta=meta, stdin=b"one copy"))
    healthy = cli("fsck", "--json", "/f", meta=meta).json()
    assert FSCK_KEYS <= set(healthy)
    assert (healthy["files"], healthy["blocks"], healthy["healthy"]) == (2, 5, 5)
    assert healthy["problems"] == []
    plain = cli("fsck", meta=meta)
    assert plain.code == 0 and "HEALTHY" in plain.text, plain

    g_holder = cli("stat", "--json", "/g.bin", meta=meta).json()["blocks"][0]["replicas"][0]
    other = next(d for d in cluster.chunkservers if d.addr != g_holder)
    cluster.kill(cluster.by_addr(g_holder).name)
    cluster.wait_state(cluster.by_addr(g_holder).name, "dead", timeout=10)
    run = cli("fsck", "--json", meta=meta)
    assert run.code == 1, run
    report = json.loads(run.out)
    assert report["files"] == 3 and report["blocks"] == 6
    assert report["missing"] == 1 and report["under_replicated"] == 5, report
    states = {(p["path"], p["state"]) for p in report["problems"]}
    assert ("/g.bin", "missing") in states and ("/f/a.bin", "under_replicated") in states
    for p in report["problems"]:
        assert isinstance(p["block"], str) and p["replicas"] in ([], [other.addr]), p
    assert cli("fsck", "/nope", meta=meta).code == 2
