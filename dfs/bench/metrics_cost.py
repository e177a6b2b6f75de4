"""`dfs-bench metrics`: what the HTTP side door's metrics cost, as a ratio measured in one run.

With `--http-port` on, every dfsd's protocol server counts and times each request
(`net.Server.observe` -> dfs/web/metrics.py), and something scrapes `/metrics`. This runs the
dfs side of `large` and of `small` (the same code as those workloads, dfs/bench/cli.py) on a
cluster with HTTP off (`--http-port 0`, no observe hook) and on one with HTTP on, --runs times
each, the order alternating (off/on, on/off, ...), and reports the median of each figure on and
off and the cost in percent: how much slower, or how much more CPU, with metrics on.

Fairness: every measurement gets a fresh cluster (meta and two chunkservers on loopback, data
on disk, fsync on, R=2) in a data dir of its own, removed afterwards, with the page cache's
dirty data written back (sync(2), untimed) before it starts; both modes move the same source
file. While HTTP is on, a thread of this process scrapes `/metrics` of meta and of each
chunkserver every second (`--scrape-interval`), as Prometheus would (one target after
another), so the cost of serving scrapes is in the figures; with an interval of 0 they are
scraped only between workloads, which leaves the request counting alone to measure. Besides
the client-side rates and latencies, the CPU time the three daemons used in each workload
(utime + stime from /proc) is compared: on this noisy machine it is the steadier measure of
the hot-path cost. With metrics on, the request counters also say how many requests that CPU
served, so the extra CPU per request is given.
Last, the hot-path work alone is timed in this process (`observe_cost_us`: the two clock reads
and the `RequestMetrics.observe` call a request gets with metrics on) and set against the
server CPU per request with metrics off: an estimate of the per-request cost that no noise
on the machine can hide or inflate, though it leaves out serving the scrapes.

Owns the A/B order, the scraping, the CPU accounting and the report; starts no server
(dfs.bench.cli does) and judges no figure: the target is in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import os
import ssl
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..net import Security
from .measure import latency_ms

SCRAPE_INTERVAL = 1.0  # seconds, as a short Prometheus scrape_interval
SCRAPE_TIMEOUT = 5.0
MODES = ("off", "on")
_TICK = os.sysconf("SC_CLK_TCK")

Log = Callable[[str], None]
Work = Callable[[], dict[str, Any]]

# name -> (label, unit, where in a measurement, True when higher is better)
FIGURES: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    "large_put_MBps": ("large put", "MB/s", ("large", "put_MBps"), True),
    "large_get_MBps": ("large get to a local file", "MB/s", ("large", "get_MBps"), True),
    "large_get_warm_MBps": ("large get, warm cache", "MB/s", ("large", "get_warm_MBps"), True),
    "small_put_ops": ("small put", "files/s", ("small", "put_ops"), True),
    "small_get_ops": ("small get", "files/s", ("small", "get_ops"), True),
    "small_put_p50_ms": ("small put p50", "ms", ("small", "latency", "put", "p50_ms"), False),
    "small_put_p99_ms": ("small put p99", "ms", ("small", "latency", "put", "p99_ms"), False),
    "small_get_p50_ms": ("small get p50", "ms", ("small", "latency", "get", "p50_ms"), False),
    "small_get_p99_ms": ("small get p99", "ms", ("small", "latency", "get", "p99_ms"), False),
    "cpu_large_s": ("server CPU, large", "s", ("cpu_s", "large"), False),
    "cpu_small_s": ("server CPU, small", "s", ("cpu_s", "small"), False),
}


def client_ssl(options: dict[str, str]) -> ssl.SSLContext | None:
    """For HTTPS scrapes under --tls: a context that trusts the cluster's CA (it also presents
    the member certificate, which the side door may or may not ask for); else None."""
    if not options.get("tls_cert"):
        return None
    return Security(None, tls_cert=options["tls_cert"], tls_key=options.get("tls_key"),
                    tls_ca=options.get("tls_ca")).client_ssl


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Scraper:
    """Scrapes every URL (role -> /metrics) every `interval` seconds on a thread of its own
    while running, and on demand with `snapshot`; keeps each scrape's duration and size.
    With no URLs it does nothing."""

    def __init__(self, urls: dict[str, str], context: ssl.SSLContext | None,
                 interval: float = SCRAPE_INTERVAL) -> None:
        self.urls, self.context, self.interval = urls, context, interval
        self.durations: list[float] = []
        self.sizes: dict[str, int] = {}
        self.failed = 0
        self.last_error = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)

    def fetch(self, role: str) -> str:
        """One scrape of one target: its text, or "" if it failed (counted)."""
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(self.urls[role], timeout=SCRAPE_TIMEOUT,
                                        context=self.context) as reply:
                body: bytes = reply.read()
        except OSError as exc:
            with self._lock:
                self.failed += 1
                self.last_error = f"{self.urls[role]}: {exc}"
            return ""
        with self._lock:
            self.durations.append(time.perf_counter() - t0)
            self.sizes[role] = len(body)
        return body.decode()

    def snapshot(self) -> int:
        """Scrape every target now: the requests its counters have counted, summed."""
        return sum(requests_counted(self.fetch(role)) for role in self.urls)

    def _loop(self) -> None:
        while True:
            for role in self.urls:
                self.fetch(role)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Scraper:
        if self.urls and self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def requests_counted(text: str) -> int:
    """The sum of a dfsd's `*_requests_total` counters in a /metrics text."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_requests_total"):
                total += sample.value
    return int(total)


