"""One simulated campaign: the campaign runtime driven by a plain measure function.

The simulation runs exactly what a campaign runs (``coorch.tasks.runtime.Campaign``: decide and
store, record, background refits) with two differences that make it a benchmark: a measurement
is answered by a function (replayed data, or a twin called in-process) instead of a Prefect task
and an HTTP agent, and background work runs inline, so every refit lands before the next
decision (as it would on instruments that are slow next to a fit). One measurement at a time;
each decision is the agent's best (instrument, position) pair. The store is an in-memory zarr
store, dropped at the end.

Every policy's data are scored by the same procedure: MAP multi-task GP hyperparameters fitted
on that run's data (coupled, whatever the policy), then the exact posterior mean. The
comparison is therefore about *where* data were taken, not about which model read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from coorch.benchmarks.problems import Measure, Problem
from coorch.models.agent import Agent
from coorch.models.cost import log_tasks, noise_sd
from coorch.models.incremental import exact_posterior
from coorch.models.marginal import loo_scale, marginal_posterior
from coorch.models.mtgp import LAPLACE_DRAWS, MTGPHyperparameters, aspect, fit_hyperparameters
from coorch.models.policies import (
    COORCHESTRATE_BALANCE,
    COORCHESTRATE_MAX_CORRELATION,
    COORCHESTRATE_PRIOR_SLOPE_VARIANCE,
    COORCHESTRATE_SMOOTHNESS,
    make_policy,
)
from coorch.storage import CampaignStore
from coorch.tasks.background import BackgroundWork, InlineExecutor
from coorch.tasks.describe import Describer
from coorch.tasks.fit import HyperparameterRefit
from coorch.tasks.runtime import Campaign


@dataclasses.dataclass(frozen=True)
class Settings:
    """How hyperparameters are fitted (for decisions and for scoring) and how the
    co-orchestration policy is configured.

    ``max_iter`` bounds the L-BFGS iterations (a benchmark refits ~1000 times; on these data
    the fits converge within 30: 30 and 100 gave the same hyperparameters). ``draws``
    hyperparameter sets from the Laplace approximation come with every fit, decisions' and
    scoring's alike (``coorch.models.mtgp_laplace``; 0: plug-in MAP fits).
    ``max_correlation``, ``task_weights``, ``weight_power``, ``balance``,
    ``prior_slope_variance`` and ``smoothness`` are
    co-orchestration's options (``coorch.models.policies.coorchestrate``), by default the
    policy's own defaults, chosen by cross-validation (``coorch bench defaults``). Single-task,
    co-orchestration with the tasks decoupled, takes them too; the other baselines run as
    published.
    """

    max_iter: int = 30
    draws: int = LAPLACE_DRAWS
    max_correlation: float | None = COORCHESTRATE_MAX_CORRELATION
    task_weights: tuple[float, ...] | None = None
    weight_power: float = 0.0
    balance: float = COORCHESTRATE_BALANCE
    prior_slope_variance: float = COORCHESTRATE_PRIOR_SLOPE_VARIANCE
    smoothness: float = COORCHESTRATE_SMOOTHNESS

    def policy_options(self, policy: str) -> dict:
        """Keyword options for :func:`make_policy`: co-orchestration's, which single-task (its
        decoupled ablation) shares; the other baselines take none."""
        if policy not in ("coorchestrate", "single_task"):
            return {}
        return {
            "max_correlation": self.max_correlation,
            "weight_power": self.weight_power,
            "task_weights": self.task_weights,
            "balance": self.balance,
            "prior_slope_variance": self.prior_slope_variance,
            "smoothness": self.smoothness,
        }


#: The Matern smoothness of the fit every policy's map is scored with.
SCORING_SMOOTHNESS = 2.5


@dataclasses.dataclass
class Trace:
    """One campaign: cumulative instrument-seconds after each measurement, and at the scored
    steps (measurement counts, seeds included) the map error (RMSE per task, truth units) and
    the calibration (per task, the share of held-back positions inside the 90 % predictive
    interval: :func:`interval_coverage`)."""

    policy: str
    seed: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    instruments: list[str] = dataclasses.field(default_factory=list)
    scored_at: list[int] = dataclasses.field(default_factory=list)
    rmse: list[list[float]] = dataclasses.field(default_factory=list)
    coverage: list[list[float]] = dataclasses.field(default_factory=list)


def fit(
    x: np.ndarray, t: np.ndarray, y: np.ndarray, num_tasks: int, *, seed: int, max_iter: int, **kw
) -> MTGPHyperparameters:
    """MAP hyperparameters with one torch thread (two threads fight over two busy cores)."""
    from coorch.models._threads import torch_scope

    with torch_scope(seed, threads=1):
        return fit_hyperparameters(x, t, y, num_tasks, max_iter=max_iter, seed=seed, **kw)


def map_rmse(
    problem: Problem, h: MTGPHyperparameters, x: np.ndarray, t: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """RMSE per task (T,) of the posterior mean against the truth at the scored positions."""
    mean, _ = exact_posterior(h, x, t, y, problem.geometry.to_unit(problem.query))
    return np.sqrt(((mean - problem.truth) ** 2).mean(0))


#: The predictive interval whose coverage is reported.
INTERVAL = 0.9


def interval_coverage(
    problem: Problem, h: MTGPHyperparameters, x: np.ndarray, t: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Per task (T,), the share of held-back scored positions whose truth lies inside the
    central 90 % interval of the posterior integrated over ``h``'s draws and widened by each
    task's leave-one-out calibration (:func:`~coorch.models.marginal.loo_scale`; moment-matched,
    in the units the GP models: a log task's log). Held back: every scored position a task has
    not measured. Against a replay's stored values (themselves measurements) the interval is
    a new measurement's, noise included; against a twin's expected descriptor, the map's."""
    from scipy.stats import norm

    query = problem.geometry.to_unit(problem.query)
    scale = loo_scale(h, x, t, y)
    mean, var = marginal_posterior(
        h, x, t, y, query, modelled=True, noise=problem.passthrough, scale=scale
    )
    truth = problem.truth
    if h.log_tasks is not None and h.log_tasks.any():
        truth = np.where(h.log_tasks, np.log(np.maximum(truth, 1e-300)), truth)
    inside = np.abs(truth - mean) <= norm.ppf(0.5 + INTERVAL / 2) * np.sqrt(var)
    held = np.ones_like(inside)
    for k in range(h.num_tasks):
        measured = np.isclose(query[:, None, :], x[t == k][None]).all(2).any(1)
        held[measured, k] = False
    return np.array([inside[held[:, k], k].mean() for k in range(h.num_tasks)])


