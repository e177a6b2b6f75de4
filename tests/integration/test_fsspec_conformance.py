"""fsspec's own conformance suite (fsspec.tests.abstract: copy, get, put, open, pipe) run
against a real cluster through DFSFileSystem. Every test of it runs; none is excluded."""

from __future__ import annotations

import posixpath
import uuid
from typing import Any, Callable, Iterator

import fsspec.tests.abstract as abstract
import pytest

from dfs.fsspec import DFSFileSystem


class DFSFixtures(abstract.AbstractFixtures):
    @pytest.fixture(scope="class")
    def fs(self, shared_cluster: Any) -> Iterator[DFSFileSystem]:
        fs = DFSFileSystem(shared_cluster.meta_addr, skip_instance_cache=True)
        yield fs
        fs.close()

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def fs_path(self, fs: DFSFileSystem) -> Iterator[str]:
        path = f"/conformance-{uuid.uuid4().hex[:12]}"
        fs.mkdir(path)
        yield path
        fs.rm(path, recursive=True)


class TestDFSCopy(abstract.AbstractCopyTests, DFSFixtures):
    pass


class TestDFSGet(abstract.AbstractGetTests, DFSFixtures):
    pass


class TestDFSPut(abstract.AbstractPutTests, DFSFixtures):
    pass


class TestDFSOpen(abstract.AbstractOpenTests, DFSFixtures):
    pass


class TestDFSPipe(abstract.AbstractPipeTests, DFSFixtures):
    pass
