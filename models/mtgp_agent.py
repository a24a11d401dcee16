"""The multi-task GP agent: surrogate, acquisition and cost composed, as botorch composes them.

- **surrogate**: the multi-task GP's incremental posterior at the candidates
  (:class:`~coorch.models.incremental.IncrementalPosterior`), built from fitted hyperparameters
  through a :class:`DecisionModel` (the trust rule, decoupling, a cap on task correlation);
- **acquisition**: a pure score of the posterior per candidate for an instrument's tasks
  (:class:`IntegratedVarianceReduction`: co-orchestration; :class:`MaxVariance`: the published
  agent);
- **cost**: instrument-seconds per candidate (``coorch.models.cost``), divided out.

Hyperparameters come from outside (a background fit): :meth:`MTGPAgent.posterior_work`
snapshots what a new posterior needs and returns the work of building it (O(n^2 M T): the
campaign runs it off the decision path), :meth:`MTGPAgent.install` swaps the result in and
replays the points reserved meanwhile. :meth:`MTGPAgent.set_hyperparameters` does both at once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from coorch.models.acquisition import blend, integrated_variance_reduction, max_variance
from coorch.models.agent import Agent
from coorch.models.cost import InstrumentCost, instrument_seconds, log_tasks, noise_sd
from coorch.models.incremental import IncrementalPosterior, exact_posterior
from coorch.models.marginal import (
    local_loo_scale,
    loo_scale,
    marginal_posterior,
    task_inflation,
)
from coorch.models.mtgp import (
    LAPLACE_MAX_VALUES,
    MTGPHyperparameters,
    default_hyperparameters,
    trend_prior,
)

Cost = Callable[[InstrumentCost, np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclasses.dataclass(frozen=True)
class DecisionModel:
    """How fitted hyperparameters become the model decisions are made with.

    ``coupled=False`` decouples the tasks: each instrument learns alone (single-task GPs).
    ``max_correlation`` caps |inter-task correlation| (few points per task drive its MAP
    estimate to +-1). ``min_fit_values``: a task's fitted hyperparameters are trusted only once
    it has this many values; until then it is decided on the prior guess (uncoupled, the shared
    part's lengthscales, unit variance: :meth:`MTGPHyperparameters.with_prior_for`), which keeps
    an expensive modality from being declared known on a handful of points.
    ``prior_slope_variance``: the prior guess's slope variance per longest side
    (:func:`~coorch.models.mtgp.trend_prior`), also the agent's starting model's.
    ``smoothness``: the Materns' of every fit decisions are made with, and of the prior guess
    (:data:`~coorch.models.kernels.SMOOTHNESS`); the background refit asks for it.
    """

    coupled: bool = True
    max_correlation: float | None = None
    min_fit_values: int = 0
    prior_slope_variance: float = 1.0
    smoothness: float = 2.5

    def trusted(
        self, h: MTGPHyperparameters, counts: np.ndarray, trend: np.ndarray
    ) -> MTGPHyperparameters:
        """``h`` with every task that has fewer than ``min_fit_values`` values on the prior."""
        return h.with_prior_for(np.flatnonzero(counts < self.min_fit_values), trend=trend)

    def shaped(self, h: MTGPHyperparameters) -> MTGPHyperparameters:
        """``h`` decoupled or capped as configured."""
        if not self.coupled:
            return h.independent()
        return h if self.max_correlation is None else h.with_max_correlation(self.max_correlation)


@dataclasses.dataclass
class Posterior:
    """A built decision model: the incremental posterior, the value scale of its variance
    (M, T) (:func:`value_scale`, times where the fit's own residuals say it errs by more than
    its variance: :func:`~coorch.models.marginal.local_loo_scale`), how many reserved rows it
    was built on, and how much more variance each task has than the fit alone says (T,): the
    larger of what the hyperparameters' uncertainty adds
    (:func:`~coorch.models.marginal.task_inflation`) and what its own held-out residuals say
    (:func:`~coorch.models.marginal.loo_scale`)."""

    post: IncrementalPosterior
    value_scale: np.ndarray
    n_rows: int
    inflation: np.ndarray | None = None

    @functools.cached_property
    def map_variance(self) -> np.ndarray:
        """(T,) each task's map variance over the reference positions
        (:meth:`~coorch.models.mtgp.MTGPHyperparameters.map_variance`), once per build: the
        hyperparameters do not change while rows are added."""
        return self.post.hyper.map_variance(self.post.candidates[self.post.reference])


@dataclasses.dataclass(frozen=True)
class IntegratedVarianceReduction:
    """Integrated variance removed over the library, every task weighted (co-orchestration).

    Each task's reduction is weighted by ``task_weights * y_scale ** weight_power / map
    variance`` (its map's prior variance over the library, trend included:
    :meth:`~coorch.models.mtgp.MTGPHyperparameters.map_variance`) times the value scale: power
    0 counts tasks equally in standardised units (error judged per task, normalised by its
    map's spread, as nRMSE is), 2 counts variance in the targets' own units (error judged as
    one RMSE in shared units). Then by the task's
    inflation for hyperparameter uncertainty (the variance a plug-in fit hides), and by its current
    normalised integrated variance to the power ``balance``: 0 makes the sum of the tasks'
    normalised squared errors fall fastest; above 0 leans towards the task furthest from known,
    so that one confident-looking task cannot take every measurement while another's map is
    still poor. ``top_k`` candidates of the local reduction are ranked by the integrated one.
    """

    top_k: int = 32
    task_weights: tuple[float, ...] | None = None
    weight_power: float = 0.0
    balance: float = 0.0

    def __call__(
        self,
        model: Posterior,
        tasks: list[int],
        exclude: np.ndarray,
        emphasis: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        post = model.post
        h = post.hyper
        scale = model.map_variance
        w = np.ones(h.num_tasks) if self.task_weights is None else np.asarray(self.task_weights)
        w = w * h.y_scale**self.weight_power / scale
        if model.inflation is not None:
            w = w * model.inflation
        if self.balance:
            known = post.variance()[post.reference].mean(0) / scale
            inflation = 1.0 if model.inflation is None else model.inflation
            w = w * np.maximum(known * inflation, 1e-6) ** self.balance
        w = model.value_scale * w[None]
        if emphasis is not None:
            w = w * emphasis
        return integrated_variance_reduction(
            model.post, tasks, w, top_k=self.top_k, exclude=exclude
        )


@dataclasses.dataclass(frozen=True)
class MaxVariance:
    """The largest standardised predictive variance among the instrument's tasks."""

    def __call__(
        self,
        model: Posterior,
        tasks: list[int],
        exclude: np.ndarray,
        emphasis: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        score = max_variance(model.post, tasks)
        if emphasis is not None:
            score = score * emphasis[:, tasks].max(1)
        score[exclude] = -np.inf
        return np.arange(len(score)), score


Acquisition = IntegratedVarianceReduction | MaxVariance


class MTGPAgent(Agent):
    """A multi-task GP agent on the incremental posterior (see the module docstring).

    Args:
        acquisition: what a candidate is worth for an instrument's tasks.
        cost: seconds per candidate (:func:`~coorch.models.cost.instrument_seconds`, or
            :func:`~coorch.models.cost.unit_cost` to ignore cost).
        model: how fitted hyperparameters become the decision model.
        revisit: may an instrument be sent where it has measured already? With a noisy, cheap
            modality the value per second of averaging one spot can win over and over, and on
            a real sample a second dose of beam or tip at one spot is rarely wanted.
        hyperparameters: the starting model (default: one lengthscale in library mm, a fifth
            of the longest side, a trend as likely in every direction).
        n_reference: positions the integrated variance is averaged over.
    """

    def __init__(
        self,
        candidates: np.ndarray,
        bounds: np.ndarray,
        instruments: Sequence[InstrumentCost],
        *,
        acquisition: Acquisition = IntegratedVarianceReduction(),
        cost: Cost = instrument_seconds,
        model: DecisionModel = DecisionModel(),
        revisit: bool = True,
        hyperparameters: MTGPHyperparameters | None = None,
        n_reference: int = 512,
        seed: int = 0,
        name: str = "mtgp",
    ) -> None:
        super().__init__(candidates, bounds, instruments, seed=seed)
        self.name, self.acquisition, self.cost = name, acquisition, cost
        self.decision, self.revisit = model, revisit
        m = len(self.candidates)
        self.reference = (
            np.arange(m)
            if m <= n_reference
            else np.sort(self.rng.choice(m, n_reference, replace=False))
        )
        span = self.geometry.span
        self.trend = trend_prior(self.bounds, model.prior_slope_variance)
        h = hyperparameters or default_hyperparameters(
            self.num_tasks,
            self.unit.shape[1],
            lengthscale=0.2 * span.max() / span,
            trend=self.trend,
            smoothness=model.smoothness,
        )
        self.rows: list[tuple[np.ndarray, tuple[int, ...]]] = []  # every conditioned point
        self.install(self._build(self.decision.shaped(h), [], None))

    @property
    def log_tasks(self) -> np.ndarray:
        """(T,) bool: the tasks modelled as their logarithm (``InstrumentCost.log_scale``)."""
        return log_tasks(list(self.instruments.values()))

    @property
    def noise_sd(self) -> np.ndarray | None:
        """(T,) the declared repeatabilities (``InstrumentCost.repeatability``), None if none."""
        return noise_sd(list(self.instruments.values()))

    # -- the model ----------------------------------------------------------------------
    def posterior_work(self, h: MTGPHyperparameters) -> Callable[[], Posterior]:
        """The work of building the posterior for fitted ``h`` on everything reserved so far:
        run it anywhere (it reads a snapshot), then :meth:`install` its result."""
        counts = self.log.counts()
        trusted = self.decision.trusted(h, counts, self.trend)
        return functools.partial(
            self._build,
            self.decision.shaped(trusted),
            list(self.rows),
            self.log.data(),
            fitted=(h, counts >= self.decision.min_fit_values),
        )

    def install(self, built: Posterior) -> None:
        """Use ``built`` from now on, conditioned on the rows reserved since its snapshot."""
        for u, tasks in self.rows[built.n_rows :]:
            built.post.add(u, list(tasks))
        self.model = built
        self.model_version = built.post.hyper.version

    def set_hyperparameters(self, h: MTGPHyperparameters) -> None:
        """Swap in fitted ``h`` now (builds the posterior on this thread)."""
        self.install(self.posterior_work(h)())

    def _build(self, h: MTGPHyperparameters, rows, data, fitted=None) -> Posterior:
        """The posterior for ``h`` on ``rows`` (position, tasks), in one blocked build
        (:meth:`IncrementalPosterior.extend`): the state adding them one by one would reach,
        in seconds rather than the 27 s row by row took at 2000 rows (issue 15). ``fitted``:
        the fit as it came (with its draws) and which tasks use it, for the inflation."""
        post = IncrementalPosterior(
            self.unit, h, reference=self.reference, capacity=max(64, 2 * len(rows))
        )
        x = np.array([u for u, ts in rows for _ in ts], float)  # one GP row per task
        tasks = np.array([k for _, ts in rows for k in ts], int)
        post.extend(x.reshape(len(tasks), self.unit.shape[1]), tasks)
        inflation = None
        if fitted is not None and fitted[0].samples:  # a small fit (<= 500 values): widen
            hidden = task_inflation(fitted[0], data, self.unit[self.reference])
            inflation = np.maximum(hidden, loo_scale(fitted[0], *data))
            inflation[~fitted[1]] = 1.0  # decided on the prior guess: nothing hidden
        scale = value_scale(h, data, self.unit)
        # where the fit's own residuals say it errs, for fits of at most LAPLACE_MAX_VALUES
        # values (as the draws): its O(n^3) would cost 3 s at 2000 values and 23 s at 5000
        # (10,000 candidates), as much again as the rebuild itself
        if fitted is not None and len(data[2]) <= LAPLACE_MAX_VALUES:
            where = local_loo_scale(fitted[0], *data, self.unit, self.reference)
            where[:, ~fitted[1]] = 1.0  # decided on the prior guess: no residuals of its own
            scale = scale * where
        return Posterior(post, scale, len(rows), inflation)

    def _condition(self, u: np.ndarray, inst: InstrumentCost) -> None:
        self.rows.append((u, inst.tasks))
        self.model.post.add(u, list(inst.tasks))

    # -- deciding -----------------------------------------------------------------------
    def _excluded(self, inst: InstrumentCost) -> np.ndarray:
        taken = super()._excluded(inst)
        if not self.revisit:
            taken = np.union1d(taken, np.fromiter(self.visited[inst.name], int)).astype(int)
        return taken

    def _choose(self, inst: InstrumentCost) -> tuple[int, float]:
        idx, score = self.acquisition(
            self.model, list(inst.tasks), self._excluded(inst), self._emphasis()
        )
        value = score / self.cost(inst, self.candidates[idx], self.position.get(inst.name))
        if self.reward is not None:  # operators' votes (Agent.focus)
            value = blend(value, self.reward[idx], self.reward_weight)
        best = int(np.argmax(value))
        return int(idx[best]), float(value[best])

    def _emphasis(self) -> np.ndarray | None:
        """(M, T) weights on the knowledge at each candidate and task: the operators'
        (instrument weights, votes) times the guidance (:meth:`Agent.guide`), None when
        nobody has said anything."""
        if self.emphasis is None and (self.task_weight == 1).all() and self.guidance is None:
            return None
        where = np.ones(len(self.candidates)) if self.emphasis is None else self.emphasis
        out = where[:, None] * self.task_weight[None]
        return out if self.guidance is None else out * self.guidance

    # -- beliefs --------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance (Q, T) at library positions ``x``, targets' units."""
        h = self.model.post.hyper
        return marginal_posterior(h, *self.log.data(), self.geometry.to_unit(x))

    def report(self) -> dict:
        out = super().report()
        h = self.model.post.hyper
        out.update(
            lengthscale=h.lengthscale.tolist(),
            task_correlation=h.correlation().tolist(),
            noise=h.noise.tolist(),
        )
        if h.task_variance is not None:
            own = h.task_variance / h.prior_variance
            out.update(task_lengthscale=h.task_lengthscale.tolist(), own_share=own.tolist())
        return out


def value_scale(h: MTGPHyperparameters, data, unit: np.ndarray) -> np.ndarray:
    """What a unit of the GP's (standardised) variance at each candidate is worth in the map's
    own units, (M, T), relative to the task's average over the library.

    1 for a task modelled as it is. For one modelled as its logarithm (an amount, such as
    at.%), the map is judged in its own units, and there a log-variance costs the squared slope
    of ``exp``, the amount itself squared: an unsure log value where the dopant is at 26 at.%
    is a 26x wider error bar than the same where it is at 1 at.%. So the value follows the
    posterior mean there, from the fit and the data it was built with (``data``: x unit box,
    task, y), recomputed at every hyperparameter swap.
    """
    out = np.ones((len(unit), h.num_tasks))
    lg = h.log_tasks
    if lg is None or not lg.any() or data is None or not len(data[2]):
        return out
    mean, _ = exact_posterior(h, *data, unit)
    sq = mean[:, lg] ** 2
    scale = sq / sq.mean(0)
    if np.isfinite(scale).all():
        out[:, lg] = scale
    return out
