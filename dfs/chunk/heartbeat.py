"""The chunkserver's links to meta: register with a full block report, heartbeat, carry out
the commands that come back, and re-register whenever meta has forgotten us (a meta restart).
Block reports travel in pages of REPORT_PAGE replicas, so a server holding millions of blocks
still fits every frame within the protocol's header limit.

Several metas (HA: one active, the others standbys): the chunkserver keeps one `MetaLink` to
each, and reports everything (registration, heartbeats, received and corrupt blocks) to every
one of them, so a standby already knows where every replica lives when it takes over. But it
takes commands (deletes, copies) from one meta only, through a shared `CommandFence`: in HA
mode every reply carries `ha = {"active", "term", "leader"}`, and commands are carried out
only from a meta that says it is active at the highest election term this chunkserver has seen
from any meta. A deposed active (paused past its lease, resumed still believing it leads)
thus cannot delete a replica the new active counts on. A reply with no `ha` comes from a meta
not in HA mode, and is obeyed as before.

Besides heartbeats, one `poll_commands` request is kept open at meta on the same connection:
meta answers it as soon as it orders a copy from this server, so repair starts (and each next
copy follows the last) within milliseconds instead of at the next heartbeat. A meta that does
not know the op is left to hand copies out with heartbeat replies, as before.

Owns nothing but the links and the fence; it never touches block files except through the
block store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from .. import config
from ..errors import BadRequest, DFSError
from ..net import NO_SECURITY, Connection, Security, cancel_and_wait, within
from .blockstore import BlockStore, Replica

log = logging.getLogger(__name__)

REPORT_PAGE = 20_000  # replicas per report frame: ~21 bytes each, well inside MAX_HEADER
POLL_WAIT = 20.0  # seconds meta may hold a poll_commands request before answering "none"


class CommandFence:
    """Which meta replies may command this chunkserver: the highest election term seen in any
    reply from any meta, and the rule applied to each reply. Never does I/O.

    One fence is shared by all the links of a chunkserver, so a term learnt from one meta
    (even a standby's reply) fences off the commands of an older active on another link.
    """

    def __init__(self) -> None:
        self.term = 0  # the highest `ha.term` seen in any reply

    def admit(self, header: dict[str, Any]) -> bool:
        """Learn the term from one reply's header; True when its commands may be carried out:
        a meta not in HA mode (no `ha`), or the active one at the highest term seen."""
        return self.judge(header) in ("non-HA", "active")

    def judge(self, header: dict[str, Any]) -> str:
        """`admit`, naming the verdict for log lines: "non-HA" or "active" (obeyed), "standby",
        "stale" (says it is active at an older term than one seen) or "malformed"."""
        ha = header.get("ha")
        if ha is None:
            return "non-HA"
        if not isinstance(ha, dict):
            return "malformed"
        term = ha.get("term")
        if not isinstance(term, int) or isinstance(term, bool) or term < 0:
            return "malformed"  # the peer's bad input: obey nothing it says
        self.term = max(self.term, term)
        if not ha.get("active"):
            return "standby"
        return "active" if term >= self.term else "stale"


def beat_timeout(interval: float) -> float:
    """How long a heartbeat waits for its reply before the link is dropped and made anew
    (then registered again): a few heartbeats, far below meta's dead timeout (ten of them by
    default), not the RPC timeout, which is as long as the dead timeout. A partition that
    heals while TCP's retransmission timer has backed off holds up meta's reply for seconds
    more, and a server waiting for it sends no heartbeat: meta declares it dead again right
    after it came back, and repairs it all over. A new connection gets through at once."""
    return min(config.RPC_TIMEOUT, max(2.0, 4 * interval))


class MetaLink:
    def __init__(self, store: BlockStore, meta_addr: str, interval: float,
                 advertise: Callable[[Connection], str], writing: Callable[[], int],
                 replicate: Callable[[int, int, str, Any], None],
                 block_report_interval: float = config.BLOCK_REPORT_INTERVAL,
                 security: Security = NO_SECURITY, fence: CommandFence | None = None) -> None:
        self.store = store
        self.meta_addr = meta_addr
        self.interval = interval
        self._advertise = advertise
        self._writing = writing
        self._replicate = replicate
        self.block_report_interval = block_report_interval
        self.security = security
        self._last_full_report = 0.0
        self._report_due = False  # a full report must go with the next heartbeat
        self.addr = ""
        self.conn: Connection | None = None
        self.registered = False
        self._received: list[list[int]] = []
        self._corrupt: list[list[int]] = []  # [block, gen] found bad here, for meta
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._poll: asyncio.Task[None] | None = None
        self._polling = True  # False once meta has said it does not know poll_commands
        self.fence = fence if fence is not None else CommandFence()
        self.verdict = ""  # the fence's last verdict on this meta's replies, for log lines

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await cancel_and_wait(self._poll)
        if self.conn is not None:
            self.conn.close()

    def block_received(self, block_id: int, replica: Replica) -> None:
        """A replica was finalized: tell meta soon (it need not wait for the next beat)."""
        if self.conn is None:
            return  # not connected: the full report of the next registration will carry it
        self._received.append([block_id, replica.gen, replica.size, replica.digest])
        self._wake.set()

    def block_corrupt(self, block_id: int, gen: int) -> None:
        """A replica here failed its checksums: tell meta with the next heartbeat (soon)."""
        self._corrupt.append([block_id, gen])
        self._wake.set()

    def report_now(self) -> None:
        """Replicas were lost (a data dir failed): send a full block report with the next
        heartbeat, now, so meta finds them gone and re-replicates them (as HDFS does after
        a volume failure). Until then reads of them here answer `not found`."""
        self._report_due = True
        self._wake.set()

    def heard(self, header: dict[str, Any]) -> bool:
        """Pass one reply from this meta through the fence (every reply: each raises the term
        seen); True when the commands it carries may be carried out."""
        verdict = self.fence.judge(header)
        if verdict != self.verdict:
            self.verdict = verdict
            ha: Any = header.get("ha")  # a dict whenever the verdict names a term
            if verdict == "stale":
                log.warning("meta %s says it is active at term %s, but term %d was seen: "
                            "ignoring its commands", self.meta_addr, ha["term"], self.fence.term)
            elif verdict == "malformed":
                log.warning("meta %s sent a malformed ha field %r: ignoring its commands",
                            self.meta_addr, ha)
            elif verdict != "non-HA":
                log.debug("meta %s is %s at term %s (leader %r): %s its commands",
                          self.meta_addr, verdict, ha["term"], ha.get("leader") or "",
                          "taking" if verdict == "active" else "ignoring")
        return verdict in ("non-HA", "active")

    def _stats(self) -> dict[str, Any]:
        capacity, used, free = self.store.stats()
        return {"chunk_id": self.store.server_id, "addr": self.addr, "capacity": capacity,
                "used": used, "free": free, "load": int(os.getloadavg()[0] * 100),
                "writing": self._writing(), "blocks_count": len(self.store.index),
                "dirs": self.store.dirs()}

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await Connection.open(self.meta_addr, role="chunk",
                                                      security=self.security)
                    self.addr = self._advertise(self.conn)
                    self.registered = False
                if not self.registered:
                    await self._register()
                await self._beat()
                failures = 0
                if self._polling and self.registered and (self._poll is None or
                                                          self._poll.done()):
                    self._poll = asyncio.ensure_future(self._poll_commands(self.conn))
            except DFSError as exc:
                if failures == 0:
                    log.warning("meta %s: %s; retrying every second", self.meta_addr, exc)
                failures += 1
                self.registered = False
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                await asyncio.sleep(1.0)
                continue
            try:
                await within(self._wake.wait(), self.interval)
                await asyncio.sleep(0.05)  # let a burst of finalized blocks share one message
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _poll_commands(self, conn: Connection) -> None:
        """Hold a poll_commands request open at meta and carry out the copies it answers
        with, until the connection or the registration goes (the heartbeat loop starts a new
        poller after registering again)."""
        while not conn.closed and conn is self.conn and self.registered:
            try:
                reply = await conn.call("poll_commands", chunk_id=self.store.server_id,
                                        addr=self.addr, wait=POLL_WAIT,
                                        timeout=POLL_WAIT + config.RPC_TIMEOUT)
            except BadRequest as exc:
                if "unknown op" in str(exc):
                    log.info("meta %s does not take poll_commands: copies come with "
                             "heartbeats", self.meta_addr)
                    self._polling = False
                return
            except DFSError:
                return  # the heartbeat loop notices a broken link and reconnects
            header = reply.header
            reply.release()
            obey = self.heard(header)
            if header.get("reregister"):
                self._wake.set()  # the heartbeat loop learns it too and registers again
                return
            if obey:
                for cmd in header.get("commands") or []:
                    self._command(cmd)

    async def _register(self) -> None:
        assert self.conn is not None
        mine = self.store.read_identity("cluster.id")
        self._received = []  # the full report covers them
        self._report_due = False
        report = self.store.report()
        reply = await self.conn.call("register", blocks=report[:REPORT_PAGE], cluster_id=mine,
                                     **self._stats())
        self.heard(reply.header)
        theirs = reply.header.get("cluster_id") or ""
        if theirs and not mine:
            self.store.write_identity("cluster.id", theirs)
        for i in range(REPORT_PAGE, len(report), REPORT_PAGE):
            if not await self._report_page(report[i:i + REPORT_PAGE]):
                return  # meta forgot us meanwhile (it restarted): register again
        self.registered = True
        self._last_full_report = time.monotonic()  # registration carried a full report
        log.info("registered with meta %s as %s (%d blocks)", self.meta_addr, self.addr,
                 len(self.store.index))

    async def _report_page(self, page: list[list[int]], **full: Any) -> bool:
        """Send one page; False when meta does not know this server (it must register)."""
        assert self.conn is not None
        reply = await self.conn.call("block_report", chunk_id=self.store.server_id,
                                     addr=self.addr, blocks=page, **full)
        self.heard(reply.header)
        if reply.header.get("reregister"):
            self.registered = False
            return False
        return True

    async def _full_report(self) -> None:
        """The periodic full block report, checked against the disk first: meta reconciles
        what it believes we hold, and learns of replicas lost from under us."""
        missing = await asyncio.get_running_loop().run_in_executor(
            None, self.store.find_missing)
        for block_id, gen in missing:
            self.store.forget(block_id, gen)
        report = self.store.report()
        starts = range(0, max(len(report), 1), REPORT_PAGE)
        for i in starts:
            if not await self._report_page(report[i:i + REPORT_PAGE], full=True,
                                           first=i == 0, last=i == starts[-1]):
                return

    async def _beat(self) -> None:
        assert self.conn is not None
        now = time.monotonic()
        if self._report_due or now - self._last_full_report >= self.block_report_interval:
            self._last_full_report = now
            self._report_due = False
            await self._full_report()
        received, self._received = self._received[:REPORT_PAGE], self._received[REPORT_PAGE:]
        corrupt, self._corrupt = self._corrupt[:REPORT_PAGE], self._corrupt[REPORT_PAGE:]
        if self._received or self._corrupt:
            self._wake.set()  # more than a page waits: the next beat comes soon
        try:
            reply = await self.conn.call("heartbeat", received=received, corrupt=corrupt,
                                         timeout=beat_timeout(self.interval), **self._stats())
        except DFSError:
            self._received = received + self._received
            self._corrupt = corrupt + self._corrupt
            raise
        obey = self.heard(reply.header)
        if reply.header.get("reregister"):
            log.info("meta %s asked us to register again (it restarted)", self.meta_addr)
            self.registered = False
            self._wake.set()
            return
        if obey:
            for cmd in reply.header.get("commands") or []:
                self._command(cmd)

    def _command(self, cmd: dict[str, Any]) -> None:
        if cmd.get("op") == "delete":
            deleted = 0
            for block_id, gen in cmd.get("blocks") or []:
                if self.store.delete(int(block_id), int(gen)):
                    deleted += 1
            if deleted:
                log.info("deleted %d blocks on the request of meta %s", deleted,
                         self.meta_addr)
        elif cmd.get("op") == "replicate":
            for entry in cmd.get("blocks") or []:
                block_id, gen, target = entry[:3]
                token = entry[3] if len(entry) > 3 else None
                self._replicate(int(block_id), int(gen), str(target), token)
        else:
            log.warning("ignoring unknown command from meta %s: %r", self.meta_addr,
                        cmd.get("op"))


class MetaLinks:
    """One `MetaLink` per meta, sharing one `CommandFence`: what the chunkserver's service
    and scrubber talk to instead of a single link. Reports go to every meta (each
    link keeps its own pending lists, so a meta that was down hears of them when it is back:
    the link registers again with a full report); commands are obeyed as the fence allows."""

    def __init__(self, store: BlockStore, meta_addrs: list[str], interval: float,
                 advertise: Callable[[Connection], str], writing: Callable[[], int],
                 replicate: Callable[[int, int, str, Any], None],
                 block_report_interval: float = config.BLOCK_REPORT_INTERVAL,
                 security: Security = NO_SECURITY) -> None:
        if not meta_addrs:
            raise ValueError("a chunkserver needs at least one meta address")
        self.fence = CommandFence()
        self.links = [MetaLink(store, addr, interval, advertise, writing, replicate,
                               block_report_interval, security, fence=self.fence)
                      for addr in meta_addrs]

    @property
    def addrs(self) -> list[str]:
        return [link.meta_addr for link in self.links]

    def start(self) -> None:
        for link in self.links:
            link.start()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links))

    def block_received(self, block_id: int, replica: Replica) -> None:
        """A replica was finalized: every meta must learn where it lives."""
        for link in self.links:
            link.block_received(block_id, replica)

    def block_corrupt(self, block_id: int, gen: int) -> None:
        """A replica here failed its checksums: every meta must stop counting it."""
        for link in self.links:
            link.block_corrupt(block_id, gen)

    def report_now(self) -> None:
        """Replicas were lost with a failed data dir: every meta gets a full report now."""
        for link in self.links:
            link.report_now()
