"""Hosts of their own for the network-fault tests: Linux network namespaces on one bridge.

Every host (meta, each chunkserver, each client) is a network namespace with one veth link
`eth0` to a bridge in the root namespace, and its own address on a private /24. The test
process itself sits on the bridge (the subnet's .1), so it can reach every host, and
`Cluster(placement=net.place)` starts each dfsd inside its host with `ip netns exec`.

Faults, as a switch, a cable or a bad NIC would cause them:

    net.cut("chunk0")                   link down: the host is off the network
    net.block("chunk0", ["meta"])       drop both ways between two hosts (iptables)
    net.block("chunk0", ["meta"], "out")   ... only what chunk0 sends to meta
    net.loss("chunk0", 0.02)            drop 2% of the host's packets, each way
    net.rate("chunk0", "20mbit")        cap what the host sends (tc tbf)
    net.relay("client0", "chunk0", port, delay=0.05, jitter=0.01)
                                        the host's TCP to chunk0:port goes through a relay
                                        in the test process that holds every byte for
                                        delay±jitter (this kernel has no netem), or, with
                                        blackhole=True, accepts and never answers
    net.heal("chunk0") / net.heal_all()

Everything is made by `Network.create()` and removed by `close()`: the namespaces, the veth
pairs and the bridge. Needs root, iproute2 and iptables.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

CHAIN = "DFSFAULT"
_counter = itertools.count()


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """Why network namespaces cannot be used here, or None when they can: root, the tools,
    and a kernel that gives a new namespace a veth link and netfilter (tried once, for
    real, on a throwaway namespace)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bin/install-test-deps installs it)"
    ns, link = f"dfsprobe{os.getpid()}", f"dfsprobe{os.getpid() % 100000}"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "netns", "exec", ns, "iptables", "-w", "-A", "OUTPUT", "-m", "statistic",
           "--mode", "random", "--probability", "0.5", "-j", "DROP")
        sh("ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-L", "-n")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"this kernel cannot host the fault tests' network namespaces: {exc}"
    finally:
        sh("ip", "link", "del", link, check=False)
        sh("ip", "netns", "del", ns, check=False)
    return None


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")
    return res.stdout


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    veth: str  # the root-namespace end of its link

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


