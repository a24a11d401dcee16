"""The embedded facility behind ``coorch up`` / ``coorch down``: a Prefect server with its UI,
twin instrument agents and a Dask cluster, kept alive by one detached supervisor process.

Why one supervisor: ``coorch up`` must return while everything keeps running, and ``coorch
down`` must stop all of it even when ``up``'s shell is gone. A single process that owns every
service (``python -m coorch.deployments.facility serve``, a new session, logging to
``<dir>/facility.log``) gives one pid to signal; its children are started with a parent-death
signal, so even ``kill -9`` of the supervisor leaves nothing behind.

Why the agents are child processes (``python -m coorch.instrument_agents.cli serve``) and not
threads of the supervisor (``instrument_agents.launch.start_twin``): this layer may not load
FastAPI (import-linter's ``deployments`` contract), and a process per agent is what a facility
has anyway (an agent per instrument PC); a hung twin cannot stall the others.

Liveness is an advisory lock on ``<dir>/facility.lock`` held by the supervisor for its whole
life: the kernel releases it when the process dies however it dies, so a stale pid file can
never make ``up`` believe a dead facility is running (or ``down`` signal a reused pid).
Posix only (``fcntl``).

Files in ``<dir>``: ``facility.json`` (:class:`FacilityInfo`, written once all are healthy,
removed on stop), ``campaign.yaml`` (a ready :class:`~coorch.deployments.config.CampaignSpec`),
``agent.token`` (0600), ``facility.log``, ``.prefect/`` (the server's state and log),
``campaigns/`` (the stores).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coorch.deployments.config import (
    POLICIES,
    CampaignSpec,
    DaskConfig,
    InstrumentConfig,
    SteeringConfig,
)
from coorch.deployments.prefect_server import die_with_parent, local_prefect_server
from coorch.errors import load_spec
from coorch.net import free_port, wait_until_healthy

if TYPE_CHECKING:
    from distributed import LocalCluster

LOG = logging.getLogger("coorch.facility")
STARTUP_ERROR = "facility did not start:"  # the supervisor's last words, which `up` repeats


class TwinConfig(BaseModel):
    """One digital-twin agent of the facility and the modality campaigns use on it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as CampaignSpec's

    kind: Literal["afm", "raman", "wds", "stem"] = Field(description="which twin")
    modality: str = Field(description="the modality campaign.yaml uses, e.g. pfm_loop")
    seed: int | None = Field(None, description="twin seed; None: the facility seed + position")
    fault_rate: float = Field(0.0, ge=0.0, le=1.0, description="faults per measurement")


def _demo_twins() -> list[TwinConfig]:
    """The four twins of ``coorch demo`` (coorch/demo.py, DEMO_INSTRUMENTS)."""
    pairs = (("afm", "pfm_loop"), ("raman", "raman"), ("wds", "wds"), ("stem", "stem_haadf"))
    return [TwinConfig(kind=k, modality=m) for k, m in pairs]


