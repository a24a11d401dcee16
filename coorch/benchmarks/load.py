"""``coorch bench load``: many twin agents and concurrent campaigns on one Prefect server and one
Dask cluster.

What a facility does on a busy day: one Prefect server, one Dask cluster, and several groups'
campaigns at once, each holding the leases of its own instruments. Here: a real local Prefect
server process, a Dask ``LocalCluster`` whose scheduler address every campaign spec names
(``dask.address``), ``--agents`` HTTP twins in this process (mixed kinds, ``agents /
campaigns`` per campaign), and ``--campaigns`` ``coorch run SPEC`` processes started at once.

Measured, after every campaign has exited:

- **stored once**: per campaign store, rows, distinct measurement ids and decisions, held
  against the request ids its agents' command logs say they measured (each agent keeps one,
  fsynced, as a facility's would: :mod:`coorch.instrument_agents.command_log`) and the twins'
  own acquisition counts;
- **throughput**: measurements stored per second of wall time (all campaign processes, start
  to last exit, imports included) and per second of the measuring span (first measurement
  start to last measurement end);
- **decision latency**: for each decision made by the agent (not a seed), the time from the
  end of the same instrument's previous measurement (the agent's clock) to the decision's
  ``created`` stamp (the campaign's clock, same machine): the measure task finishing and
  storing, the flow hearing of it, describing and telling the agent, and the agent choosing;
- **instrument idle**: at each twin (:class:`~coorch.benchmarks.fixtures.TimedDriver`), the gap
  from the end of a measurement to the start of its next command (the next move): everything
  coorch does between two measurements of one instrument, HTTP included.

The campaigns write no HTML report (``report: ''``): it is drawn on a thread of its own and is
not orchestration.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import typer
import yaml

from coorch.benchmarks.fixtures import start_timed_twin
from coorch.benchmarks.load_figures import dask_use, print_summary, summarise

#: Twin kind -> the modality a campaign measures with it.
KINDS = {"afm": "pfm_loop", "raman": "raman", "wds": "wds", "stem": "stem_haadf"}


@dataclass
class Owned:
    """One campaign's share of the rig: its name, spec file, store and agents (kind, agent)."""

    name: str
    spec_file: Path
    store: Path
    agents: list
    budget: int


@dataclass
class Finished:
    """A campaign process after it exited: status, when it was started (epoch s), seconds it
    ran, the tail of its stderr."""

    name: str
    returncode: int
    launched: float
    seconds: float
    err_tail: str


def kinds_for(n_campaigns: int, per: int) -> list[tuple[str, ...]]:
    """Each campaign's instrument kinds: every combination of ``per`` distinct kinds in turn,
    so that kinds mix across campaigns and each is used about equally."""
    if not 1 <= per <= len(KINDS):
        raise ValueError(f"{per} agents per campaign: 1 to {len(KINDS)} (one of each kind)")
    combos = list(itertools.combinations(KINDS, per))
    return [combos[c % len(combos)] for c in range(n_campaigns)]


