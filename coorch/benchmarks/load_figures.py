"""The figures of ``coorch bench load`` (:mod:`coorch.benchmarks.load`): totals over the
campaigns, how concurrent they really were, where each one's time went, what ran on the shared
Dask cluster, and the tables printed.

Kept apart from the run so that the figures of a saved ``--json`` can be recomputed or
printed again without starting anything.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from coorch.benchmarks.load import Finished


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(rows: list[dict], finished: list[Finished], wall_s: float, config: dict) -> dict:
    """Totals over the campaigns (latencies and gaps in ms)."""
    lat = [x for r in rows for x in r["decision_latency_s"]]
    idle = [x for r in rows for x in r["idle_s"]]
    stored = sum(r["stored"] for r in rows)
    starts = [r["first_start"] for r in rows if r["first_start"] is not None]
    ends = [r["last_end"] for r in rows if r["last_end"] is not None]
    span = max(ends) - min(starts) if starts else float("nan")
    spans = [(r["first_start"], r["last_end"]) for r in rows if r["first_start"] is not None]
    return {
        **config,
        "wall_s": wall_s,
        "measuring_span_s": span,
        "stored": stored,
        "duplicates": sum(r["duplicates"] for r in rows),
        "mismatched": [
            r["name"]
            for r in rows
            if not (r["store_matches_agents"] and r["one_measurement_per_decision"])
            or r["acquisitions"] != r["stored"]
        ],
        "failed": [f.name for f in finished if f.returncode != 0],
        "budget_missed": [r["name"] for r in rows if r["stored"] != r["budget"]],
        "throughput_per_s": stored / wall_s,
        "throughput_measuring_per_s": stored / span if span > 0 else None,
        "overlap": overlap(spans),
        "decision_latency_ms": {
            "n": len(lat),
            "p50": _ms(pct(lat, 50)),
            "p95": _ms(pct(lat, 95)),
            "max": _ms(max(lat, default=None)),
        },
        "idle_ms": {
            "n": len(idle),
            "p50": _ms(pct(idle, 50)),
            "p95": _ms(pct(idle, 95)),
            "max": _ms(max(idle, default=None)),
        },
        "campaigns_detail": [phases(r, f) for r, f in zip(rows, finished, strict=True)],
        "errors": {f.name: f.err_tail for f in finished if f.returncode != 0},
    }


def overlap(spans: list[tuple[float, float]]) -> dict:
    """How concurrent the campaigns really were (start-ups differ by tens of seconds on a
    small machine): the most measuring at once, on average over the measuring span, and the
    seconds during which all of them were."""
    if not spans:
        return {"peak": 0, "mean": 0.0, "all_s": 0.0}
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    total = max(b for _, b in spans) - min(a for a, _ in spans)
    busy = sum(b - a for a, b in spans)
    both = min(b for _, b in spans) - max(a for a, _ in spans)
    return {"peak": peak, "mean": busy / total if total > 0 else 1.0, "all_s": max(0.0, both)}


def phases(r: dict, f: Finished) -> dict:
    """A campaign's row with where its time went: start-up (process start to its first
    measurement: imports, Prefect flow run, leases, Dask client), measuring (first measurement
    start to last end) and finishing (last end to exit: the last refits, the flow's end)."""
    row = {k: v for k, v in r.items() if k not in ("decision_latency_s", "idle_s")}
    row |= {"seconds": f.seconds, "returncode": f.returncode}
    if r["first_start"] is not None:
        row["startup_s"] = r["first_start"] - f.launched
        row["measuring_s"] = r["last_end"] - r["first_start"]
        row["finishing_s"] = f.launched + f.seconds - r["last_end"]
    return row


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def busy_seconds(raw: list[tuple[str, str, float, float]]) -> float:
    """Seconds each worker spent computing, summed over workers: the union of its compute
    spans, since one worker's spans can overlap (seen for its first tasks, while it imports
    torch) though it runs one task at a time."""
    total = 0.0
    for worker in {w for _, w, _, _ in raw}:
        end = float("-inf")
        for a, b in sorted((a, b) for _, w, a, b in raw if w == worker):
            total += max(0.0, b - max(a, end))
            end = max(end, b)
    return total


def dask_use(records: list[dict], n_workers: int) -> dict:
    """What the campaigns ran on the shared cluster: tasks by function, their compute seconds,
    and how busy the workers were from the first task's start to the last one's end."""
    raw = [
        (r["key"].split("-")[0], r.get("worker", ""), s["start"], s["stop"])
        for r in records
        for s in r["startstops"]
        if s["action"] == "compute"
    ]
    spans = [(fn, a, b) for fn, _, a, b in raw]
    if not spans:
        return {"tasks": {}, "busy": None, "spans": []}
    secs: dict[str, list[float]] = {}
    for fn, a, b in spans:
        secs.setdefault(fn, []).append(b - a)
    window = max(b for _, _, b in spans) - min(a for _, a, _ in spans)
    return {
        "tasks": {
            fn: {"n": len(v), "p50_s": pct(v, 50), "max_s": max(v)} for fn, v in secs.items()
        },
        "busy": busy_seconds(raw) / (n_workers * window) if window > 0 else None,
        "window_s": window,
        "spans": raw,
    }


def print_summary(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)
    per = Table(title=f"coorch bench load: {out['campaigns']} campaigns, {out['agents']} agents")
    cols = ("campaign", "instruments", "stored/budget", "dupl.", "= agents", "rc", "s")
    for c in (*cols, "start-up s", "measuring s", "finishing s"):
        per.add_column(c, justify="left" if c in ("campaign", "instruments") else "right")
    for r in out["campaigns_detail"]:
        per.add_row(
            r["name"],
            " ".join(r["instruments"]),
            f"{r['stored']}/{r['budget']}",
            str(r["duplicates"]),
            "yes" if r["store_matches_agents"] else "NO",
            str(r["returncode"]),
            f"{r['seconds']:.0f}",
            *(f"{r.get(k, float('nan')):.1f}" for k in ("startup_s", "measuring_s", "finishing_s")),
        )
    console.print(per)
    tot = Table(title=f"totals (time_scale {out['time_scale']}, {out['cpus']} CPUs)")
    tot.add_column("figure")
    tot.add_column("value", justify="right")
    f = "{:.0f}".format
    lat, idle, ov = out["decision_latency_ms"], out["idle_ms"], out["overlap"]
    for k, v in (
        ("measurements stored", str(out["stored"])),
        ("duplicates / failed campaigns", f"{out['duplicates']} / {len(out['failed'])}"),
        ("wall time (s)", f"{out['wall_s']:.1f}"),
        ("throughput (meas/s, wall)", f"{out['throughput_per_s']:.2f}"),
        ("throughput (meas/s, measuring)", f"{out['throughput_measuring_per_s'] or 0:.2f}"),
        (
            "campaigns measuring at once: peak / mean / all (s)",
            f"{ov['peak']} / {ov['mean']:.1f} / {ov['all_s']:.0f}",
        ),
        (f"decision latency p50 / p95 / max (ms, n={lat['n']})", _trio(lat, f)),
        (f"instrument idle p50 / p95 / max (ms, n={idle['n']})", _trio(idle, f)),
    ):
        tot.add_row(k, v)
    console.print(tot)
    for fn, d in out["dask"]["tasks"].items():
        console.print(
            f"Dask {fn}: {d['n']} tasks, compute p50 {d['p50_s']:.2f} s, max {d['max_s']:.2f} s"
        )
    if out["dask"]["busy"] is not None:
        console.print(
            f"Dask workers busy {out['dask']['busy']:.0%} of the "
            f"{out['dask']['window_s']:.0f} s from the first task to the last"
        )
    console.print(f"stores, specs, command logs and campaign logs in {out['work']}")
    for name, tail in out["errors"].items():
        console.print(f"[red]{name} failed[/red]:\n{tail[-1500:]}")


def _trio(d: dict, f) -> str:
    return " / ".join("-" if d[k] is None else f(d[k]) for k in ("p50", "p95", "max"))
