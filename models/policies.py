"""The campaign policies by name: a table of recipes, each composing an agent.

A recipe takes the candidates, the library bounds, the instruments and a policy's keyword
options (``CampaignSpec.policy_options``) and returns an agent (``coorch.models.agent``). The
CLI, the flows and the benchmarks all build agents here, which keeps the efficiency benchmark's
comparison fair: it runs exactly what a campaign runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from coorch.models.agent import Agent, GridAgent, RandomAgent
from coorch.models.cost import InstrumentCost, unit_cost
from coorch.models.mtgp import MIN_COUPLING_VALUES
from coorch.models.mtgp_agent import (
    DecisionModel,
    IntegratedVarianceReduction,
    MaxVariance,
    MTGPAgent,
)

#: Cap on |task correlation| in co-orchestration's decision model. First chosen on the shared
#: replay file; kept since by leave-one-problem-out cross-validation over both twin libraries
#: and the replay (``coorch bench defaults``, docs/benchmarks.md, "Unseen data"), against no cap,
#: the sum of normalised RMSEs and the worst task first.
COORCHESTRATE_MAX_CORRELATION = 0.7
#: Exponent of each task's normalised integrated variance in the gain (``balance`` of
#: ``IntegratedVarianceReduction``): 0, the sum of the tasks' normalised squared errors, chosen
#: with the Matern-3/2 decision model by the same cross-validation over -0.5 (the sum of
#: normalised RMSEs, its choice before the gain read the fits' residuals) and 1 (worst task
#: first); re-run on 2026-12-05 evening (docs/benchmarks.md, "A third run").
COORCHESTRATE_BALANCE = 0.0
#: Values a task needs before co-orchestration trusts its fitted hyperparameters, from the
#: efficiency benchmark on the alscbn twins (docs/benchmarks.md): about three per input
#: dimension, the rule of thumb for a GP's lengthscales; the same number a log task waits
#: for before a fit couples it.
COORCHESTRATE_MIN_FIT_VALUES = MIN_COUPLING_VALUES
#: Slope variance of the prior guess a task is decided on until its own fit is trusted
#: (``DecisionModel.prior_slope_variance``): one standard deviation of slope changes the task
#: by twice its stationary spread from the library's centre to the end of its longest side.
#: A combinatorial library varies mostly along its deposition gradients, and the twins' fits
#: say so (slope variances 2-5, WDS's 5-14, against a stationary variance of 0-1.5); with the
#: prior guess's 1, the gain of a task's third and fourth points favoured the centre over the
#: off-diagonal corner that pins its gradient (docs/benchmarks.md, "What changed on 2026-12-03").
#: Screened on the twins against 1 and 10, then kept by the defaults' cross-validation against 1.
COORCHESTRATE_PRIOR_SLOPE_VARIANCE = 4.0
#: Matern smoothness of co-orchestration's decision model (``DecisionModel.smoothness``): 3/2,
#: chosen by the defaults' cross-validation (2026-12-03, with balance -0.5, in all three folds;
#: 2026-12-05, with balance 0) over the 5/2 model: a design planned on a rougher map leaves
#: fewer gaps where the map has detail the data have not shown (with balance -0.5 its
#: intervals covered 84 % of the replay's BEPS where 5/2's covered 72 %). Its design depends on
#: the fits it is made with, so a campaign whose refits land late (an instrument faster than a
#: fit) places points differently from the benchmarks, whose refits land before each
#: decision: ``wait_for_refits`` makes a campaign do the same (docs/benchmarks.md, "Traced on
#: 2026-12-04").
COORCHESTRATE_SMOOTHNESS = 1.5

Recipe = Callable[..., Agent]


def coorchestrate(
    candidates: np.ndarray,
    bounds: np.ndarray,
    instruments: Sequence[InstrumentCost],
    *,
    seed: int = 0,
    max_correlation: float | None = COORCHESTRATE_MAX_CORRELATION,
    min_fit_values: int = COORCHESTRATE_MIN_FIT_VALUES,
    task_weights: Sequence[float] | None = None,
    weight_power: float = 0.0,
    balance: float = COORCHESTRATE_BALANCE,
    revisit: bool = False,
    prior_slope_variance: float = COORCHESTRATE_PRIOR_SLOPE_VARIANCE,
    smoothness: float = COORCHESTRATE_SMOOTHNESS,
    coupled: bool = True,
) -> MTGPAgent:
    """Co-orchestration: integrated variance reduction over every task per instrument-second,
    on the coupled multi-task GP, never twice at one spot. ``coupled=False``: the same agent
    with the tasks decoupled (:func:`single_task`)."""
    ivr = IntegratedVarianceReduction(
        task_weights=None if task_weights is None else tuple(task_weights),
        weight_power=weight_power,
        balance=balance,
    )
    return MTGPAgent(
        candidates,
        bounds,
        instruments,
        acquisition=ivr,
        revisit=revisit,
        model=DecisionModel(
            max_correlation=max_correlation,
            min_fit_values=min_fit_values,
            prior_slope_variance=prior_slope_variance,
            smoothness=smoothness,
            coupled=coupled,
        ),
        seed=seed,
        name="coorchestrate" if coupled else "single_task",
    )


def single_task(
    candidates: np.ndarray,
    bounds: np.ndarray,
    instruments: Sequence[InstrumentCost],
    *,
    seed: int = 0,
    **options,
) -> MTGPAgent:
    """Co-orchestration with the tasks decoupled: each instrument learns alone, everything
    else co-orchestration's (``options`` as :func:`coorchestrate` takes them: the acquisition,
    cost, trust rule, prior guess, smoothness, no repeats). The ablation that says what
    coupling the modalities buys.

    Until 2026-12-06 it was a bare agent on the decoupled model (the class defaults: repeats
    allowed, no trust rule, the 5/2 model, the flat prior guess), which on the twins measured
    the same corners again and again and never reached the error target
    (docs/benchmarks.md, "An honest single-task baseline")."""
    return coorchestrate(candidates, bounds, instruments, seed=seed, coupled=False, **options)


def max_uncertainty(
    candidates: np.ndarray,
    bounds: np.ndarray,
    instruments: Sequence[InstrumentCost],
    *,
    seed: int = 0,
) -> MTGPAgent:
    """The published agent: the largest standardised variance, cost ignored."""
    return MTGPAgent(
        candidates,
        bounds,
        instruments,
        acquisition=MaxVariance(),
        cost=unit_cost,
        seed=seed,
        name="max_uncertainty",
    )


def _bo(kind: str) -> Recipe:
    def recipe(candidates, bounds, instruments, *, seed: int = 0, **options) -> Agent:
        from coorch.models.bo_policies import EIPolicy, UCBPolicy  # botorch: imported on use

        cls = UCBPolicy if kind == "ucb" else EIPolicy
        return cls(candidates, bounds, instruments, seed=seed, **options)

    recipe.__doc__ = f"Single-task optimisation baseline ({kind.upper()}, botorch)."
    return recipe


def pareto(
    candidates: np.ndarray,
    bounds: np.ndarray,
    instruments: Sequence[InstrumentCost],
    *,
    seed: int = 0,
    **options,
) -> Agent:
    """Multi-objective: the Pareto front of the tasks (botorch qLogNEHVI)."""
    from coorch.models.pareto_policy import ParetoPolicy

    return ParetoPolicy(candidates, bounds, instruments, seed=seed, **options)


def _plain(cls: type[Agent]) -> Recipe:
    def recipe(candidates, bounds, instruments, *, seed: int = 0) -> Agent:
        return cls(candidates, bounds, instruments, seed=seed)

    recipe.__doc__ = cls.__doc__
    return recipe


RECIPES: dict[str, Recipe] = {
    "coorchestrate": coorchestrate,
    "single_task": single_task,
    "max_uncertainty": max_uncertainty,
    "random": _plain(RandomAgent),
    "grid": _plain(GridAgent),
    "ucb": _bo("ucb"),
    "ei": _bo("ei"),
    "pareto": pareto,
}
POLICIES = tuple(RECIPES)


def make_policy(
    name: str,
    candidates: np.ndarray,
    bounds: np.ndarray,
    instruments: Sequence[InstrumentCost],
    *,
    seed: int = 0,
    **options,
) -> Agent:
    """The agent of policy ``name`` with its keyword ``options``."""
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {POLICIES}") from None
    return recipe(candidates, bounds, instruments, seed=seed, **options)
