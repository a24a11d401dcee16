"""``coorch bench theory-flow``: do simulations run while the instruments measure?

Real parts throughout: a local Prefect server, PFM and Raman twins of the ``smbfo-lgd`` library
over loopback HTTP (their measurements take their real time scaled by ``time_scale``), the
campaign's fits on one LocalCluster and the simulations on another. The same campaign runs
twice, as ``coorchestrate`` (no theory) and as ``conavigate``; from each store:

* per instrument, the time it spent measuring against the campaign's span (first start to last
  end): its **idle** share is what is left (decisions, moves between measurements, waiting);
* the simulations that landed **during** the measurements (before the last one started) and
  after, their run times, and how busy they kept the simulation cluster's workers (one
  process each, one thread: the simulator is Python that holds the GIL, docs/theory.md).

Theory in the loop pays off only if it costs the instruments nothing: the idle shares of the
two runs are the figure to compare.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

KINDS = (("afm", "pfm_loop"), ("raman", "raman"))


def instrument_use(table: pd.DataFrame) -> dict:
    """Per instrument: measurements, seconds measuring, idle share of the campaign's span."""
    start = table["start_time"].map(lambda t: pd.Timestamp(t).timestamp())
    end = table["end_time"].map(lambda t: pd.Timestamp(t).timestamp())
    span = float(end.max() - start.min())
    out = {"span_s": round(span, 2)}
    for name, rows in table.groupby("instrument"):
        busy = float((end[rows.index] - start[rows.index]).sum())
        out[str(name)] = {
            "measurements": len(rows),
            "busy_s": round(busy, 2),
            "idle_share": round(1.0 - busy / span, 3),
        }
    return out


def simulation_use(sims: list, table: pd.DataFrame, workers: int) -> dict:
    """Simulations landed during the measurements and after, and the cluster's use."""
    if not sims:
        return {"simulations": 0}
    starts = table["start_time"].map(lambda t: pd.Timestamp(t).timestamp())
    first, last = float(starts.min()), float(starts.max())
    landed = np.array([s.finished_at.timestamp() for s in sims])
    runtime = np.array([s.runtime_s for s in sims])
    window = max(landed.max(), last) - first
    return {
        "simulations": len(sims),
        "by_status": pd.Series([s.status for s in sims]).value_counts().to_dict(),
        "landed_while_measuring": int(((landed > first) & (landed < last)).sum()),
        "landed_after_last_start": int((landed >= last).sum()),
        "median_runtime_s": round(float(np.median(runtime)), 3),
        "cluster_busy_share": round(float(runtime.sum() / (window * workers)), 3),
    }


def run_pair(
    work: Path, budget: int, time_scale: float, sims: int, workers: int, seed: int = 0
) -> dict:
    """Both flows on fresh twins, in one Prefect server."""
    from coorch.deployments.config import CampaignSpec, InstrumentConfig
    from coorch.deployments.dask_config import DaskConfig
    from coorch.deployments.prefect_server import local_prefect_server
    from coorch.deployments.theory_config import ConavigateSpec, TheoryConfig
    from coorch.instrument_agents.launch import start_twin
    from coorch.storage import CampaignStore

    token = work / "agent.token"
    token.write_text("bench-theory-flow")
    out: dict = {}
    with local_prefect_server(work / "prefect"):
        from coorch.flows.conavigate import conavigate
        from coorch.flows.coorchestrate import coorchestrate

        for name in ("coorchestrate", "conavigate"):
            agents = [
                start_twin(
                    k, "smbfo-lgd", token="bench-theory-flow", seed=seed + i, time_scale=time_scale
                )
                for i, (k, _) in enumerate(KINDS)
            ]
            insts = [
                InstrumentConfig(
                    name=a.driver.describe().id, kind=k, modality=m, url=a.url, token_file=token
                )
                for a, (k, m) in zip(agents, KINDS, strict=True)
            ]
            common = dict(
                name=name,
                library="smbfo-lgd",
                instruments=insts,
                budget=budget,
                store=str(work / f"{name}.zarr"),
                report="",
                seed=seed,
            )
            try:
                t0 = time.perf_counter()
                if name == "conavigate":
                    theory = TheoryConfig(
                        instrument=insts[0].name,
                        max_simulations=sims,
                        dask=DaskConfig(n_workers=workers, threads_per_worker=1),
                    )
                    conavigate(ConavigateSpec(**common, theory=theory))
                else:
                    coorchestrate(CampaignSpec(**common))
                wall = time.perf_counter() - t0
            finally:
                for a in agents:
                    a.stop()
            with CampaignStore.open(common["store"], create=False) as store:
                table, simulations = store.measurements_table(), store.read_simulations()
            out[name] = {
                "wall_s": round(wall, 1),
                "instruments": instrument_use(table),
                "theory": simulation_use(simulations, table, workers),
            }
            print(f"{name}: {json.dumps(out[name])}", file=sys.stderr)
        from prefect.logging.handlers import APILogWorker

        # the runs' last logs, while the server is still there: what APILogHandler.flush does
        # (an instance method in Prefect 3.9.1; called on the class it raised TypeError)
        APILogWorker.drain_all(timeout=5)
    return out


def bench_theory_flow_command(
    budget: int = typer.Option(24, min=8, help="measurements per campaign, seeds included"),
    time_scale: float = typer.Option(0.1, min=0.0, help="twins' real time per instrument second"),
    simulations: int = typer.Option(160, min=16, help="the co-navigation's max_simulations"),
    workers: int = typer.Option(
        1, min=1, help="simulation worker processes, a thread each (1 leaves 2 cores one)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Instrument idle time with and without theory in the loop, and the simulations that ran
    while the instruments measured (real flows, twins and clusters; progress on stderr)."""
    with tempfile.TemporaryDirectory(prefix="coorch-theory-flow-") as tmp:
        result = run_pair(Path(tmp), budget, time_scale, simulations, workers)
    if json_out:
        print(json.dumps(result))
        return
    for name, r in result.items():
        inst = {k: v for k, v in r["instruments"].items() if k != "span_s"}
        idle = ", ".join(
            f"{k} idle {v['idle_share']:.0%} ({v['measurements']})" for k, v in inst.items()
        )
        print(
            f"{name:<14} wall {r['wall_s']:>6.1f} s, "
            f"span {r['instruments']['span_s']:.1f} s: {idle}"
        )
        t = r["theory"]
        if t.get("simulations"):
            print(
                f"{'':<14} simulations {t['simulations']} {t['by_status']}: "
                f"{t['landed_while_measuring']} landed while measuring, "
                f"{t['landed_after_last_start']} after; median {t['median_runtime_s']} s, "
                f"cluster busy {t['cluster_busy_share']:.0%}"
            )