class FacilityConfig(BaseModel):
    """What ``coorch up`` runs (``--config FACILITY.yaml``; every field has a default).

    Unknown keys and NaN or infinite numbers are refused, as in a
    :class:`~coorch.deployments.config.CampaignSpec`: a misspelt ``budjet`` would otherwise run
    the facility's campaign on the default without a word."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    library: Literal["smbfo", "alscbn"] = Field("smbfo", description="virtual library")
    instruments: list[TwinConfig] = Field(default_factory=_demo_twins)
    time_scale: float = Field(
        0.05,
        ge=0.0,
        description="instrument seconds -> wall seconds (the demo's 0.05: a 30 s PFM loop "
        "takes 1.5 s)",
    )
    seed: int = 0
    n_workers: int = Field(1, ge=1, description="Dask worker processes")
    threads_per_worker: int = Field(1, ge=1)
    dask_port: int = Field(0, ge=0, description="Dask scheduler port; 0 picks a free one")
    budget: int = Field(40, ge=1, description="campaign.yaml's measurement budget")
    policy: str = Field("coorchestrate", description="campaign.yaml's policy")
    steering: Literal["off", "review", "votes"] = Field(
        "review",
        description="campaign.yaml's steering mode (review: every 5th decision waits up to "
        "60 s for an operator; the token is <dir>/steer.token)",
    )
    startup_timeout_s: float = Field(120.0, gt=0, description="per service")

    @model_validator(mode="after")
    def _one_twin_per_kind(self) -> FacilityConfig:
        """A twin names itself ``<kind>-twin``: two of a kind would share a campaign name."""
        kinds = [t.kind for t in self.instruments]
        if not kinds or len(set(kinds)) != len(kinds):
            raise ValueError(f"instruments: one twin per kind, at least one; got {kinds}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {POLICIES}")
        return self

    @classmethod
    def from_file(cls, path: Path | None) -> FacilityConfig:
        """The config in YAML file ``path`` (an empty file: the defaults), or the defaults for
        None. A bad file raises an ``OSError`` or a ``ValueError`` whose lines name the file
        and the field (:func:`coorch.errors.load_spec`)."""
        if path is None:
            return cls()
        if not path.read_text().strip():
            return cls()
        return load_spec(path, cls)


class AgentInfo(BaseModel):
    """A running agent, as ``facility.json`` lists it."""

    name: str
    kind: str
    modality: str
    url: str


class FacilityInfo(BaseModel):
    """``<dir>/facility.json``: where everything of a running facility answers."""

    prefect_api_url: str
    ui_url: str
    dask_address: str
    library: str
    instruments: list[AgentInfo]
    token_file: str
    steer_token_file: str
    campaign_spec: str
    log_file: str
    supervisor_pid: int
    started_at: float = Field(default_factory=time.time)


class FacilityError(RuntimeError):
    """``up`` or ``down`` could not do its job; the message is one line for the user."""


class FacilityInputError(FacilityError, ValueError):
    """What the user gave ``up`` or ``down`` is wrong (a port in use, a config or a
    facility.json that cannot be read), found before anything started: ``coorch up`` says so
    with status 2, where a facility that fails to start is status 1."""


def _paths(run_dir: Path) -> dict[str, Path]:
    d = run_dir.resolve()
    return {
        "info": d / "facility.json",
        "lock": d / "facility.lock",
        "log": d / "facility.log",
        "token": d / "agent.token",
        "steer_token": d / "steer.token",
        "spec": d / "campaign.yaml",
        "prefect": d / ".prefect",
        "stores": d / "campaigns",
    }


# ---------------------------------------------------------------- the supervisor


def _hold_lock(path: Path, wait_s: float = 3.0) -> IO[str]:
    """Take the facility lock for this process's lifetime and write our pid into it. Waits a
    little: a ``running_pid`` check holds a shared lock for an instant."""
    f = path.open("a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise FacilityError(f"a facility already runs here (lock {path})") from None
            time.sleep(0.05)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def _write_token(path: Path) -> None:
    """A fresh control token, never readable by others (created 0600, not chmod-ed later)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16))
    path.chmod(0o600)  # an older file keeps its mode through O_CREAT


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
    p = _paths(run_dir)
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


