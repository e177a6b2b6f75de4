"""Fuzzing the frame codec (dfs.protocol.frame): random, split, mutated and hostile input.

Every property drives `FrameReader` the way an asyncio transport does (get_buffer, write at
most that much, buffer_updated), in arbitrary chunk sizes, and checks after every step that:

- it only ever yields frames or raises ProtocolViolation (any other exception fails the test);
- its buffers stay within what the frames *declared*: the staging buffer grows past its
  default size only for a header (plus a small payload) that was announced, is back to the
  default once idle, and a large payload gets exactly one pooled buffer of its size class;
- it agrees with a plain reference decoder written from docs/PROTOCOL.md section 1 (same
  frames, same violation and code, same "a frame is half received" state), whatever the
  chunking;
- a valid stream decodes to exactly the frames that were encoded.

Hypothesis runs derandomized (a fixed seed), so a run is reproducible; DFS_FUZZ_EXAMPLES
raises the number of examples per property (default 60, about 10 s for the file).
"""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
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
    PREFIX,
    PREFIX_SIZE,
    FrameReader,
    decode_header,
    encode_frame,
)

EXAMPLES = int(os.environ.get("DFS_FUZZ_EXAMPLES", "60"))
if EXAMPLES < 1:  # (hypothesis refuses max_examples=0 too, but say why here)
    raise ValueError(f"DFS_FUZZ_EXAMPLES={EXAMPLES}: no example would run")


def fuzz(scale: int = 1) -> settings:
    """Derandomized (fixed seed), no example database, `scale` x EXAMPLES examples."""
    return settings(derandomize=True, max_examples=EXAMPLES * scale, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))


FUZZ = fuzz()
CHEAP = fuzz(5)  # properties whose examples are small and fast
# The largest staging buffer any frame may cause: a maximal header plus a payload small
# enough to be copied out of staging.
STAGE_CAP = PREFIX_SIZE + MAX_HEADER + _DIRECT_PAYLOAD
# Upper bound on how many buffer_updated calls one example makes (keeps big inputs fast).
MAX_STEPS = 3000

