"""The durable-file helpers, and meta's cluster id made with them: a file that a crash could
lose (its bytes or its name) is never reported as made."""

from __future__ import annotations

import os

import pytest

from dfs import daemon, fsutil


@pytest.fixture
def synced(monkeypatch):
    """Record every fsync: of a file or of a directory, and its path."""
    seen: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(("dir" if os.path.isdir(path) else "file", path))
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    return seen


def test_atomic_write_syncs_the_bytes_before_the_rename_and_the_directory_after(tmp_path,
                                                                                synced):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    fsutil.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert not (tmp_path / "f.tmp").exists()
    assert synced == [("file", str(tmp_path / "f.tmp")), ("dir", str(tmp_path))]


def test_the_cluster_id_is_made_durably_once_and_then_kept(tmp_path, synced):
    cid = daemon.cluster_id(str(tmp_path))
    assert len(cid) == 32 and (tmp_path / "cluster.id").read_text() == cid + "\n"
    assert ("dir", str(tmp_path)) in synced, "a crash could lose the new cluster.id"
    synced.clear()
    assert daemon.cluster_id(str(tmp_path)) == cid
    assert synced == [], "an existing id is read, not rewritten"


def test_an_unwritable_data_dir_is_one_line(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file-not-dir"
        target.write_text("")
        path = str(target)  # even root cannot make a file inside a regular file
    else:
        tmp_path.chmod(0o500)
        path = str(tmp_path)
    with pytest.raises(daemon.StartupError, match="cannot use .*cluster.id"):
        daemon.cluster_id(path)