def _write_atomic(path: Path, text: str) -> None:
    """Readers (``up`` polling for facility.json) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _start(
    stack: contextlib.ExitStack, run_dir: Path, cfg: FacilityConfig, port: int
) -> tuple[FacilityInfo, list[tuple[str, subprocess.Popen]]]:
    """Start every service (each registers its own stop on ``stack``); return the facility's
    description and the agent processes to watch."""
    p = _paths(run_dir)
    _write_token(p["token"])
    _write_token(p["steer_token"])
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
    _write_atomic(p["spec"], yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
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


def _watch(procs: list[tuple[str, subprocess.Popen]], stop: threading.Event) -> int:
    """Until asked to stop: a facility with a dead agent is not a facility, so stop it all."""
    while not stop.wait(1.0):
        for name, proc in procs:
            if proc.poll() is not None:
                LOG.error("the %s agent exited (code %s): stopping", name, proc.returncode)
                return 1
    return 0


class _Stopped(Exception):
    """SIGTERM/SIGINT during startup: unwind what has started."""


def serve(run_dir: Path, config: Path | None, port: int) -> int:
    """The supervisor's main: start all, write facility.json, wait for a signal, stop all.

    Startup failures unwind everything started so far and end with one ``ERROR`` line
    (:data:`STARTUP_ERROR`) that ``up`` shows the user.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health poll otherwise
    p = _paths(run_dir)
    stop, starting = threading.Event(), [True]

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if starting[0]:
            starting[0] = False  # a second signal must not interrupt the unwinding
            raise _Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lock = _hold_lock(p["lock"])
    except FacilityError as exc:
        LOG.error("%s %s", STARTUP_ERROR, exc)
        return 1
    code, up_ = 0, False
    try:
        with contextlib.ExitStack() as stack:
            info, procs = _start(stack, run_dir, FacilityConfig.from_file(config), port)
            starting[0] = False
            _write_atomic(p["info"], info.model_dump_json(indent=2))
            up_ = True
            LOG.info("facility up: UI %s, Dask %s", info.ui_url, info.dask_address)
            code = _watch(procs, stop)
            p["info"].unlink(missing_ok=True)  # not up any more while stopping
            LOG.info("stopping the facility")
    except _Stopped as exc:
        LOG.info("stopped by %s during startup", exc)
    except Exception as exc:
        if up_:
            LOG.exception("error while running or stopping the facility")
        else:  # one line for `up` to repeat, after the traceback of a surprise
            if not isinstance(exc, FacilityError):
                LOG.info("startup failed", exc_info=True)
            LOG.error("%s %s", STARTUP_ERROR, " ".join(str(exc).split()) or type(exc).__name__)
        code = 1
    finally:
        p["info"].unlink(missing_ok=True)
        lock.close()
    LOG.info("facility stopped")
    return code


# ---------------------------------------------------------------- the client side (up, down)


def running_pid(run_dir: Path) -> int | None:
    """The supervisor's pid if one holds ``run_dir``'s lock (starting or up), else None."""
    lock = _paths(run_dir)["lock"]
    if not lock.exists():
        return None
    with lock.open() as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it; closing the file releases ours
        except BlockingIOError:
            pass
        for _ in range(50):  # the holder writes its pid right after locking
            f.seek(0)
            text = f.read().strip()
            if text.isdigit():
                return int(text)
            time.sleep(0.02)
    raise FacilityError(f"{lock} is held but names no pid")


def read_info(run_dir: Path) -> FacilityInfo | None:
    """``facility.json`` if present (a facility is up, or one died without cleaning up)."""
    path = _paths(run_dir)["info"]
    try:
        return FacilityInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a facility"
        raise FacilityInputError(
            f"{path}: cannot read it ({why}); `coorch down --dir {run_dir}` removes it"
        ) from exc


