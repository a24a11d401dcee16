"""``coorch facility simulate``: a facility's day on a compressed clock, with the real parts.

Several groups' campaigns arrive during the day, each with an owner, a priority, one to three of
the facility's instruments, a budget in instrument-seconds and a deadline. Each runs as its own
``coorch run SPEC`` process (the real ``coorchestrate`` flow, on one real local Prefect server and
one Dask cluster) started at its arrival, sharing the twins through the real arbiter and sample
registry (``spec.facility``: one SQLite database). The twins run on a compressed clock
(``time_scale``: wall seconds per instrument second), so a day passes in minutes.

``measure_scale`` multiplies each twin's acquisition time (not its moves or sample transfers):
the twins' defaults are one quick point each (5-60 s), so a day of them would be thousands of
measurements per campaign, more decisions than two cores make in minutes; at 10, a point is a
5-10 minute acquisition, as a dense spectroscopy grid per position takes on a real instrument.

Reported after the last campaign ends: per instrument, utilisation (instrument-seconds charged
over the day), turns and sample transfers; per priority, the wait from asking for an
instrument to getting it (instrument time); per campaign, its arrival, completion and what it
spent against its budget. Checked, from each part's own records: no agent ever ran a command for
a campaign inside another's hold (the agents' command logs), no sample was in two places (the
registry's transfer log replayed), no turn went to a lower priority while a higher one waited
(the arbiter's grants), no budget was passed (the arbiter's ledger), no measurement stored
twice. The plan (Gantt, HTML and PNG) is written beside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
import yaml

from coorch.benchmarks.fixtures import start_timed_twin
from coorch.benchmarks.load import KINDS, shared_dask

OWNERS = ("ana", "ben", "chen")


@dataclass(frozen=True)
class Planned:
    """One campaign of the day: who, how urgent, on what, when (hours from the day's start)."""

    name: str
    owner: str
    priority: int
    instruments: tuple[str, ...]
    arrival_h: float
    deadline_h: float
    budget: int
    budget_s: float


def plan_day(
    instruments: list[str], campaigns: int, hours: float, seed: int, budget: int
) -> list[Planned]:
    """A reproducible mix: arrivals over the first half of the day, 1-3 instruments each,
    priorities 0 (half), 1 and 2, three owners in turn, a deadline 6-18 h after arrival
    (capped at the day's end), and budgets in instrument-seconds that together ask for about
    the day's capacity."""
    rng = np.random.default_rng(seed)
    capacity = len(instruments) * hours * 3600.0
    out = []
    for c in range(campaigns):
        n = int(rng.integers(1, min(3, len(instruments)) + 1))
        arrival = float(rng.uniform(0.0, 0.5 * hours))
        out.append(
            Planned(
                name=f"day-{c:02d}",
                owner=OWNERS[c % len(OWNERS)],
                priority=int(rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2])),
                instruments=tuple(sorted(rng.choice(instruments, n, replace=False).tolist())),
                arrival_h=arrival,
                deadline_h=min(hours, arrival + float(rng.uniform(6.0, 18.0)) * hours / 24),
                budget=budget,
                budget_s=round(capacity / campaigns * float(rng.uniform(0.5, 1.5))),
            )
        )
    return sorted(out, key=lambda p: p.arrival_h)


@contextlib.contextmanager
def twins(
    work: Path, n: int, *, token: str, time_scale: float, measure_scale: float
) -> Iterator[dict[str, tuple[str, object]]]:
    """``n`` twins (kinds in turn: afm, raman, wds, stem, afm, ...), each with a command log;
    name -> (kind, running agent). Stopped on exit."""
    started: dict[str, tuple[str, object]] = {}
    try:
        for i in range(n):
            kind = list(KINDS)[i % len(KINDS)]
            name = f"{kind}-{i:02d}"
            agent = start_timed_twin(
                kind,
                token=token,
                seed=i,
                time_scale=time_scale,
                instrument_id=name,
                command_log=work / f"{name}.commands.jsonl",
            )
            twin = agent.driver.driver  # the twin inside the TimedDriver
            twin.modes = {
                k: dataclasses.replace(m, cost_s=m.cost_s * measure_scale)
                for k, m in twin.modes.items()
            }
            started[name] = (kind, agent)
        yield started
    finally:
        for _, agent in started.values():
            agent.stop()


def write_spec(
    work: Path, p: Planned, agents: dict, token_file: Path, db: str, t0: float, time_scale: float
) -> Path:
    """The campaign's spec: its instruments (each with a sister piece of its own library), its
    owner and priority, its budgets, its deadline on the wall clock of the compressed day."""
    deadline = t0 + p.deadline_h * 3600.0 * time_scale
    spec = {
        "name": p.name,
        "owner": p.owner,
        "priority": p.priority,
        "policy": "coorchestrate",
        "budget": p.budget,
        "budget_s": p.budget_s,
        "deadline": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(deadline)),
        "seeds_per_instrument": 2,
        "grid": [21, 3],
        "store": str(work / f"{p.name}.zarr"),
        "report": "",
        "seed": int(p.name[-2:]),
        "facility": db,
        "sample": f"smbfo-{p.name}",
        "instruments": [
            {
                "name": name,
                "kind": agents[name][0],
                "modality": KINDS[agents[name][0]],
                "url": agents[name][1].url,
                "token_file": str(token_file),
                "sample": f"smbfo-{p.name}.{name}",
            }
            for name in p.instruments
        ],
    }
    path = work / f"{p.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@dataclass