@dataclass
class Network:
    """A bridge and the hosts on it. Names are unique per process and call, so tests (or
    two suites) side by side never share a namespace, an interface or a subnet."""
    tag: str
    subnet: str  # "10.X.Y"
    bridge: str
    hosts: dict[str, Host] = field(default_factory=dict)
    relays: list["Relay"] = field(default_factory=list)

    @classmethod
    def create(cls) -> "Network":
        n = (os.getpid() * 7 + next(_counter)) % 30000
        tag = f"{n:05d}"
        taken = sh("ip", "-4", "addr")
        for k in range(250):
            subnet = f"10.{200 + (n + k) // 250 % 50}.{(n + k) % 250}"
            if f"inet {subnet}." not in taken:
                break
        net = cls(tag, subnet, f"dfsbr{tag}")
        sh("ip", "link", "add", net.bridge, "type", "bridge")
        try:
            sh("ip", "addr", "add", f"{subnet}.1/24", "dev", net.bridge)
            sh("ip", "link", "set", net.bridge, "up")
        except BaseException:
            net.close()
            raise
        return net

    @property
    def gateway(self) -> str:
        """The test process's own address on the bridge."""
        return f"{self.subnet}.1"

    def add_host(self, name: str) -> Host:
        if name in self.hosts:
            return self.hosts[name]
        k = len(self.hosts)
        ns, veth = f"dfs{self.tag}-{name}", f"dfs{self.tag}h{k}"
        host = Host(name, ns, f"{self.subnet}.{k + 2}", veth)
        sh("ip", "netns", "add", ns)
        self.hosts[name] = host
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        ip = ["ip", "-n", ns]
        sh(*ip, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        sh(*ip, "link", "set", "eth0", "up")
        sh(*ip, "link", "set", "lo", "up")
        sh(*ip, "route", "add", "default", "via", self.gateway)
        for table, hooks in (("filter", ("INPUT", "OUTPUT")), ("nat", ("OUTPUT",))):
            self._ipt(host, "-t", table, "-N", CHAIN)
            for hook in hooks:
                self._ipt(host, "-t", table, "-A", hook, "-j", CHAIN)
        return host

    def place(self, name: str) -> tuple[str, list[str]]:
        """For Cluster(placement=...): each daemon on a host of its own name."""
        host = self.add_host(name)
        return host.ip, host.prefix

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def _ipt(self, host: Host, *args: str) -> None:
        sh("ip", "netns", "exec", host.ns, "iptables", "-w", *args)

    # faults -----------------------------------------------------------------------------
    def cut(self, name: str) -> None:
        """Pull the cable: the host's link goes down; nothing in or out."""
        sh("ip", "link", "set", self[name].veth, "down")

    def block(self, name: str, peers: Iterable[str], direction: str = "both") -> None:
        """Drop traffic between `name` and each of `peers`: "out" only what `name` sends,
        "in" only what it receives, "both" (a partition)."""
        host = self[name]
        for peer in peers:
            ip = self.gateway if peer == "tester" else self[peer].ip
            if direction in ("out", "both"):
                self._ipt(host, "-A", CHAIN, "-o", "eth0", "-d", ip, "-j", "DROP")
            if direction in ("in", "both"):
                self._ipt(host, "-A", CHAIN, "-i", "eth0", "-s", ip, "-j", "DROP")

    def loss(self, name: str, fraction: float) -> None:
        """Drop a random `fraction` of the host's packets, each way."""
        for flag in ("-o", "-i"):
            self._ipt(self[name], "-A", CHAIN, flag, "eth0", "-m", "statistic", "--mode",
                      "random", "--probability", f"{fraction:.4f}", "-j", "DROP")

    def rate(self, name: str, rate: str) -> None:
        """Cap what the host sends to `rate` (tc's units: "20mbit")."""
        sh("ip", "netns", "exec", self[name].ns, "tc", "qdisc", "replace", "dev", "eth0",
           "root", "tbf", "rate", rate, "burst", "64kb", "latency", "500ms")

    def relay(self, name: str, peer: str, port: int, *, delay: float = 0.0,
              jitter: float = 0.0, blackhole: bool = False, seed: int = 0) -> "Relay":
        """Send `name`'s TCP connections to peer:port through a relay in the test process
        (iptables DNAT in `name`'s namespace): every byte is held delay±jitter in each
        direction, order kept; or, with `blackhole`, connections are accepted and read but
        never answered nor forwarded."""
        target = self[peer]
        relay = Relay(self.gateway, (target.ip, port), delay, jitter, blackhole, seed)
        self.relays.append(relay)
        self._ipt(self[name], "-t", "nat", "-A", CHAIN, "-p", "tcp", "-d", target.ip,
                  "--dport", str(port), "-j", "DNAT", "--to-destination",
                  f"{self.gateway}:{relay.port}")
        return relay

    def heal(self, name: str, relays: bool = False) -> None:
        """Undo the faults on this host: link up, drops and loss gone, no rate cap. With
        `relays`, its connections stop going through relays too; the ones made through a
        relay then break, as they would when a NAT box between two hosts restarts."""
        host = self[name]
        sh("ip", "link", "set", host.veth, "up")
        self._ipt(host, "-F", CHAIN)
        if relays:
            self._ipt(host, "-t", "nat", "-F", CHAIN)
        sh("ip", "netns", "exec", host.ns, "tc", "qdisc", "del", "dev", "eth0", "root",
           check=False)

    def heal_all(self, relays: bool = False) -> None:
        for name in self.hosts:
            self.heal(name, relays)

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
        for host in self.hosts.values():
            sh("ip", "link", "del", host.veth, check=False)
            sh("ip", "netns", "del", host.ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


class Relay:
    """A TCP relay with a delay line, on its own thread and event loop.

    Each direction of each connection is a queue of (due time, bytes): a chunk read at t is
    written at t + delay + U(-jitter, jitter), never before the chunk ahead of it (TCP keeps
    order). `blackhole` accepts, reads and drops everything, and never connects onward: a
    server that takes connections and never answers."""

    def __init__(self, host: str, target: tuple[str, int], delay: float, jitter: float,
                 blackhole: bool, seed: int) -> None:
        self.target, self.delay, self.jitter, self.blackhole = target, delay, jitter, blackhole
        self.rng = random.Random(seed)
        self.connections = 0
        self.bytes = 0
        self.loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._writers: set[asyncio.StreamWriter] = set()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True,
                                       name=f"relay->{target[0]}:{target[1]}")
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> asyncio.AbstractServer:
            return await asyncio.start_server(self._connection, sock=self._sock)

        self.server = self.loop.run_until_complete(serve())
        started.set()
        self.loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if self.blackhole:
                while await reader.read(1 << 16):
                    pass
                return
            up_r, up_w = await asyncio.open_connection(*self.target)
            self._writers.add(up_w)
            await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer),
                                 return_exceptions=True)
        except OSError:
            pass
        finally:
            for w in list(self._writers):
                if w is writer or w.get_extra_info("peername") is None:
                    self._writers.discard(w)
            writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        line: deque[tuple[float, bytes]] = deque()
        more = asyncio.Event()
        done = False

        async def deliver() -> None:
            while line or not done:
                if not line:
                    more.clear()
                    await more.wait()
                    continue
                due, data = line[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                line.popleft()
                dst.write(data)
                await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        sender = asyncio.ensure_future(deliver())
        last = 0.0
        try:
            while True:
                data = await src.read(1 << 18)
                if not data:
                    break
                self.bytes += len(data)
                due = time.monotonic() + self.delay + self.rng.uniform(-self.jitter,
                                                                       self.jitter)
                last = max(last, due)
                line.append((last, data))
                more.set()
                while len(line) > 256:  # bound memory: back-pressure the sender
                    await asyncio.sleep(0.001)
        except OSError:
            pass
        finally:
            done = True
            more.set()
            with contextlib.suppress(Exception):
                await sender
            dst.close()

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for w in self._writers:
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.call_soon(self.loop.stop)
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
            self.thread.join(5)
