"""pandas and pyarrow through dfs:// URLs on a real cluster: csv and parquet round trips, a
hive-partitioned pyarrow dataset whose partition filter opens only the matching files, and a
one-column parquet read that moves only that column's bytes from the chunkservers."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from cluster import Cluster
from fsspec.asyn import sync
from pyarrow.fs import FSSpecHandler, PyFileSystem

from dfs.fsspec import DFSFileSystem


@pytest.fixture(scope="module")
def fs(shared_cluster: Cluster) -> Iterator[DFSFileSystem]:
    fs = DFSFileSystem(shared_cluster.meta_addr, skip_instance_cache=True)
    yield fs
    fs.close()


@pytest.fixture
def base(fs: DFSFileSystem) -> Iterator[str]:
    path = f"/frames-{uuid.uuid4().hex[:10]}"
    fs.mkdir(path)
    yield path
    fs.rm(path, recursive=True)


def moved(fs: DFSFileSystem) -> int:
    async def count() -> int:
        return fs.client().bytes_read
    return int(sync(fs.loop, count))


def opened_for_reading(fs: DFSFileSystem) -> tuple[list[str], Any]:
    """Paths whose blocks the client looks up (what opening a file for reading does), and a
    function that stops recording."""
    paths: list[str] = []

    async def install() -> Any:
        client = fs.client()
        original = client.open_read

        async def recording(path: str) -> Any:
            paths.append(path)
            return await original(path)
        client.open_read = recording  # type: ignore[method-assign]
        return client
    client = sync(fs.loop, install)

    def stop() -> None:
        del client.open_read
    return paths, stop


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(rows, dtype=np.int64),
        "value": rng.standard_normal(rows),
        "name": [f"row-{i}" for i in range(rows)],
        "when": pd.date_range("2026-01-01", periods=rows, freq="min"),
    })


def test_csv_round_trip_through_a_dfs_url(shared_cluster: Cluster, fs: DFSFileSystem,
                                          base: str) -> None:
    df = frame(20_000)
    url = f"dfs://{shared_cluster.meta_addr}{base}/t.csv"
    df.to_csv(url, index=False)
    assert fs.size(f"{base}/t.csv") > 500_000
    back = pd.read_csv(url, parse_dates=["when"])
    back["when"] = back["when"].astype(df["when"].dtype)
    pd.testing.assert_frame_equal(back, df)
    chunks = pd.read_csv(url, chunksize=3000)  # a streaming reader
    assert sum(len(c) for c in chunks) == len(df)


def test_parquet_round_trip_through_a_dfs_url(shared_cluster: Cluster, fs: DFSFileSystem,
                                              base: str) -> None:
    df = frame(50_000, seed=1)
    url = f"dfs://{shared_cluster.meta_addr}{base}/t.parquet"
    df.to_parquet(url, row_group_size=10_000)
    pd.testing.assert_frame_equal(pd.read_parquet(url), df)
    pd.testing.assert_frame_equal(pd.read_parquet(url, columns=["id", "name"]),
                                  df[["id", "name"]])
    assert pq.ParquetFile(f"{base}/t.parquet", filesystem=fs).metadata.num_row_groups == 5


def test_hive_dataset_filter_opens_only_the_matching_files(fs: DFSFileSystem,
                                                           base: str) -> None:
    years = [2023, 2024, 2025]
    table = pa.table({
        "year": pa.array([years[i % 3] for i in range(30_000)], pa.int32()),
        "region": pa.array([["eu", "us"][i % 2] for i in range(30_000)]),
        "amount": pa.array(np.arange(30_000, dtype=np.float64)),
    })
    pafs = PyFileSystem(FSSpecHandler(fs))
    ds.write_dataset(table, f"{base}/sales", format="parquet", filesystem=pafs,
                     partitioning=["year", "region"], partitioning_flavor="hive")
    written = fs.find(f"{base}/sales")
    assert len(written) == 6 and all("/year=" in p and "/region=" in p for p in written)

    dataset = ds.dataset(f"{base}/sales", format="parquet", filesystem=pafs,
                         partitioning="hive")
    paths, stop = opened_for_reading(fs)
    try:
        got = dataset.to_table(filter=ds.field("year") == 2024)
    finally:
        stop()
    assert got.num_rows == 10_000 and set(got.column("year").to_pylist()) == {2024}
    assert sorted(got.column("amount").to_pylist()) == [float(i) for i in range(1, 30_000, 3)]
    assert paths and all("/year=2024/" in p for p in paths), paths
    assert len(set(paths)) == 2  # eu and us of 2024, nothing else opened


def test_reading_one_column_moves_only_that_column(fs: DFSFileSystem, base: str) -> None:
    rng = np.random.default_rng(7)
    rows = 250_000
    table = pa.table({f"c{i}": pa.array(rng.standard_normal(rows)) for i in range(10)})
    with fs.open(f"{base}/wide.parquet", "wb") as f:
        pq.write_table(table, f, row_group_size=50_000, compression="none")
    size = fs.size(f"{base}/wide.parquet")
    meta = pq.ParquetFile(f"{base}/wide.parquet", filesystem=fs).metadata
    column = sum(meta.row_group(g).column(3).total_compressed_size
                 for g in range(meta.num_row_groups))
    assert size > 10 * column * 0.9

    before = moved(fs)
    got = pq.read_table(f"{base}/wide.parquet", filesystem=fs, columns=["c3"])
    moved_bytes = moved(fs) - before
    assert got.column("c3").equals(table.column("c3"))
    # the column, the footer, and at most a 64 KiB checksum unit around each range read
    assert moved_bytes <= 1.5 * column, (moved_bytes, column, size)
    assert moved_bytes < 0.2 * size