Pair = tuple[dict[str, Any], bytes]


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def same(a: Any, b: Any) -> bool:
    """Deep equality without recursion (headers may nest a thousand deep), where NaN equals
    NaN and a bool is not an int."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y, strict=True))
        elif isinstance(x, float):
            if x != y and not (x != x and y != y):
                return False
        elif x != y:
            return False
    return True


def same_frames(got: list[Pair], want: list[Pair]) -> bool:
    return len(got) == len(want) and all(
        same(gh, wh) and gp == wp for (gh, gp), (wh, wp) in zip(got, want, strict=True))


# -- the reference decoder and the driver ----------------------------------------------------

class Reference:
    """Decode a whole byte string at once, the obvious way (docs/PROTOCOL.md section 1).

    `frames` are the frames before any violation, `code` the violation's wire code (or None),
    `partial` whether bytes of an unfinished frame are left over, `needs` the (start offset,
    staging bytes that frame may claim) of every frame whose prefix was accepted."""

    def __init__(self, data: bytes) -> None:
        self.frames: list[Pair] = []
        self.code: str | None = None
        self.partial = False
        self.needs: list[tuple[int, int]] = []
        self.payload_lens: list[tuple[int, int]] = []  # (start offset, declared payload_len)
        pos = 0
        while True:
            rest = len(data) - pos
            if rest < PREFIX_SIZE:
                self.partial = rest > 0
                return
            hlen, plen = PREFIX.unpack_from(data, pos)
            if hlen == 0:
                self.code = "bad_request"
                return
            if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
                self.code = "too_large"
                return
            small = plen if plen <= _DIRECT_PAYLOAD else 0
            self.needs.append((pos, PREFIX_SIZE + hlen + small))
            self.payload_lens.append((pos, plen))
            if rest < PREFIX_SIZE + hlen:
                self.partial = True
                return
            try:
                header = decode_header(data[pos + PREFIX_SIZE:pos + PREFIX_SIZE + hlen])
            except ProtocolViolation as exc:
                self.code = exc.code
                return
            if rest < PREFIX_SIZE + hlen + plen:
                self.partial = True
                return
            start = pos + PREFIX_SIZE + hlen
            self.frames.append((header, data[start:start + plen]))
            pos = start + plen

    def stage_bound(self, fed: int) -> int:
        """The most staging memory the frames begun in the first `fed` bytes may claim."""
        return max([_STAGING] + [need for start, need in self.needs if start < fed])


class Run:
    """What FrameReader made of a byte string fed in pieces."""

    def __init__(self, frames: list[Pair], code: str | None, partial: bool) -> None:
        self.frames, self.code, self.partial = frames, code, partial


def check_bounded(reader: FrameReader, ref: Reference, fed: int) -> None:
    """The reader's memory is what the frames declared, never more."""
    stage = reader._stage
    assert 0 <= reader._start <= reader._end <= len(stage), \
        (reader._start, reader._end, len(stage))
    assert len(stage) <= STAGE_CAP, len(stage)
    assert len(stage) <= ref.stage_bound(fed), \
        f"staging is {len(stage)} bytes, frames so far declared {ref.stage_bound(fed)}"
    assert reader._end - reader._start <= fed
    if reader._payload is not None:
        plen = reader._plen
        assert _DIRECT_PAYLOAD < plen <= MAX_PAYLOAD, plen
        assert plen in {p for start, p in ref.payload_lens if start < fed}, plen
        assert len(reader._payload) == BufferPool.size_class(plen), (len(reader._payload), plen)
        assert 0 <= reader._filled < plen
        # While a payload is received directly, staging holds nothing unparsed (the frame
        # after it will be parsed from staging once the payload is complete).
        assert reader._start == reader._end, (reader._start, reader._end)
    else:
        assert reader._plen == 0 and reader._filled == 0 and reader._header is None
    if not reader.mid_frame:
        assert len(stage) == _STAGING, f"idle reader kept a {len(stage)}-byte staging buffer"
    assert len(reader.get_buffer()) > 0, "get_buffer() offered no room"


def drive(data: bytes, cuts: list[int], ref: Reference | None = None) -> Run:
    """Feed `data` through the BufferedProtocol face, cycling through the chunk sizes in
    `cuts` (0 means: ask get_buffer() and then receive nothing, as a recv of EAGAIN does).
    Checks the bounds after every step; returns what came out."""
    ref = ref or Reference(data)
    reader = FrameReader(BufferPool())
    out: list[Pair] = []
    floor = max(1, len(data) // MAX_STEPS)

    def collect() -> None:
        for f in reader.pop_frames():
            out.append((f.header, bytes(f.payload)))
            f.release()

    view = memoryview(data)
    fed = 0
    i = 0
    while fed < len(data):
        want = cuts[i % len(cuts)]
        i += 1
        buf = reader.get_buffer()
        assert len(buf) > 0, "get_buffer() offered no room"
        if want == 0:
            continue
        n = min(len(buf), max(want, floor), len(data) - fed)
        buf[:n] = view[fed:fed + n]
        fed += n
        try:
            reader.buffer_updated(n)
        except ProtocolViolation as exc:
            assert exc.code in ("bad_request", "too_large"), exc.code
            collect()
            return Run(out, exc.code, False)
        collect()
        check_bounded(reader, ref, fed)
    return Run(out, None, reader.mid_frame)


def assert_matches_reference(data: bytes, cuts: list[int]) -> Run:
    ref = Reference(data)
    run = drive(data, cuts, ref)
    assert same_frames(run.frames, ref.frames)
    assert run.code == ref.code
    assert run.partial == ref.partial
    return run


# -- strategies -------------------------------------------------------------------------------

# Chunk sizes as a transport would deliver them: mostly small, some around the prefix and the
# staging size, some huge; 0 is a get_buffer() with no bytes after it.
_cut = st.one_of(st.integers(0, 16), st.integers(1, 300), st.sampled_from(
    [7, 8, 9, 4096, 65535, 65536, 65537, _STAGING - 1, _STAGING, _STAGING + 1, 1 << 20]),
    st.integers(1, 1 << 21))
cuts_st = st.lists(_cut, min_size=1, max_size=12).filter(any)

_INTS = [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
scalars = (st.none() | st.booleans() | st.sampled_from(_INTS) | st.integers(-(2**63), 2**64 - 1)
           | st.floats() | st.text(max_size=24) | st.binary(max_size=24))
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=5)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=5)
                   | st.dictionaries(st.binary(max_size=4), inner, max_size=3)),
    max_leaves=20)
