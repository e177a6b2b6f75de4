"""The frame codec (dfs.protocol.frame) and its buffer pool: bytes in, frames out, no I/O.

Frames are fed to `FrameReader` the way asyncio would (get_buffer / buffer_updated) in every
split: all at once, one byte at a time, at every cut point of small frames, and at random cuts.
"""

from __future__ import annotations

import ctypes
import mmap
import random
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.config import MAX_HEADER, MAX_PAYLOAD
from dfs.errors import ProtocolViolation
from dfs.protocol.buffers import BufferPool
from dfs.protocol.frame import (
    _DIRECT_PAYLOAD,
    _STAGING,
    PREFIX_SIZE,
    Frame,
    FrameReader,
    decode_header,
    encode_frame,
    encode_header,
)

KiB = 1024
MiB = 1024 * KiB


# -- helpers --------------------------------------------------------------------------------

def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def header_of_size(n: int, rid: int = 1, op: str = "pad") -> dict[str, Any]:
    """A header whose msgpack encoding is exactly n bytes (n >= 32)."""
    pad = n - len(packb({"op": op, "id": rid, "pad": ""}))
    for _ in range(4):  # the str length prefix grows with the string; converge
        h = {"op": op, "id": rid, "pad": "x" * pad}
        diff = n - len(packb(h))
        if diff == 0:
            return h
        pad += diff
    raise AssertionError(f"cannot build a header of exactly {n} bytes")