@contextmanager
def _cpu(pids: dict[str, int], into: dict[str, float], key: str) -> Iterator[None]:
    """CPU seconds the server processes (every role but the client) used over the block."""
    servers = [pid for role, pid in pids.items() if role != "client"]
    before = sum(cpu_seconds(pid) for pid in servers)
    yield
    into[key] = round(sum(cpu_seconds(pid) for pid in servers) - before, 3)


def measure(pids: dict[str, int], urls: dict[str, str], context: ssl.SSLContext | None,
            interval: float, large: Work, small: Work) -> dict[str, Any]:
    """One measurement on a started cluster: `large`, then `small`, with the server
    processes' CPU time of each, and, when `urls` are given (HTTP on), /metrics scraped
    throughout and the requests counted in each workload. RuntimeError if any scrape
    failed: then the figures would not include what they claim to."""
    cpu: dict[str, float] = {}
    requests: dict[str, int] = {}
    with Scraper(urls, context, interval) as scraper:
        counted = scraper.snapshot()
        with _cpu(pids, cpu, "large"):
            large_figures = large()
        after_large = scraper.snapshot()
        with _cpu(pids, cpu, "small"):
            small_figures = small()
        after_small = scraper.snapshot()
    if scraper.failed:
        raise RuntimeError(f"{scraper.failed} scrapes of /metrics failed; last: "
                           f"{scraper.last_error}")
    result: dict[str, Any] = {"large": large_figures, "small": small_figures, "cpu_s": cpu}
    if urls:
        requests = {"large": after_large - counted, "small": after_small - after_large}
        if not all(requests.values()):
            raise RuntimeError(f"metrics on, but the request counters counted {requests}")
        result["requests"] = requests
        result["scrapes"] = {"seconds": scraper.durations, "bytes": scraper.sizes}
    return result


def _at(measurement: dict[str, Any], where: tuple[str, ...]) -> float:
    value: Any = measurement
    for key in where:
        value = value[key]
    return float(value)


def cost_pct(off: float, on: float, higher_is_better: bool) -> float:
    """How much worse `on` is than `off`, in percent of `off` (negative: on did better)."""
    if off == 0:
        return 0.0
    return round(100 * ((off - on) if higher_is_better else (on - off)) / off, 2)


def observe_cost_us(calls: int = 200_000, repeat: int = 5) -> float:
    """Microseconds of the work metrics add to one request: two perf_counter() reads and one
    RequestMetrics.observe of a label set already cached, as in a running daemon; the best of
    `repeat` loops of `calls` (loop overhead included)."""
    from prometheus_client import CollectorRegistry

    from ..web.metrics import RequestMetrics
    observe = RequestMetrics(CollectorRegistry(), "dfs_bench").observe
    clock = time.perf_counter
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        for _ in range(calls):
            started = clock()
            observe("read_block", "ok", clock() - started)
        best = min(best, clock() - t0)
    return best / calls * 1e6