@contextlib.contextmanager
def memory_store() -> Iterator[CampaignStore]:
    """A fresh in-memory campaign store, deleted on exit."""
    import fsspec

    url = f"memory://coorch-simulation/{uuid.uuid4().hex}.zarr"
    with CampaignStore.open(url, create=True) as store:
        yield store
    fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


class Companion(Protocol):
    """Work beside the campaign that also scores (a co-navigation's theory): its background
    work, a way to let it catch up after each measurement, and its own map of some tasks."""

    work: BackgroundWork

    def settle(self, campaign: Campaign) -> None: ...

    def rmse(self, problem: Problem, rmse: np.ndarray) -> np.ndarray: ...


def simulate(
    problem: Problem,
    policy: str,
    seed: int,
    steps: int,
    measure: Measure,
    settings: Settings,
    score_every: int = 1,
    companion: Callable[[CampaignStore, Agent], Companion] | None = None,
) -> Trace:
    """Seeds, then ``steps`` decisions, each measured and recorded; the map scored after the
    seeds, every ``score_every`` steps and after the last. A ``companion`` (built on the
    store and agent) is polled with the campaign's work, settled after each measurement and
    scores the tasks it maps itself."""
    agent = make_policy(
        policy,
        problem.candidates,
        problem.bounds,
        problem.instruments,
        seed=seed,
        **settings.policy_options(policy),
    )
    fitting = functools.partial(fit, seed=seed, max_iter=settings.max_iter, draws=settings.draws)
    refit = HyperparameterRefit(InlineExecutor(), every=1, fit=fitting)
    describer = (
        Describer(describe=lambda _, s: s.array().reshape(-1))
        if problem.passthrough
        else Describer()
    )
    trace = Trace(policy, seed)
    with memory_store() as store:
        beside = companion(store, agent) if companion is not None else None
        campaign = Campaign(
            f"simulated-{policy}-{seed}",
            store,
            agent,
            describer,
            problem.modalities,
            len(problem.seeds) + steps,
            [refit] if beside is None else [refit, beside.work],
        )
        campaign.reserve([(inst, problem.candidates[c]) for inst, c in problem.seeds])
        for step in range(-len(problem.seeds) + 1, steps + 1):
            m, seconds = measure(campaign.decide(None))
            store.append_measurement(m)
            campaign.record(m)
            if beside is not None:
                beside.settle(campaign)
            trace.seconds.append((trace.seconds[-1] if trace.seconds else 0.0) + seconds)
            trace.instruments.append(m.instrument)
            if step >= 0 and (step == steps or step % score_every == 0):
                trace.scored_at.append(len(trace.seconds))
                h = scoring_fit(problem, agent, refit, fitting)
                rmse = map_rmse(problem, h, *agent.log.data())
                trace.coverage.append(interval_coverage(problem, h, *agent.log.data()).tolist())
                if beside is not None:
                    rmse = beside.rmse(problem, rmse)
                trace.rmse.append(rmse.tolist())
        if beside is not None:  # its answer reads everything (the theory's last fit)
            beside.work.finish(campaign)
    return trace


def _scores(agent: Agent) -> bool:
    """Are the agent's decision fits the scoring fit's model (coupled, Matern-5/2)? Only a
    GP agent has decision fits."""
    d = agent.decision
    return d.coupled and d.smoothness == SCORING_SMOOTHNESS


def scoring_fit(
    problem: Problem, agent, refit: HyperparameterRefit, fitting
) -> MTGPHyperparameters:
    """The coupled MAP fit on everything measured, the same model for every policy (Matern
    5/2): the decision refit's own, when it was such a fit of exactly these data (one fit
    serves both), else a fit of its own."""
    x, t, y = agent.log.data()
    latest = refit.latest
    if latest is not None and latest[0] == (len(y), agent.log.revision) and _scores(agent):
        return latest[1]
    return fitting(
        x,
        t,
        y,
        len(problem.tasks),
        coupled=True,
        aspect=aspect(problem.bounds),
        log_tasks=log_tasks(problem.instruments),
        noise_sd=noise_sd(problem.instruments),
        smoothness=SCORING_SMOOTHNESS,
    )
