"""`dfs-bench meta --ha`: what HA metas cost the namespace, as a ratio measured in one run.

An HA meta journals into etcd instead of its local file (dfs/ha/journal.py): each group
commit becomes one etcd transaction, which etcd makes durable before it answers, with a Raft
round (one member here) and an fsync of its own WAL, where the local journal fsyncs its file.
This runs the `meta` workload (dfs/bench/worker.py: creates, a top-up, ls, stats, rms) on a
single meta with its local journal and on an HA pair (two metas, `--ha etcd://...`, one etcd
this bench starts), --runs times each, the order alternating (local/ha, ha/local, ...), and
reports the median of each figure in both modes and the ratio HA/local.

Fairness: every measurement gets a fresh cluster (and, for HA, a fresh etcd) in a data dir of
its own under the bench's dir, so etcd's WAL and the metas' journals sit on the same disk,
removed afterwards, with the page cache's dirty data written back (sync(2), untimed) before it
starts. Both modes have two chunkservers reporting to every meta and the same client worker;
the HA pair's standby follows etcd meanwhile, as it would in service. Server CPU is taken
from /proc over the workload, per role, so the ratio can be read beside what etcd burned.

Owns the A/B order, the medians and the report; starts no server (dfs.bench.cli does) and
judges no figure: the figures are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

MODES = ("local", "ha")
DURABILITY = ("local: meta fsyncs its journal file before it answers; ha: etcd fsyncs its WAL "
              "(and runs a Raft round) before it accepts a journal batch")

Log = Callable[[str], None]

# name -> (label, unit, where in a measurement)
FIGURES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "create_ops": ("create", "ops/s", ("create_ops",)),
    "stat_ops": ("stat", "ops/s", ("stat_ops",)),
    "rm_ops": ("rm", "ops/s", ("rm_ops",)),
    "ls_s": ("ls of the directory", "s", ("ls_s",)),
    "create_p50_ms": ("create p50", "ms", ("latency", "create", "p50_ms")),
    "create_p99_ms": ("create p99", "ms", ("latency", "create", "p99_ms")),
    "stat_p50_ms": ("stat p50", "ms", ("latency", "stat", "p50_ms")),
    "rm_p50_ms": ("rm p50", "ms", ("latency", "rm", "p50_ms")),
    "rm_p99_ms": ("rm p99", "ms", ("latency", "rm", "p99_ms")),
    "cpu_s": ("server CPU, all daemons", "s", ("cpu_total_s",)),
}


def _at(measurement: dict[str, Any], where: tuple[str, ...]) -> float:
    value: Any = measurement
    for key in where:
        value = value[key]
    return float(value)


def ratio(local: float, ha: float) -> float:
    return round(ha / local, 3) if local else 0.0


def run(runs: int, once: Callable[[str, int], dict[str, Any]], log: Log) -> dict[str, Any]:
    """`runs` pairs of measurements, once(mode, i) each; pair i starts with the local meta
    when i is even, with the HA pair when odd. The medians, ratios and peak RSS."""
    done: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    order = []
    for i in range(runs):
        pair = list(MODES) if i % 2 == 0 else list(MODES)[::-1]
        order.append(pair)
        for mode in pair:
            log(f"meta, {mode} journal ({i + 1} of {runs})")
            done[mode].append(once(mode, i))
    figures: dict[str, Any] = {}
    for name, (_label, _unit, where) in FIGURES.items():
        values = {mode: [_at(m, where) for m in done[mode]] for mode in MODES}
        local, ha = (statistics.median(values[mode]) for mode in MODES)
        figures[name] = {"local": round(local, 6), "ha": round(ha, 6),
                         "ratio": ratio(local, ha),
                         "local_runs": values["local"], "ha_runs": values["ha"],
                         "run_ratios": [ratio(a, b) for a, b in
                                        zip(values["local"], values["ha"], strict=True)]}
    cpu = {mode: _median_by_role([m["cpu_s"] for m in done[mode]]) for mode in MODES}
    rss = {mode: _max_by_role([m["rss_mib"] for m in done[mode]]) for mode in MODES}
    return {"order": order, "figures": figures, "cpu_s": cpu, "rss_mib": rss,
            "ls_entries": done["local"][0]["ls_entries"], "durability": DURABILITY}


def _median_by_role(per_run: list[dict[str, float]]) -> dict[str, float]:
    return {role: round(statistics.median(run[role] for run in per_run), 3)
            for role in per_run[0]}


def _max_by_role(per_run: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for run_rss in per_run:
        for role, mib in run_rss.items():
            out[role] = max(out.get(role, 0.0), mib)
    return out


def render(r: dict[str, Any]) -> str:
    lines = [f"dfs-bench meta --ha: {r['ops']} ops, {r['concurrency']} clients, ls of "
             f"{r['ls_entries']} entries; a single meta (local journal) against an HA pair "
             f"(2 metas, 1 etcd)",
             f"  median of {r['runs']} runs each, order alternating "
             + " ".join("/".join(pair) for pair in r["order"]) + "; ratio: HA / local",
             f"  durability: {r['durability']}",
             f"  {'':<26}{'':<7}{'local':>10}{'ha':>10}{'ratio':>8}   ratio per run"]
    for name, (label, unit, _where) in FIGURES.items():
        f = r["figures"][name]
        runs = " ".join(f"{x:.2f}" for x in f["run_ratios"])
        digits = {"ops/s": 1, "ms": 2}.get(unit, 3)
        lines.append(f"  {label:<26}{unit:<7}{f['local']:>10.{digits}f}{f['ha']:>10.{digits}f}"
                     f"{f['ratio']:>8.2f}   {runs}")
    for mode in MODES:
        lines.append(f"  server CPU, {mode} (median s): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"][mode].items()))
    for mode in MODES:
        lines.append(f"  peak RSS, {mode}: "
                     + ", ".join(f"{k} {v:.0f} MiB" for k, v in r["rss_mib"][mode].items()))
    if r.get("secret") or r.get("tls"):
        lines.append("  with: " + ", ".join(k for k in ("secret", "tls") if r.get(k)))
    lines.append(f"  ({r.get('seconds', 0):.0f} s in all)")
    return "\n".join(lines)
