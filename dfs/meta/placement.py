"""Where new replicas go. Pure functions over chunkserver snapshots; no I/O, no clock.

Rule: distinct live servers that are not excluded, that have room for a whole block, most free
space first (space promised to blocks still being written counts as used), ties broken by
fewer blocks being written right now, then at random so equal servers share the load.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Candidate:
    addr: str
    free: int  # bytes free, minus space promised to blocks in flight
    writing: int = 0  # blocks being written to it right now


def choose_targets(candidates: list[Candidate], count: int, block_size: int,
                   exclude: set[str] = frozenset(),  # type: ignore[assignment]
                   rng: random.Random | None = None) -> list[Candidate]:
    """Up to `count` targets, best first. Fewer than `count` means the cluster is short of
    servers with room; an empty list means no server can take the block at all."""
    rand = rng.random if rng is not None else random.random
    pool = [c for c in candidates if c.addr not in exclude and c.free >= block_size]
    # Group free space coarsely (1/8 of a block) so near-equal servers count as equal and the
    # random tiebreak spreads load instead of always favouring the emptiest by a few bytes.
    grain = max(block_size // 8, 1)
    keyed = [(-(c.free // grain), c.writing, rand(), c) for c in pool]
    keyed.sort(key=lambda t: t[:3])
    return [t[3] for t in keyed[:count]]
