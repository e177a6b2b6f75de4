"""Defaults, limits and the parsers for sizes and durations: one place for every number.

Nothing here does I/O; every other module imports its constants from here so a limit is
changed in exactly one spot.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction

PROTOCOL_VERSION = 2  # 2: block digests in reports and commits, paged block reports

DEFAULT_META_HOST = "127.0.0.1"
DEFAULT_META_PORT = 5000
DEFAULT_CHUNK_PORT = 6001
DEFAULT_META_HTTP_PORT = 5080  # meta's HTTP side door (dfs/web); 0 turns it off
CHUNK_HTTP_OFFSET = 1000  # a chunkserver's HTTP port: its --port plus this

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Data layout.
DEFAULT_BLOCK_SIZE = 64 * MiB
DEFAULT_REPLICATION = 2
MAX_REPLICATION = 16
MIN_BLOCK_SIZE = 64 * KiB
MAX_BLOCK_SIZE = 1 * GiB
CHECKSUM_UNIT = 64 * KiB  # one CRC32C per this many bytes of a block (see checksum.py)

# Wire limits (see docs/PROTOCOL.md).
MAX_HEADER = 1 * MiB
MAX_PAYLOAD = 8 * MiB
PACKET_SIZE = 1 * MiB  # write packet payload; a multiple of CHECKSUM_UNIT
READ_SIZE = 1 * MiB  # one read request's payload; a multiple of CHECKSUM_UNIT
WRITE_WINDOW = 16  # write packets in flight per block pipeline
READ_WINDOW = 8  # read requests in flight per reader (read-ahead)
MAX_INFLIGHT_PER_CONN = 256  # server stops reading a connection past this many open requests
MAX_CONNECTIONS = 4096
HELLO_TIMEOUT = 10.0
FRAME_TIMEOUT = 30.0
MAX_LS_PAGE = 10_000
# Blocks one `stat` reply lists at most when the client pages (fewer when they would
# outgrow a frame: about 6,800 with two replicas each). A file's block list never has to
# fit in one frame: stat pages it, and a writer sends it to commit in parts.
MAX_BLOCK_PAGE = 10_000
# Entries one `cp -r` request may copy: the copy runs on meta's loop and adds that many
# files to memory at once (about 0.3 s and 120 MB per 100,000 files).
MAX_COPY_FILES = 100_000

# Timeouts on the client side.
CONNECT_TIMEOUT = 5.0
RPC_TIMEOUT = 30.0
META_FAILOVER_WAIT = 20.0  # with several metas: how long a request looks for the active one
PACKET_TIMEOUT = 20.0  # a write packet's ack from the last server of a chain (may wait on fsync)
PACKET_TIMEOUT_PER_HOP = 5.0
READ_TIMEOUT = 15.0
# Pauses before a reader re-asks meta where a block lives when every replica failed.
READ_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 3.0)
PIPELINE_RETRIES = 5  # times a writer rebuilds one block's pipeline before giving up


def packet_timeout(hops_below: int) -> float:
    """How long to wait for a packet's ack from a chain with `hops_below` servers after the
    one we talk to. Each hop waits less than the one above it, so when a server hangs, its
    upstream neighbour times out first and names it, rather than the client blaming the head.
    $DFS_PACKET_TIMEOUT (seconds) replaces PACKET_TIMEOUT, read at each call: the hung-server
    tests set it for their own processes so they do not wait out 20 s several times."""
    base = os.environ.get("DFS_PACKET_TIMEOUT")
    return (float(base) if base else PACKET_TIMEOUT) + PACKET_TIMEOUT_PER_HOP * hops_below


# A host's failed `auth` attempts are logged once, then only counted, and summed up in one
# line per this many seconds while they go on (dfs/net/logthrottle.py), so a flood of them
# cannot fill the log. $DFS_AUTH_LOG_INTERVAL (seconds) replaces it: tests set it short.
AUTH_LOG_INTERVAL = 60.0


def auth_log_interval() -> float:
    value = os.environ.get("DFS_AUTH_LOG_INTERVAL")
    return float(value) if value else AUTH_LOG_INTERVAL


# Cluster behaviour (each is the default of a dfsd flag).
DEFAULT_HEARTBEAT_INTERVAL = 3.0
DEFAULT_DEAD_TIMEOUT = 30.0
HA_LEASE_TTL = 5  # seconds: an HA active meta's etcd lease (failover takes about this long)
# The largest journal record an HA meta sends to etcd (bytes; a file's publish record grows by
# about 22 bytes a block): under etcd's default --max-request-bytes of 1.5 MiB.
HA_MAX_RECORD = int(os.environ.get("DFS_HA_MAX_RECORD", "1400000"))
UPLOAD_LEASE = 30.0  # an upload that shows no sign of life for this long is aborted
ORPHAN_GRACE = UPLOAD_LEASE  # a replica no file refers to is deleted after this long
# Blocks of a removed or replaced file stay on disk this long, so a reader that opened the old
# version just before (its stat listed those blocks) can still finish.
DELETE_GRACE = 3.0
CHECKPOINT_INTERVAL = 3600.0  # meta checkpoints its namespace this often ...
CHECKPOINT_RECORDS = 100_000  # ... or once its journal holds this many records
# Meta keeps this much room allocated ahead of its journal's end. It stops taking changes
# (read-only, `no space`) while it cannot, so a full disk never fails a journal write.
JOURNAL_PREALLOCATE = 4 * MiB
BLOCK_REPORT_INTERVAL = 3600.0  # a chunkserver sends a full block report this often
# Bytes/s one chunkserver spends sending copies; 0: no cap. Repair is kept from crowding out
# clients by MAX_COPIES, by reading around the page cache (chunk/copier.py) and by slowing to
# REPAIR_BUSY_RATE while clients use the server, not by a fixed cap (docs/PERFORMANCE.md,
# "Repair").
DEFAULT_REPLICATION_RATE = 0
MAX_COPIES = 4  # copies one chunkserver sends (and receives) at once during repair
REPAIR_BUSY_RATE = 128 * MiB  # bytes/s of copies a server sends while clients use it
REPAIR_BUSY_WINDOW = 0.5  # seconds after a client's last request that a server counts as used
COPY_TIMEOUT = 120.0  # a copy that has not arrived by then is forgotten and retried
# Most chunkservers silent at once hold repair (meta/hold.py) until they come back, or for at
# most this many dead timeouts when none does and some other server is live.
REPAIR_HOLD_MAX = 10
DEFAULT_SCRUB_RATE = 8 * MiB  # bytes per second the scrubber re-reads
DEFAULT_SCRUB_INTERVAL = 7 * 24 * 3600.0  # one full scrub pass a week
# A chunkserver leaves free the smaller of DEFAULT_RESERVE and this fraction of its disk
# (--reserve), so a small disk still stores blocks and a large one keeps a fixed margin.
DEFAULT_RESERVE = 1 * GiB
DEFAULT_RESERVE_FRACTION = 0.05
# A chunkserver probes each healthy data dir (write, fsync, remove a small file) this often, so
# a dir that went read-only or lost its disk is noticed while idle (--dir-check-interval);
# a probe still hanging after DIR_CHECK_TIMEOUT seconds fails the dir (chunk/diskcheck.py).
DIR_CHECK_INTERVAL = 10.0
DIR_CHECK_TIMEOUT = 60.0
TOKEN_LIFETIME = 600.0  # seconds a block token stays valid (--token-lifetime)
TOKEN_SKEW = 60.0  # clocks of meta and chunkservers may differ this much
GROUP_SYNC_MAX_BYTES = 1 * MiB  # blocks up to this size are made durable by a shared syncfs
DISK_THREADS = 16  # a chunkserver's blocking disk calls; also the largest group-commit batch
BACKGROUND_SYNC_BYTES = 8 * MiB  # chunkserver flushes a block being written every this many bytes


def default_reserve(disk_bytes: int) -> int:
    """The default --reserve for a disk of this size."""
    return min(DEFAULT_RESERVE, int(disk_bytes * DEFAULT_RESERVE_FRACTION))


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse `4096`, `64KiB`, `4MiB`, `1GiB`, `4M`, `1G` (K/M/G are binary) into bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (try 4096, 64KiB, 4MiB, 1GiB)")
    number, unit = Fraction(m.group(1)), m.group(2).lower()  # exact, even past 2**53
    scale = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}[unit]
    value = number * scale
    if value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def format_size(n: int) -> str:
    """A size as one would type it (the inverse of parse_size): 64 MiB -> 64MiB."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def format_duration(seconds: float) -> str:
    """A duration as one would type it (the inverse of parse_duration): 3.0 -> 3s,
    3600.0 -> 1h, 0.5 -> 500ms."""
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= scale and seconds % scale == 0:
            return f"{seconds // scale:.0f}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0s"


def parse_duration(text: str | float) -> float:
    """Parse `500ms`, `3s`, `2m`, `1h`, `7d` or plain seconds into seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (try 500ms, 3s, 2m)")
    scale = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[
        m.group(2).lower() if m.group(2) else None
    ]
    return float(m.group(1)) * scale


def parse_addr(text: str, default_port: int = DEFAULT_META_PORT) -> tuple[str, int]:
    """Parse `HOST:PORT`, `http://HOST:PORT/` or `HOST` into (host, port)."""
    s = text.strip()
    for prefix in ("http://", "https://", "dfs://"):
        if s.lower().startswith(prefix):
            s = s[len(prefix):]
    s = s.rstrip("/")
    if not s:
        raise ValueError(f"not an address: {text!r}")
    if s.startswith("["):  # [::1]:5000
        host, _, rest = s[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            raise ValueError(f"not an address: {text!r}")
        port = int(rest[1:]) if rest else default_port
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        if not p.isdigit():
            raise ValueError(f"not an address: {text!r}")
        port = int(p)
    else:
        host, port = s, default_port
    if not host or not 0 < port < 65536:
        raise ValueError(f"not an address: {text!r}")
    return host, port


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