def raw_frame(body: bytes, payload: bytes = b"", hlen: int | None = None,
              plen: int | None = None) -> bytes:
    """A frame built by hand, so tests can lie in the prefix."""
    return struct.pack(">II", len(body) if hlen is None else hlen,
                       len(payload) if plen is None else plen) + body + payload


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def drip(reader: FrameReader, data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed `data` through the BufferedProtocol face in pieces of the given sizes (the last
    size repeats), exactly as an asyncio transport would."""
    view = memoryview(data)
    frames: list[Frame] = []
    i = 0
    while view:
        want = cuts[min(i, len(cuts) - 1)]
        i += 1
        while want and view:
            buf = reader.get_buffer()
            assert len(buf) > 0, "get_buffer returned no room"
            n = min(len(buf), want, len(view))
            buf[:n] = view[:n]
            reader.buffer_updated(n)
            view = view[n:]
            want -= n
        frames += reader.pop_frames()
    return frames


def split_all(n: int) -> list[int]:
    return [max(n, 1)]


def split_bytewise(n: int) -> list[int]:
    return [1]


def split_random(seed: int):
    def cuts(n: int) -> list[int]:
        rnd = random.Random(seed)
        return [rnd.choice((1, 2, 7, 8, 9, 100, 4096, 65536, 65537, 300_000))
                for _ in range(2000)]
    return cuts


def as_pairs(frames: list[Frame]) -> list[tuple[dict[str, Any], bytes]]:
    return [(f.header, bytes(f.payload)) for f in frames]


RICH_HEADER = {"op": "packet", "id": 2**40, "block": 2**63 + 5, "crcs": [0, 1, 2**32 - 1],
               "targets": ["127.0.0.1:6001", "[::1]:6002"], "last": True, "size": 0,
               "f": 1.5, "neg": -7, "b": b"\x00\xff", "n": None, "m": {"k": ["v", {"x": 1}]},
               "ü": "ünïcode"}

# (header, payload) pairs spanning every payload path: none, small (copied out of staging),
# exactly the copy limit, one byte over it (received directly into a pooled buffer), large.
SMALL_SET = [
    ({"op": "hello", "id": 1, "version": 1}, b""),
    ({"op": "p", "id": 2}, b"x"),
    (RICH_HEADER, rand_bytes(1000, 1)),
    ({"op": "p", "id": 3}, rand_bytes(_DIRECT_PAYLOAD, 2)),
    ({"op": "p", "id": 4}, rand_bytes(_DIRECT_PAYLOAD + 1, 3)),
    ({"id": 5}, b""),
]
LARGE_SET = SMALL_SET + [
    ({"op": "p", "id": 6}, rand_bytes(1 * MiB, 4)),
    ({"op": "p", "id": 7}, rand_bytes(100 * KiB, 5)),
    ({"op": "p", "id": 8}, b""),
    ({"op": "p", "id": 9}, rand_bytes(3 * MiB + 17, 6)),
    ({"op": "p", "id": 10}, b"tail"),
]


def encode_all(pairs: list[tuple[dict[str, Any], bytes]]) -> bytes:
    return b"".join(encode_frame(h, p) for h, p in pairs)


# -- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("splitter", [split_all, split_random(1), split_random(2),
                                      split_random(3)], ids=["all", "rand1", "rand2", "rand3"])
def test_round_trip_many_frames(splitter) -> None:
    data = encode_all(LARGE_SET)
    reader = FrameReader(BufferPool())
    frames = drip(reader, data, splitter(len(data)))
    assert as_pairs(frames) == LARGE_SET
    assert not reader.mid_frame


def test_round_trip_one_byte_at_a_time() -> None:
    data = encode_all(SMALL_SET)
    reader = FrameReader(BufferPool())
    frames = drip(reader, data, split_bytewise(len(data)))
    assert as_pairs(frames) == SMALL_SET
    assert not reader.mid_frame


def test_feed_convenience_matches_buffered_face() -> None:
    data = encode_all(LARGE_SET)
    reader = FrameReader(BufferPool())
    frames = reader.feed(data)
    assert as_pairs(frames) == LARGE_SET


@pytest.mark.parametrize("pair", [SMALL_SET[0], SMALL_SET[1], SMALL_SET[2],
                                  ({"op": "x", "id": 1}, rand_bytes(300, 9))],
                         ids=["empty", "one-byte", "rich", "300B"])
def test_every_cut_point_of_a_small_frame(pair) -> None:
    frame = encode_frame(*pair)
    for cut in range(len(frame) + 1):
        reader = FrameReader(BufferPool())
        first = reader.feed(frame[:cut])
        assert first == [] or cut == len(frame)
        assert reader.mid_frame == (0 < cut < len(frame))
        rest = reader.feed(frame[cut:])
        assert as_pairs(first + rest) == [pair]
        assert not reader.mid_frame


def test_max_payload_round_trip() -> None:
    payload = rand_bytes(MAX_PAYLOAD, 11)
    pool = BufferPool()
    data = encode_frame({"op": "read", "id": 1}, payload) + encode_frame({"id": 2}, b"after")
    for cuts in ([len(data)], [5, 3, 1 * MiB, 7, 4 * MiB]):
        frames = drip(FrameReader(pool), data, cuts)
        assert [f.header["id"] for f in frames] == [1, 2]
        assert frames[0].payload == payload and bytes(frames[1].payload) == b"after"
        frames[0].release()


def test_empty_payload_is_an_empty_view() -> None:
    [f] = FrameReader().feed(encode_frame({"op": "x", "id": 1}))
    assert isinstance(f.payload, memoryview) and len(f.payload) == 0


def test_small_payload_is_copied_out_of_staging() -> None:
    """A small payload must survive the staging buffer being reused by later frames."""
    reader = FrameReader(BufferPool())
    [first] = reader.feed(encode_frame({"id": 1}, b"A" * 1000))
    for i in range(300):  # overwrite the staging buffer many times over
        reader.feed(encode_frame({"id": i}, b"B" * 1000))
    assert bytes(first.payload) == b"A" * 1000
    assert isinstance(first.payload.obj, bytes)


def test_large_payload_lands_in_a_pooled_buffer_and_release_returns_it() -> None:
    pool = BufferPool()
    reader = FrameReader(pool)
    n = _DIRECT_PAYLOAD + 1
    [f] = reader.feed(encode_frame({"id": 1}, rand_bytes(n)))
    buf = f.payload.obj
    assert isinstance(buf, mmap.mmap) and len(buf) == BufferPool.size_class(n)
    # Page-aligned, so a chunkserver can write it with O_DIRECT.
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert addr % mmap.PAGESIZE == 0
    assert pool.free_bytes == 0
    f.release()
    assert pool.free_bytes == len(buf)
    assert len(f.payload) == 0  # the frame no longer exposes the pooled memory
    f.release()  # idempotent
    assert pool.free_bytes == len(buf)
    # The next large frame of the same size class reuses that very buffer.
    [g] = reader.feed(encode_frame({"id": 2}, b"z" * n))
    assert g.payload.obj is buf and bytes(g.payload) == b"z" * n
    assert pool.free_bytes == 0


def test_release_of_a_small_frame_is_a_no_op() -> None:
    pool = BufferPool()
    [f] = FrameReader(pool).feed(encode_frame({"id": 1}, b"abc"))
    f.release()
    assert bytes(f.payload) == b"abc" and pool.free_bytes == 0


# -- headers near MAX_HEADER: the staging buffer grows, then shrinks -------------------------

def test_header_of_exactly_max_header_round_trips() -> None:
    h = header_of_size(MAX_HEADER)
    frame = encode_frame(h, b"payload")
    assert len(frame) == PREFIX_SIZE + MAX_HEADER + 7
    for cuts in ([len(frame) - 1], [3, 5, 1000, 100_000], [65536]):
        reader = FrameReader(BufferPool())
        assert drip(reader, frame[:-1], cuts) == []
        assert reader.mid_frame
        assert len(reader._stage) >= PREFIX_SIZE + MAX_HEADER  # it had to grow
        frames = drip(reader, frame[-1:], [1])
        assert as_pairs(frames) == [(h, b"payload")]
        assert not reader.mid_frame


def test_staging_shrinks_after_a_burst_following_a_large_header() -> None:
    reader = FrameReader(BufferPool())
    big = header_of_size(MAX_HEADER - 100)
    big_frame = encode_frame(big)
    assert reader.feed(big_frame[:-1]) == []
    assert len(reader._stage) > _STAGING
    smalls = [({"op": "s", "id": i}, b"q" * (i % 50)) for i in range(60_000)]
    data = encode_all(smalls)
    assert len(data) > 2 * MiB
    assert as_pairs(reader.feed(big_frame[-1:] + data)) == [(big, b"")] + smalls
    staging = len(reader._stage)
    assert staging == _STAGING


def test_staging_shrinks_once_a_large_header_is_consumed() -> None:
    """Regression (fixed in e3da029): after one near-1 MiB header the reader used to keep a
    >1 MiB staging buffer for as long as the connection lived, unless a single receive later
    filled all of it, so every idle connection that once carried a large header pinned ~1 MiB."""
    reader = FrameReader(BufferPool())
    big = header_of_size(MAX_HEADER)
    reader.feed(encode_frame(big))
    reader.feed(encode_frame({"op": "small", "id": 2}))
    assert not reader.mid_frame
    reader.get_buffer()
    staging = len(reader._stage)
    assert staging <= _STAGING


def test_complete_direct_payload_followed_by_a_frame_that_needs_a_bigger_staging_buffer(
        ) -> None:
    """Regression (fixed in e3da029): a large payload (>64 KiB) that arrived entirely inside
    the staging buffer used to be finished by a nested `_parse()`; when that nested call
    replaced the staging buffer (here: to grow it for B's 300 KiB header), the outer loop
    kept reading the old buffer at the new offsets and failed a valid stream."""
    reader = FrameReader(BufferPool())
    a = ({"op": "a", "id": 1}, rand_bytes(100 * KiB, 7))
    b = (header_of_size(300 * KiB, rid=2), b"")
    data = encode_all([a, b])
    for cuts in ([len(data)], [_STAGING], [_STAGING - 10, 7], [len(encode_frame(*a)) + 20]):
        reader = FrameReader(BufferPool())
        assert as_pairs(drip(reader, data, cuts)) == [a, b]
        assert not reader.mid_frame


# -- limits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hlen,plen,code", [
    (0, 0, "bad_request"),
    (0, 5, "bad_request"),
    (MAX_HEADER + 1, 0, "too_large"),
    (0xFFFFFFFF, 0, "too_large"),
    (10, MAX_PAYLOAD + 1, "too_large"),
    (10, 0xFFFFFFFF, "too_large"),
    (0xFFFFFFFF, 0xFFFFFFFF, "too_large"),
], ids=["hlen0", "hlen0-payload", "hlen-max+1", "hlen-4GiB", "plen-max+1", "plen-4GiB",
        "both-4GiB"])
def test_prefix_limits_fail_as_soon_as_the_prefix_arrives(hlen: int, plen: int,
                                                          code: str) -> None:
    reader = FrameReader(BufferPool())
    with pytest.raises(ProtocolViolation) as ei:
        reader.feed(struct.pack(">II", hlen, plen))
    assert ei.value.code == code


def test_limits_are_inclusive() -> None:
    reader = FrameReader(BufferPool())
    assert reader.feed(struct.pack(">II", MAX_HEADER, MAX_PAYLOAD)) == []
    assert reader.mid_frame


@pytest.mark.parametrize("header,payload_len", [
    (header_of_size(MAX_HEADER + 1), 0),
    ({"op": "x", "id": 1}, MAX_PAYLOAD + 1),
    ({"op": "x", "id": 1}, -1),
    ({"op": "x", "id": 1}, 2**32),
], ids=["header-too-big", "payload-too-big", "negative-payload", "payload-4GiB"])
def test_encode_header_refuses_to_break_a_limit(header, payload_len: int) -> None:
    with pytest.raises(ValueError):
        encode_header(header, payload_len)


def test_encode_header_accepts_the_limits_exactly() -> None:
    out = encode_header(header_of_size(MAX_HEADER), MAX_PAYLOAD)
    assert struct.unpack(">II", out[:8]) == (MAX_HEADER, MAX_PAYLOAD)
    assert len(out) == 8 + MAX_HEADER


def test_encode_frame_layout_byte_by_byte() -> None:
    out = encode_frame({"op": "x", "id": 7}, b"\x01\x02\x03")
    body = packb({"op": "x", "id": 7})
    assert out == struct.pack(">II", len(body), 3) + body + b"\x01\x02\x03"
    assert encode_frame({"id": 1}, memoryview(b"ab")) == encode_frame({"id": 1}, b"ab")
    assert encode_frame({"id": 1}, bytearray(b"ab")) == encode_frame({"id": 1}, b"ab")


# -- truncated input ------------------------------------------------------------------------

@pytest.mark.parametrize("pair", LARGE_SET[:8], ids=lambda p: f"id{p[0].get('id')}")
def test_a_partial_frame_yields_nothing_and_is_mid_frame(pair) -> None:
    frame = encode_frame(*pair)
    for cut in sorted({1, 4, 7, 8, 9, len(frame) // 2, len(frame) - 1}):
        reader = FrameReader(BufferPool())
        assert reader.feed(frame[:cut]) == []
        assert reader.mid_frame
    reader = FrameReader(BufferPool())
    assert not reader.mid_frame


def test_mid_frame_during_a_direct_payload() -> None:
    frame = encode_frame({"id": 1}, rand_bytes(200 * KiB))
    reader = FrameReader(BufferPool())
    assert reader.feed(frame[:-1]) == []
    assert reader.mid_frame
    assert len(reader.feed(frame[-1:])) == 1
    assert not reader.mid_frame


# -- malformed input ------------------------------------------------------------------------

def _ext(code: int, data: bytes) -> bytes:
    return packb(msgpack.ExtType(code, data))


MALFORMED = [
    ("never-used-byte", b"\xc1"),
    ("garbage", b"\xde\xad\xbe\xef"),
    ("int", packb(5)),
    ("list", packb([1, 2])),
    ("str", packb("op")),
    ("nil", packb(None)),
    ("bin", packb(b"abc")),
    ("trailing-data", packb({"op": "x", "id": 1}) + b"\x00"),
    ("two-maps", packb({"id": 1}) + packb({"id": 2})),
    ("truncated-map", b"\x82\xa2op\xa1x"),
    ("int-key", packb({1: "x"})),
    ("nil-key", b"\x81\xc0\x01"),
    ("nested-int-key", packb({"op": "x", "m": {1: 2}})),
    ("bytes-key", packb({b"op": "x", "id": 1})),
    ("id-str", packb({"op": "x", "id": "1"})),
    ("id-float", packb({"op": "x", "id": 1.0})),
    ("id-bool", packb({"op": "x", "id": True})),
    ("id-list", packb({"op": "x", "id": [1]})),
    ("ext", b"\x81\xa1x" + _ext(5, b"abcd")),
    ("ext-empty", b"\x81\xa1x" + _ext(5, b"")),
    ("ext-top-level", _ext(1, b"\x00")),
    ("timestamp", b"\x81\xa1x" + packb(msgpack.Timestamp(1, 0))),
    ("bad-utf8", b"\x81\xa1x\xa1\xff"),
    ("bad-utf8-key", b"\x81\xa1\xff\x01"),
    ("deep-nesting", b"\x81\xa1x" + b"\x91" * 5000 + b"\xc0"),
    ("map32-lies", b"\xdf\xff\xff\xff\xff"),
    ("array32-lies", b"\x81\xa1x\xdd\xff\xff\xff\xff"),
]


@pytest.mark.parametrize("body", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_header_is_a_protocol_violation(body: bytes) -> None:
    with pytest.raises(ProtocolViolation) as ei:
        decode_header(body)
    assert ei.value.code == "bad_request"
    reader = FrameReader(BufferPool())
    with pytest.raises(ProtocolViolation) as ei:
        reader.feed(raw_frame(body, b"payload"))
    assert ei.value.code == "bad_request"


def test_header_is_rejected_before_its_payload_arrives() -> None:
    reader = FrameReader(BufferPool())
    with pytest.raises(ProtocolViolation):
        reader.feed(raw_frame(packb([1]), plen=MAX_PAYLOAD))


@pytest.mark.parametrize("header", [
    {}, {"op": "x"}, {"id": 0}, {"id": -1}, {"id": 2**64 - 1}, {"id": -(2**63)},
    {"op": "x", "id": 1, "id2": "1"}, {"id": None},
], ids=["empty", "no-id", "id0", "id-neg", "id-u64max", "id-i64min", "other-fields", "id-nil"])
def test_valid_headers_decode(header) -> None:
    assert decode_header(packb(header)) == header


def test_frames_before_a_violation_are_kept() -> None:
    reader = FrameReader(BufferPool())
    good = encode_frame({"op": "a", "id": 1}, b"ok")
    with pytest.raises(ProtocolViolation):
        reader.feed(good + raw_frame(packb(7)))
    assert as_pairs(reader.pop_frames()) == [({"op": "a", "id": 1}, b"ok")]


# -- property tests -------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)
_headers = st.builds(
    lambda fields, rid: {**fields, "id": rid},
    st.dictionaries(st.text(max_size=10), _values, max_size=6),
    st.integers(-(2**63), 2**64 - 1))
_payload_sizes = st.one_of(st.integers(0, 300), st.integers(_DIRECT_PAYLOAD - 2,
                                                            _DIRECT_PAYLOAD + 2),
                           st.integers(0, 300_000))


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.tuples(_headers, _payload_sizes, st.integers(0, 2**16)),
                       min_size=1, max_size=6),
       cuts=st.lists(st.integers(1, 400_000), min_size=1, max_size=20))
def test_property_round_trip_through_arbitrary_splits(frames, cuts) -> None:
    pairs = [(h, rand_bytes(n, seed)) for h, n, seed in frames]
    data = encode_all(pairs)
    reader = FrameReader(BufferPool())
    got = drip(reader, data, cuts + [len(data)])
    assert as_pairs(got) == pairs
    assert not reader.mid_frame


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(1, 64), min_size=1,
                                                     max_size=10))
def test_property_random_bytes_raise_only_protocol_violation(data: bytes, cuts) -> None:
    reader = FrameReader(BufferPool())
    try:
        drip(reader, data, cuts)
    except ProtocolViolation as exc:
        assert exc.code in ("bad_request", "too_large")


@settings(max_examples=300, deadline=None, database=None)
@given(body=st.binary(min_size=1, max_size=400), payload=st.binary(max_size=50))
def test_property_random_header_bodies_raise_only_protocol_violation(body, payload) -> None:
    reader = FrameReader(BufferPool())
    try:
        frames = reader.feed(raw_frame(body, payload))
    except ProtocolViolation as exc:
        assert exc.code == "bad_request"
        return
    [f] = frames
    assert isinstance(f.header, dict) and all(isinstance(k, str) for k in f.header)
    assert bytes(f.payload) == payload


# -- the buffer pool ------------------------------------------------------------------------

@pytest.mark.parametrize("n,size", [
    (0, 64 * KiB), (1, 64 * KiB), (64 * KiB, 64 * KiB), (64 * KiB + 1, 128 * KiB),
    (1 * MiB, 1 * MiB), (1 * MiB + 1, 2 * MiB), (MAX_PAYLOAD, MAX_PAYLOAD),
    (MAX_PAYLOAD + 1, 2 * MAX_PAYLOAD),
])
def test_pool_size_classes(n: int, size: int) -> None:
    assert BufferPool.size_class(n) == size
    assert len(BufferPool().get(n)) == size


def test_pool_reuses_returned_buffers() -> None:
    pool = BufferPool()
    a = pool.get(100 * KiB)
    pool.put(a)
    assert pool.free_bytes == 128 * KiB
    assert pool.get(70 * KiB) is a
    assert pool.free_bytes == 0
    assert pool.get(70 * KiB) is not a


def test_pool_drops_odd_sizes_and_respects_its_cap() -> None:
    pool = BufferPool(max_free_bytes=128 * KiB)
    pool.put(bytearray(1000))
    pool.put(bytearray(100 * KiB))
    assert pool.free_bytes == 0
    pool.put(bytearray(64 * KiB))
    pool.put(bytearray(64 * KiB))
    pool.put(bytearray(64 * KiB))  # over the cap: dropped
    assert pool.free_bytes == 128 * KiB
