"""dfs:// URL forms (INTERFACE.md, fsspec section): pure functions, no cluster."""

from __future__ import annotations

import pickle

import fsspec
import pytest

from dfs.fsspec import DFSFileSystem
from dfs.fsspec.urls import join_url, normalise, split_url


@pytest.mark.parametrize("url, meta, path", [
    ("dfs://h1:5000/a/b.csv", "h1:5000", "/a/b.csv"),
    ("dfs://h1:5000/", "h1:5000", "/"),
    ("dfs://h1:5000", "h1:5000", "/"),
    ("dfs://[::1]:5000/x", "[::1]:5000", "/x"),
    ("dfs:///a/b/", "", "/a/b"),
    ("dfs:/a//b", "", "/a/b"),
    ("/a/b", "", "/a/b"),
    ("a/b", "", "/a/b"),
    ("/", "", "/"),
    ("", "", "/"),
])
def test_split_url(url: str, meta: str, path: str) -> None:
    assert split_url(url) == (meta, path)
    assert DFSFileSystem._strip_protocol(url) == path
    assert DFSFileSystem._get_kwargs_from_urls(url) == ({"meta": meta} if meta else {})


def test_every_form_round_trips_through_unstrip() -> None:
    fs = DFSFileSystem("h1:5000", skip_instance_cache=True)
    for path in ["/", "/a", "/a/b c/d.parquet", "/x=1/y=2/part-0.parquet"]:
        url = fs.unstrip_protocol(path)
        assert url == join_url("h1:5000", path) == f"dfs://h1:5000{path}"
        assert fs._strip_protocol(url) == path
        assert DFSFileSystem._get_kwargs_from_urls(url) == {"meta": "h1:5000"}
        assert fs.unstrip_protocol(url) == url  # already full: unchanged
    assert fs.unstrip_protocol("dfs:///a/b") == "dfs://h1:5000/a/b"
    assert normalise("//a///b//") == "/a/b"


def test_url_picks_the_meta_and_dfs_meta_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    fs, path = fsspec.core.url_to_fs("dfs://10.1.2.3:5123/t/x.parquet")
    assert isinstance(fs, DFSFileSystem) and fs.meta == "10.1.2.3:5123"
    assert path == "/t/x.parquet"
    monkeypatch.setenv("DFS_META", "10.9.9.9:5999")
    fs, path = fsspec.core.url_to_fs("dfs:///t/x.parquet", skip_instance_cache=True)
    assert fs.meta == "10.9.9.9:5999" and path == "/t/x.parquet"
    fs, _ = fsspec.core.url_to_fs("dfs:///t", meta="10.1.1.1:5001")
    assert fs.meta == "10.1.1.1:5001"


def test_storage_options_reach_the_client_and_the_pickle(tmp_path: object,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFS_SECRET_FILE", raising=False)
    monkeypatch.setenv("DFS_META", "10.9.9.9:5999")
    fs = fsspec.filesystem("dfs", replication=3, block_size=1 << 20, skip_instance_cache=True)
    assert (fs.meta, fs.replication, fs.dfs_block_size) == ("10.9.9.9:5999", 3, 1 << 20)
    blob = pickle.dumps(fs)
    monkeypatch.setenv("DFS_META", "10.0.0.1:1")  # a worker's environment differs
    copy = pickle.loads(blob)
    assert (copy.meta, copy.replication, copy.dfs_block_size) == ("10.9.9.9:5999", 3, 1 << 20)
    assert not copy._clients  # no connection travels
