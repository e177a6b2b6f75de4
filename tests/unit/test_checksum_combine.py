"""dfs.checksum's CRC combination against crc32c.crc32c of the whole bytes: split anywhere for
crc32c_combine, at unit boundaries for combine_units, at block boundaries for combine_blocks
(any multiple of the unit), and the local file checksum of dfs.client.filechecksum."""

from __future__ import annotations

import io
import itertools
import random
import time
from pathlib import Path

import crc32c
import pytest

import dfs
from dfs import checksum
from dfs.client import filechecksum
from dfs.config import CHECKSUM_UNIT as UNIT

LENGTHS = [0, 1, 2, 3, 4, 5, 7, 100, UNIT - 1, UNIT, UNIT + 1, 2 * UNIT, 3 * UNIT - 17,
           5 * UNIT, 5 * UNIT + 1, 7 * UNIT + 12345]


def data_of(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def test_crc_of_empty_is_zero() -> None:
    assert crc32c.crc32c(b"") == 0
    assert checksum.combine_units([], 0) == 0
    assert checksum.combine_blocks([]) == 0
    assert checksum.crc_of_table(b"", 0) == 0


@pytest.mark.parametrize("n", [0, 1, 2, 9, 100, 4096, UNIT - 1, UNIT, UNIT + 1, 3 * UNIT + 7])
def test_crc32c_combine_at_any_split(n: int) -> None:
    data = data_of(n)
    whole = crc32c.crc32c(data)
    rng = random.Random(f"split-{n}")
    for k in {0, 1, n // 2, n - 1, n, *(rng.randrange(n + 1) for _ in range(10))}:
        if 0 <= k <= n:
            a, b = data[:k], data[k:]
            assert checksum.crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == whole


def test_crc32c_combine_with_empty_parts() -> None:
    c = crc32c.crc32c(b"hello")
    assert checksum.crc32c_combine(c, 0, 0) == c
    assert checksum.crc32c_combine(0, c, 5) == c


def test_crc32c_combine_chains_in_order() -> None:
    data = data_of(300_001)
    rng = random.Random(3)
    cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(20))})
    value = 0
    for lo, hi in itertools.pairwise(cuts):
        value = checksum.crc32c_combine(value, crc32c.crc32c(data[lo:hi]), hi - lo)
    assert value == crc32c.crc32c(data)


@pytest.mark.parametrize("n", LENGTHS)
def test_combine_units_is_the_crc_of_the_whole(n: int) -> None:
    data = data_of(n)
    crcs = checksum.crcs_of(data)
    last = n - (len(crcs) - 1) * UNIT if crcs else 0
    assert checksum.combine_units(crcs, last) == crc32c.crc32c(data)
    assert checksum.crc_of_table(checksum.pack_table(crcs), n) == crc32c.crc32c(data)


@pytest.mark.parametrize("last", [0, -1, UNIT + 1])
def test_combine_units_refuses_an_impossible_last_unit(last: int) -> None:
    with pytest.raises(ValueError):
        checksum.combine_units([1, 2], last)


@pytest.mark.parametrize("n,table_len", [(UNIT, 0), (UNIT, 8), (UNIT + 1, 4), (0, 4), (5, 3)])
def test_crc_of_table_refuses_a_table_of_the_wrong_length(n: int, table_len: int) -> None:
    with pytest.raises(ValueError):
        checksum.crc_of_table(bytes(table_len), n)


@pytest.mark.parametrize("block_units", [1, 2, 3, 16])
@pytest.mark.parametrize("n", [0, 1, UNIT, 5 * UNIT + 1, 17 * UNIT - 1, 33 * UNIT])
def test_combine_blocks_is_independent_of_the_block_size(block_units: int, n: int) -> None:
    data = data_of(n)
    block = block_units * UNIT
    parts = []
    for lo in range(0, n, block):
        piece = data[lo:lo + block]
        parts.append((checksum.crc_of_table(checksum.pack_table(checksum.crcs_of(piece)),
                                            len(piece)), len(piece)))
    assert checksum.combine_blocks(parts) == crc32c.crc32c(data)


def test_combine_blocks_with_pieces_of_any_length() -> None:
    data = data_of(200_000)
    cuts = [0, 1, 1, 70_000, 70_003, 131_072, 200_000]  # includes an empty piece
    parts = [(crc32c.crc32c(data[lo:hi]), hi - lo) for lo, hi in itertools.pairwise(cuts)]
    assert checksum.combine_blocks(parts) == crc32c.crc32c(data)


def test_combining_a_gib_of_units_takes_milliseconds() -> None:
    """A 1 GiB block has 16384 units; its table must combine far faster than it reads."""
    crcs = [random.Random(i).getrandbits(32) for i in range(16384)]
    checksum.combine_units(crcs[:3], UNIT)  # build the tables outside the timing
    start = time.perf_counter()
    checksum.combine_units(crcs, UNIT)
    checksum.combine_blocks([(c, UNIT) for c in crcs])
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("n", [0, 1, UNIT + 3, 4 * 1024 * 1024 + 5])
def test_local_checksum_is_the_crc32c_of_the_file(tmp_path: Path, n: int) -> None:
    data = data_of(n)
    f = tmp_path / "f"
    f.write_bytes(data)
    out = filechecksum.local_checksum(str(f))
    assert out == {"path": str(f), "algorithm": "COMPOSITE-CRC32C",
                   "checksum": f"{crc32c.crc32c(data):08x}", "size": n}


def test_local_checksum_of_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_of(UNIT * 2 + 1)

    class Stdin:
        buffer = io.BytesIO(data)
    monkeypatch.setattr("sys.stdin", Stdin)
    out = filechecksum.local_checksum("-")
    assert out["checksum"] == f"{crc32c.crc32c(data):08x}" and out["size"] == len(data)


def test_local_checksum_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(dfs.IsADirectory):
        filechecksum.local_checksum(str(tmp_path))
