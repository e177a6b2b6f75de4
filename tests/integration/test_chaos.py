"""Bounded chaos: for a fixed time, SIGKILL and restart chunkservers and the meta while
clients write; then every acknowledged file must read back identical and fsck be healthy.

One failure at a time (R=2 promises to survive one loss, not two at once). The random
schedule is seeded; set DFS_CHAOS_SECONDS to run longer than the suite's default.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import pytest
from cluster import Cluster, MiB, wait_until

import dfs

SECONDS = float(os.environ.get("DFS_CHAOS_SECONDS", "25"))


@pytest.mark.timeout(int(SECONDS) + 150)
def test_chaos_keeps_every_acknowledged_file(make_cluster) -> None:
    cluster: Cluster = make_cluster(4, meta_args=["--upload-lease", "5s"])
    rng = random.Random(20261125)
    acked: dict[str, str] = {}  # path -> sha256 of what was acknowledged
    attempts = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def writer(k: int) -> None:
        wrng = random.Random(k)
        client = dfs.Client(cluster.meta_addr, timeout=10)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                path = f"/chaos/w{k}/f{i}"
                data = wrng.randbytes(wrng.choice([0, 1, 4096, 300_000, MiB + 17, 3 * MiB]))
                attempts[0] += 1
                try:
                    client.put_bytes(data, path, block_size=MiB)
                except dfs.DFSError:
                    time.sleep(0.2)  # not acknowledged: nothing is promised
                    continue
                with lock:
                    acked[path] = hashlib.sha256(data).hexdigest()
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    kills = {"chunk": 0, "meta": 0}
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
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
        cluster.wait_live(timeout=30)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a writer hung"

    client = cluster.client()
    wait_until(lambda: client.fsck("/")["healthy"] == client.fsck("/")["blocks"], 60,
               "fsck healthy after the chaos")
    for path, digest in sorted(acked.items()):
        assert hashlib.sha256(client.get_bytes(path)).hexdigest() == digest, path
    print(f"\nchaos: {SECONDS:.0f}s, {kills['chunk']} chunkserver and {kills['meta']} meta "
          f"SIGKILLs, {attempts[0]} puts tried, {len(acked)} acknowledged files verified")
    assert kills["chunk"] + kills["meta"] >= 5 and len(acked) >= 20
