"""How long meta takes to start with N files: builds a namespace of N one-block files,
writes it as a checkpoint, then times MetaService.start() loading it (plus an empty journal).

    python3 bench/meta_startup.py [N]        (default 1,000,000)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time

from dfs.meta import checkpoint
from dfs.meta.journal import FileJournal
from dfs.meta.namespace import Block, File, Namespace
from dfs.meta.service import MetaService


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    base = tempfile.mkdtemp(prefix="dfs-meta-startup-")
    try:
        ns = Namespace()
        for i in range(n):
            ns.publish(f"/data/d{i % 1000}/f{i}",
                       File([Block((1 << 32) | i, 1, 4096)], 2, 64 << 20, 1.0))
        data = checkpoint.snapshot(ns, 0, 0, 1)
        checkpoint.write(os.path.join(base, "checkpoint"), data)
        del ns

        async def start() -> tuple[float, int]:
            svc = MetaService(FileJournal(os.path.join(base, "journal")), "127.0.0.1:0",
                              checkpoint_path=os.path.join(base, "checkpoint"))
            t0 = time.perf_counter()
            await svc.start()
            elapsed = time.perf_counter() - t0
            if svc._sweeper is not None:
                svc._sweeper.cancel()
            return elapsed, svc.ns.files

        elapsed, files = asyncio.run(start())
        print(f"meta start with {files} files ({len(data) / 1e6:.0f} MB checkpoint): "
              f"{elapsed:.1f} s")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
