"""The byte layouts and worked examples of docs/PROTOCOL.md, checked against the code.

Every number is read from the document, so a document that drifts from the code (or code that
drifts from the document) fails here: the frame prefix, the `hello` frames both ways (produced
by the real client and server code, no sockets), the HMAC input of the hello proofs and its
example, the block token example, the block id example and the digest example. Also the
constants the Limits and timeout tables name.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dfs import checksum, config
from dfs.chunk import heartbeat
from dfs.chunk.volumes import block_path
from dfs.meta.uploads import BlockIds
from dfs.net import security as security_mod
from dfs.net.connection import ClientProtocol, Connection
from dfs.net.security import Security
from dfs.net.server import Server, ServerConnection
from dfs.protocol.frame import PREFIX, PREFIX_SIZE, decode_header, encode_header

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()


def section(title: str) -> str:
    """The text of one `## N. Title` section."""
    m = re.search(rf"^## \d+\. {re.escape(title)}\n(.*?)(?=^## )", DOC, re.M | re.S)
    assert m, f"no section {title!r} in docs/PROTOCOL.md"
    return m.group(1)


def blocks_after(text: str, marker: str) -> str:
    """The first fenced code block after `marker`."""
    m = re.search(re.escape(marker) + r".*?```\n(.*?)```", text, re.S)
    assert m, f"no code block after {marker!r}"
    return m.group(1)


def hex_bytes(text: str) -> bytes:
    """The hex bytes each line starts with (the annotation after them is skipped)."""
    out = bytearray()
    for line in text.splitlines():
        for tok in line.split():
            if not re.fullmatch(r"[0-9a-f]{2}", tok):
                break
            out.append(int(tok, 16))
    return bytes(out)


def layout_rows(block: str) -> list[tuple[str, str, str]]:
    """(offset, size, field) rows of an `offset size field` table."""
    rows = [line.split()[:3] for line in block.splitlines()[1:] if line.strip()]
    return [(r[0], r[1], r[2]) for r in rows]


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: Any) -> None:
        self.out += data

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.out += p

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


async def sent(transport: FakeTransport) -> bytes:
    """What the protocol writes next, once the task writing it has run."""
    for _ in range(100):
        if transport.out:
            return transport.take()
        await asyncio.sleep(0)
    raise AssertionError("nothing was sent")


def feed(proto: Any, data: bytes) -> None:
    """Hand bytes to a protocol the way asyncio's BufferedProtocol machinery does."""
    buf = proto.get_buffer(len(data))
    buf[:len(data)] = data
    proto.buffer_updated(len(data))


def hello_example() -> tuple[bytes, bytes]:
    sec = section("Frames")
    request = hex_bytes(blocks_after(sec, "Example: the `hello`"))
    m = re.search(r"meta's reply, (\d+) bytes: `([0-9a-f \n]+)`", sec)
    assert m
    reply = hex_bytes(m.group(2).replace("\n", " "))
    n = re.search(r"sends, (\d+) bytes \((\d+)-byte header, no\s+payload\)", sec)
    assert n
    assert len(request) == int(n.group(1)) and len(request) - PREFIX_SIZE == int(n.group(2))
    assert len(reply) == int(m.group(1))
    return request, reply


def secret_example() -> dict[str, Any]:
    sec = section("Connection set-up: `hello`")
    m = re.search(r"with the secret `(\w+)`.*?`nonce` = `([0-9a-f]{2}) [0-9a-f ]*… ([0-9a-f]{2})`"
                  r" and\s+`challenge` = `([0-9a-f]{2}) [0-9a-f ]*… ([0-9a-f]{2})`", sec, re.S)
    assert m, "no worked example of the hello proofs"
    lo_n, hi_n, lo_c, hi_c = (int(g, 16) for g in m.groups()[1:])
    proofs = blocks_after(sec, "Example: with the secret")
    found = {line.split()[0]: hex_bytes(" ".join(line.split()[2:]))
             for line in proofs.splitlines() if line.strip()}
    return {"secret": m.group(1).encode(), "nonce": bytes(range(lo_n, hi_n + 1)),
            "challenge": bytes(range(lo_c, hi_c + 1)), "server": found["server"],
            "client": found["client"], "text": sec}


