"""The services the facility's supervisor starts and owns: twin agents, a Prefect server with
its UI, a Dask cluster, and the ready ``campaign.yaml`` that points at them.

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
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import yaml

from coorch.deployments.config import CampaignSpec, DaskConfig, InstrumentConfig, SteeringConfig
from coorch.deployments.facility_config import FacilityConfig, TwinConfig
from coorch.deployments.facility_state import (
    AgentInfo,
    FacilityError,
    FacilityInfo,
    facility_paths,
    write_atomic,
    write_token,
)
from coorch.deployments.prefect_server import die_with_parent, local_prefect_server
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
) -> tuple[list[AgentInfo], str]:
    """Wait for every agent's health, then ask each who it is (checking the token works and
    the configured modality exists) and which sample it has mounted."""
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"}
    agents, samples = [], set()
    for twin, proc, url in twins:
        try:
            wait_until_healthy(
                f"{url}/v1/health", timeout_s=timeout_s, alive=lambda p=proc: p.poll() is None
            )
        except (TimeoutError, RuntimeError) as exc:
            raise FacilityError(f"the {twin.kind} agent did not start ({exc})") from exc
        with httpx.Client(base_url=url, headers=headers, timeout=5.0) as http:
            desc = http.get("/v1/describe").raise_for_status().json()
            samples.add(http.get("/v1/status").raise_for_status().json()["sample"])
        modes = [m["name"] for m in desc["modalities"]]
        if twin.modality not in modes:
            raise FacilityError(f"{desc['id']} has no modality {twin.modality!r} (has {modes})")
        agents.append(AgentInfo(name=desc["id"], kind=twin.kind, modality=twin.modality, url=url))
        LOG.info("agent %s on %s (pid %d)", desc["id"], url, proc.pid)
    return agents, sorted(samples)[0]


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
        dashboard_address=None,
        silence_logs=logging.WARNING,
        # distributed unpickles each submitted graph on the scheduler: without this the first
        # campaign's fit makes it import torch on its event loop, and every other campaign's
        # Client() waits meanwhile (seen up to 12 s; `coorch bench load --preload`)
        scheduler_kwargs={"preload": ["coorch.tasks.fit"]},
    )
    stack.callback(_close_dask, cluster)
    with Client(cluster.scheduler_address, timeout=timeout_s) as client:
        client.wait_for_workers(cfg.n_workers, timeout=timeout_s)
    LOG.info("Dask scheduler on %s, %d worker(s)", cluster.scheduler_address, cfg.n_workers)
    return cluster.scheduler_address


def _close_dask(cluster: LocalCluster) -> None:
    cluster.close()
    LOG.info("stopped the Dask cluster")


def campaign_spec(
    cfg: FacilityConfig, agents: list[AgentInfo], sample: str, dask: str, run_dir: Path
) -> CampaignSpec:
    """A campaign over every agent of the facility, ready for ``coorch run``.

    ``sample`` is the one the twins have mounted, so no campaign pays a (scaled) sample
    transfer first: the STEM twin's is 30 instrument-minutes, 90 s at the default time scale.
    """
    p = facility_paths(run_dir)
    return CampaignSpec(
        name="facility",
        library=cfg.library,
        sample=sample,
        instruments=[
            InstrumentConfig(
                name=a.name, kind=a.kind, modality=a.modality, url=a.url, token_file=p["token"]
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
    )


def start_services(
    stack: contextlib.ExitStack, run_dir: Path, cfg: FacilityConfig, port: int
) -> tuple[FacilityInfo, list[tuple[str, subprocess.Popen]]]:
    """Start every service (each registers its own stop on ``stack``); return the facility's
    description and the agent processes to watch."""
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
    agents, sample = _await_twins(twins, p["token"], cfg.startup_timeout_s)
    dask = _start_dask(stack, cfg, cfg.startup_timeout_s)
    p["stores"].mkdir(exist_ok=True)
    spec = campaign_spec(cfg, agents, sample, dask, run_dir)
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
    )
    return info, [(t.kind, proc) for t, proc, _ in twins]