class Ran:
    """A campaign process of the day: when it was started and ended (wall, epoch s), its exit
    status and the tail of its stderr."""

    planned: Planned
    started: float
    ended: float
    returncode: int
    err_tail: str


def run_day(
    plan: list[Planned], specs: dict[str, Path], t0: float, time_scale: float, timeout_s: float
) -> list[Ran]:
    """Start each campaign as ``coorch run SPEC`` at its arrival on the compressed clock; wait
    for all (killing any still running after ``timeout_s``)."""
    coorch = Path(sys.executable).with_name("coorch")
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    ended: dict[str, float] = {}
    waiting = list(plan)
    while waiting or len(ended) < len(running):
        now = time.time()
        while waiting and now >= t0 + waiting[0].arrival_h * 3600.0 * time_scale:
            p = waiting.pop(0)
            with specs[p.name].with_suffix(".log").open("wb") as err:
                proc = subprocess.Popen(
                    [str(coorch), "run", str(specs[p.name])],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
            running[p.name] = (proc, now)
        for name, (proc, _) in running.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.time()
        if now - t0 > timeout_s:
            for name, (proc, _) in running.items():
                if name not in ended:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, 9)
                    proc.wait(30)
                    ended[name] = time.time()
            break
        time.sleep(0.1)
    return [
        Ran(
            p,
            running[p.name][1],
            ended[p.name],
            running[p.name][0].returncode,
            specs[p.name].with_suffix(".log").read_text(errors="replace")[-2000:],
        )
        for p in plan
        if p.name in running
    ]


def checks(work: Path, db: str, plan: list[Planned], agents: dict) -> dict:
    """The rules, each from its own part's records (see the module docstring)."""
    from coorch.deployments.arbiter import Arbiter
    from coorch.instrument_agents.command_log import interleaved
    from coorch.storage import CampaignStore
    from coorch.storage.samples import SampleRegistry

    arbiter, registry = Arbiter(db), SampleRegistry(db)
    try:
        grants = arbiter.grants()
        inverted = [g for g in grants if g.outranked_by is not None and g.outranked_by > g.priority]
        over = {
            p.name: arbiter.used(p.name) for p in plan if arbiter.used(p.name) > p.budget_s + 1e-6
        }
        places: dict[str, str] = {}
        for s in registry.all():
            places[s.id] = "storage"
        for t in registry.transfers():
            if places.get(t.sample, t.source) != t.source:
                places[t.sample] = "INCONSISTENT"
            else:
                places[t.sample] = t.destination
        misplaced = [s.id for s in registry.all() if places.get(s.id) != s.location]
        twice, measured = 0, {}
        for p in plan:
            path = work / f"{p.name}.zarr"
            if not path.exists():
                measured[p.name] = 0
                continue
            table = CampaignStore.open(str(path), create=False).measurements_table()
            measured[p.name] = len(table)
            twice += int(len(table) - table["measurement_id"].nunique())
        return {
            "interleaved_commands": sum(
                len(interleaved(work / f"{n}.commands.jsonl")) for n in agents
            ),
            "priority_inversions": len(inverted),
            "budgets_passed": over,
            "samples_misplaced": misplaced,
            "stored_twice": twice,
            "measured": measured,
            "grants": grants,
            "transfers": registry.transfers(),
            "used_s": {p.name: arbiter.used(p.name) for p in plan},
        }
    finally:
        registry.close()


