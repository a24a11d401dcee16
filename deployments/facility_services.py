"""The services the facility's supervisor starts and owns: twin agents, a Prefect server with
its UI, the process worker that runs submitted campaigns (:mod:`~coorch.deployments.
facility_worker`), a Dask cluster, the facility database, and the ready ``campaign.yaml``
that points at them.

Why the agents are child processes (``python -m coorch.instrument_agents.cli serve``) and not
threads of the supervisor (``instrument_agents.launch.start_twin``): this layer may not load
FastAPI (import-linter's ``deployments`` contract), and a process per agent is what a facility
has anyway (an agent per instrument PC); a hung twin cannot stall the others.

Each service registers its own stop on the supervisor's ``ExitStack`` as it starts, so a
failure half-way unwinds exactly what had started, in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import yaml

from coorch.deployments.config import CampaignSpec, DaskConfig, InstrumentConfig, SteeringConfig
from coorch.deployments.dask_config import SCHEDULER_HTTP
from coorch.deployments.facility_config import FacilityConfig, TwinConfig
from coorch.deployments.facility_state import (
    AgentInfo,
    FacilityError,
    FacilityInfo,
    facility_paths,
    write_atomic,
    write_token,
)
from coorch.deployments.facility_worker import (
    await_worker,
    crash_orphans,
    spawn_worker,
    stop_worker,
)
from coorch.deployments.prefect_server import die_with_parent, local_prefect_server
from coorch.deployments.work_pool import register_coorchestrate
from coorch.net import free_port, wait_until_healthy

if TYPE_CHECKING:
    from distributed import LocalCluster

LOG = logging.getLogger("coorch.facility")


def _stop_process(proc: subprocess.Popen, name: str, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: a child that ignores a polite stop still goes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            LOG.warning("%s did not stop in %g s: killed", name, timeout_s)
            proc.kill()
            proc.wait(5)
    LOG.info("stopped %s (pid %d)", name, proc.pid)


def _spawn_twins(
    stack: contextlib.ExitStack, cfg: FacilityConfig, token: Path
) -> list[tuple[TwinConfig, subprocess.Popen, str]]:
    """Start one agent process per twin; they boot while the Prefect server does."""
    out = []
    for k, twin in enumerate(cfg.instruments):
        port = free_port()
        seed = cfg.seed + k if twin.seed is None else twin.seed
        cmd = [
            sys.executable,
            "-m",
            "coorch.instrument_agents.cli",
            "serve",
            *("--instrument", twin.kind, "--library", cfg.library, "--port", str(port)),
            *("--token-file", str(token), "--time-scale", str(cfg.time_scale)),
            *("--seed", str(seed), "--fault-rate", str(twin.fault_rate)),
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        stack.callback(_stop_process, proc, f"{twin.kind} agent")
        out.append((twin, proc, f"http://127.0.0.1:{port}"))
    return out


def _await_twins(
    twins: list[tuple[TwinConfig, subprocess.Popen, str]], token: Path, timeout_s: float
) -> list[AgentInfo]:
    """Wait for every agent's health, then ask each who it is (checking the token works and
    the configured modality exists)."""
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    agents = []
    for twin, proc, url in twins:
        try:
            wait_until_healthy(
                f"{url}/v1/health", timeout_s=timeout_s, alive=lambda p=proc: p.poll() is None
            )
        except (TimeoutError, RuntimeError) as exc:
            raise FacilityError(f"the {twin.kind} agent did not start ({exc})") from exc
        with httpx.Client(base_url=url, headers=headers, timeout=5.0) as http:
            desc = http.get("/v1/describe").raise_for_status().json()
        modes = [m["name"] for m in desc["modalities"]]
        if twin.modality not in modes:
            raise FacilityError(f"{desc['id']} has no modality {twin.modality!r} (has {modes})")
        agents.append(AgentInfo(name=desc["id"], kind=twin.kind, modality=twin.modality, url=url))
        LOG.info("agent %s on %s (pid %d)", desc["id"], url, proc.pid)
    return agents


def _start_dask(stack: contextlib.ExitStack, cfg: FacilityConfig, timeout_s: float) -> str:
    """A LocalCluster in this process on a loopback address campaigns connect to."""
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cluster = LocalCluster(
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        scheduler_port=cfg.dask_port or free_port(),
        silence_logs=logging.WARNING,
        # distributed unpickles each submitted graph on the scheduler: without this the first
        # campaign's fit makes it import torch on its event loop, and every other campaign's
        # Client() waits meanwhile (seen up to 12 s; `coorch bench load --preload`)
        scheduler_kwargs={**SCHEDULER_HTTP, "preload": ["coorch.tasks.fit"]},
    )
    stack.callback(_close_dask, cluster)
    with Client(cluster.scheduler_address, timeout=timeout_s) as client:
        client.wait_for_workers(cfg.n_workers, timeout=timeout_s)
    LOG.info("Dask scheduler on %s, %d worker(s)", cluster.scheduler_address, cfg.n_workers)
    return cluster.scheduler_address


def _close_dask(cluster: LocalCluster) -> None:
    cluster.close()
    LOG.info("stopped the Dask cluster")


def sister_pieces(library: str, agents: list[AgentInfo]) -> tuple[str, dict[str, str]]:
    """The sample a facility campaign measures (``<library>-001``) and the sister piece of it
    each instrument holds (``<library>-001.<kind>``): a piece is in one instrument at a time,
    so campaigns sharing the instruments give each its own."""
    parent = f"{library}-001"
    return parent, {a.name: f"{parent}.{a.kind}" for a in agents}


def campaign_spec(
    cfg: FacilityConfig, agents: list[AgentInfo], dask: str, run_dir: Path, facility_db: str
) -> CampaignSpec:
    """A campaign over every agent of the facility, ready for ``coorch run`` or ``coorch
    campaign submit``: it shares the instruments through the facility database
    (``facility``), each instrument measuring its own sister piece (:func:`sister_pieces`).

    The twins start with the whole library mounted, so a campaign's first measurement on each
    pays a (scaled) sample transfer: the STEM twin's is 30 instrument-minutes, 90 s at the
    default time scale.
    """
    p = facility_paths(run_dir)
    parent, pieces = sister_pieces(cfg.library, agents)
    return CampaignSpec(
        name="facility",
        library=cfg.library,
        sample=parent,
        instruments=[
            InstrumentConfig(
                name=a.name,
                kind=a.kind,
                modality=a.modality,
                url=a.url,
                token_file=p["token"],
                sample=pieces[a.name],
            )
            for a in agents
        ],
        policy=cfg.policy,
        budget=cfg.budget,
        store=str(p["stores"] / "facility.zarr"),
        seed=cfg.seed,
        dask=DaskConfig(address=dask),
        steering=SteeringConfig(
            mode=cfg.steering, every=5, deadline_s=60.0, token_file=p["steer_token"]
        ),
        facility=facility_db,
    )


def facility_database(run_dir: Path, cfg: FacilityConfig, agents: list[AgentInfo]) -> str:
    """Create the facility database ``<dir>/facility.db`` and return its URL
    (``sqlite:////abs/<dir>/facility.db``): the arbiter's tables and one Prefect concurrency
    limit per instrument (:class:`~coorch.deployments.arbiter.Arbiter`), and the sample
    registry with the library's piece and its sister pieces registered. Idempotent: a
    restarted facility keeps its registry and its arbiter's history."""
    from coorch.deployments.arbiter import Arbiter
    from coorch.storage.samples import SampleRegistry

    path = facility_paths(run_dir)["db"]
    url = f"sqlite:///{path}"
    parent, pieces = sister_pieces(cfg.library, agents)
    with SampleRegistry.at(path) as registry:
        registry.register(parent, cfg.library)
        for piece in pieces.values():
            registry.register(piece, cfg.library, parent=parent)
    with Arbiter(url) as arbiter:
        arbiter.ensure_limits([a.name for a in agents])
    LOG.info("facility database %s", url)
    return url


def start_services(
    stack: contextlib.ExitStack, run_dir: Path, cfg: FacilityConfig, port: int
) -> tuple[FacilityInfo, list[tuple[str, subprocess.Popen]]]:
    """Start every service (each registers its own stop on ``stack``); return the facility's
    description and the processes to watch (agents, worker)."""
    p = facility_paths(run_dir)
    write_token(p["token"])
    write_token(p["steer_token"])
    # Processes first: fork with preexec_fn is only safe before Dask starts its threads.
    twins = _spawn_twins(stack, cfg, p["token"])
    stack.callback(LOG.info, "stopped the Prefect server")  # runs after it has stopped
    api = stack.enter_context(
        local_prefect_server(
            p["prefect"], startup_timeout_s=cfg.startup_timeout_s, ui=True, port=port
        )
    )
    LOG.info("Prefect server and UI on %s", api.removesuffix("/api"))
    worker_name = f"coorch-{run_dir.resolve().name}-{os.getpid()}"
    started = time.time()
    worker = spawn_worker(worker_name, api, p["worker_log"], Path.cwd())
    # unwound in reverse: the worker and its runs stop, then their runs are marked Crashed,
    # then the server stops
    stack.callback(lambda: crash_orphans(time.time()))
    stack.callback(stop_worker, worker)
    crash_orphans(started)  # left active by a facility that was killed
    register_coorchestrate()
    agents = _await_twins(twins, p["token"], cfg.startup_timeout_s)
    db = facility_database(run_dir, cfg, agents)
    await_worker(worker, worker_name, p["worker_log"], cfg.startup_timeout_s)
    dask = _start_dask(stack, cfg, cfg.startup_timeout_s)
    p["stores"].mkdir(exist_ok=True)
    spec = campaign_spec(cfg, agents, dask, run_dir, db)
    write_atomic(p["spec"], yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    info = FacilityInfo(
        prefect_api_url=api,
        ui_url=api.removesuffix("/api"),
        dask_address=dask,
        library=cfg.library,
        instruments=agents,
        token_file=str(p["token"]),
        steer_token_file=str(p["steer_token"]),
        campaign_spec=str(p["spec"]),
        log_file=str(p["log"]),
        supervisor_pid=os.getpid(),
        facility_db=db,
        worker_log=str(p["worker_log"]),
    )
    watched = [(f"{t.kind} agent", proc) for t, proc, _ in twins]
    return info, [*watched, ("process worker", worker)]
