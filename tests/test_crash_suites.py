"""SIGKILL at random moments: the flow process, an agent process, a Dask worker (then its
replacement while it starts), the Prefect server. Ten kills in all (3 + 3 + 2 + 2), seeded;
after each scenario the campaign is resumed until it finishes, then ``coorch store verify`` is
clean, every decision is measured exactly once in the store, and the agents' command logs hold
every stored measurement, acquired once (nothing lost, nothing measured twice).

One local Prefect server process and three agents (``coorch agent serve``: AFM, Raman, STEM
twins with command logs) serve the whole module; each scenario is its own campaign and store.
The figures of every scenario are printed at the end (``pytest -s``) for docs/reliability.md.
``tests/test_campaign_crash.py`` kills the whole ``coorch run`` process group instead.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from crash_support import (
    AgentProcess,
    Figures,
    PrefectServer,
    abort_hung,
    check_campaign,
    dask_worker_started,
    end_group,
    failure,
    release_leases,
    run_campaign,
    start_agents,
    write_spec,
)

pytestmark = pytest.mark.slow

SEED = 16
BUDGET = 24
RUN_TIMEOUT_S = 240  # one `coorch run` to its end; longer is a hang
FIGURES: dict[str, Figures] = {}


@dataclass
class Facility:
    tmp: Path
    prefect: PrefectServer
    agents: list[AgentProcess]


@pytest.fixture(scope="module")
def facility(tmp_path_factory) -> Iterator[Facility]:
    tmp = tmp_path_factory.mktemp("crash-suites")
    prefect = PrefectServer(tmp / "prefect").start()
    agents: list[AgentProcess] = []
    try:
        agents = start_agents(tmp, time_scale=0.02)
        yield Facility(tmp, prefect, agents)
    finally:
        for a in agents:
            a.stop()
        prefect.stop()
        for name, f in FIGURES.items():
            print(f"\ncrash suite {name}: {asdict(f)}")


class Scenario:
    """One campaign on the module's agents: its runs (resumes counted), its figures."""

    def __init__(self, facility: Facility, target: str, **spec: object) -> None:
        self.facility, self.agents = facility, facility.agents
        self.rng = random.Random(f"{SEED}-{target}")
        self.figures = FIGURES.setdefault(target, Figures())
        self.name = f"crash-{target}"
        self.spec = write_spec(facility.tmp, self.name, self.agents, BUDGET, **spec)
        self.proc: subprocess.Popen | None = None

    def run(self) -> subprocess.Popen:
        """Start the campaign; every start after the first is a resume."""
        if self.proc is not None:
            self.figures.resumes += 1
        self.proc = run_campaign(self.spec, self.facility.prefect.url)
        return self.proc

    def resume_if_failed(self) -> None:
        """A run that ended badly (it did not ride the kill out) is resumed at once."""
        assert self.proc is not None
        if self.proc.poll() not in (None, 0):
            end_group(self.proc)
            self.figures.notes.append(failure(self.proc))
            self.run()

    def finish(self, most: int = 3) -> None:
        """Wait for the run; resume one that failed (``most`` times at most) until one ends
        well. A run that outlives :data:`RUN_TIMEOUT_S` is a hang: the test fails with the
        stacks of its threads."""
        for _ in range(most + 1):
            assert self.proc is not None
            try:
                self.proc.wait(RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                stacks = abort_hung(self.proc)
                pytest.fail(f"coorch run hung {RUN_TIMEOUT_S} s ({self.figures}):\n{stacks}")
            end_group(self.proc)
            if self.proc.returncode == 0:
                return
            self.figures.notes.append(failure(self.proc))
            self.run()
        pytest.fail(f"the campaign did not finish after {most} resumes: {self.figures.notes}")

    def measuring(self, after: int, timeout_s: float = 180) -> None:
        """Wait until the agents have answered more than ``after`` measures, or the run ended."""
        deadline = time.monotonic() + timeout_s
        while measured(self.facility) <= after and self.proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"no measurement after {after} in {timeout_s} s")
            time.sleep(0.05)

    def check(self) -> None:
        check_campaign(self.facility.tmp / f"{self.name}.zarr", self.agents, BUDGET, self.figures)

    def close(self) -> None:
        """Whatever the outcome: no run left behind, no lease left held for the next one."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        release_leases(self.spec, self.agents)


@pytest.fixture
def scenario(facility, request) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []

    def make(target: str, **spec: object) -> Scenario:
        made.append(Scenario(facility, target, **spec))
        return made[-1]

    yield make
    for s in made:
        s.close()


def measured(facility: Facility) -> int:
    return sum(a.measures() for a in facility.agents)


def test_flow_process_killed_three_times_then_resumed(scenario):
    """SIGKILL of the flow's process alone (its Dask workers are left to notice) at random
    moments of its life: start-up, measuring, the last fits."""
    s = scenario("flow")
    orphans = 0
    s.run()
    while s.figures.kills < 3:
        # the kill's moment in this run's life; a run that ends before it (failed, or done)
        # is followed at once, not after the rest of the wait
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.proc.wait(s.rng.uniform(4.0, 24.0))
        if s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGKILL)
            s.figures.kills += 1
        orphans += end_group(s.proc)
        if s.proc.returncode not in (0, -signal.SIGKILL):
            s.figures.notes.append(f"failed on its own: {failure(s.proc)}")
        s.run()
    s.finish()
    s.figures.notes.append(f"{orphans} Dask worker processes outlived their flow by 5 s")
    s.check()


def test_agent_process_killed_three_times_and_restarted_on_its_port(scenario, facility):
    """An agent SIGKILLed while the campaign measures, started again at once on the same port
    with the same command log; the campaign rides it out or fails and is resumed."""
    s = scenario("agent")
    s.run()
    for _ in range(3):
        s.measuring(after=measured(facility))
        time.sleep(s.rng.uniform(0.0, 1.5))
        agent = s.rng.choice(s.agents)
        agent.kill()
        s.figures.kills += 1
        time.sleep(s.rng.uniform(0.1, 1.0))
        agent.start()
        s.resume_if_failed()
    s.finish()
    s.check()


def test_dask_worker_killed_twice_while_the_campaign_fits(scenario, facility):
    """A worker of the campaign's LocalCluster SIGKILLed at a random moment while the campaign
    fits, then its replacement SIGKILLed while it starts (before it has told its nanny it is up:
    the nanny then restarts a worker it is still starting): the background refits must not stop
    the campaign, nor the cluster's close hold its end, so it finishes without a resume."""
    s = scenario("dask", refit_every=3)
    s.run()
    s.measuring(after=measured(facility))
    time.sleep(s.rng.uniform(0.5, 4.0))
    first = dask_worker_started(s.proc, before=set())
    os.kill(first.pid, signal.SIGKILL)
    s.figures.kills += 1
    replacement = dask_worker_started(s.proc, before={first.pid})
    time.sleep(s.rng.uniform(0.0, 0.2))  # its start takes a second or more
    os.kill(replacement.pid, signal.SIGKILL)
    s.figures.kills += 1
    s.finish(most=0)
    s.check()


def test_prefect_server_killed_twice_and_restarted_on_its_port_and_database(scenario, facility):
    """The Prefect server SIGKILLed while a campaign runs, started again on the same port with
    the same database; the flow may crash with it, and is then resumed."""
    s = scenario("prefect")
    s.run()
    for _ in range(2):
        s.measuring(after=measured(facility))
        time.sleep(s.rng.uniform(0.0, 3.0))
        facility.prefect.kill()
        s.figures.kills += 1
        time.sleep(s.rng.uniform(0.5, 2.0))
        facility.prefect.restart()
        s.resume_if_failed()
    s.finish()
    s.check()
