"""Bounded chaos: for a fixed time, SIGKILL and restart chunkservers and the meta while
clients write; then every acknowledged file must read back identical and fsck be healthy.

One failure at a time (R=2 promises to survive one loss, not two at once). The random
schedule is seeded; set DFS_CHAOS_SECONDS (and DFS_CHAOS_KILLS) to run longer than the suite's
default.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import traceback

import pytest
from cluster import Cluster, MiB, wait_until

import dfs

SECONDS = float(os.environ.get("DFS_CHAOS_SECONDS", "6"))
MIN_KILLS = int(os.environ.get("DFS_CHAOS_KILLS", "3"))  # goes on past SECONDS until this
# many SIGKILLs (5 or more for a long run) ...
MIN_ACKED = 20  # ... and this many acknowledged files (a busy machine is slower)
OVERTIME = 120.0  # ... but gives up this long after SECONDS


@pytest.mark.timeout(int(SECONDS + OVERTIME) + 150)
def test_chaos_keeps_every_acknowledged_file(make_cluster) -> None:
    cluster: Cluster = make_cluster(4, meta_args=["--upload-lease", "5s"])
    rng = random.Random(20261125)
    acked: dict[str, str] = {}  # path -> sha256 of what was acknowledged
    attempts = [0]
    unexpected: list[str] = []  # anything but a DFSError from a writer fails the test
    stop = threading.Event()
    lock = threading.Lock()

    def writer(k: int) -> None:
        try:
            wrng = random.Random(k)
            with dfs.Client(cluster.meta_addr, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    i += 1
                    path = f"/chaos/w{k}/f{i}"
                    data = wrng.randbytes(wrng.choice([0, 1, 4096, 300_000, MiB + 17,
                                                       3 * MiB]))
                    with lock:
                        attempts[0] += 1
                    try:
                        client.put_bytes(data, path, block_size=MiB)
                    except dfs.DFSError:
                        time.sleep(0.2)  # not acknowledged: nothing is promised (pacing)
                        continue
                    with lock:
                        acked[path] = hashlib.sha256(data).hexdigest()
        except BaseException:  # noqa: BLE001 - reported by the test thread
            unexpected.append(f"writer {k}:\n{traceback.format_exc()}")

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    kills = {"chunk": 0, "meta": 0}
    start = time.monotonic()

    def enough() -> bool:
        with lock:
            n_acked = len(acked)
        return (time.monotonic() - start >= SECONDS and sum(kills.values()) >= MIN_KILLS
                and n_acked >= MIN_ACKED)

    # The sleeps pace the schedule; nothing below relies on them for correctness.
    while not enough() and not unexpected:
        assert time.monotonic() - start < SECONDS + OVERTIME, \
            f"after {SECONDS + OVERTIME:g}s only {kills} kills and {len(acked)} acknowledged " \
            f"files of {attempts[0]} puts"
        time.sleep(rng.uniform(0.5, 2.0))
        if rng.random() < 0.25:
            cluster.kill("meta")
            kills["meta"] += 1
            time.sleep(rng.uniform(0.1, 1.0))
            cluster.restart("meta")
        else:
            victim = rng.choice(cluster.chunkservers).name
            cluster.kill(victim)
            kills["chunk"] += 1
            time.sleep(rng.uniform(0.2, 4.5))  # sometimes past the 3 s dead timeout
            cluster.restart(victim, wait=False)
        cluster.wait_live(timeout=30)  # one failure at a time
    stop.set()
    for t in threads:
        t.join(60)
    assert not unexpected, "\n".join(unexpected)
    assert not any(t.is_alive() for t in threads), "a writer hung"

    client = cluster.client()

    def healthy() -> bool:
        f = client.fsck("/")
        return f["blocks"] > 0 and f["healthy"] == f["blocks"]
    wait_until(healthy, 60, "fsck healthy after the chaos")
    for path, digest in sorted(acked.items()):
        assert hashlib.sha256(client.get_bytes(path)).hexdigest() == digest, path
    print(f"\nchaos: {time.monotonic() - start:.0f}s, {kills['chunk']} chunkserver and "
          f"{kills['meta']} meta SIGKILLs, {attempts[0]} puts tried, {len(acked)} "
          "acknowledged files verified")