@contextlib.contextmanager
def rig(
    work: Path, *, agents: int, campaigns: int, budget: int, time_scale: float, address: str
) -> Iterator[list[Owned]]:
    """Start the agents and write one spec per campaign (its own token, store, agents, the
    shared Dask scheduler); stop the agents on exit."""
    if agents % campaigns:
        raise ValueError(f"{agents} agents do not split evenly over {campaigns} campaigns")
    started = []
    try:
        owned = []
        for c, kinds in enumerate(kinds_for(campaigns, agents // campaigns)):
            name = f"load-{c:02d}"
            token_file = work / f"{name}.token"
            token_file.write_text(secrets.token_hex(16))
            mine = []
            for kind in kinds:
                agent = start_timed_twin(
                    kind,
                    token=token_file.read_text(),
                    seed=len(started),
                    time_scale=time_scale,
                    instrument_id=f"{kind}-{len(started):02d}",
                    sample_load_cost_s=60.0,  # mounted already: a check, not a transfer
                    command_log=work / f"{kind}-{len(started):02d}.commands.jsonl",
                )
                started.append(agent)
                mine.append((kind, agent))
            owned.append(write_spec(work, name, token_file, mine, budget, address))
        yield owned
    finally:
        for a in started:
            a.stop()


def write_spec(work: Path, name: str, token_file: Path, mine: list, budget: int, address: str):
    store = work / f"{name}.zarr"
    spec = {
        "name": name,
        "policy": "coorchestrate",
        "budget": budget,
        "seeds_per_instrument": 2,
        "grid": [21, 3],
        "refit_every": 4,
        "store": str(store),
        "report": "",
        "seed": int(name[-2:]),
        "dask": {"address": address},
        "instruments": [
            {
                "name": a.driver.describe().id,
                "kind": kind,
                "modality": KINDS[kind],
                "url": a.url,
                "token_file": str(token_file),
            }
            for kind, a in mine
        ],
    }
    spec_file = work / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    return Owned(name, spec_file, store, mine, budget)


def run_campaigns(owned: list[Owned], api_url: str, timeout_s: float) -> list[Finished]:
    """Start every campaign at once as ``coorch run SPEC`` (stderr to ``NAME.log`` beside its
    spec); wait for all, killing the process group of any still running past ``timeout_s``."""
    coorch = Path(sys.executable).with_name("coorch")
    env = {**os.environ, "PREFECT_API_URL": api_url}
    t0, running, ended = time.time(), {}, {}
    for o in owned:
        with o.spec_file.with_suffix(".log").open("wb") as err:
            running[o.name] = subprocess.Popen(
                [str(coorch), "run", str(o.spec_file)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
    while len(ended) < len(running):
        for name, p in running.items():
            if name not in ended and p.poll() is not None:
                ended[name] = time.time() - t0
        if time.time() - t0 > timeout_s:
            for name, p in running.items():
                if name not in ended:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, 9)
                    p.wait(30)
                    ended[name] = time.time() - t0
        time.sleep(0.1)
    return [
        Finished(
            o.name,
            running[o.name].returncode,
            t0,
            ended[o.name],
            o.spec_file.with_suffix(".log").read_text(errors="replace")[-3000:],
        )
        for o in owned
    ]


def check_campaign(o: Owned) -> dict:
    """One campaign's store against its agents: counts, duplicates, what the agents measured,
    and the decision latencies and idle gaps of its instruments (seconds)."""
    from coorch.instrument_agents.command_log import audit
    from coorch.storage import CampaignStore

    store = CampaignStore.open(str(o.store), create=False)
    table = store.measurements_table()
    decisions = [d for d in store.read_decisions() if d.requests_measurement]
    ids = table["measurement_id"].tolist()
    seen = audit(a.command_log.path for _, a in o.agents)
    acquisitions = sum(a.driver.driver.n_measured for _, a in o.agents)
    start = table["start_time"].astype("int64").to_numpy() / 1e9
    end = table["end_time"].astype("int64").to_numpy() / 1e9
    return {
        "name": o.name,
        "instruments": [a.driver.describe().id for _, a in o.agents],
        "budget": o.budget,
        "stored": len(ids),
        "distinct": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "decisions": len(decisions),
        "agents_measured": len(seen.measured),
        "agents_measured_twice": len(seen.twice),
        "acquisitions": acquisitions,
        "store_matches_agents": sorted(ids) == sorted(seen.measured) and not seen.twice,
        "one_measurement_per_decision": sorted(ids) == sorted(d.measurement_id for d in decisions)
        and table["decision_id"].is_unique,
        "first_start": float(start.min()) if len(ids) else None,
        "last_end": float(end.max()) if len(ids) else None,
        "decision_latency_s": decision_latencies(table, decisions),
        "idle_s": [g for _, a in o.agents for g in a.driver.idle_gaps()],
    }


def decision_latencies(table, decisions: list) -> list[float]:
    """For each decision the agent made (not a seed or a resumed one), seconds from the end of
    its instrument's previous stored measurement to the decision's ``created`` stamp."""
    ends: dict[str, list[float]] = {}
    for inst, t in zip(table["instrument"], table["end_time"], strict=True):
        ends.setdefault(inst, []).append(t.timestamp())
    out = []
    for d in decisions:
        if d.policy == "seed" or d.human_input is not None:
            continue
        before = [e for e in ends.get(d.instrument, []) if e <= d.created]
        if before:
            out.append(d.created - max(before))
    return out


def run_load(
    agents: int = 16,
    campaigns: int = 8,
    budget: int = 40,
    time_scale: float = 0.05,
    dask_workers: int = 2,
    timeout_s: float = 900.0,
    work: Path | None = None,
    preload: tuple[str, ...] = (),
) -> dict:
    """Start the rig, run the campaigns at once, check every store; the summary."""
    from coorch.deployments.prefect_server import local_prefect_server

    work = work or Path(tempfile.mkdtemp(prefix="coorch-load-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str((work / ".prefect").resolve()))
    config = {
        "agents": agents,
        "campaigns": campaigns,
        "budget": budget,
        "time_scale": time_scale,
        "dask_workers": dask_workers,
        "scheduler_preload": list(preload),
        "cpus": os.cpu_count(),
        "work": str(work),
    }
    with (
        local_prefect_server(work / "prefect-server") as api_url,
        shared_dask(dask_workers, preload) as (address, task_stream),
        rig(
            work,
            agents=agents,
            campaigns=campaigns,
            budget=budget,
            time_scale=time_scale,
            address=address,
        ) as owned,
    ):
        finished = run_campaigns(owned, api_url, timeout_s)
        wall_s = max(f.seconds for f in finished)
        rows = [check_campaign(o) for o in owned]
        dask = dask_use(task_stream(), dask_workers)
    return summarise(rows, finished, wall_s, config) | {"dask": dask}


@contextlib.contextmanager
def shared_dask(
    n_workers: int, preload: tuple[str, ...] = ()
) -> Iterator[tuple[str, Callable[[], list[dict]]]]:
    """A LocalCluster for every campaign, as ``coorch up`` starts one: its scheduler address,
    and a function returning the scheduler's record of every task run since (what ran, where,
    for how long). ``preload``: modules the scheduler imports before any client connects.

    Why preload matters: the scheduler unpickles each submitted graph, so the first campaign's
    ``warm_up`` makes it import ``coorch.tasks.fit`` (torch, gpytorch) on its event loop, and
    every other campaign's ``Client()`` waits until that import is done."""
    import logging

    from distributed import Client, LocalCluster

    from coorch.deployments.dask_config import SCHEDULER_HTTP

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            silence_logs=logging.CRITICAL,  # a heartbeat cut by the shutdown is no news
            scheduler_kwargs={**SCHEDULER_HTTP, "preload": list(preload)},
        ) as cluster,
        Client(cluster) as client,
    ):
        t0 = time.time()
        client.get_task_stream(start=t0)  # installs the scheduler's task-stream plugin
        yield cluster.scheduler_address, lambda: client.get_task_stream(start=t0)


def bench_load_command(
    agents: int = typer.Option(16, min=1, help="twin agents (split evenly over the campaigns)"),
    campaigns: int = typer.Option(
        8, min=1, help="campaigns run at once, each a `coorch run` process"
    ),
    budget: int = typer.Option(40, min=5, help="measurements per campaign, seeds included"),
    time_scale: float = typer.Option(
        0.05,
        min=0.0,
        help="twin seconds per instrument second: 0.05 makes a PFM loop 1.5 s, a WDS point 3 s, "
        "long enough for campaigns that start tens of seconds apart to measure together",
    ),
    dask_workers: int = typer.Option(2, min=1, help="workers of the shared Dask LocalCluster"),
    timeout_s: float = typer.Option(900.0, help="a campaign still running then is killed"),
    preload: list[str] = typer.Option(
        [],
        help="a module the shared Dask scheduler imports at start (e.g. coorch.tasks.fit: "
        "else the first campaign's first task makes it import torch while the others wait)",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="also write the figures here"),
) -> None:
    """Concurrent campaigns on one Prefect server and one Dask cluster: every measurement stored
    once; throughput, decision latency and instrument idle time."""
    per, left = divmod(agents, campaigns)
    if left or per > len(KINDS):
        raise typer.BadParameter(
            f"{agents} agents over {campaigns} campaigns: each campaign needs the same number "
            f"of agents, 1 to {len(KINDS)} (one of each twin kind)",
            param_hint="--agents",
        )
    out = run_load(
        agents, campaigns, budget, time_scale, dask_workers, timeout_s, preload=tuple(preload)
    )
    print_summary(out)
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2))
    if out["failed"] or out["duplicates"] or out["mismatched"] or out["budget_missed"]:
        raise typer.Exit(1)
