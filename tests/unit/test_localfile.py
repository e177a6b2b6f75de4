"""dfs/client/localfile.py: large downloads written around the page cache."""

from __future__ import annotations

import os

import pytest

from dfs.client.localfile import STAGE, DirectFile


def test_direct_file_writes_exactly_the_bytes_given(tmp_path) -> None:
    """The O_DIRECT download writer: odd-sized pieces, a tail that is not page-aligned."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = os.urandom(2 * STAGE + 12345)
    try:
        try:
            w = DirectFile(fd)
        except OSError:
            pytest.skip("this filesystem has no O_DIRECT")  # tmpfs; the suite's tmp is ext4
        view = memoryview(data)
        for size in (1, 4095, 4097, STAGE, 3 * 4096, 777):
            w.write(view[:size])
            view = view[size:]
        w.write(view)
        w.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == data
