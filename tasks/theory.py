"""Theory in the loop: physics simulations on Dask beside the measurements (co-navigation).

Bayesian co-navigation (Slautin et al. 2024): a simulator (:mod:`coorch.lgd`) runs at its own
rate on a cluster of its own while the instruments measure. Its results train a surrogate over
(composition, parameters); the instrument's measurements calibrate the parameters against it,
with a discrepancy GP over the library for what the simulator lacks
(:mod:`coorch.models.theory_posterior`). Both sides then steer:

- the next **simulations** go where the surrogate is unsure at parameters still plausible
  (:func:`~coorch.models.theory_design.next_simulations`), so the posterior narrows where it
  matters;
- the next **measurements** of the instrument the theory predicts are valued more where the
  plausible parameters disagree (:meth:`coorch.models.agent.Agent.guide`): there a measurement
  teaches the parameters most.

:class:`TheoryLoop` is a piece of the campaign's background work (:mod:`coorch.tasks.
background`): polled after each measurement and whenever a simulation lands (``wake``), it never
blocks the flow. A simulation that raises is submitted again ``retries`` times, then stored as
``failed``; one still running after ``timeout_s`` counts as hung: it is cancelled and submitted
again, then stored as ``dropped``. Neither stops the campaign. Every simulation, whatever its
end, is stored in the campaign store's ``simulations`` group with the surrogate version and
acquisition value that asked for it; on resume the stored ones are read back, not run again.

The surrogate fit and the calibration (a second or two) run on a thread of the flow's process:
their inputs are small and their result (a gpytorch model) is what the next poll uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from coorch.deployments.dask_cluster import dask_client
from coorch.models.conavigation import TheoryModels, fit_theory
from coorch.models.theory_simulation import BIAS_V, simulate_opening
from coorch.records import Signal, Simulation, new_id

if TYPE_CHECKING:
    from distributed import Client

    from coorch.deployments.theory_config import ConavigateSpec, TheoryConfig
    from coorch.models.agent import Agent
    from coorch.storage import CampaignStore
    from coorch.tasks.runtime import Campaign


def _started(keys: list[str], dask_worker=None) -> list[str]:
    """On a worker: the keys among ``keys`` it is running or has run."""
    tasks = dask_worker.state.tasks
    return [k for k in keys if k in tasks and tasks[k].state in ("executing", "memory", "error")]


def started_on_workers(client: Client, keys: list[str]) -> set[str]:
    """The keys among ``keys`` that a worker has started.

    Not the scheduler's ``processing``, which only says a worker was given the task: there it
    may wait behind busy threads (among them hung attempts, which keep theirs until they
    return), and that wait is not the task's own time."""
    found = client.run(_started, keys, on_error="ignore")
    return {key for started in found.values() for key in started}


def warm_up() -> None:
    """Pay a worker's imports (the simulator, numpy, scipy) before the first simulation."""
    import coorch.models.theory_simulation  # noqa: F401