def run(runs: int, once: Callable[[bool, int], dict[str, Any]], log: Log,
        interval: float = SCRAPE_INTERVAL) -> dict[str, Any]:
    """`runs` pairs of measurements, once(http, i) each; run i starts with HTTP off when i is
    even, on when odd. The medians, costs and scrape statistics."""
    done: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    order = []
    for i in range(runs):
        pair = list(MODES) if i % 2 == 0 else list(MODES)[::-1]
        order.append(pair)
        for mode in pair:
            log(f"metrics {mode} ({i + 1} of {runs})")
            done[mode].append(once(mode == "on", i))
    figures: dict[str, Any] = {}
    for name, (_label, _unit, where, higher) in FIGURES.items():
        values = {mode: [_at(m, where) for m in done[mode]] for mode in MODES}
        off, on = (statistics.median(values[mode]) for mode in MODES)
        figures[name] = {
            "off": round(off, 3), "on": round(on, 3), "cost_pct": cost_pct(off, on, higher),
            "off_runs": values["off"], "on_runs": values["on"],
            "run_cost_pct": [cost_pct(a, b, higher)
                             for a, b in zip(values["off"], values["on"], strict=True)]}
    requests = {phase: int(statistics.median(m["requests"][phase] for m in done["on"]))
                for phase in ("large", "small")}
    extra_us = {phase: round(1e6 * (figures[f"cpu_{phase}_s"]["on"]
                                    - figures[f"cpu_{phase}_s"]["off"]) / requests[phase], 2)
                for phase in requests}
    durations = sorted(s for m in done["on"] for s in m["scrapes"]["seconds"])
    sizes: dict[str, int] = {}
    for m in done["on"]:
        for role, size in m["scrapes"]["bytes"].items():
            sizes[role] = max(sizes.get(role, 0), size)
    rss = {mode: _max_rss(done[mode]) for mode in MODES}
    observe_us = observe_cost_us()
    hot_path = {"observe_us": round(observe_us, 3),
                **{f"{phase}_pct": round(100 * observe_us * requests[phase]
                                         / (1e6 * figures[f"cpu_{phase}_s"]["off"]), 2)
                   for phase in requests}}
    return {"order": order, "figures": figures, "requests": requests,
            "cpu_us_per_request": extra_us, "hot_path": hot_path,
            "scrapes": {"interval_s": interval, "count": len(durations), "failed": 0,
                        **latency_ms(durations), "bytes": sizes},
            "rss_mib": rss}


def _max_rss(measurements: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in measurements:
        for part in ("large", "small"):
            for role, mib in m[part]["rss_mib"].items():
                out[role] = max(out.get(role, 0.0), mib)
    return out


def render(r: dict[str, Any]) -> str:
    every = r["scrapes"]["interval_s"]
    scraped = f"scraped every {every:g} s" if every > 0 else "not scraped during workloads"
    lines = [f"dfs-bench metrics: metrics off (--http-port 0) against on (/metrics of every "
             f"daemon {scraped}), R={r['replication']}",
             f"  large: one {r['size'] / 2**20:.0f} MiB file; small: {r['files']} files of "
             f"{r['small_size']} bytes, {r['concurrency']} clients",
             f"  median of {r['runs']} runs each, order alternating; cost: how much worse on "
             f"is than off (negative: on did better)",
             f"  {'':<28}{'':<8}{'off':>10}{'on':>10}{'cost':>9}   cost per run"]
    for name, (label, unit, _where, _higher) in FIGURES.items():
        f = r["figures"][name]
        runs = " ".join(f"{c:+.1f}%" for c in f["run_cost_pct"])
        lines.append(f"  {label:<28}{unit:<8}{f['off']:>10.2f}{f['on']:>10.2f}"
                     f"{f['cost_pct']:>+8.1f}%   {runs}")
    req, extra = r["requests"], r["cpu_us_per_request"]
    lines.append(f"  requests counted with metrics on: large {req['large']}, small "
                 f"{req['small']}; extra server CPU per request: large "
                 f"{extra['large']:.1f} us, small {extra['small']:.1f} us")
    hot = r["hot_path"]
    lines.append(f"  hot path alone (clock reads + observe, timed here): {hot['observe_us']:.2f} "
                 f"us per request = {hot['large_pct']:.2f}% of the server CPU of large, "
                 f"{hot['small_pct']:.2f}% of small (metrics off)")
    s = r["scrapes"]
    lines.append(f"  scrapes: {s['count']}, {s['failed']} failed, p50 {s['p50_ms']:.1f} ms, "
                 f"p99 {s['p99_ms']:.1f} ms; sizes: "
                 + ", ".join(f"{role} {n / 1024:.1f} KiB" for role, n in s["bytes"].items()))
    for mode in MODES:
        lines.append(f"  peak RSS, metrics {mode}: "
                     + ", ".join(f"{k} {v:.0f} MiB" for k, v in r["rss_mib"][mode].items()))
    if r.get("secret") or r.get("tls"):
        lines.append("  with: " + ", ".join(k for k in ("secret", "tls") if r.get(k)))
    lines.append(f"  ({r.get('seconds', 0):.0f} s in all)")
    return "\n".join(lines)