def _startup_error(log: Path, offset: int) -> str:
    """The supervisor's last ERROR line since ``offset``, or a pointer to the log."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [ln.split(STARTUP_ERROR, 1)[1].strip() for ln in lines if STARTUP_ERROR in ln]
    return errors[-1] if errors else "the supervisor exited"


def _wait_ready(
    run_dir: Path, pid: int, proc: subprocess.Popen | None, timeout_s: float, offset: int
) -> FacilityInfo:
    """Poll until supervisor ``pid`` has written facility.json, or has died, or time is up."""
    log = _paths(run_dir)["log"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_info(run_dir)
        if info is not None and info.supervisor_pid == pid:
            return info
        gone = proc.poll() is not None if proc is not None else running_pid(run_dir) != pid
        if gone:
            raise FacilityError(
                f"the facility did not start: {_startup_error(log, offset)} (see {log})"
            )
        time.sleep(0.1)
    raise FacilityError(f"the facility was not healthy within {timeout_s:g} s (see {log})")


def up(
    run_dir: Path, *, config: Path | None = None, port: int = 4200, timeout_s: float = 300.0
) -> tuple[FacilityInfo, bool]:
    """Start the facility in ``run_dir`` as a detached supervisor and return once all is
    healthy: (its description, False). Already up (or starting): (its description, True).
    On failure nothing is left running and :class:`FacilityError` says why in one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FacilityInputError(f"--dir {run_dir} is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    p = _paths(run_dir)
    offset = p["log"].stat().st_size if p["log"].exists() else 0
    if (pid := running_pid(run_dir)) is not None:
        return _wait_ready(run_dir, pid, None, timeout_s, offset), True
    FacilityConfig.from_file(config)  # a bad config fails here, before anything starts
    if not _port_free(port):
        raise FacilityInputError(
            f"--port {port} is in use (another Prefect server?); choose another"
        )
    p["info"].unlink(missing_ok=True)  # left by a supervisor that was killed
    cmd = [sys.executable, "-m", "coorch.deployments.facility", "serve"]
    cmd += ["--dir", str(run_dir.resolve()), "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config.resolve())]
    env = {**os.environ, "PREFECT_HOME": str(p["prefect"])}
    env.pop("PREFECT_API_URL", None)
    with p["log"].open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: outlives this shell, one group to signal
            env=env,
        )
    try:
        return _wait_ready(run_dir, proc.pid, proc, timeout_s, offset), False
    except FacilityError:
        _terminate(proc.pid, timeout_s=30.0)
        raise


def _port_free(port: int) -> bool:
    """Can the Prefect server bind ``port``? Asked before anything starts (it would fail
    ten seconds later, after the agents have booted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _terminate(pid: int, *, timeout_s: float) -> bool:
    """SIGTERM supervisor ``pid`` and wait for it to let go of its lock; past ``timeout_s``
    SIGKILL its process group (its children also get their parent-death SIGTERM).
    True if it stopped by itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    polite = True
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            polite = False
            break
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):  # reap it when we started it (tests)
        os.waitpid(pid, 0)
    return polite


def _alive(pid: int) -> bool:
    """Is ``pid`` still alive (and not a zombie we could reap)?"""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(run_dir: Path, *, timeout_s: float = 60.0) -> tuple[FacilityInfo | None, int] | None:
    """Stop the facility in ``run_dir``: SIGTERM its supervisor, which stops every child;
    wait; remove facility.json. Returns (its last description or None if it was still
    starting, the supervisor pid), or None when nothing was running."""
    pid = running_pid(run_dir)
    try:
        info = read_info(run_dir)
    except FacilityInputError:  # unreadable: stop the facility all the same, remove the file
        info = None
    if pid is None:
        _paths(run_dir)["info"].unlink(missing_ok=True)  # left by a killed supervisor
        return None
    if not _terminate(pid, timeout_s=timeout_s):
        LOG.warning("supervisor %d did not stop in %g s: killed", pid, timeout_s)
    _paths(run_dir)["info"].unlink(missing_ok=True)
    return info, pid


@contextlib.contextmanager
def facility(run_dir: Path, **up_kw) -> Iterator[FacilityInfo]:
    """``up`` for the length of a ``with`` block, then ``down`` (tests, scripts)."""
    info, _ = up(run_dir, **up_kw)
    try:
        yield info
    finally:
        down(run_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m coorch.deployments.facility serve --dir D [--config F] [--port P]``."""
    parser = argparse.ArgumentParser(prog="python -m coorch.deployments.facility")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the supervisor in the foreground (coorch up runs it)")
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--config", type=Path, default=None)
    s.add_argument("--port", type=int, default=4200)
    args = parser.parse_args(argv)
    return serve(args.dir, args.config, args.port)


if __name__ == "__main__":
    sys.exit(main())
