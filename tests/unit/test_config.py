"""dfs.config parsers: sizes, durations, addresses (INTERFACE.md spells their accepted forms)."""

from __future__ import annotations

import pytest

from dfs import config
from dfs.config import format_addr, parse_addr, parse_duration, parse_size

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize("text,value", [
    ("4096", 4096),
    ("0", 0),
    ("64KiB", 64 * KiB),
    ("4MiB", 4 * MiB),
    ("1GiB", GiB),
    ("2TiB", 2 * 1024 * GiB),
    ("4M", 4 * MiB),
    ("1G", GiB),
    ("64K", 64 * KiB),
    ("64k", 64 * KiB),
    ("64kib", 64 * KiB),
    ("64KB", 64 * KiB),  # K/M/G are binary, with or without the i
    ("64 KiB", 64 * KiB),
    ("  4MiB  ", 4 * MiB),
    ("1.5KiB", 1536),
    ("0.5MiB", 512 * KiB),
    ("10B", 10),
    (4096, 4096),
    ("9007199254740993", 9007199254740993),  # past 2**53: must stay exact
])
def test_parse_size(text, value: int) -> None:
    assert parse_size(text) == value
    assert type(parse_size(text)) is int


@pytest.mark.parametrize("text", [
    "", " ", "abc", "-1", "-4KiB", "4 4", "4XiB", "KiB", "1.5", "0.3KiB", "4MiBs", "1e6",
    "4 MiB B", "0x10",
])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text,seconds", [
    ("500ms", 0.5),
    ("3s", 3.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("7d", 604800.0),
    ("3", 3.0),
    ("0", 0.0),
    ("1.5s", 1.5),
    ("2.5", 2.5),
    ("3S", 3.0),
    (" 3s ", 3.0),
    ("250 ms", 0.25),
    (3, 3.0),
    (0.25, 0.25),
])
def test_parse_duration(text, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize("text", ["", "s", "ms", "-1s", "3w", "3 s s", "1e3", "3sec", "abc"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text,addr", [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)),
    ("localhost:1", ("localhost", 1)),
    ("host:65535", ("host", 65535)),
    ("host", ("host", config.DEFAULT_META_PORT)),
    ("http://127.0.0.1:5000", ("127.0.0.1", 5000)),
    ("http://127.0.0.1:5000/", ("127.0.0.1", 5000)),
    ("HTTP://h:7", ("h", 7)),
    ("https://h:7", ("h", 7)),
    ("dfs://h:7", ("h", 7)),
    (" h:7 ", ("h", 7)),
    ("[::1]:6001", ("::1", 6001)),
    ("[::1]", ("::1", config.DEFAULT_META_PORT)),
    ("::1", ("::1", config.DEFAULT_META_PORT)),
])
def test_parse_addr(text: str, addr: tuple[str, int]) -> None:
    assert parse_addr(text) == addr


def test_parse_addr_default_port() -> None:
    assert parse_addr("h", default_port=6001) == ("h", 6001)


@pytest.mark.parametrize("text", [
    "", "   ", "http://", ":5000", "h:", "h:abc", "h:0", "h:65536", "h:-1", "h:5000x",
    "http://h:5000/path", "[]:5000", "[::1]:abc", "[::1]:0",
    "[::1]junk",  # text after the bracket that is not :PORT must not be ignored
])
def test_parse_addr_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(text)


@pytest.mark.parametrize("host,port,text", [
    ("127.0.0.1", 5000, "127.0.0.1:5000"),
    ("::1", 6001, "[::1]:6001"),
    ("h", 1, "h:1"),
])
def test_format_addr_round_trips(host: str, port: int, text: str) -> None:
    assert format_addr(host, port) == text
    assert parse_addr(text) == (host, port)


def test_limits_are_consistent() -> None:
    assert config.PACKET_SIZE % config.CHECKSUM_UNIT == 0
    assert config.READ_SIZE % config.CHECKSUM_UNIT == 0
    assert config.MIN_BLOCK_SIZE % config.CHECKSUM_UNIT == 0
    assert config.DEFAULT_BLOCK_SIZE % config.CHECKSUM_UNIT == 0
    assert config.PACKET_SIZE <= config.MAX_PAYLOAD and config.READ_SIZE <= config.MAX_PAYLOAD
    assert config.MAX_HEADER == 1 * MiB
    assert config.MIN_BLOCK_SIZE <= config.DEFAULT_BLOCK_SIZE <= config.MAX_BLOCK_SIZE