headers = st.builds(
    lambda fields, op, rid: {**fields, **op, **rid},
    st.dictionaries(st.text(max_size=10).filter(lambda k: k != "id"), values, max_size=6),
    st.one_of(st.just({}), st.builds(lambda o: {"op": o}, st.text(max_size=12))),
    st.one_of(st.just({}), st.builds(lambda i: {"id": i}, st.integers(-(2**63), 2**64 - 1))))
payload_sizes = st.one_of(
    st.integers(0, 64), st.integers(_DIRECT_PAYLOAD - 3, _DIRECT_PAYLOAD + 3),
    st.integers(0, 300_000), st.sampled_from([0, 1, 1 << 20, _STAGING, _STAGING - 8]))
# Headers of a given padded size: below, at and above the staging buffer.
header_pads = st.one_of(st.just(0), st.just(0), st.just(0),
                        st.sampled_from([_STAGING - 40, _STAGING, _STAGING + 1000, 600_000]))


def payload_of(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


frame_specs = st.lists(st.tuples(headers, payload_sizes, header_pads, st.integers(0, 65535)),
                       min_size=1, max_size=6)


def build(specs: list[tuple[dict[str, Any], int, int, int]]) -> tuple[bytes, list[Pair]]:
    pairs: list[Pair] = []
    for header, n, pad, seed in specs:
        if pad:
            header = {**header, "~pad": "p" * pad}
        pairs.append((header, payload_of(n, seed)))
    return b"".join(encode_frame(h, p) for h, p in pairs), pairs


# -- round trip -------------------------------------------------------------------------------

@FUZZ
@given(specs=frame_specs, cuts=cuts_st)
def test_valid_stream_round_trips_through_any_chunking(specs, cuts) -> None:
    data, pairs = build(specs)
    run = drive(data, cuts)
    assert run.code is None
    assert same_frames(run.frames, pairs)
    assert not run.partial


@FUZZ
@given(specs=frame_specs, cuts=cuts_st, cut=st.integers(0, 1 << 30))
def test_truncated_valid_stream_yields_the_whole_frames_and_waits(specs, cuts, cut) -> None:
    data, pairs = build(specs)
    cut %= len(data)
    run = assert_matches_reference(data[:cut], cuts)
    assert run.code is None
    assert same_frames(run.frames, pairs[:len(run.frames)])
    # A cut inside a frame leaves the reader waiting for the rest, never erroring.
    assert run.partial == (cut not in _frame_ends(pairs))


def _frame_ends(pairs: list[Pair]) -> set[int]:
    ends, pos = {0}, 0
    for h, p in pairs:
        pos += len(encode_frame(h, p))
        ends.add(pos)
    return ends


# -- random and mutated bytes -----------------------------------------------------------------

@CHEAP
@given(data=st.binary(max_size=4096), cuts=cuts_st)
def test_random_bytes(data, cuts) -> None:
    assert_matches_reference(data, cuts)


# A prefix that passes the length checks, so random header bytes reach the msgpack decoder.
plausible_prefix = st.builds(lambda h, p: struct.pack(">II", h, p),
                             st.integers(1, 64), st.integers(0, 80))


@CHEAP
@given(prefix=plausible_prefix, body=st.binary(max_size=400), cuts=cuts_st)
def test_random_bytes_behind_a_plausible_prefix(prefix, body, cuts) -> None:
    assert_matches_reference(prefix + body, cuts)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 1 << 30), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.binary(min_size=1, max_size=9)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 9)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 30), st.just(0)),
    st.tuples(st.just("length"), st.integers(0, 1 << 30), st.sampled_from(
        [0, 1, 7, 8, _DIRECT_PAYLOAD, _DIRECT_PAYLOAD + 1, _STAGING, MAX_HEADER,
         MAX_HEADER + 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 2**31, 2**32 - 1])),
)


