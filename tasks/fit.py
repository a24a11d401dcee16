"""Background hyperparameter refits and VAE trainings (DESIGN.md, "Performance").

The campaign keeps deciding with the model it has; a fit runs on the campaign's executor (Dask)
with the training data so far, and when it is done the new posterior is built on a thread, off
the decision path, and swapped in at the next poll. A failed fit (a numerically singular corner
of hyperparameter space) is logged and the campaign goes on with the model it has: a week of
instrument time must not end on one fit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

import numpy as np

from coorch.models.agent import Agent
from coorch.models.mtgp import LAPLACE_DRAWS, MTGPHyperparameters, aspect, fit_hyperparameters
from coorch.models.mtgp_agent import MTGPAgent
from coorch.models.vae import fit_vae
from coorch.tasks.background import InlineExecutor, outcome

if TYPE_CHECKING:
    from coorch.tasks.runtime import Campaign

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Pay a worker's first-fit costs (imports, torch's first-call setup) before the campaign
    needs a fit, and keep fits to one core: the other one decides."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse invariant checks")  # linear_operator
    x = np.linspace(0, 1, 6)[:, None]
    fit_hyperparameters(x, np.arange(6) % 2, np.sin(3 * x[:, 0]), 2, max_iter=5)


def needs_fits(agent: Agent) -> bool:
    """Only multi-task GP agents learn hyperparameters; the others need no Dask cluster."""
    return isinstance(agent, MTGPAgent)


class HyperparameterRefit:
    """At most one fit in flight; a new one starts once ``every`` new values (or relabelled
    ones) have arrived and every task has ``min_per_task`` values: a task with one or two
    values standardises to nothing, and its fitted signal variance, every gain with it,
    collapses.

    Args:
        executor: where fits run (Dask, or :class:`InlineExecutor`).
        builder: where a fitted model's posterior is built (a thread, or inline).
        fit: the fitting function, ``fit(x, t, y, num_tasks, coupled=, aspect=, log_tasks=,
            noise_sd=, smoothness=)``;
            by default the MAP fit with :data:`~coorch.models.mtgp.LAPLACE_DRAWS` Laplace draws,
            so decisions and reports count the hyperparameters' uncertainty (issue 15).
        wait: finish each fit, and install its posterior, before the campaign decides again:
            the design then depends on the data alone, not on when fits land (an instrument
            faster than a fit waits for it; one slower never notices).
    """

    def __init__(
        self,
        executor: Executor,
        *,
        every: int,
        min_per_task: int = 2,
        builder: Executor | None = None,
        fit: Callable[..., MTGPHyperparameters] | None = None,
        wait: bool = False,
    ) -> None:
        fit = fit or functools.partial(fit_hyperparameters, draws=LAPLACE_DRAWS)
        self.executor, self.builder, self.fit = executor, builder or InlineExecutor(), fit
        self.every, self.min_per_task, self.wait = every, min_per_task, wait
        self.fitting: tuple[Future, Key] | None = None
        self.building: Future | None = None
        self.last: Key = (-every, -1)
        #: the last fitted hyperparameters and the (values, log revision) they were fitted on
        self.latest: tuple[Key, MTGPHyperparameters] | None = None
        self.fits = self.failed = 0
        self.finish_timeout_s = 600.0

    def poll(self, campaign: Campaign) -> None:
        agent = campaign.agent
        if not needs_fits(agent):
            return
        self._collect(agent)
        counts = agent.log.counts()
        n, revision = int(counts.sum()), agent.log.revision
        due = n - self.last[0] >= self.every or revision != self.last[1]
        if self.fitting is None and due and counts.min() >= self.min_per_task:
            self._start(agent)
        if self.wait:
            self._drain(agent)
        self._collect(agent)

    def finish(self, campaign: Campaign) -> None:
        """Wait for a last fit on all the data and install it (the result reports it)."""
        agent = campaign.agent
        if not needs_fits(agent):
            return
        self._drain(agent)
        if self.latest is None or self.latest[0] != _key(agent):
            self._start(agent)
            self._drain(agent)

    def _drain(self, agent: MTGPAgent) -> None:
        """Wait for the fit and build in flight, at most ``finish_timeout_s`` each: a fit lost
        with its Dask worker must not hold the campaign's end; the model stays as it is."""
        while self.fitting is not None or self.building is not None:
            for fut in (self.fitting and self.fitting[0], self.building):
                if fut is None:
                    continue
                try:
                    fut.exception(timeout=self.finish_timeout_s)  # waits
                except FutureTimeout:
                    log.warning(
                        "a hyperparameter refit did not finish in %.0f s (a lost worker?): "
                        "model %s stays",
                        self.finish_timeout_s,
                        agent.model_version,
                    )
                    self.fitting = self.building = None
                    self.failed += 1
                    return
            self._collect(agent)

    def _start(self, agent: MTGPAgent) -> None:
        x, t, y = agent.log.data()
        self.last = _key(agent)
        fut = self.executor.submit(
            self.fit,
            x,
            t,
            y,
            agent.num_tasks,
            coupled=agent.decision.coupled,
            aspect=aspect(agent.bounds),
            log_tasks=agent.log_tasks,
            noise_sd=agent.noise_sd,
            smoothness=agent.decision.smoothness,
        )
        self.fitting = (fut, self.last)

    def _collect(self, agent: MTGPAgent) -> None:
        """Install a built posterior; hand a finished fit to the builder."""
        if self.building is not None and self.building.done():
            built, exc = outcome(self.building)
            self.building = None
            if exc is not None:
                raise exc  # building from fitted hyperparameters is not expected to fail
            agent.install(built)
            self.fits += 1
        if self.fitting is not None and self.fitting[0].done() and self.building is None:
            (fut, key), self.fitting = self.fitting, None
            hyper, exc = outcome(fut)
            if exc is not None:
                log.warning(
                    "hyperparameter refit on %d values failed, keeping model %s: %r",
                    key[0],
                    agent.model_version,
                    exc,
                )
                self.failed += 1
                return
            self.latest = (key, hyper)
            self.building = self.builder.submit(agent.posterior_work(hyper))
            if self.building.done():  # an inline builder: install now
                self._collect(agent)


