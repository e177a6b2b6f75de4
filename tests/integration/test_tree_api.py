"""The Python API for many files (dfs.Client.put_tree/get_tree/sync/du/glob) has the CLI's
semantics: the CLI is a thin layer over it."""

from __future__ import annotations

import os
from pathlib import Path

from cluster import Cluster


def test_put_tree_get_tree_and_sync_from_python(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.client()
    src = tmp_path / "src"
    (src / "x" / "y").mkdir(parents=True)
    for i in range(30):
        (src / "x" / ("y" if i % 2 else "") / f"f{i}").write_bytes(os.urandom(i * 1000))
    os.symlink("/proc/self/mem", src / "io-error")
    r = client.put_tree(str(src), "/t", parallel=4, preserve=True)
    assert (r.files, r.bytes) == (30, sum(i * 1000 for i in range(30)))
    assert [p for p, _ in r.failed] == [str(src / "io-error")] and not r.ok
    assert client.stat("/t/x/f0")["mtime"] == (src / "x" / "f0").stat().st_mtime
    os.unlink(src / "io-error")
    r = client.get_tree("/t", str(tmp_path / "down"))
    assert r.ok and r.files == 30
    assert (tmp_path / "down" / "x" / "y" / "f29").read_bytes() == \
        (src / "x" / "y" / "f29").read_bytes()
    # put_tree kept the mtimes: sync finds nothing to do.
    r = client.sync(str(src), "/t")
    assert (r.files, r.unchanged, r.ok) == (0, 30, True)
    assert [e["path"] for e in client.glob("/t/x/f1*")] == \
        ["/t/x/f10", "/t/x/f12", "/t/x/f14", "/t/x/f16", "/t/x/f18"]
    assert client.du("/t")[0]["files"] == 30
    assert client.cp("/t", "/t2", recursive=True) == "/t2"
    total = sum(i * 1000 for i in range(30))
    assert client.du("/")[0]["size"] == 2 * total  # two trees of files ...
    assert client.du("/")[0]["replicated"] == 2 * total  # ... stored once, on 2 replicas
