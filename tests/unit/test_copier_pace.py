"""dfs.chunk.copier's pace: unlimited while no client uses the server, REPAIR_BUSY_RATE while
one does, and never above an operator's --replication-rate."""

from __future__ import annotations

import asyncio
import time

from dfs import config
from dfs.chunk.copier import Copier


def paced_seconds(rate: int, busy: bool, n: int = 8 * config.MiB) -> float:
    """How far one packet of n bytes moves the copier's clock past now (0: not paced)."""
    copier = Copier(None, None, None, rate, lambda: busy)  # type: ignore[arg-type]

    async def main() -> float:
        t0 = time.monotonic()
        await copier._pace(n)  # the first packet is not delayed; it sets when the next may go
        return max(0.0, copier._clock - t0)
    return asyncio.run(main())


def test_repair_is_unpaced_while_no_client_uses_the_server() -> None:
    assert paced_seconds(0, busy=False) == 0.0


def test_repair_slows_to_the_busy_rate_while_clients_use_the_server() -> None:
    want = 8 * config.MiB / config.REPAIR_BUSY_RATE
    assert abs(paced_seconds(0, busy=True) - want) < 0.01


def test_an_operators_cap_holds_whether_or_not_clients_are_there() -> None:
    rate = 16 * config.MiB
    want = 8 * config.MiB / rate
    assert abs(paced_seconds(rate, busy=False) - want) < 0.01
    assert abs(paced_seconds(rate, busy=True) - want) < 0.01  # the lower of the two
