"""`dfsd --role meta --ha etcd://...`: start one meta of an HA group (dfs/ha/node.py) and run
it until SIGTERM. Kept apart from daemon.py's single-meta path, which it shares only the
flags, the data dir rules and the listening socket with.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from .. import config
from ..daemon import (
    bind,
    cluster_id,
    connection_limit,
    data_dir,
    http_server,
    load_security,
    warn_if_open,
)
from ..errors import DFSError
from ..fsutil import CorruptFile
from ..meta.service import MetaService
from ..net import Server
from ..startup import StartupError
from .etcd import Etcd, EtcdError, cmp_create_revision, op_put, parse_url
from .journal import EtcdJournal
from .layout import Layout
from .node import HaNode

log = logging.getLogger(__name__)


def parse_ha(url: str) -> tuple[list[str], str]:
    """etcd://h:p[,h:p][/prefix] -> (endpoints, key prefix)."""
    rest = url.strip()
    scheme = ""
    for s in ("etcd://", "http://"):
        if rest.startswith(s):
            scheme, rest = s, rest[len(s):]
    hosts, _, prefix = rest.partition("/")
    try:
        endpoints = parse_url(scheme + hosts)
    except ValueError as exc:
        raise StartupError(f"--ha {url}: {exc}") from None
    return endpoints, "/" + (prefix.strip("/") or "dfs") + "/"


async def shared_cluster_id(etcd: Etcd, layout: Layout, local: str) -> str:
    """The cluster id every meta of the group uses: etcd's, made from the first meta's."""
    await etcd.txn([cmp_create_revision(layout.cluster_id, "=", 0)],
                   [op_put(layout.cluster_id, local.encode())])
    kv = await etcd.get(layout.cluster_id)
    assert kv is not None
    return kv.value.decode()


async def run_ha_meta(args: argparse.Namespace, stop: asyncio.Event) -> None:
    sec = load_security(args)
    path = data_dir(args)
    endpoints, prefix = parse_ha(args.ha)
    if args.ha_ttl < 2:
        raise StartupError("--ha-ttl must be at least 2 seconds")
    single = [n for n in ("journal", "checkpoint") if os.path.exists(os.path.join(path, n))]
    if single:
        # Its cluster id would become the group's: the old chunkservers would be taken in
        # and every block they hold, unknown to the empty namespace in etcd, deleted.
        raise StartupError(f"data dir {path} holds a single meta's {' and '.join(single)}: "
                           "an HA meta starts from an empty data dir (importing a single "
                           "meta's namespace into etcd is not supported)")
    addr = args.advertise or config.format_addr(
        args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1", args.port)
    server = Server("meta", args.host, args.port, connection_limit(), security=sec)
    bind(server)
    etcd = Etcd(endpoints)
    layout = Layout(prefix)
    try:
        cid = await shared_cluster_id(etcd, layout, cluster_id(path))
    except EtcdError as exc:
        await etcd.close()
        raise StartupError(f"etcd at {', '.join(endpoints)}: {exc}") from None

    def make_service(journal: EtcdJournal) -> MetaService:
        return MetaService(journal, addr, cluster_id=cid, dead_timeout=args.dead_timeout,
                           heartbeat_interval=args.heartbeat_interval,
                           upload_lease=args.upload_lease,
                           checkpoint_path=os.path.join(path, "checkpoint.ha"),
                           checkpoint_interval=args.checkpoint_interval,
                           checkpoint_records=args.checkpoint_records,
                           orphan_grace=args.orphan_grace, delete_grace=args.delete_grace,
                           security=sec)
    node = HaNode(etcd, layout, addr, path, args.ha_ttl, cid, args.dead_timeout,
                  args.heartbeat_interval, make_service)
    http: Any = None
    web_clients: list[Any] = []
    if args.http_port:
        http = ha_http(args, sec, node, server, web_clients)
    try:
        await node.start()
    except CorruptFile as exc:
        raise StartupError(str(exc)) from None
    except EtcdError as exc:
        raise StartupError(f"etcd at {', '.join(endpoints)}: {exc}") from None
    if http is not None:
        await http.start()
    await server.start(node)
    log.info("meta listening on %s (HA through etcd %s, keys under %s), data in %s", addr,
             ",".join(endpoints), prefix, path)
    warn_if_open(sec, args)
    await stop.wait()
    log.info("meta shutting down")
    if http is not None:
        await http.close()
    for c in web_clients:
        await c.close()
    node.standby.release_polls()
    if node.service is not None:
        node.service.reports.release_polls()
    await server.close()
    try:
        await node.stop()
    except DFSError as exc:
        log.warning("meta shutdown: %s", exc)


def ha_http(args: argparse.Namespace, sec: Any, node: HaNode, server: Server,
            clients: list[Any]) -> Any:
    """The HTTP side door of an HA meta: /healthz, /readyz (ready = active and out of safe
    mode), /metrics (requests and the dfs_ha_* gauges) and /api/status. The pages and file
    downloads are the single meta's, served by the active only."""
    from prometheus_client import CollectorRegistry

    from ..client.async_client import AsyncClient
    from ..web import ha_routes
    from ..web.metrics import HaCollector, RequestMetrics
    registry = CollectorRegistry()
    server.observe = RequestMetrics(registry, "dfs").observe
    registry.register(HaCollector(node))

    def client() -> AsyncClient:  # what /files reads through: the normal client path
        if not clients:
            clients.append(AsyncClient(node.addr, secret_file=args.secret_file,
                                       tls_cert=args.tls_cert, tls_key=args.tls_key,
                                       tls_ca=args.tls_ca))
        return clients[0]
    return http_server(args, sec, ha_routes.routes(node, registry, client))
