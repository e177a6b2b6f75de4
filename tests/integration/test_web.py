"""The HTTP side door of real dfsd processes: health probes, /metrics against `status`
before and after a chunkserver dies and is repaired, /api/status and /api/fsck, file
downloads with and without Range while a replica's server is dead, Basic auth with a secret,
and paths that try to leave the namespace."""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from cluster import Cluster, data_of
from web_probe import get, scrape, url

import dfs
from dfs.local_cluster import HOST, free_ports, wait_until

MiB = 1 << 20


def test_health_and_readiness(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(0, http=True)
    assert get(url(c, "/healthz"))[0] == 200
    status, _, body = get(url(c, "/readyz"))
    assert status == 503 and b"not ready" in body  # no chunkserver yet
    c.add_chunkserver()
    wait_until(lambda: get(url(c, "/readyz"))[0] == 200, 15, "meta ready")
    status, _, body = get(url(c, "/healthz", "chunk0"))
    assert (status, body) == (200, b"ok\n")


def test_metrics_tell_the_truth_through_a_death_and_a_repair(
        make_cluster: Callable[..., Cluster]) -> None:
    # A fixed --capacity: by default it follows the disk's free space, which other tests
    # writing at the same time move between the scrape and the status compared below.
    c = make_cluster(3, http=True, chunk_args=["--capacity", "64GiB"])
    client = c.client()
    for i in range(6):
        client.put_bytes(data_of(300_000, seed=i), f"/m/f{i}", replication=2)
    client.mkdir("/m/empty/deeper", parents=True)
    status = client.status()
    m = scrape(url(c, "/metrics"))
    assert m["dfs_files"] == status["files"] == 6
    assert m["dfs_blocks"] == status["blocks"] == 6
    assert m["dfs_directories"] == 4  # /, /m, /m/empty, /m/empty/deeper
    assert m['dfs_chunkservers{state="live"}'] == 3 and m['dfs_chunkservers{state="dead"}'] == 0
    assert m["dfs_capacity_bytes"] == sum(s["capacity"] for s in status["chunkservers"])
    assert m["dfs_used_bytes"] == sum(s["used"] for s in status["chunkservers"])
    assert m["dfs_blocks_under_replicated"] == m["dfs_blocks_missing"] == 0
    assert m["dfs_safe_mode"] == 0
    assert m['dfs_requests_total{op="commit",result="ok"}'] == 6
    assert m['dfs_request_duration_seconds_count{op="commit"}'] == 6
    with pytest.raises(dfs.NotFound):
        client.stat("/m/none")
    assert scrape(url(c, "/metrics"))['dfs_requests_total{op="stat",result="not_found"}'] >= 1

    victim = max(c.chunkservers, key=lambda d: scrape(url(c, "/metrics", d.name))
                 ["dfs_chunk_blocks"])
    held = scrape(url(c, "/metrics", victim.name))["dfs_chunk_blocks"]
    assert held > 0
    c.kill(victim.name)
    wait_until(lambda: scrape(url(c, "/metrics"))['dfs_chunkservers{state="dead"}'] == 1,
               15, "the dead chunkserver counted")
    m = scrape(url(c, "/metrics"))
    fsck = client.fsck("/")
    assert m["dfs_blocks_under_replicated"] + m["dfs_blocks_missing"] > 0 or \
        fsck["under_replicated"] == 0  # repair may already be done: then fsck agrees
    wait_until(lambda: scrape(url(c, "/metrics"))["dfs_blocks_under_replicated"] == 0,
               30, "repaired")
    assert client.fsck("/")["under_replicated"] == 0
    live = [d for d in c.chunkservers if d is not victim]
    assert sum(scrape(url(c, "/metrics", d.name))["dfs_chunk_blocks"] for d in live) == 12


def test_api_status_and_fsck_are_the_cli_objects(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True)
    client = c.client()
    client.put_bytes(b"x" * 1000, "/a/b")
    status, headers, body = get(url(c, "/api/status"))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    web, cli = json.loads(body), client.status()
    for key in ("meta", "cluster_id", "files", "blocks", "safe_mode", "read_only"):
        assert web[key] == cli[key], key
    assert [(s["addr"], s["state"]) for s in web["chunkservers"]] == \
        [(s["addr"], s["state"]) for s in cli["chunkservers"]]
    assert json.loads(get(url(c, "/api/fsck?path=/a"))[2]) == client.fsck("/a")
    assert get(url(c, "/api/fsck?path=/nope"))[0] == 404


def test_download_whole_and_ranges_with_a_replica_dead(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True)
    data = data_of(5 * MiB + 12345, seed=11)
    c.client().put_bytes(data, "/dl/file name.bin", block_size=MiB)  # 6 blocks, R=2
    c.kill("chunk1")  # every block still has its other replica
    target = url(c, "/files/dl/file%20name.bin")
    status, headers, body = get(target)
    assert status == 200 and body == data
    assert headers["Content-Length"] == str(len(data)) and headers["Accept-Ranges"] == "bytes"
    assert "file%20name.bin" in headers["Content-Disposition"]
    for spec, want, first in [("bytes=0-99", data[:100], 0),
                              (f"bytes={MiB - 10}-{MiB + 9}", data[MiB - 10:MiB + 10], MiB - 10),
                              (f"bytes={3 * MiB}-", data[3 * MiB:], 3 * MiB),
                              ("bytes=-500", data[-500:], len(data) - 500)]:
        status, headers, body = get(target, {"Range": spec})
        assert status == 206 and body == want, spec
        assert headers["Content-Range"] == f"bytes {first}-{first + len(want) - 1}/{len(data)}"
    status, headers, _ = get(target, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    # curl -r, as a person resuming a download would
    out = subprocess.run(["curl", "-sf", "-r", "1000-1999", target], capture_output=True)
    if out.returncode != 127:  # curl may be absent: urllib above made the same request
        assert out.stdout == data[1000:2000]


def test_paths_never_leave_the_namespace(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True)
    c.client().put_bytes(b"<b>hi</b>", "/<script>alert(1)</script>.txt")
    for hostile in ["/files/..%2F..%2F..%2Fetc%2Fpasswd", "/files/../../etc/passwd",
                    "/files/%2Fetc%2Fpasswd", "/files/etc/passwd", "/files/proc/self/environ",
                    "/files/"]:
        status, _, body = get(url(c, hostile))
        assert status in (400, 404), (hostile, status)
        assert b"root:" not in body
    status, headers, body = get(url(c, "/files/%3Cscript%3Ealert(1)%3C%2Fscript%3E.txt"))
    assert status == 200 and body == b"<b>hi</b>"
    assert "<" not in headers["Content-Disposition"]


def test_basic_auth_with_a_secret(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret = secrets.token_hex(20).encode()
    secret_file.write_bytes(secret)
    flag = ["--secret-file", str(secret_file)]
    c = make_cluster(1, meta_args=flag, chunk_args=flag, http=True,
                     client_options={"secret_file": str(secret_file)})
    c.client().put_bytes(b"secret data", "/s")

    def auth(password: bytes) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(b"ops:" + password).decode()}
    for path in ["/api/status", "/files/s", "/api/fsck"]:
        status, headers, body = get(url(c, path))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        assert b"secret data" not in body
        assert get(url(c, path), auth(b"wrong"))[0] == 401
        assert get(url(c, path), {"Authorization": "Bearer x"})[0] == 401
    assert get(url(c, "/files/s"), auth(secret))[2] == b"secret data"
    # /readyz may still say 503 (safe mode) just after start-up: that is an answer too, not
    # a 401; it turns 200 without credentials once meta is ready.
    assert get(url(c, "/readyz"))[0] in (200, 503)
    wait_until(lambda: get(url(c, "/readyz"))[0] == 200, 20, "meta ready")
    for path in ["/metrics", "/healthz", "/readyz"]:  # for monitoring, without credentials
        assert get(url(c, path))[0] == 200, path
    assert get(url(c, "/metrics", "chunk0"))[0] == 200


def test_http_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        (port,) = free_ports(1)
        proc = subprocess.run(
            [sys.executable, "-m", "dfs.daemon", "--role", "meta", "--host", HOST, "--port",
             str(port), "--http-port", str(taken.getsockname()[1]), "--data-dir",
             str(tmp_path / "m")], capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "(HTTP)" in lines[0] and "address already in use" in lines[0]


def test_browse_pages_a_big_directory_and_escapes_names(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(1, http=True)
    client = c.client()
    for i in range(2500):
        client.mkdir(f"/big/d{i:05}", parents=True)
    client.put_bytes(b"x", "/big/<b onmouseover=alert(1)>.txt")
    target, names, pages = "/browse?path=/big", [], 0
    while target:
        status, _, body = get(url(c, target))
        page = body.decode()
        assert status == 200 and page.count("<tr>") <= 1 + 1000  # header + at most a page
        names += re.findall(r'>([^<>]*?)/?</a></td><td>', page)
        nxt = re.search(r'<a href="([^"]+)">Next page</a>', page)
        target = html.unescape(nxt.group(1)) if nxt else ""
        pages += 1
        if pages == 1:
            assert "&lt;b onmouseover=alert(1)&gt;.txt" in page
            assert "<b onmouseover" not in page  # a name is text, never markup
    assert pages == 3 and len(names) == len(set(names)) == 2501
    assert get(url(c, "/browse?path=/nope"))[0] == 404


def test_https_with_the_tls_files(make_cluster: Callable[..., Cluster]) -> None:
    certs = Path(__file__).resolve().parents[1] / "certs"
    files = {"tls_cert": str(certs / "node.pem"), "tls_key": str(certs / "node.key"),
             "tls_ca": str(certs / "ca.pem")}
    flags = [a for k, v in files.items() for a in (f"--{k.replace('_', '-')}", v)]
    c = make_cluster(1, meta_args=flags, chunk_args=flags, http=True, client_options=files)
    c.client().put_bytes(b"over https", "/t")
    trusting = ssl.create_default_context(cafile=files["tls_ca"])
    trusting.check_hostname = False  # the test certificate names 127.0.0.1 and localhost
    for daemon, path, want in [("meta", "/files/t", b"over https"),
                               ("chunk0", "/healthz", b"ok\n")]:
        target = f"https://{HOST}:{c[daemon].http_port}{path}"
        with urllib.request.urlopen(target, context=trusting, timeout=20) as r:
            assert r.read() == want  # no client certificate needed: a browser has none
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: refused
            urllib.request.urlopen(target.replace("https:", "http:"), timeout=20).read()


def test_block_health_gauges_equal_fsck_when_nothing_can_repair(
        make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(2, http=True)
    client = c.client()
    for i in range(4):
        client.put_bytes(data_of(200_000, seed=i), f"/h/f{i}", replication=2)
    client.put_bytes(b"one copy", "/h/single", replication=1)
    single = client.stat("/h/single")["blocks"][0]["replicas"][0]
    victim = c.by_addr(single)  # its only replica dies with it: missing
    c.kill(victim.name)  # and every 2-replica block is left with one: under-replicated
    wait_until(lambda: scrape(url(c, "/metrics"))['dfs_chunkservers{state="dead"}'] == 1,
               15, "the dead chunkserver counted")
    fsck = client.fsck("/")
    m = scrape(url(c, "/metrics"))
    assert (fsck["under_replicated"], fsck["missing"]) == (4, 1)
    assert (m["dfs_blocks_under_replicated"], m["dfs_blocks_missing"]) == (4, 1)
