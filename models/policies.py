"""Decision policies behind one small contract (DESIGN.md, "Decision agent").

Like bluesky-adaptive's ``Agent``: a policy is *told* observations and *asked* for the next
position for a free instrument (or, with ``instrument=None``, for the best (instrument,
position) pair), and can ``report()`` what it believes. Every policy remembers what it has
suggested and not yet been told about (pending), so concurrent instruments are never sent to
the same place. Random, grid, single-modality GP, the published max-uncertainty agent and the
cost-aware co-orchestration agent all fit, which keeps the efficiency benchmark fair.

Positions are library coordinates (mm); the policy works in the unit box of ``bounds``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from coorch.models.acquisition import knowledge_gain
from coorch.models.incremental import IncrementalPosterior, exact_posterior
from coorch.models.mtgp import (
    MIN_COUPLING_VALUES,
    MTGPHyperparameters,
    default_hyperparameters,
    trend_prior,
)
from coorch.records import new_id


@dataclasses.dataclass(frozen=True)
class InstrumentModel:
    """What a policy knows of an instrument: which tasks it observes and what it costs."""

    name: str
    tasks: tuple[int, ...]
    cost_s: float = 1.0
    move_cost_s_per_mm: float = 0.0
    log_scale: bool = False  # its tasks are amounts, modelled as their log (models/mtgp.py)


def log_tasks(instruments: Sequence[InstrumentModel]) -> np.ndarray:
    """(T,) bool over every task of ``instruments``: which are modelled as their logarithm."""
    out = np.zeros(1 + max(t for i in instruments for t in i.tasks), bool)
    for inst in instruments:
        out[list(inst.tasks)] = inst.log_scale
    return out


@dataclasses.dataclass(frozen=True)
class Observation:
    """A measured descriptor: ``values`` holds one number per task of ``instrument``."""

    instrument: str
    x: np.ndarray  # library coordinates (d,)
    values: np.ndarray
    measurement_id: str


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """The policy's answer: where to measure, with what, and why."""

    instrument: str
    x: np.ndarray
    measurement_id: str
    acquisition_value: float
    policy: str
    model_version: str
    trained_on: tuple[str, ...]
    pending: tuple[str, ...]
    n_candidates: int


class Policy(Protocol):
    name: str

    def tell(self, observations: Sequence[Observation]) -> None: ...

    def ask(self, instrument: str | None = None) -> Suggestion: ...

    def report(self) -> dict: ...


