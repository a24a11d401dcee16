"""What the kill -9 tests share: a campaign as ``coorch run`` in its own process group, agents as
``coorch agent serve`` processes with command logs, a Prefect server that can be SIGKILLed and
started again on its port and database, the Dask workers of a run, and the end-of-run check
(``coorch store verify``, the store against the agents' command logs).

Real processes throughout: every kill is ``SIGKILL`` to a real pid, nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from coorch.deployments.prefect_server import local_prefect_server
from coorch.instrument_agents.command_log import audit, read_log
from coorch.net import free_port, wait_until_healthy
from coorch.storage import CampaignStore

TOKEN = "crash-test-token"
#: Decisions-table rows that record an event, not a decision to measure.
MARKERS = ("unavailable", "available")
COORCH = str(Path(sys.executable).with_name("coorch"))


def run_campaign(spec_file: Path, api_url: str) -> subprocess.Popen:
    """``coorch run SPEC`` against ``api_url``, in its own session (its Dask workers with it).
    Its stderr goes to a file beside the spec (``proc.log``, one per run): a pipe nobody reads
    while the run goes on would fill up and stop the flow at a log line."""
    # faulthandler: a run that hangs is sent SIGABRT first, which prints every thread's stack
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONFAULTHANDLER": "1"}
    runs = len(list(spec_file.parent.glob(f"{spec_file.stem}.run*.log")))
    log_path = spec_file.with_name(f"{spec_file.stem}.run{runs + 1}.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [COORCH, "run", str(spec_file)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc.log = log_path  # type: ignore[attr-defined]
    return proc


def failure(proc: subprocess.Popen) -> str:
    """The one-line reason ``coorch run`` gave for failing (its last ``coorch run:`` line)."""
    lines = proc.log.read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
    ours = [x for x in lines if x.startswith("coorch run:") and "--debug" not in x]
    return (ours or lines[-1:] or ["(no message)"])[-1][:300]


def abort_hung(proc: subprocess.Popen) -> str:
    """SIGABRT a hung run (faulthandler writes every thread's stack to its log), then SIGKILL
    its group; returns the stacks' last lines, where the flow's thread waits."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    text = proc.log.read_text(errors="replace")  # type: ignore[attr-defined]
    text = text[text.find("Fatal Python error") :]
    return text[: text.find("Extension modules:")][:12000]


def release_leases(spec_file: Path, agents: list[AgentProcess]) -> None:
    """Give back the leases a campaign's killed or hung last run still holds (kept in its lease
    files), so that the next campaign on these agents is not refused for minutes."""
    from coorch.instrument_agents.client import InstrumentClient, InstrumentError

    name = yaml.safe_load(spec_file.read_text())["name"]
    for a in agents:
        lease_file = a.token_file.with_name(f"{a.token_file.name}.{name}.{a.name}.lease")
        if lease_file.exists():
            with (
                contextlib.suppress(InstrumentError),
                InstrumentClient(a.url, TOKEN, lease_file=lease_file, max_retries=1) as c,
            ):
                c.release_lease()


def end_group(proc: subprocess.Popen, grace_s: float = 5.0) -> int:
    """Wait up to ``grace_s`` for what is left of ``proc``'s process group (a killed flow's Dask
    workers), then SIGKILL it; returns how many processes had to be killed."""
    proc.wait(30)
    deadline = time.monotonic() + grace_s
    left: list[psutil.Process] = []
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter() if _in_group(p, proc.pid)]
        if not left:
            return 0
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return len(left)


def _in_group(p: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.Error):
        return False


