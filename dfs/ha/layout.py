"""Where an HA cluster keeps its state in etcd: every key dfs uses, in one place.

Under one prefix (default `/dfs/`, so several clusters can share an etcd):

    cluster_id                 the cluster id every meta and chunkserver of this cluster shares
    term                       elections so far (decimal); bumped by each new active
    leader                     msgpack {"addr", "term"} of the active, bound to its lease:
                               it disappears when the active stops renewing the lease
    members/<addr>             msgpack {"addr", "role"} of each running meta, bound
                               to that meta's lease (what `status` lists)
    journal/<seq: 16 hex>      one group commit of the active: a msgpack stream, the number of
                               records journaled before it, then its records
    checkpoint                 msgpack {"count", "parts", "size", "crc", "seq"}: the newest
                               checkpoint, which covers the first `count` records
    checkpoint/<seq>/<part>    its bytes (checkpoint.py's file format), in pieces under etcd's
                               request size limit

Journal keys sort by sequence number, so a range read returns batches in order.
"""

from __future__ import annotations

PIECE = 1 << 20  # bytes per etcd value: etcd refuses requests over 1.5 MiB by default
BATCH_BYTES = 1 << 20  # encoded records per journal batch, for the same reason


class Layout:
    def __init__(self, prefix: str = "/dfs/") -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix.encode()
        p = self.prefix
        self.cluster_id = p + b"cluster_id"
        self.term = p + b"term"
        self.leader = p + b"leader"
        self.members = p + b"members/"
        self.journal = p + b"journal/"
        self.checkpoint = p + b"checkpoint"
        self.pieces = p + b"checkpoint/"

    def batch(self, seq: int) -> bytes:
        return self.journal + b"%016x" % seq

    def seq_of(self, key: bytes) -> int:
        return int(key[len(self.journal):], 16)

    def member(self, addr: str) -> bytes:
        return self.members + addr.encode()

    def piece_dir(self, seq: int) -> bytes:
        return self.pieces + b"%016x/" % seq

    def piece(self, seq: int, part: int) -> bytes:
        return self.piece_dir(seq) + b"%06d" % part