def run_on_worker(simulate: Callable, s: float, theta: dict[str, float]) -> dict:
    """One simulation where Dask put it, timed and signed with the worker's host and pid."""
    t0 = time.perf_counter()
    loop, opening = simulate(s, theta)
    return {
        "loop": np.asarray(loop, float),
        "opening": float(opening),
        "runtime_s": time.perf_counter() - t0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


@dataclasses.dataclass
class Running:
    """A simulation in flight: what it computes, who asked, since when, which attempt."""

    simulation_id: str
    row: np.ndarray  # (1 + k,): composition, then the parameters
    value: float  # the acquisition value that chose it
    version: str  # the surrogate version that chose it
    seen: tuple[int, int]  # (measurements, simulations) the surrogate had read
    requested_at: datetime
    future: Future | None = None
    attempt: int = 1
    started: float | None = None  # monotonic time a worker was seen running this attempt


class TheoryLoop:
    """Simulations on a Dask cluster, the surrogate and the parameter posterior, polled
    beside a campaign (see the module docstring).

    Args:
        config: the spec's ``theory`` section.
        instrument: the instrument whose descriptor the simulator predicts.
        task: that instrument's task index in the agent.
        store: where simulations are stored.
        bounds: (2, 2) library bounds in mm; composition runs linearly along x.
        client: the simulations' Dask client.
        fits: where surrogate fits run (a thread executor).
        simulate: (s, theta) -> (loop, opening); injected by tests (a failing simulator).
        wake: called (on Dask's thread) when a simulation lands, so the flow polls soon.
    """

    def __init__(
        self,
        config: TheoryConfig,
        *,
        instrument: str,
        task: int,
        store: CampaignStore,
        bounds: np.ndarray,
        client: Client,
        fits: Executor,
        campaign: str,
        flow_run_id: str | None = None,
        seed: int = 0,
        simulate: Callable = simulate_opening,
        wake: Callable[[], None] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.config, self.instrument, self.task = config, instrument, task
        self.store, self.client, self.fits = store, client, fits
        self.bounds = np.asarray(bounds, float)
        self.campaign, self.flow_run_id, self.seed = campaign, flow_run_id, seed
        self.simulate, self.wake = simulate, wake
        self.log = log or logging.getLogger(__name__)
        self.models = TheoryModels.empty(config.composition_range, self.bounds, seed)
        self.rng = np.random.default_rng(seed)
        self.running: dict[str, Running] = {}
        self.rows: list[np.ndarray] = []  # finished simulations: (s, theta...)
        self.y: list[float] = []
        self.counts: Counter = Counter()
        self.update: Future | None = None
        self.fitted_on = (-1, -1)  # (measurements, simulations) of the last fit started
        self.history: list[dict] = []
        self.t0 = time.monotonic()
        self.cap = config.in_flight or 2 * max(sum(client.nthreads().values()), 1)
        self._resume()

    # -- the background-work protocol ------------------------------------------------------
    def poll(self, campaign: Campaign) -> None:
        """Store what landed, retry or drop what failed or hung, install a finished fit, start
        the next fit when enough is new, and top the simulations in flight up."""
        self._collect()
        self._install(campaign)
        self._refit(campaign)
        self._top_up(campaign)

    def settle(self, campaign: Campaign, timeout_s: float | None = None) -> None:
        """Wait until nothing is in flight and the latest fit is installed: the simulations
        keep pace with the measurements (benchmarks and tests, where a measurement takes no
        time). Hung ones are handled as in :meth:`poll`."""
        deadline = time.monotonic() + (timeout_s or 4 * self.config.timeout_s)
        while (self.running or self.update is not None) and time.monotonic() < deadline:
            self._collect()
            if self.update is not None and self.update.done():
                self._install(campaign)
            time.sleep(0.01)

    def finish(self, campaign: Campaign) -> None:
        """Let the simulations in flight land (each within ``timeout_s``), then fit once more
        on everything: the campaign's answer uses every simulation and measurement."""
        self.cap = 0  # start nothing new
        deadline = time.monotonic() + self.config.timeout_s
        while self.running and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.05)
        for run in list(self.running.values()):  # past the timeout: dropped
            self._drop(run, "campaign finished before it did")
        if self.update is not None:
            self.update.exception()  # waits
        self._install(campaign)
        if len(self.y) >= 3:
            self.update = self.fits.submit(fit_theory, self.models, *self._data(campaign))
            self._install(campaign, wait=True)
        self.store.set_metadata(
            theory={**self.report(), "discrepancy_map": self.models.discrepancy_map()}
        )

    # -- simulations ----------------------------------------------------------------------
    @property
    def submitted(self) -> int:
        return sum(self.counts[k] for k in ("done", "failed", "dropped")) + len(self.running)

    def _top_up(self, campaign: Campaign) -> None:
        room = min(self.cap - len(self.running), self.config.max_simulations - self.submitted)
        if room <= 0:
            return
        pending = np.array([r.row for r in self.running.values()]).reshape(-1, self._width)
        rows, values = self.models.next_simulations(
            room, pending, self.rng, self.submitted, self.config.initial_simulations
        )
        seen = (self.models.n_measurements, self.models.n_simulations)
        for row, value in zip(rows, values, strict=True):
            run = Running(
                new_id("s"), row, float(value), self.models.version, seen, datetime.now(UTC)
            )
            self._submit(run)

    @property
    def _width(self) -> int:
        return 1 + len(self.models.space.names)

    def _submit(self, run: Running) -> None:
        theta = dict(zip(self.models.space.names, map(float, run.row[1:]), strict=True))
        run.future = self.client.submit(
            run_on_worker,
            self.simulate,
            float(run.row[0]),
            theta,
            pure=False,
            key=f"simulation-{run.simulation_id}-{run.attempt}",
        )
        run.started = None
        self.running[run.simulation_id] = run
        if self.wake is not None:
            run.future.add_done_callback(lambda _: self.wake())

    def _collect(self) -> None:
        now = time.monotonic()
        self._note_starts(now)
        for run in list(self.running.values()):
            fut = run.future
            if fut.done():
                exc = fut.exception()
                if exc is None:
                    self._done(run, fut.result())
                else:
                    self._again(run, "failed", f"{type(exc).__name__}: {exc}")
            elif run.started is not None and now - run.started > self.config.timeout_s:
                fut.cancel()
                self._again(run, "dropped", f"hung: still running after {self.config.timeout_s} s")

    def _note_starts(self, now: float) -> None:
        """Mark the attempts a worker is running now: a simulation's time runs from then, not
        from its submission (on an HPC queue the wait for a job can be long) nor from its
        assignment to a worker whose threads are busy."""
        waiting = {run.future.key: run for run in self.running.values() if run.started is None}
        if not waiting:
            return
        try:
            started = started_on_workers(self.client, list(waiting))
        except Exception as exc:  # noqa: BLE001 - a busy cluster: look again next poll
            self.log.debug("no task states from the workers (%s)", exc)
            return
        for key in started:
            waiting[key].started = now

    def _again(self, run: Running, status: str, error: str) -> None:
        """Submit ``run`` again, or store it as ``status`` once its retries are spent."""
        del self.running[run.simulation_id]
        if run.attempt <= self.config.retries:
            self.counts["retried"] += 1
            self.log.warning(
                "simulation %s %s (attempt %d): submitted again",
                run.simulation_id,
                error,
                run.attempt,
            )
            run.attempt += 1
            self._submit(run)
            return
        self.log.warning(
            "simulation %s %s: %s after %d attempts", run.simulation_id, error, status, run.attempt
        )
        self._store(run, status, error=error)

    def _drop(self, run: Running, why: str) -> None:
        del self.running[run.simulation_id]
        run.future.cancel()
        self._store(run, "dropped", error=why)

    def _done(self, run: Running, out: dict) -> None:
        del self.running[run.simulation_id]
        self.rows.append(run.row)
        self.y.append(out["opening"])
        self._store(run, "done", out=out)

    def _store(self, run: Running, status: str, out: dict | None = None, error: str | None = None):
        self.counts[status] += 1
        names = self.models.space.names
        signal = None
        if out is not None:
            signal = Signal.from_array(
                "pfm_loop",
                ["branch", "bias"],
                out["loop"],
                coords={"branch": ["forward", "reverse"], "bias": BIAS_V.tolist()},
                units="pm/V",
            )
        self.store.append_simulation(
            Simulation(
                simulation_id=run.simulation_id,
                campaign=self.campaign,
                flow_run_id=self.flow_run_id,
                requested_at=run.requested_at,
                finished_at=datetime.now(UTC),
                composition=float(run.row[0]),
                parameters={n: float(v) for n, v in zip(names, run.row[1:], strict=True)},
                status=status,
                attempts=run.attempt,
                error=error,
                worker=None if out is None else out["worker"],
                runtime_s=0.0 if out is None else out["runtime_s"],
                outputs={} if out is None else {"loop_opening": out["opening"]},
                signal=signal,
                surrogate_version=run.version,
                acquisition_value=run.value,
                n_measurements=run.seen[0],
                n_simulations=run.seen[1],
            )
        )

    def _resume(self) -> None:
        """Simulations a previous run of this campaign stored count, and are not run again."""
        names = self.models.space.names
        for sim in self.store.read_simulations():
            self.counts[sim.status] += 1
            if sim.status == "done":
                self.rows.append(np.array([sim.composition, *(sim.parameters[n] for n in names)]))
                self.y.append(sim.outputs["loop_opening"])

    # -- the surrogate and the posterior ------------------------------------------------------
    def _data(self, campaign: Campaign) -> tuple:
        x, t, y = campaign.agent.log.data()
        mine = np.asarray(t) == self.task
        x_mm = campaign.agent.geometry.from_unit(np.asarray(x)[mine])
        rows = np.array(self.rows).reshape(-1, self._width)
        return rows, np.asarray(self.y, float), x_mm, np.asarray(y, float)[mine], self.bounds

    def _refit(self, campaign: Campaign) -> None:
        if self.update is not None or len(self.y) < 3:
            return
        n_meas = int((np.asarray(campaign.agent.log.data()[1]) == self.task).sum())
        new = (n_meas - self.fitted_on[0]) + (len(self.y) - self.fitted_on[1])
        if self.fitted_on[0] >= 0 and new < self.config.refit_every:
            return
        self.fitted_on = (n_meas, len(self.y))
        self.update = self.fits.submit(fit_theory, self.models, *self._data(campaign))

    def _install(self, campaign: Campaign, wait: bool = False) -> None:
        fut = self.update
        if fut is None or not (wait or fut.done()):
            return
        self.update = None
        exc = fut.exception()
        if exc is not None:  # a singular corner of a fit: keep the models we have
            self.log.warning(
                "theory fit failed (%s: %s); kept %s", type(exc).__name__, exc, self.models.version
            )
            return
        self.models = fut.result()
        if self.models.posterior is None:
            return
        self.history.append(
            {
                "n_measurements": self.models.n_measurements,
                "n_simulations": self.models.n_simulations,
                "elapsed_s": round(time.monotonic() - self.t0, 3),
                **self.models.posterior_row(),
            }
        )
        agent = campaign.agent
        guidance = np.ones((len(agent.candidates), agent.num_tasks))
        guidance[:, self.task] = self.models.guidance(agent.candidates, self.config.weight)
        agent.guide(guidance)

    def report(self) -> dict:
        """JSON-plain: the posterior now and over time, the simulations' fates, the
        discrepancy where theory and experiment disagree most."""
        return {
            "simulator": self.config.simulator,
            "instrument": self.instrument,
            "simulations": {k: int(v) for k, v in self.counts.items()},
            "posterior": self.models.summary(),
            "history": self.history,
            "disagreements": self.models.disagreements(),
        }


@contextlib.contextmanager
def theory_loop(
    spec: ConavigateSpec,
    agent: Agent,
    store: CampaignStore,
    flow_run_id: str | None,
    log: logging.Logger | logging.LoggerAdapter,
) -> Iterator[TheoryLoop]:
    """The co-navigation's simulations on their own cluster (``spec.theory.dask``), its fits
    on a thread; both closed on exit (the cluster bounded: a hung simulation's worker is
    killed)."""
    config = spec.theory
    names = list(agent.instruments)
    task = agent.instrument(config.instrument).tasks[0]
    with (
        dask_client(config.dask) as client,
        ThreadPoolExecutor(1, thread_name_prefix="theory") as fits,
    ):
        client.submit(warm_up, pure=False)  # while the instruments take their seeds
        loop = TheoryLoop(
            config,
            instrument=config.instrument,
            task=task,
            store=store,
            bounds=agent.bounds,
            client=client,
            fits=fits,
            campaign=spec.name,
            flow_run_id=flow_run_id,
            seed=spec.seed,
            log=log,
        )
        log.info(
            "theory: %s simulations of %s beside %s, %d at once on %s",
            config.max_simulations,
            config.instrument,
            ", ".join(n for n in names if n != config.instrument) or "nothing else",
            loop.cap,
            client.scheduler.address,
        )
        yield loop