def mutate(data: bytes, muts: list[tuple[str, int, Any]]) -> bytes:
    b = bytearray(data)
    for kind, where, arg in muts:
        if not b:
            break
        i = where % len(b)
        if kind == "flip":
            b[i] ^= 1 << arg
        elif kind == "set":
            b[i] = arg
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i:i + arg]
        elif kind == "truncate":
            del b[i:]
        else:  # overwrite 4 bytes with a length: lands on prefixes as often as chance has it
            b[i:i + 4] = arg.to_bytes(4, "big")
    return bytes(b)


@FUZZ
@given(specs=st.lists(st.tuples(headers, st.integers(0, 2000), st.just(0),
                                st.integers(0, 65535)), min_size=1, max_size=5),
       muts=st.lists(mutation, min_size=1, max_size=4), cuts=cuts_st)
def test_mutated_valid_stream(specs, muts, cuts) -> None:
    data, _ = build(specs)
    assert_matches_reference(mutate(data, muts), cuts)


@FUZZ
@given(specs=st.lists(st.tuples(headers, payload_sizes, header_pads, st.integers(0, 65535)),
                      min_size=1, max_size=3),
       muts=st.lists(mutation, min_size=1, max_size=2), cuts=cuts_st)
def test_mutated_stream_with_large_parts(specs, muts, cuts) -> None:
    data, _ = build(specs)
    assert_matches_reference(mutate(data, muts), cuts)


# -- hostile msgpack headers -----------------------------------------------------------------

def _u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _str(s: bytes) -> bytes:
    return b"\xdb" + _u32(len(s)) + s


FIXED_HOSTILE = [
    b"\xc1",  # the one byte msgpack never uses
    b"\x81\xa2id\xcf" + b"\xff" * 8,  # id 2**64-1 (valid)
    b"\x81\xa2id\xd3\x80" + b"\x00" * 7,  # id -2**63 (valid)
    b"\x81\xa2id\xca\x3f\x80\x00\x00",  # id 1.0 as float32
    b"\x81\xa2id\xcb\x7f\xf8" + b"\x00" * 6,  # id NaN
    b"\x81\xa2id\xc3",  # id true
    b"\x81\xa2id\xc0",  # id nil (valid: no id)
    b"\x82\xa2id\x01\xa2id\xa11",  # the id key twice: the second (a str) wins
    b"\x82\xa2id\xa11\xa2id\x01",  # ... the second (an int) wins
    b"\x81\xa2op\xed\xa0\x80",  # a UTF-8 encoded surrogate
    b"\x81\xa2op\xc0\x80",  # an overlong NUL is not msgpack
    b"\x81\xa2op\xa3\xc0\x80\x00",  # overlong UTF-8 inside a str
    b"\x81\xc4\x02op\x01",  # a bin key at the top level
    b"\x81\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x01",  # a float key
    b"\x81\x91\x01\x01",  # a list key (unhashable)
    b"\x81\x81\xa1a\x01\x01",  # a map key (unhashable)
    b"\x81\xa1m\x81\xc4\x01k\x01",  # a bin key in a nested map (valid)
    b"\x81\xa1m\x81\x01\x01",  # an int key in a nested map
    b"\x81\xa1x\xd4\xff\x00",  # fixext1 type -1 (timestamp type)
    b"\x81\xa1x\xd6\xff\x00\x00\x00\x01",  # timestamp32
    b"\x81\xa1x\xc7\x00\x05",  # ext8 of length 0
    b"\x81\xa1x\xc9\xff\xff\xff\xff\x01",  # ext32 claiming 4 GiB
    b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
    b"\x81\xa1x\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
    b"\x81\xa1x\xc6\x00\x10\x00\x01",  # bin32 one byte over MAX_HEADER
    b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G entries
    b"\x81\xa1x\xdd\x00\x0f\x42\x41",  # array32 one over the container limit
    b"\xdf\x00\x0f\x42\x40",  # map32 at the container limit, no entries
    b"\x81\xa1x" + b"\x91" * 2000 + b"\xc0",  # deep nesting of 1-element arrays
    b"\x81\xa1x" + b"\x81\xa1k" * 2000 + b"\xc0",  # deep nesting of maps
    b"\x81\xa1x" + b"\x91" * 1000 + b"\xc0",  # nesting just within msgpack's stack
    b"\x81\xa1x\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # +inf (valid)
    b"\x80",  # empty map (valid)
    b"\x80\x80",  # trailing data
    b"\x90", b"\xc0", b"\xc2", b"\x00", b"\xa0", b"\xc4\x00",  # non-map headers
]


