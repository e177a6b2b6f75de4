"""Fixtures for the integration suite: real dfsd processes on free loopback ports.

`cluster`            a fresh meta + 2 chunkservers for one test
`make_cluster(...)`  a factory for other shapes (more chunkservers, extra flags); every cluster
                     it makes is stopped at teardown
On a failing test, the tail of every daemon's log is attached to the report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cluster import Cluster  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("timeout") is None:
            # Tight per-test limit: a hang shows up as a failure, not as a stalled suite.
            item.add_marker(pytest.mark.timeout(90))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    clusters: list[Cluster] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Cluster):
            clusters.append(value)
        elif isinstance(value, ClusterFactory):
            clusters.extend(value.clusters)
    for i, c in enumerate(dict.fromkeys(clusters)):
        rep.sections.append((f"dfsd logs (cluster {i}, {c.base})", c.log_tail()))


class ClusterFactory:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.clusters: list[Cluster] = []

    def __call__(self, chunkservers: int = 2, *, start: bool = True,
                 **kwargs: Any) -> Cluster:
        c = Cluster(self.base / f"c{len(self.clusters)}", chunkservers, **kwargs)
        self.clusters.append(c)
        return c.start() if start else c

    def stop_all(self) -> None:
        for c in self.clusters:
            c.stop_all()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    factory = ClusterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Cluster:
    return make_cluster(2)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for a whole module of tests that never kill anything."""
    c = Cluster(tmp_path_factory.mktemp("shared"), 2)
    try:
        yield c.start()
    finally:
        c.stop_all()
