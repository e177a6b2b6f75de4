"""One meta of an HA group: standby or active, and the moves between the two.

- **Lease.** Each meta holds an etcd lease of `ttl` seconds and renews it every ttl/3. It
  counts its lease as good until (time the last renewal was *sent*) + the TTL etcd granted,
  less MARGIN: a meta that was paused, or cannot reach etcd, knows by its own clock that it
  may no longer lead, before anyone else can have taken over.
- **Election.** A standby that has loaded the namespace polls the leader key; when it is
  gone (the active's lease expired or was revoked) it creates it with its own lease in one
  transaction that also bumps `term`. Whoever's transaction lands first leads.
- **Takeover.** The winner reads the journal batches written after its last one (none can be
  written after its election: the old active's writes are fenced by the leader key), builds
  the block map from the namespace and the chunkservers' reports it kept as a standby,
  journals a new block id epoch and serves. It stays in safe mode until every block has been
  reported and repairs nothing, and orders nothing, for its first dead timeout.
- **Stepping down.** A journal batch refused by the fence, a lease etcd says is gone, or a
  leader key that is someone else's: the meta drops its namespace (it may hold changes etcd
  never accepted, which were never acknowledged), and loads again as a standby.
- **Serving.** Client requests reach the active's MetaService; a standby answers them with
  `not_leader` (naming the active). While the active cannot vouch for its lease (etcd out of
  reach), it still answers reads but refuses changes with `unavailable`, and orders nothing.
  Chunkserver messages are answered by whichever role holds, each reply carrying
  `ha: {active, term, leader}` so chunkservers obey only the newest active.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable

import msgpack

from ..errors import DFSError, NotLeader, Unavailable
from ..meta.service import MetaService
from .etcd import Etcd, EtcdError, cmp_create_revision, cmp_mod_revision, op_put, prefix_end
from .follower import Follower
from .journal import EtcdJournal
from .layout import Layout
from .standby import StandbyReports

log = logging.getLogger(__name__)

MARGIN = 0.5  # seconds of a lease not counted on: etcd may expire it that much early
POLL = 0.25  # seconds between a standby's looks at the leader key

CHUNK_OPS = frozenset({"register", "block_report", "heartbeat", "poll_commands"})
# Requests that change the namespace or hand out blocks: refused while the lease is in doubt.
WRITE_OPS = frozenset({"create", "add_block", "recover_block", "commit_part", "commit",
                       "mkdir", "symlink", "chattr", "rm", "mv", "cp", "setrep", "touch",
                       "decommission"})

Reply = dict[str, Any]


class HaNode:
    def __init__(self, etcd: Etcd, layout: Layout, addr: str, data_dir: str, ttl: int,
                 cluster_id: str, dead_timeout: float, heartbeat_interval: float,
                 make_service: Callable[[EtcdJournal], MetaService]) -> None:
        self.etcd, self.layout, self.addr = etcd, layout, addr
        self.ttl = ttl
        self.cluster_id = cluster_id
        self.dead_timeout = dead_timeout
        self.heartbeat_interval = heartbeat_interval
        self.make_service = make_service
        self.checkpoint_path = os.path.join(data_dir, "checkpoint.ha")
        self.role = "standby"
        self.term = 0
        self.leader = ""  # the active's address, as the leader key says
        self.leader_rev = 0  # our leader key's create revision while we lead
        self.failovers = 0  # times this meta took over
        self.service: MetaService | None = None
        self.follower = Follower(etcd, layout, self.checkpoint_path)
        self.standby = StandbyReports(cluster_id, heartbeat_interval)
        self.lease = 0
        self.lease_until = 0.0  # monotonic: our own estimate of the lease's end, less MARGIN
        self.metas: list[dict[str, Any]] = []  # members, as last read from etcd
        self._follow: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        ops = {n[len("handle_"):] for n in dir(MetaService) if n.startswith("handle_")}
        for op in ops | CHUNK_OPS:  # (the chunkserver ops are set on each MetaService)
            setattr(self, "handle_" + op, self._handler(op))

    # life -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the namespace, take a lease, then follow, renew and campaign in the
        background. Raises EtcdError or CorruptFile."""
        await self.follower.load()
        await self._grant()
        self._follow = asyncio.ensure_future(self.follower.follow())
        self._tasks = [asyncio.ensure_future(self._keepalive()),
                       asyncio.ensure_future(self._campaign())]

    async def stop(self) -> None:
        """Hand the lead over at once (revoking the lease ends it without waiting out the
        TTL), after the active has checkpointed and its journal has drained."""
        for t in self._tasks + ([self._follow] if self._follow else []):
            t.cancel()
        self.standby.release_polls()
        if self.service is not None:
            self.service.reports.release_polls()
            try:
                await self.service.stop()
            except (OSError, DFSError) as exc:
                log.warning("stopping the active meta: %s", exc)
        try:
            await self.etcd.lease_revoke(self.lease)
        except EtcdError:
            pass
        await self.etcd.close()

    def confident(self) -> bool:
        """Active, with a lease that cannot have expired yet by our own clock."""
        return self.role == "active" and time.monotonic() < self.lease_until

    def info(self) -> dict[str, Any]:
        return {"role": "active" if self.role == "active" else "standby",
                "leader": self.leader, "term": self.term, "failovers": self.failovers,
                "metas": self.metas}

    # the lease --------------------------------------------------------------------------
    async def _grant(self) -> None:
        sent = time.monotonic()
        self.lease = await self.etcd.lease_grant(self.ttl)
        self.lease_until = sent + self.ttl - MARGIN
        await self._announce()

    async def _announce(self) -> None:
        """The members key: who runs, in which role (bound to our lease)."""
        await self.etcd.put(self.layout.member(self.addr),
                            msgpack.packb({"addr": self.addr, "role": self.role}),
                            lease=self.lease)

    async def _keepalive(self) -> None:
        warned = False
        while True:
            await asyncio.sleep(self.ttl / 3 if not warned else 0.5)
            sent = time.monotonic()
            try:
                left = await self.etcd.lease_keepalive(self.lease)
                if left <= 0:
                    log.warning("our etcd lease has expired")
                    self._lost("its etcd lease expired")
                    await self._grant()
                else:
                    self.lease_until = sent + left - MARGIN
                if warned:
                    log.warning("etcd is reachable again")
                warned = False
            except EtcdError as exc:
                if not warned:
                    log.error("cannot renew our etcd lease (%s)%s", exc,
                              ": changes are refused until it is renewed"
                              if self.role == "active" else "")
                warned = True

    # election ---------------------------------------------------------------------------
    async def _campaign(self) -> None:
        while True:
            try:
                kv = await self.etcd.get(self.layout.leader)
                if kv is None:
                    self.leader = ""
                    if self.role == "active":
                        self._lost("its leader key is gone from etcd")
                    elif self.follower.loaded.is_set() and time.monotonic() < self.lease_until:
                        await self._elect()
                else:
                    who = msgpack.unpackb(kv.value)
                    self.leader, self.term = who["addr"], who["term"]
                    if self.role == "active" and kv.create_revision != self.leader_rev:
                        self._lost("another meta's leader key is in etcd")
                members, _ = await self.etcd.range(self.layout.members,
                                                   prefix_end(self.layout.members))
                self.metas = [msgpack.unpackb(m.value) for m in members]
            except EtcdError as exc:
                log.debug("campaign: %s", exc)
            except DFSError as exc:  # taking over failed: stay a standby
                log.error("could not take over as the active meta: %s", exc)
            except Exception:  # a bug must not end the campaign: this meta would never lead
                log.exception("campaign step failed; trying again")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL if self.role != "active" else 1.0)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _elect(self) -> None:
        term_kv = await self.etcd.get(self.layout.term)
        term = int(term_kv.value) + 1 if term_kv is not None else 1
        ok, _, revision = await self.etcd.txn(
            [cmp_create_revision(self.layout.leader, "=", 0),
             cmp_mod_revision(self.layout.term, "=",
                              term_kv.mod_revision if term_kv is not None else 0)],
            [op_put(self.layout.leader, msgpack.packb({"addr": self.addr, "term": term}),
                    lease=self.lease),
             op_put(self.layout.term, str(term).encode())])
        if ok:
            await self._take_over(term, revision)

    async def _take_over(self, term: int, revision: int) -> None:
        started = time.monotonic()
        if self._follow is not None:
            self._follow.cancel()
            self._follow = None
        self.leader_rev, self.term, self.leader = revision, term, self.addr
        try:
            await self.follower.catch_up()  # nothing can be written after our election
        except (EtcdError, DFSError, OSError) as exc:
            await self._resign(f"could not read the journal from etcd: {exc}")
            return
        f = self.follower
        journal = EtcdJournal(self.etcd, self.layout, revision, f.last_seq + 1, f.count,
                              self._lost, since_checkpoint=f.count - f.covered)
        service = self.make_service(journal)
        service.reports.may_command = lambda: self.confident() and \
            time.monotonic() >= service.repair_after
        standby = self.standby
        servers = service.adopt(f.ns, f.restored,
                                lambda cluster: standby.hand_over(cluster, self.dead_timeout))
        self.service, self.role = service, "active"
        self.failovers += 1
        standby.release_polls()
        self.standby = StandbyReports(self.cluster_id, self.heartbeat_interval)
        try:
            await service.begin()  # journals a new epoch: the first fenced write
        except DFSError as exc:
            self._lost(f"its first journal write failed: {exc}")
            return
        log.warning("this meta is now the active one (term %d): %d files, %d chunkservers "
                    "known, took %.2fs after winning the election", term, f.ns.files, servers,
                    time.monotonic() - started)
        try:
            await self._announce()
        except EtcdError:
            pass

    async def _resign(self, why: str) -> None:
        log.error("giving up the lead: %s", why)
        self.role = "standby"
        try:
            await self.etcd.lease_revoke(self.lease)
        except EtcdError:
            pass
        self.lease_until = 0.0
        asyncio.ensure_future(self._reload())

    def _lost(self, why: str) -> None:
        """Step down: drop what this meta holds (changes etcd refused may be in it) and
        load again from etcd as a standby."""
        if self.role != "active":
            return
        log.error("this meta is no longer the active one: %s; stepping down to standby", why)
        self.role = "standby"
        service, self.service = self.service, None
        if service is not None:
            service.abandon(NotLeader("this meta lost the lead before the change was kept; "
                                      "retry at the active meta", leader=self.leader))
        asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        self.follower = Follower(self.etcd, self.layout, self.checkpoint_path)
        while self.role == "standby" and not self.follower.loaded.is_set():
            try:
                await self.follower.load()
            except (EtcdError, DFSError, OSError) as exc:
                log.warning("standby: cannot load from etcd yet (%s)", exc)
                await asyncio.sleep(1.0)
        if self.role == "standby" and self._follow is None:
            self._follow = asyncio.ensure_future(self.follower.follow())
        try:
            await self._announce()
        except EtcdError:
            pass

    # requests ---------------------------------------------------------------------------
    def _handler(self, op: str) -> Callable[..., Any]:
        def handle(h: dict[str, Any], payload: memoryview, conn: Any) -> Any:
            if op in CHUNK_OPS:
                target: Any = self.service if self.role == "active" else self.standby
                return self._with_ha(getattr(target, "handle_" + op)(h, payload, conn))
            if op == "status":
                return self._status(h, payload, conn)
            service = self.service
            if self.role != "active" or service is None:
                raise NotLeader(f"{self.addr} is a standby meta"
                                + (f"; the active one is {self.leader}" if self.leader else
                                   "; no meta is active right now"), leader=self.leader)
            if op in WRITE_OPS and not self.confident():
                raise Unavailable(f"meta {self.addr} cannot renew its lead with etcd right "
                                  "now: changes are refused until it can (reads go on)")
            return getattr(service, "handle_" + op)(h, payload, conn)
        handle.__name__ = "handle_" + op
        return handle

    def _with_ha(self, reply: Reply | Awaitable[Reply]) -> Reply | Awaitable[Reply]:
        if isinstance(reply, dict):
            reply["ha"] = {"active": self.confident(), "term": self.term,
                           "leader": self.leader}
            return reply

        async def later() -> Reply:
            out = await reply  # type: ignore[misc]
            out["ha"] = {"active": self.confident(), "term": self.term, "leader": self.leader}
            return out
        return later()

    def _status(self, h: dict[str, Any], payload: memoryview, conn: Any) -> Reply:
        if self.role == "active" and self.service is not None:
            out = self.service.handle_status(h, payload, conn)
        else:
            ns = self.follower.ns
            out = {"meta": self.addr, "cluster_id": self.cluster_id, "files": ns.files,
                   "safe_mode": False, "safe_mode_s": 0.0, "read_only": True,
                   "read_only_reason": "a standby meta: changes go to the active one",
                   "blocks": ns.blocks, "uploads": 0, "pid": os.getpid(),
                   "chunkservers": self.standby.chunkservers(self.dead_timeout),
                   "repair": {"needy": 0, "copying": 0, "copied_bytes": 0, "copies": {}}}
        out["ha"] = self.info()
        return out