def test_frame_prefix_layout() -> None:
    rows = layout_rows(blocks_after(section("Frames"), "All integers are\nbig-endian."))
    assert [(o, s, f) for o, s, f in rows] == [
        ("0", "4", "header_len"), ("4", "4", "payload_len"),
        ("8", "header_len", "header"), ("8+hl", "payload_len", "payload")]
    assert PREFIX.format == ">II" and PREFIX_SIZE == 8
    assert "A frame is an 8-byte prefix" in DOC
    limits = re.findall(r"(MAX_HEADER|MAX_PAYLOAD) \((\d+ MiB)\)", section("Frames"))
    assert dict(limits) == {"MAX_HEADER": "1 MiB", "MAX_PAYLOAD": "8 MiB"}
    for name, size in limits:
        assert config.parse_size(size) == getattr(config, name)
    header = {"op": "x", "id": 7}
    frame = encode_header(header, 300)
    hlen, plen = struct.unpack(">II", frame[:8])
    assert (hlen, plen) == (len(frame) - 8, 300) and decode_header(frame[8:]) == header


def test_hello_example_is_what_client_and_server_send() -> None:
    request, reply = hello_example()
    assert request[:8] == PREFIX.pack(len(request) - 8, 0)
    header = decode_header(request[8:])
    assert header == {"op": "hello", "id": 1, "version": config.PROTOCOL_VERSION,
                      "role": "client"}
    assert f"protocol version: **{config.PROTOCOL_VERSION}**" in DOC.lower()

    async def client() -> dict[str, Any]:
        proto, transport = ClientProtocol("127.0.0.1:5000"), FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        conn = Connection("127.0.0.1:5000", proto)
        task = asyncio.ensure_future(conn._hello("client", 5.0, Security(), {}))
        assert await sent(transport) == request  # the documented bytes, exactly
        feed(proto, reply)
        await task
        return conn.server_info

    assert asyncio.run(client()) == {"id": 1, "version": config.PROTOCOL_VERSION, "role": "meta"}
    server = ServerConnection(Server("meta", "127.0.0.1", 0))
    transport = FakeTransport()
    server.connection_made(transport)  # type: ignore[arg-type]
    feed(server, request)
    assert transport.take() == reply and server.helloed


def test_hello_proof_input_layout_and_example(monkeypatch: pytest.MonkeyPatch) -> None:
    ex = secret_example()
    text = ex["text"]
    total = re.search(r"The HMAC input .*? is (\d+)\s+bytes", text, re.S)
    assert total
    rows = layout_rows(blocks_after(text, "The HMAC input"))
    assert [f for _, _, f in rows] == ["label", "separator", "nonce", "separator", "challenge"]
    assert sum(int(s) for _, s, _ in rows) == int(total.group(1))
    sec = Security(ex["secret"])
    for role, proof in (("server", sec.server_proof), ("client", sec.client_proof)):
        parts = {"label": f"dfs hello {role}".encode(), "separator": b"\0",
                 "nonce": ex["nonce"], "challenge": ex["challenge"]}
        data = bytearray(int(total.group(1)))
        for offset, size, field in rows:
            assert len(parts[field]) == int(size), field
            data[int(offset):int(offset) + int(size)] = parts[field]
        mac = hmac.new(ex["secret"], bytes(data), hashlib.sha256).digest()
        assert mac == proof(ex["nonce"], ex["challenge"]) == ex[role], role

    # The documented exchange, end to end through the real client and server code.
    monkeypatch.setattr(Security, "nonce", staticmethod(lambda: ex["nonce"]))
    server = ServerConnection(Server("meta", "127.0.0.1", 0, security=sec))
    stransport = FakeTransport()
    server.connection_made(stransport)  # type: ignore[arg-type]

    async def client() -> None:
        proto, transport = ClientProtocol("127.0.0.1:5000"), FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        task = asyncio.ensure_future(
            Connection("127.0.0.1:5000", proto)._hello("client", 5.0, sec, {}))
        hello = await sent(transport)
        assert decode_header(hello[8:])["nonce"] == ex["nonce"]
        monkeypatch.setattr(Security, "nonce", staticmethod(lambda: ex["challenge"]))
        feed(server, hello)
        reply = await sent(stransport)
        assert decode_header(reply[8:])["proof"] == ex["server"]
        feed(proto, reply)
        auth = await sent(transport)
        assert decode_header(auth[8:])["proof"] == ex["client"]
        feed(server, auth)
        feed(proto, stransport.take())
        await task

    asyncio.run(client())
    assert server.helloed and not server.closed