def _nest(depth: int, opener: bytes, leaf: bytes) -> bytes:
    return opener * depth + leaf


hostile_bodies = st.one_of(
    st.sampled_from(FIXED_HOSTILE),
    # deep nesting of every container kind, within and beyond msgpack's stack limit
    st.builds(lambda d, o, leaf: b"\x81\xa1x" + _nest(d, o, leaf),
              st.integers(1, 3000),
              st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"\xde\x00\x01\xa0",
                               b"\x92\xc0", b"\xdd\x00\x00\x00\x01"]),
              st.sampled_from([b"\xc0", b"", b"\x01", b"\xd4\x01\x00", b"\xc1"])),
    # containers, strings, bins and exts declaring more than is there
    st.builds(lambda tag, n, tail: b"\x81\xa1x" + tag + _u32(n) + tail,
              st.sampled_from([b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9"]),
              st.one_of(st.integers(0, 100), st.sampled_from(
                  [MAX_HEADER - 1, MAX_HEADER, MAX_HEADER + 1, 999_999, 1_000_000, 1_000_001,
                   2**31, 2**32 - 1])),
              st.binary(max_size=20)),
    st.builds(lambda tag, n, tail: b"\x81\xa1x" + tag + _u16(n) + tail,
              st.sampled_from([b"\xda", b"\xc5", b"\xdc", b"\xde", b"\xc8"]),
              st.integers(0, 65535), st.binary(max_size=20)),
    # ext types of every size and type code
    st.builds(lambda tag, code, data: b"\x81\xa1x" + tag + _u8(code) + data,
              st.sampled_from([b"\xd4", b"\xd5", b"\xd6", b"\xd7", b"\xd8"]),
              st.integers(0, 255), st.binary(min_size=16, max_size=16)),
    st.builds(lambda code, data: b"\x81\xa1x\xc7" + _u8(len(data)) + _u8(code) + data,
              st.integers(0, 255), st.binary(max_size=30)),
    # keys of every type, at the top level and nested
    st.builds(lambda key, nested: (b"\x81\xa1m\x81" if nested else b"\x81") + key + b"\x01",
              st.one_of(st.binary(min_size=1, max_size=12).map(lambda b: b"\xc4" + _u8(len(b))
                                                                + b),
                        st.sampled_from([b"\x00", b"\xff", b"\xc0", b"\xc2", b"\xc3",
                                         b"\xcf" + b"\xff" * 8, b"\xca\x00\x00\x00\x00",
                                         b"\x90", b"\x80", b"\xa0"])),
              st.booleans()),
    # ids of every type
    st.builds(lambda idval: b"\x82\xa2op\xa1x\xa2id" + idval,
              st.one_of(st.integers(-(2**63), 2**64 - 1).map(packb),
                        st.floats().map(lambda f: b"\xcb" + struct.pack(">d", f)),
                        st.floats(width=32).map(lambda f: b"\xca" + struct.pack(">f", f)),
                        st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\xa11", b"\x91\x01",
                                         b"\x80", b"\xc4\x01\x01", b"\xd4\x00\x00"]))),
    # random bytes after a map header, and any packable value (often not a map)
    st.builds(lambda n, tail: _u8(0x80 | n) + tail, st.integers(0, 15),
              st.binary(max_size=60)),
    values.map(packb),
    st.binary(min_size=1, max_size=200),
)