class BasePolicy:
    """Candidates, instruments, observations and pending bookkeeping shared by all policies."""

    name = "base"

    def __init__(self, candidates: np.ndarray, bounds: np.ndarray,
                 instruments: Sequence[InstrumentModel], *, seed: int = 0) -> None:
        self.bounds = np.asarray(bounds, float)  # (d, 2)
        self.candidates = np.atleast_2d(np.asarray(candidates, float))
        self.unit = self._to_unit(self.candidates)
        self.instruments = {i.name: i for i in instruments}
        self.num_tasks = 1 + max(t for i in instruments for t in i.tasks)
        self.rng = np.random.default_rng(seed)
        self.obs_x: list[np.ndarray] = []
        self.obs_t: list[int] = []
        self.obs_y: list[float] = []
        self.obs_ids: list[str] = []
        self.obs_rows: dict[str, list[int]] = {}  # measurement id -> its rows in obs_*
        self.pending: dict[str, tuple[str, int]] = {}  # measurement id -> (instrument, cand)
        self.position: dict[str, np.ndarray] = {}  # last position per instrument (unit box)
        self.visited: dict[str, set[int]] = {i.name: set() for i in instruments}
        self._lock = threading.RLock()

    def _to_unit(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        return (np.atleast_2d(x) - lo) / (hi - lo)

    def _instrument(self, name: str) -> InstrumentModel:
        try:
            return self.instruments[name]
        except KeyError:
            known = list(self.instruments)
            raise KeyError(f"unknown instrument {name!r}; policy knows {known}") from None

    # -- the contract -------------------------------------------------------------------
    def tell(self, observations: Sequence[Observation]) -> None:
        with self._lock:
            for o in observations:
                if o.measurement_id in self.obs_rows:
                    continue  # told twice (resume, retry): once is enough
                inst = self._instrument(o.instrument)
                u = self._to_unit(o.x)[0]
                if self.pending.pop(o.measurement_id, None) is None:
                    self._condition(u, inst)  # not suggested by us (seed, resume, human)
                    self.visited[inst.name].add(self._nearest(u))
                rows = []
                for task, value in zip(inst.tasks, np.atleast_1d(o.values), strict=True):
                    rows.append(len(self.obs_y))
                    self.obs_x.append(u)
                    self.obs_t.append(task)
                    self.obs_y.append(float(value))  # NaN: position known, value not yet
                self.obs_ids.append(o.measurement_id)
                self.obs_rows[o.measurement_id] = rows
                self.position[o.instrument] = u

    def ask(self, instrument: str | None = None) -> Suggestion:
        with self._lock:
            names = [instrument] if instrument else list(self.instruments)
            best = None
            for name in names:
                inst = self._instrument(name)
                cand, value = self._choose(inst)
                if best is None or value > best[2]:
                    best = (inst, cand, value)
            inst, cand, value = best
            mid = new_id("m")
            pending = tuple(self.pending)
            self.pending[mid] = (inst.name, cand)
            self.visited[inst.name].add(cand)
            self._condition(self.unit[cand], inst)
            self.position[inst.name] = self.unit[cand]
            return Suggestion(
                instrument=inst.name, x=self.candidates[cand].copy(), measurement_id=mid,
                acquisition_value=float(value), policy=self.name,
                model_version=self.model_version, trained_on=tuple(self.obs_ids),
                pending=pending, n_candidates=len(self.candidates))

    def plan(self, instrument: str, x: np.ndarray, *, reason: str = "seed",
             measurement_id: str | None = None) -> Suggestion:
        """Register a position chosen outside the policy (seed, human redirect, a decision
        re-issued on resume) as pending at the nearest candidate, so the policy's own choices
        account for it."""
        with self._lock:
            inst = self._instrument(instrument)
            cand = self._nearest(self._to_unit(x)[0])
            mid = measurement_id or new_id("m")
            pending = tuple(self.pending)
            self.pending[mid] = (inst.name, cand)
            self.visited[inst.name].add(cand)
            self._condition(self.unit[cand], inst)
            return Suggestion(
                instrument=inst.name, x=self.candidates[cand].copy(), measurement_id=mid,
                acquisition_value=float("nan"), policy=reason, model_version=self.model_version,
                trained_on=tuple(self.obs_ids), pending=pending,
                n_candidates=len(self.candidates))

    def relabel(self, values: dict[str, np.ndarray]) -> None:
        """Replace the values of measurements already told (a retrained VAE re-encodes every
        signal of its modality). Positions, hence the decision state, do not change."""
        with self._lock:
            for mid, vals in values.items():
                for row, v in zip(self.obs_rows[mid], np.atleast_1d(vals), strict=True):
                    self.obs_y[row] = float(v)

    def report(self) -> dict:
        return {"policy": self.name, "n_observations": len(self.obs_ids),
                "n_pending": len(self.pending), "model_version": self.model_version}

    # -- hooks ----------------------------------------------------------------------------
    model_version = "none"

    def _condition(self, u: np.ndarray, inst: InstrumentModel) -> None:
        """Remember that ``inst`` is (or will be) measured at unit position ``u``."""

    def _choose(self, inst: InstrumentModel) -> tuple[int, float]:
        raise NotImplementedError

    def _nearest(self, u: np.ndarray) -> int:
        """Index of the candidate nearest to unit-box position ``u``."""
        return int(np.argmin(((self.unit - u) ** 2).sum(1)))

    def _cost(self, inst: InstrumentModel) -> np.ndarray:
        """Instrument-seconds per candidate: the modality's cost plus the stage move from
        where the instrument is (or will be, once its pending point is measured)."""
        here = self.position.get(inst.name)
        if here is None or inst.move_cost_s_per_mm == 0:
            return np.full(len(self.candidates), inst.cost_s)
        span = self.bounds[:, 1] - self.bounds[:, 0]
        dist = np.sqrt((((self.unit - here) * span) ** 2).sum(1))
        return inst.cost_s + inst.move_cost_s_per_mm * dist

    def _taken(self, inst: InstrumentModel) -> np.ndarray:
        """Candidate indices already suggested to or measured by ``inst``."""
        pend = [c for name, c in self.pending.values() if name == inst.name]
        return np.asarray(pend, dtype=int)


class RandomPolicy(BasePolicy):
    """Uniformly random positions (never a pending one): the floor any agent must beat."""

    name = "random"

    def _choose(self, inst: InstrumentModel) -> tuple[int, float]:
        free = np.setdiff1d(np.arange(len(self.candidates)), self._taken(inst))
        return int(self.rng.choice(free)), float(self.rng.random())


class GridPolicy(BasePolicy):
    """A space-filling survey: farthest-point order over the candidates, per instrument,
    skipping what that instrument has already measured or been sent to (seeds, resume)."""

    name = "grid"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.order = farthest_point_order(self.unit)
        self.asked = dict.fromkeys(self.instruments, 0)

    def _choose(self, inst: InstrumentModel) -> tuple[int, float]:
        seen = self.visited[inst.name]
        fresh = next((int(c) for c in self.order if int(c) not in seen), None)
        # once every candidate is done the survey starts over; when several instruments are
        # free, the one with the least done so far wins
        cand = fresh if fresh is not None else int(self.order[self.asked[inst.name]
                                                              % len(self.order)])
        return cand, -float(len(seen))

    def ask(self, instrument: str | None = None) -> Suggestion:
        with self._lock:
            s = super().ask(instrument)
            self.asked[s.instrument] += 1
            return s


def farthest_point_order(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Greedy farthest-point ordering: each next point is farthest from all chosen so far."""
    n = len(x)
    order = np.empty(n, dtype=int)
    dist = np.full(n, np.inf)
    cur = start
    for i in range(n):
        order[i] = cur
        dist = np.minimum(dist, ((x - x[cur]) ** 2).sum(1))
        dist[cur] = -1.0
        cur = int(np.argmax(dist))
    return order


class GPPolicy(BasePolicy):
    """Multi-task GP policies on the incremental posterior.

    ``acquisition``: ``"knowledge_gain"`` (integrated variance reduction over all tasks per
    instrument-second: co-orchestration) or ``"max_variance"`` (largest standardised
    predictive variance among the instrument's tasks, equal cost: the published agent).
    ``coupled=False`` decouples the tasks: each instrument learns alone (single-modality GP).
    ``max_correlation`` caps |inter-task correlation| in the decision model (few points per
    task drive its MAP estimate to +-1). ``weight_power`` weights each task's gain by
    ``y_scale ** power`` on top of ``task_weights``: 0 counts tasks equally in standardised units
    (error judged per task, normalised), 2 counts variance in the targets' own units (error
    judged as one RMSE in shared units, as in the published replay). ``revisit=False`` never
    sends an instrument where it has already measured: with a noisy, cheap modality the gain per
    second of averaging one spot can win over and over (seen with STEM in the demo), and on a
    real sample a second dose of beam or tip at one spot is rarely what an operator wants.
    ``min_fit_values``: a task's fitted hyperparameters enter decisions only once it has this
    many values; until then it is decided on the prior guess (uncoupled, the shared part's
    lengthscales, unit variance, a trend as likely in every direction:
    :meth:`MTGPHyperparameters.with_prior_for`), which keeps an expensive modality
    from being declared known on a handful of points (docs/benchmarks.md, "alscbn").
    Hyperparameters come from outside (a background fit): :meth:`set_hyperparameters` swaps
    them in synchronously, :meth:`swap_hyperparameters_async` builds the new posterior in a
    background thread and swaps it at the next ``ask``, replaying rows decided meanwhile.
    """

    def __init__(self, candidates: np.ndarray, bounds: np.ndarray,
                 instruments: Sequence[InstrumentModel], *, acquisition: str = "knowledge_gain",
                 coupled: bool = True, cost_aware: bool = True,
                 hyperparameters: MTGPHyperparameters | None = None,
                 task_weights: np.ndarray | None = None, n_reference: int = 512,
                 top_k: int = 32, seed: int = 0, name: str | None = None,
                 max_correlation: float | None = None, weight_power: float = 0.0,
                 revisit: bool = True, min_fit_values: int = 0) -> None:
        super().__init__(candidates, bounds, instruments, seed=seed)
        self.max_correlation, self.weight_power = max_correlation, weight_power
        self.revisit, self.min_fit_values = revisit, min_fit_values
        if acquisition not in ("knowledge_gain", "max_variance"):
            raise ValueError(f"unknown acquisition {acquisition!r}")
        self.acquisition, self.coupled, self.cost_aware = acquisition, coupled, cost_aware
        self.name = name or ("coorchestrate" if coupled else "single_task")
        self.task_weights = task_weights
        self.top_k = top_k
        m = len(self.candidates)
        self.reference = (np.arange(m) if m <= n_reference
                          else np.sort(self.rng.choice(m, n_reference, replace=False)))
        # before any fit: one lengthscale in library mm (a fifth of the longest side), so an
        # elongated library is not explored across its short side as if it were as long, and
        # a trend as likely in every direction
        span = self.bounds[:, 1] - self.bounds[:, 0]
        self.trend = trend_prior(self.bounds)
        h = hyperparameters or default_hyperparameters(
            self.num_tasks, self.unit.shape[1], lengthscale=0.2 * span.max() / span,
            trend=self.trend)
        self.rows: list[tuple[np.ndarray, tuple[int, ...]]] = []  # every conditioned point
        self._swap: tuple[Future, int] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._install(self._build(h, self.rows))

    # -- model state --------------------------------------------------------------------
    def _build(self, h: MTGPHyperparameters, rows, data=None
               ) -> tuple[IncrementalPosterior, np.ndarray]:
        """The posterior for ``h`` conditioned on ``rows``, and the value scale (M, T) of its
        variance from the measured ``data`` (:meth:`_value_scale`)."""
        h = h if self.coupled else h.independent()
        if self.coupled and self.max_correlation is not None:
            h = h.with_max_correlation(self.max_correlation)
        post = IncrementalPosterior(self.unit, h, reference=self.reference,
                                    capacity=max(64, 2 * len(rows)))
        for u, tasks in rows:
            post.add(u, tasks)
        return post, self._value_scale(h, data)

    def _value_scale(self, h: MTGPHyperparameters, data) -> np.ndarray:
        """What a unit of the GP's (standardised) variance at each candidate is worth in the
        map's own units, (M, T), relative to the task's average over the library.

        1 for a task modelled as it is. For one modelled as its logarithm (an amount, such as
        at.%), the map is judged in its own units, and there a log-variance costs the squared
        slope of ``exp``, the amount itself squared: an unsure log value where the dopant is
        at 26 at.% is a 26x wider error bar than the same where it is at 1 at.%. So the
        knowledge gain follows the posterior mean there, from the last fit and the data it was
        built with (``data``: x unit box, task, y), recomputed at every hyperparameter swap.
        """
        out = np.ones((len(self.candidates), self.num_tasks))
        lg = h.log_tasks
        if lg is None or not lg.any() or data is None or not len(data[2]):
            return out
        mean, _ = exact_posterior(h, *data, self.unit)
        sq = mean[:, lg] ** 2
        scale = sq / sq.mean(0)
        if np.isfinite(scale).all():
            out[:, lg] = scale
        return out

    def _install(self, built: tuple[IncrementalPosterior, np.ndarray]) -> None:
        post, value_scale = built
        self.post = post
        self.model_version = post.hyper.version
        prior = post.hyper.prior_variance
        w = np.ones(self.num_tasks) if self.task_weights is None else self.task_weights
        w = np.asarray(w, float) * post.hyper.y_scale ** self.weight_power
        self.weights = value_scale * (w / prior)[None, :]  # (M, T)

    def _condition(self, u: np.ndarray, inst: InstrumentModel) -> None:
        self.rows.append((u, inst.tasks))
        self.post.add(u, list(inst.tasks))

    def _trusted(self, h: MTGPHyperparameters) -> MTGPHyperparameters:
        """``h`` with the tasks that have fewer than ``min_fit_values`` values on the prior."""
        y = np.asarray(self.obs_y, float)
        counts = np.bincount(np.asarray(self.obs_t, int)[np.isfinite(y)],
                             minlength=self.num_tasks)
        return h.with_prior_for(np.flatnonzero(counts < self.min_fit_values), trend=self.trend)

    def set_hyperparameters(self, h: MTGPHyperparameters) -> None:
        """Swap in new hyperparameters now (rebuilds the posterior: O(n^2 M T))."""
        with self._lock:
            self._install(self._build(self._trusted(h), self.rows, self.training_data()))

    def swap_hyperparameters_async(self, h: MTGPHyperparameters) -> Future:
        """Build the posterior for ``h`` off the decision path; ``ask`` swaps it in when done."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="posterior")
            snapshot = list(self.rows)
            fut = self._executor.submit(self._build, self._trusted(h), snapshot,
                                        self.training_data())
            self._swap = (fut, len(snapshot))
            return fut

    def _maybe_swap(self) -> None:
        if self._swap is None or not self._swap[0].done():
            return
        fut, n_done = self._swap
        self._swap = None
        post, value_scale = fut.result()
        for u, tasks in self.rows[n_done:]:  # replay what was decided while it was built
            post.add(u, list(tasks))
        self._install((post, value_scale))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def log_tasks(self) -> np.ndarray:
        """(T,) bool: the tasks modelled as their logarithm (``InstrumentModel.log_scale``)."""
        return log_tasks(list(self.instruments.values()))

    def training_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x unit box (n, d), task (n,), y (n,)) of the observations with values, for a
        background hyperparameter fit."""
        with self._lock:
            d = self.unit.shape[1]
            x = np.asarray(self.obs_x).reshape(-1, d)
            t, y = np.asarray(self.obs_t, int), np.asarray(self.obs_y, float)
            known = np.isfinite(y)
            return x[known], t[known], y[known]

    # -- deciding -----------------------------------------------------------------------
    def ask(self, instrument: str | None = None) -> Suggestion:
        with self._lock:
            self._maybe_swap()
            return super().ask(instrument)

    def _cost(self, inst: InstrumentModel) -> np.ndarray:
        return super()._cost(inst) if self.cost_aware else np.ones(len(self.candidates))

    def _choose(self, inst: InstrumentModel) -> tuple[int, float]:
        tasks = list(inst.tasks)
        taken = self._taken(inst)
        if not self.revisit:
            taken = np.union1d(taken, np.fromiter(self.visited[inst.name], int)).astype(int)
        if self.acquisition == "max_variance":
            var = self.post.variance()[:, tasks] / self.post.hyper.prior_variance[tasks]
            score = var.max(1)
            score[taken] = -np.inf
            c = int(np.argmax(score))
            return c, float(score[c])
        idx, gain = knowledge_gain(self.post, tasks, self.weights, top_k=self.top_k,
                                   exclude=taken)
        value = gain / self._cost(inst)[idx]
        best = int(np.argmax(value))
        return int(idx[best]), float(value[best])

    # -- beliefs --------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance (Q, T) at library positions ``x``, targets' units."""
        with self._lock:
            h = self.post.hyper
            xo, to, yo = self.training_data()
            return exact_posterior(h, xo, to, yo, self._to_unit(x))

    def report(self) -> dict:
        out = super().report()
        h = self.post.hyper
        out.update(lengthscale=h.lengthscale.tolist(), task_correlation=h.correlation().tolist(),
                   noise=h.noise.tolist())
        if h.task_variance is not None:
            own = h.task_variance / h.prior_variance
            out.update(task_lengthscale=h.task_lengthscale.tolist(), own_share=own.tolist())
        return out


def make_policy(name: str, candidates: np.ndarray, bounds: np.ndarray,
                instruments: Sequence[InstrumentModel], *, seed: int = 0,
                **kw) -> BasePolicy:
    """Policies by the names the CLI, the flows and the benchmarks use."""
    if name == "random":
        return RandomPolicy(candidates, bounds, instruments, seed=seed)
    if name == "grid":
        return GridPolicy(candidates, bounds, instruments, seed=seed)
    if name == "coorchestrate":
        kw.setdefault("max_correlation", COORCHESTRATE_MAX_CORRELATION)
        kw.setdefault("revisit", False)
        kw.setdefault("min_fit_values", COORCHESTRATE_MIN_FIT_VALUES)
        return GPPolicy(candidates, bounds, instruments, seed=seed, **kw)
    if name == "single_task":
        return GPPolicy(candidates, bounds, instruments, coupled=False, seed=seed, **kw)
    if name == "max_uncertainty":
        return GPPolicy(candidates, bounds, instruments, acquisition="max_variance",
                        cost_aware=False, seed=seed, name="max_uncertainty", **kw)
    if name in ("ucb", "ei"):  # single-task optimisation baselines (botorch)
        from coorch.models.bo_policies import EIPolicy, UCBPolicy

        cls = UCBPolicy if name == "ucb" else EIPolicy
        return cls(candidates, bounds, instruments, seed=seed, **kw)
    if name == "pareto":  # multi-objective: the Pareto front of the tasks (botorch qLogNEHVI)
        from coorch.models.pareto_policy import ParetoPolicy

        return ParetoPolicy(candidates, bounds, instruments, seed=seed, **kw)
    raise ValueError(f"unknown policy {name!r}; choose from {POLICIES}")


#: Cap on |task correlation| in co-orchestration's decision model, from the efficiency
#: benchmark (docs/benchmarks.md): 0.7 met the published run on real data and was used on twins.
COORCHESTRATE_MAX_CORRELATION = 0.7
#: Values a task needs before co-orchestration trusts its fitted hyperparameters, from the
#: efficiency benchmark on the alscbn twins (docs/benchmarks.md): about three per input
#: dimension, the rule of thumb for a GP's lengthscales; the same number a log task waits
#: for before a fit couples it.
COORCHESTRATE_MIN_FIT_VALUES = MIN_COUPLING_VALUES

POLICIES = ("coorchestrate", "single_task", "max_uncertainty", "random", "grid", "ucb", "ei",
            "pareto")
