"""A real etcd for tests: dfs/ha/local_etcd.py's launcher, the same one dfs-bench and dfs-demo
start, under the name the tests have always imported.

    server = EtcdServer(tmp_dir)
    server.start()                # returns once /health says true
    Etcd(parse_url(server.url))
    server.kill()                 # SIGKILL
    server.restart()              # same ports, same data dir
"""

from __future__ import annotations

from dfs.ha.local_etcd import START_TIMEOUT, EtcdServer, etcd_binary

__all__ = ["START_TIMEOUT", "EtcdServer", "etcd_binary"]