Key = tuple[int, int]  # (values fitted on, observation-log revision)


def _key(agent: MTGPAgent) -> Key:
    return int(agent.log.counts().sum()), agent.log.revision


class VAETraining:
    """VAE training for the instruments whose descriptor is ``vae``.

    A VAE is (re)trained once an instrument has ``min_signals`` signals and again whenever its
    count has grown by ``growth``; when one is ready, the describer encodes with it from then
    on and the agent's values of that instrument are relabelled (the refit sees the log's
    revision change). Decisions go on meanwhile: positions, not values, drive the variance.
    ``wait``: finish each training and relabel before the campaign decides again, as
    :class:`HyperparameterRefit` does with its fits (``wait_for_refits``): the values a design
    reads then depend on the data alone, not on when a training lands.
    """

    def __init__(
        self,
        executor: Executor | None,
        *,
        min_signals: int = 6,
        growth: float = 1.5,
        epochs: int = 150,
        seed: int = 0,
        wait: bool = False,
    ) -> None:
        self.executor, self.wait = executor, wait
        self.min_signals, self.growth, self.epochs, self.seed = min_signals, growth, epochs, seed
        self.running: dict[str, tuple[Future, int]] = {}
        self.trained_on: dict[str, int] = {}
        self.trainings = 0

    def poll(self, campaign: Campaign, start: bool = True) -> None:
        if self.executor is None:
            return
        describer = campaign.describer
        for name, signals in describer.signals.items():
            job = self.running.get(name)
            if job is not None and job[0].done():
                del self.running[name]
                campaign.agent.relabel(describer.install_vae(name, job[0].result()))
                self.trained_on[name] = job[1]
                self.trainings += 1
            n = len(signals)
            if (
                start
                and name not in self.running
                and n >= self.min_signals
                and n >= self.growth * self.trained_on.get(name, 0)
            ):
                train = functools.partial(
                    fit_vae,
                    np.stack(list(signals.values())),
                    describer.latent_dim[name],
                    self.epochs,
                    self.seed,
                )
                self.running[name] = (self.executor.submit(train), n)
        if self.wait and self.running:
            self._drain(campaign)

    def _drain(self, campaign: Campaign) -> None:
        """Wait for every training in flight and relabel with it."""
        for fut, _ in list(self.running.values()):
            fut.result()
        self.poll(campaign, start=False)

    def finish(self, campaign: Campaign) -> None:
        """End of campaign: the last VAE covers every signal, so the final model does too."""
        if self.executor is None:
            return
        for name in campaign.describer.signals:
            self.trained_on[name] = min(self.trained_on.get(name, 0), 1)  # force a last one
        self.poll(campaign)
        self._drain(campaign)