def test_block_token_example(monkeypatch: pytest.MonkeyPatch) -> None:
    sec8 = section("Chunkserver operations")
    m = re.search(r"with the secret\s+`(\w+)`, block (\d+), gen (\d+), mode `(\w)` and expiry "
                  r"(\d+), the MAC\s+input is `([^`]+)` and the mac\s+`([0-9a-f ]+)`", sec8)
    assert m, "no worked example of a block token"
    secret, mode = m.group(1).encode(), m.group(4)
    bid, gen, expiry = int(m.group(2)), int(m.group(3)), int(m.group(5))
    assert m.group(6) == f"{bid}:{gen}:{mode}:{expiry}"
    mac = hex_bytes(m.group(7))
    key = hmac.new(secret, b"dfs block token key", hashlib.sha256).digest()
    assert hmac.new(key, m.group(6).encode(), hashlib.sha256).digest()[:16] == mac
    assert "a 16-byte bin" in sec8 and len(mac) == 16
    sec = Security(secret)
    monkeypatch.setattr(security_mod.time, "time", lambda: expiry - sec.token_lifetime)
    assert sec.issue(bid, gen, mode) == [expiry, mac]
    sec.check([expiry, mac], bid, gen, mode)  # accepted by a chunkserver


def test_block_id_and_digest_examples() -> None:
    notation = section("Notation")
    m = re.search(r"epoch (\d+), k = (\d+) → block id (\d+), stored as\s+"
                  r"`blocks/(\w+)/(\w+)_<gen>`", notation)
    assert m, "no block id example"
    epoch, k, bid = (int(g) for g in m.group(1, 2, 3))
    assert BlockIds().after(0, epoch + 0.9) == epoch  # an epoch is at least the Unix time
    ids = BlockIds()
    ids.begin(epoch)
    assert [ids.take() for _ in range(k + 1)][-1] == bid
    store = SimpleNamespace(blocks_dir="blocks")
    path = block_path(store.blocks_dir, bid, 3)
    assert path == f"blocks/{m.group(4)}/{m.group(5)}_3"

    d = re.search(r"a block of ([\d,]+) zero bytes has the CRCs\s+`\[([^\]]+)\]`, the table "
                  r"`([0-9a-f ]+)` and the digest `(0x[0-9a-f]+)`", notation)
    assert d, "no digest example"
    data = bytes(int(d.group(1).replace(",", "")))
    crcs = checksum.crcs_of(data)
    assert crcs == [int(c, 16) for c in d.group(2).split(",")]
    assert checksum.pack_table(crcs) == hex_bytes(d.group(3))
    assert checksum.digest(crcs) == checksum.digest_of_table(hex_bytes(d.group(3))) \
        == int(d.group(4), 16)


def test_limits_and_timeouts_tables() -> None:
    modules = (config, heartbeat)
    rows = re.findall(r"^\| `([A-Z_]+)`(?: / `([A-Z_]+)`)? \| ([^|]+) \|", section("Limits"),
                      re.M)
    assert len(rows) >= 12
    for first, second, value in rows:
        names, values = [n for n in (first, second) if n], value.split(" / ")
        assert len(names) == len(values), (names, value)
        for name, text in zip(names, values, strict=True):
            actual = next(getattr(mod, name) for mod in modules if hasattr(mod, name))
            assert config.parse_size(text.strip().replace(",", "")) == actual, name
    table = section("Timeouts and back-pressure")
    timeouts = dict(re.findall(r"^\| `(\w+)` \| (\d+) s \|", table, re.M))
    assert timeouts == {"CONNECT_TIMEOUT": "5", "RPC_TIMEOUT": "30", "READ_TIMEOUT": "15"}
    for name, seconds in timeouts.items():
        assert getattr(config, name) == float(seconds)
    p = re.search(r"^\| `packet_timeout\(h\)` \| (\d+) s \+ (\d+) s × h \|", table, re.M)
    assert p
    for h in range(4):
        assert config.packet_timeout(h) == int(p.group(1)) + int(p.group(2)) * h