def dask_workers(flow_pid: int) -> list[psutil.Process]:
    """The Dask worker processes of the campaign whose flow runs in ``flow_pid``: the
    LocalCluster's nannies live in the flow's process and spawn one worker process each."""
    try:
        children = psutil.Process(flow_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in children:
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if "spawn_main" in cmd and "resource_tracker" not in cmd:
                out.append(p)
    return out


def dask_worker_started(
    flow: subprocess.Popen, before: set[int], timeout_s: float = 120
) -> psutil.Process:
    """The first Dask worker process of ``flow`` whose pid is not in ``before``, as soon as it
    exists (a nanny's replacement is found while it is still starting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert flow.poll() is None, "the campaign ended before its worker was killed"
        new = [p for p in dask_workers(flow.pid) if p.pid not in before]
        if new:
            return new[0]
        time.sleep(0.01)
    raise AssertionError(f"no new Dask worker in {timeout_s} s")


@dataclass
class AgentProcess:
    """``coorch agent serve`` for one twin on a fixed port with a command log, so that it can
    be SIGKILLed and started again where it was."""

    kind: str
    modality: str
    seed: int
    token_file: Path
    command_log: Path
    time_scale: float = 0.004
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"{self.kind}-twin"

    def start(self) -> AgentProcess:
        cmd = [COORCH, "agent", "serve", "--instrument", self.kind, "--port", str(self.port)]
        cmd += ["--token-file", str(self.token_file), "--seed", str(self.seed)]
        cmd += ["--time-scale", str(self.time_scale), "--command-log", str(self.command_log)]
        log = self.command_log.with_suffix(".stderr").open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        proc = self.proc
        wait_until_healthy(f"{self.url}/v1/health", timeout_s=60, alive=lambda: proc.poll() is None)
        self.starts += 1
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def measures(self) -> int:
        """Measure commands answered so far (from its command log)."""
        return sum(1 for x in read_log(self.command_log) if x.get("command") == "measure")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def config(self) -> dict[str, Any]:
        """The instrument's entry in a campaign spec."""
        return {
            "name": self.name,
            "kind": self.kind,
            "modality": self.modality,
            "url": self.url,
            "token_file": str(self.token_file),
        }


def start_agents(tmp: Path, time_scale: float = 0.004) -> list[AgentProcess]:
    """AFM, Raman and STEM twins as agent processes, each with its command log."""
    token_file = tmp / "campaign.token"
    token_file.write_text(TOKEN)
    agents = [
        AgentProcess(kind, modality, seed, token_file, tmp / f"{kind}.commands.jsonl", time_scale)
        for kind, modality, seed in (
            ("afm", "pfm_loop", 1),
            ("raman", "raman", 2),
            ("stem", "stem_haadf", 3),
        )
    ]
    for a in agents:
        a.start()
    return agents


def write_spec(tmp: Path, name: str, agents: list[AgentProcess], budget: int, **extra: Any) -> Path:
    """A small co-orchestration spec over ``agents``, its store under ``tmp``."""
    spec = {
        "name": name,
        "policy": "coorchestrate",
        "budget": budget,
        "seeds_per_instrument": 2,
        "grid": [21, 3],
        "refit_every": 4,
        "store": str(tmp / f"{name}.zarr"),
        "report": "",  # no live HTML report: its rendering is not what these tests are about
        "instruments": [a.config() for a in agents],
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class PrefectServer:
    """A local Prefect server process (:func:`local_prefect_server`) that can be SIGKILLed and
    started again on the same port and database."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._stack: contextlib.ExitStack | None = None
        self.starts = 0

    def start(self) -> PrefectServer:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(local_prefect_server(self.home, port=self.port))
        self.starts += 1
        return self

    def kill(self) -> int:
        """SIGKILL the server's process group (``prefect server start`` and what it runs);
        returns how many processes it held."""
        pids = {
            c.pid
            for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == self.port and c.status == psutil.CONN_LISTEN and c.pid
        }
        groups = {os.getpgid(pid) for pid in pids}
        n = sum(1 for p in psutil.process_iter() if any(_in_group(p, g) for g in groups))
        for g in groups:
            os.killpg(g, signal.SIGKILL)
        return n

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()  # terminate (a no-op on a killed one), restore PREFECT_API_URL
            self._stack = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Figures:
    """What a scenario did and what the store and the agents' logs say about it."""

    kills: int = 0
    resumes: int = 0
    measurements: int = 0
    acquisitions: int = 0  # distinct request ids the agents measured (their command logs)
    replays: int = 0
    interrupted: int = 0
    duplicates: int = 0
    lost: int = 0
    verify_clean: bool = False
    notes: list[str] = field(default_factory=list)


def check_campaign(store_url: Path, agents: list[AgentProcess], budget: int, figures: Figures):
    """``coorch store verify`` clean; every decision measured exactly once in the store; every
    stored measurement in the agents' command logs with the same start time, each request id
    acquired once, nothing acquired and not stored. Fills ``figures``; asserts."""
    verify = subprocess.run(
        [COORCH, "store", "verify", str(store_url)], capture_output=True, text=True, timeout=120
    )
    figures.verify_clean = verify.returncode == 0
    assert verify.returncode == 0, verify.stdout + verify.stderr
    store = CampaignStore.open(str(store_url), create=False)
    table = store.measurements_table()
    decisions = store.decisions()
    figures.measurements = len(table)
    found = audit((a.command_log for a in agents), decisions["measurement_id"])
    stored = dict(zip(table["measurement_id"], table["start_time"], strict=True))
    lost = set(stored) ^ set(found.measured)  # stored but never acquired, or acquired not stored
    figures.acquisitions, figures.replays = len(found.measured), found.replays
    figures.interrupted = found.interrupted
    figures.duplicates = len(found.twice) + len(table) - table["measurement_id"].nunique()
    figures.lost = len(lost)
    assert len(table) == budget
    assert table["measurement_id"].is_unique and table["decision_id"].is_unique
    # every decision measured, exactly once (rows that mark an instrument unavailable or
    # available again are not decisions to measure)
    chosen = decisions[~decisions["policy"].isin(MARKERS)]
    assert set(chosen["decision_id"]) == set(table["decision_id"])
    assert found.twice == [] and not lost, (found.twice, sorted(lost))
    for rid, start in stored.items():
        assert abs(_seconds(start) - found.measured[rid]["started"]) < 1e-3, rid
    return figures


def _seconds(t: Any) -> float:
    """A stored time (float seconds or a datetime64 / Timestamp) as epoch seconds."""
    if hasattr(t, "timestamp"):
        return float(t.timestamp())
    if hasattr(t, "astype"):
        return float(t.astype("datetime64[ns]").astype("int64")) / 1e9
    return float(t)