def simulate_day(
    instruments: int = 4,
    campaigns: int = 8,
    hours: float = 24.0,
    *,
    time_scale: float = 0.005,
    measure_scale: float = 10.0,
    budget: int = 80,
    seed: int = 0,
    work: Path | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Run the day (module docstring); the figures, the checks and the plan's paths."""
    from coorch.deployments.prefect_server import local_prefect_server
    from coorch.facility_plan import plan_summary, write_plan

    work = (work or Path(tempfile.mkdtemp(prefix="coorch-day-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / ".prefect"))
    db = f"sqlite:///{work / 'facility.db'}"
    token_file = work / "agent.token"
    token_file.write_text(secrets.token_hex(16))
    day_s = hours * 3600.0 * time_scale
    names = [f"{list(KINDS)[i % len(KINDS)]}-{i:02d}" for i in range(instruments)]
    plan = plan_day(names, campaigns, hours, seed, budget)
    with (
        local_prefect_server(work / "prefect-server") as api_url,
        shared_dask(2, ("coorch.tasks.fit",)) as (address, _),
        twins(
            work,
            instruments,
            token=token_file.read_text(),
            time_scale=time_scale,
            measure_scale=measure_scale,
        ) as agents,
    ):
        os.environ["PREFECT_API_URL"] = api_url
        t0 = time.time() + 30.0  # the first arrival after every spec is written
        specs = {p.name: write_spec(work, p, agents, token_file, db, t0, time_scale) for p in plan}
        for path in specs.values():  # the shared Dask cluster, as `coorch up` gives one
            spec = yaml.safe_load(path.read_text())
            spec["dask"] = {"address": address}
            path.write_text(yaml.safe_dump(spec))
        ran = run_day(plan, specs, t0, time_scale, timeout_s or max(3 * day_s, day_s + 600))
        found = checks(work, db, plan, agents)
    from coorch.deployments.arbiter import Arbiter

    summary = plan_summary(found["grants"], Arbiter(db).waiting(), time_scale=time_scale, t0=t0)
    html, png = write_plan(db, work / "plan", time_scale=time_scale)
    return {
        "config": {
            "instruments": instruments,
            "campaigns": campaigns,
            "hours": hours,
            "time_scale": time_scale,
            "measure_scale": measure_scale,
            "budget": budget,
            "seed": seed,
            "cpus": os.cpu_count(),
            "work": str(work),
        },
        "campaigns": [
            {
                **dataclasses.asdict(r.planned),
                "returncode": r.returncode,
                "measured": found["measured"][r.planned.name],
                "used_s": found["used_s"][r.planned.name],
                "started_h": (r.started - t0) / time_scale / 3600.0,
                "ended_h": (r.ended - t0) / time_scale / 3600.0,
                "err_tail": r.err_tail if r.returncode else "",
            }
            for r in ran
        ],
        "summary": summary,
        "checks": {k: found[k] for k in CHECKS},
        "transfers": len(found["transfers"]),
        "plan": [str(html), str(png)],
    }


#: The rules a day must keep (see :func:`checks`), all zero or empty on a good day.
CHECKS = (
    "interleaved_commands",
    "priority_inversions",
    "budgets_passed",
    "samples_misplaced",
    "stored_twice",
)


def print_day(result: dict) -> None:
    """The day's figures as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    c = Table(title="campaigns (instrument time, hours from the day's start)")
    for col in (
        "name",
        "owner",
        "prio",
        "instruments",
        "arrive",
        "end",
        "deadline",
        "n",
        "used/budget h",
        "exit",
    ):
        c.add_column(col)
    for r in result["campaigns"]:
        c.add_row(
            r["name"],
            r["owner"],
            str(r["priority"]),
            " ".join(r["instruments"]),
            f"{r['arrival_h']:.1f}",
            f"{r['ended_h']:.1f}",
            f"{r['deadline_h']:.1f}",
            str(r["measured"]),
            f"{r['used_s'] / 3600:.1f}/{r['budget_s'] / 3600:.1f}",
            str(r["returncode"]),
        )
    console.print(c)
    console.print_json(json.dumps(result["summary"], default=str))
    console.print(f"checks: {json.dumps(result['checks'])}")
    console.print(f"sample transfers: {result['transfers']}; plan: {' '.join(result['plan'])}")


def simulate_command(
    instruments: int = typer.Option(
        4, "--instruments", min=1, max=16, help="twins (kinds in turn)"
    ),
    campaigns: int = typer.Option(8, "--campaigns", min=1, max=32, help="campaigns in the day"),
    hours: float = typer.Option(24.0, "--hours", min=0.5, max=168.0, help="length of the day"),
    time_scale: float = typer.Option(
        0.005, "--time-scale", min=0.0001, max=1.0, help="wall seconds per instrument second"
    ),
    measure_scale: float = typer.Option(
        10.0, "--measure-scale", min=0.1, max=100.0, help="x each twin's acquisition time"
    ),
    budget: int = typer.Option(80, "--budget", min=5, help="measurements per campaign at most"),
    seed: int = typer.Option(0, "--seed", min=0),
    work: Path | None = typer.Option(None, "--work", help="folder for everything (default: temp)"),
    out: Path | None = typer.Option(None, "--json", help="also write the figures as JSON"),
) -> None:
    """Run a facility's day on a compressed clock with the real arbiter, flows and twins;
    report utilisation per instrument, queue wait per priority and campaign completion."""
    result = simulate_day(
        instruments,
        campaigns,
        hours,
        time_scale=time_scale,
        measure_scale=measure_scale,
        budget=budget,
        seed=seed,
        work=work,
    )
    print_day(result)
    if out is not None:
        out.write_text(json.dumps(result, indent=1, default=str))
    bad = {k: v for k, v in result["checks"].items() if v}
    if bad:
        raise typer.Exit(1)