def protocol_accepts(body: bytes) -> tuple[bool, Any]:
    """An independent oracle for section 1's header rules, from an unrestricted decode."""
    def no_ext(code: int, data: bytes) -> Any:
        raise ValueError("ext")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=no_ext)
    except Exception:  # noqa: BLE001 - anything msgpack itself cannot decode is refused
        return False, None

    def well_formed(top: Any) -> bool:
        stack = [(top, True)]
        while stack:
            v, is_top = stack.pop()
            if isinstance(v, dict):
                allowed = (str,) if is_top else (str, bytes)
                if not all(isinstance(k, allowed) for k in v):
                    return False
                stack.extend((x, False) for x in v.values())
            elif isinstance(v, list):
                stack.extend((x, False) for x in v)
            elif isinstance(v, (msgpack.Timestamp, msgpack.ExtType)):  # no ext of any kind
                return False
        return True
    if not isinstance(obj, dict) or not well_formed(obj):
        return False, None
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
        return False, None
    return True, obj


@CHEAP
@given(body=hostile_bodies, payload=st.binary(max_size=40), cuts=cuts_st)
def test_hostile_headers(body, payload, cuts) -> None:
    ok, expected = protocol_accepts(body)
    try:
        header = decode_header(body)
    except ProtocolViolation as exc:
        assert exc.code == "bad_request"
        assert not ok, f"a valid header was refused: {expected!r:.200}"
    else:
        assert ok, f"a header against the rules was accepted: {header!r:.200}"
        assert same(header, expected)
    frame = struct.pack(">II", len(body), len(payload)) + body + payload
    run = assert_matches_reference(frame, cuts)
    assert run.code in (None, "bad_request")


@pytest.mark.parametrize("body", FIXED_HOSTILE, ids=range(len(FIXED_HOSTILE)))
def test_each_fixed_hostile_header(body: bytes) -> None:
    ok, expected = protocol_accepts(body)
    try:
        header = decode_header(body)
    except ProtocolViolation:
        assert not ok, expected
    else:
        assert ok and same(header, expected)


# -- cost of decoding a hostile header ---------------------------------------------------------

# A small header may make the decoder build many objects (a 1 MiB header of empty maps is a
# million dicts, ~72 bytes each), so the bound is generous: 256 bytes of allocation per byte
# received, plus 1 MiB. What it must exclude is work out of all proportion to what was sent.
ALLOC_PER_BYTE = 256

COSTLY = {
    "nested_array32_of_1M": b"\xdd\x00\x0f\x42\x40" * 1100,
    "nested_array32_of_1M_in_map": b"\x81\xa1x" + b"\xdd\x00\x0f\x42\x40" * 1100,
    "nested_map32_of_1M": b"\xdf\x00\x0f\x42\x40" * 1100,
    "array32_of_1M_then_nothing": b"\x81\xa1x\xdd\x00\x0f\x42\x40",
    "str32_of_1MiB_then_nothing": b"\x81\xa1x\xdb\x00\x10\x00\x00",
    "bin32_of_1MiB_then_nothing": b"\x81\xa1x\xc6\x00\x10\x00\x00",
    "empty_maps_valid": b"\x81\xa1x\xdc\x27\x10" + b"\x80" * 10000,
}


@pytest.mark.parametrize("name", list(COSTLY))
def test_decoding_allocates_in_proportion_to_the_header(name: str) -> None:
    """Found by this file: msgpack presizes a list to the length an array *declares*, so a
    few KiB of nested `array32 of 1,000,000` headers made decode_header allocate ~78 MiB and
    spend ~65 ms (per frame, on the event loop, before hello or auth) before refusing them."""
    body = COSTLY[name]
    tracemalloc.start()
    try:
        try:
            decode_header(body)
        except ProtocolViolation:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    bound = ALLOC_PER_BYTE * len(body) + (1 << 20)
    assert peak <= bound, (f"decoding a {len(body)}-byte header allocated {peak / 2**20:.1f} "
                           f"MiB (bound {bound / 2**20:.1f} MiB)")
