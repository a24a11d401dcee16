"""Multi-objective campaigns: the Pareto front of the GP tasks, by qLogNEHVI over a model list.

Why a policy of its own: :func:`coorch.models.pareto.suggest_mobo` assumes every objective is
measured at every point (one ``(n, k)`` table of outcomes). In a co-orchestrated campaign each
objective is one instrument's descriptor, and the instruments measure their own task at their own
positions, asynchronously. So here:

* **objectives** are the GP tasks (one per instrument physics descriptor, or per VAE latent),
  maximised unless ``directions`` gives ``-1`` for a task;
* **model**: one botorch ``SingleTaskGP`` per task on that task's own data (a ``ModelListGP``),
  built and cached as the single-task baselines do
  (:meth:`coorch.models.bo_policies.BOPolicy.model`), fitted inside ``ask`` (no Dask: the
  flow starts none for this policy) after every new value of a task while it has fewer than
  ``refit_all_below`` values, then every ``refit_every``;
* **acquisition**: ``qLogNoisyExpectedHypervolumeImprovement`` of the whole model list on the
  discrete candidate set (q = 1), every pending point (any instrument) as ``X_pending`` (cached
  into the box decomposition, so a candidate next to a pending point is worth little);
* **decoupled baseline**: NEHVI's ``X_baseline`` is the set of positions where the *asked
  instrument's* tasks have values, not every observed position. With every observed position as
  baseline, NEHVI samples the unmeasured objectives there from the posterior and scores the
  same position as a candidate with the same samples: zero improvement, so an instrument would
  never complete a point another instrument found promising. With its own positions as
  baseline, a point known in the other objectives and uncertain in this one is valued by how
  likely measuring it here lifts the front, which is the decoupled question the instrument faces;
* **cost-aware**: log HVI minus log instrument-seconds (HVI per second), the cost being the
  modality's cost plus the stage move from the instrument's last position, as in
  :class:`coorch.models.policies.GPPolicy`. Values of different instruments share one unit (log
  hypervolume of the same objectives per second), so ``ask(None)`` compares them;
* **free candidates**: not pending on any instrument and not yet visited by the asked instrument
  (a noise-free re-measurement adds nothing to a front, and a second dose of beam or tip rarely
  helps);
* **fallback**: until every task has ``n_initial`` (default 2) values, space-filling (the free
  candidate nearest the next point of a scrambled Sobol sequence) and ``ask(None)`` takes turns
  by load; acquisition value ``nan``.

``report()`` adds ``pareto_front`` (non-dominated posterior means over the candidates, positions
in library mm, objectives in the targets' units) and ``pareto_observed`` (non-dominated positions
where every objective was measured, values averaged per candidate position), with the reference
point and directions used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.models import ModelListGP, SingleTaskGP
from botorch.sampling import SobolQMCNormalSampler

from ._threads import torch_scope
from .bo_policies import BOPolicy
from .pareto import pareto_front
from .policies import BasePolicy, InstrumentModel, Suggestion

__all__ = ["ParetoPolicy"]

_CHUNK = 1024  # candidates per acquisition evaluation


class ParetoPolicy(BOPolicy):
    """Cost-aware decoupled multi-objective BO over the tasks (see the module docstring).

    Args:
        directions: per task ``+1`` (maximise, default) or ``-1`` (minimise).
        ref_point: worst acceptable value per task, in the targets' units. Default: per task,
            the worst observed value pushed out by 10 % of the observed range (as botorch's
            ``infer_reference_point`` does for a front's nadir).
        refit_every: refit a task's GP hyperparameters after this many new values of it (in
            between, the model is rebuilt on all data with the last hyperparameters), once it
            has ``refit_all_below`` values; below that, after every new value. Early
            hyperparameters move most and cost least; a fit at 50 values costs ~0.3-0.5 s on
            a busy core, which every decision would otherwise pay.
        mc_samples: QMC samples of the joint posterior (each gets its own front).
        cost_aware: divide the improvement by instrument-seconds.
        n_initial: values per task before the model decides (space-filling until then); 2 is
            the least a GP can standardise, botorch's tutorials use ``2 (d + 1)``.
    """

    name = "pareto"

    def __init__(self, candidates: np.ndarray, bounds: np.ndarray,
                 instruments: Sequence[InstrumentModel], *,
                 directions: Sequence[float] | None = None,
                 ref_point: Sequence[float] | None = None, refit_every: int = 3,
                 refit_all_below: int = 20, mc_samples: int = 64, cost_aware: bool = True,
                 n_initial: int = 2, seed: int = 0, name: str | None = None) -> None:
        super().__init__(candidates, bounds, instruments, refit_every=refit_every,
                         exclude_measured=True, seed=seed, name=name)
        if self.num_tasks < 2:
            raise ValueError("a Pareto campaign needs at least two objectives (GP tasks)")
        d = np.ones(self.num_tasks) if directions is None else np.asarray(directions, float)
        if d.shape != (self.num_tasks,) or not np.all(np.isin(d, (-1.0, 1.0))):
            raise ValueError(f"directions must be {self.num_tasks} values of +1 or -1")
        self.directions = d
        self.ref_point = None if ref_point is None else np.asarray(ref_point, float)
        if self.ref_point is not None and self.ref_point.shape != (self.num_tasks,):
            raise ValueError(f"ref_point must have {self.num_tasks} values")
        self.refit_every_late, self.refit_all_below = self.refit_every, int(refit_all_below)
        self.mc_samples = int(mc_samples)
        self.cost_aware = bool(cost_aware)
        self.n_initial = int(n_initial)
        if self.n_initial < 2:
            raise ValueError("n_initial must be >= 2 (a GP needs two values to standardise)")
        self.n_decisions = 0
        self._sobol_engine = torch.quasirandom.SobolEngine(self.unit.shape[1], scramble=True,
                                                           seed=seed)
        self._sobol = np.zeros((0, self.unit.shape[1]))

    # -- turns ---------------------------------------------------------------------------
    def ask(self, instrument: str | None = None) -> Suggestion:
        with self._lock:
            if instrument is None and not self.ready():
                instrument = min(self.instruments, key=self._load)  # space-filling: take turns
            # skip BOPolicy's turn-taking: once ready, HVI per second compares instruments
            return BasePolicy.ask(self, instrument)

    def ready(self) -> bool:
        """Every task has at least ``n_initial`` values: time to build the model list."""
        y = np.asarray(self.obs_y, float)
        t = np.asarray(self.obs_t, int)
        counts = np.bincount(t[np.isfinite(y)], minlength=self.num_tasks)
        return bool(counts.min() >= self.n_initial)

    # -- deciding ------------------------------------------------------------------------
    def _free(self, inst: InstrumentModel) -> np.ndarray:
        """Candidates neither pending anywhere nor visited by ``inst``."""
        taken = {c for _, c in self.pending.values()} | self.visited[inst.name]
        return np.setdiff1d(np.arange(len(self.candidates)), np.fromiter(taken, int, len(taken)))

    def _space_filling(self, inst: InstrumentModel, free: np.ndarray) -> int:
        """The free candidate nearest the next point of a scrambled Sobol sequence (one
        sequence for all instruments, so they tend to measure the same positions and complete
        objective vectors early); the k-th point for an instrument that has visited k."""
        k = len(self.visited[inst.name])
        while len(self._sobol) <= k:
            self._sobol = np.vstack([self._sobol, self._sobol_engine.draw(8).double().numpy()])
        d = ((self.unit[free] - self._sobol[k]) ** 2).sum(1)
        return int(free[np.argmin(d)])

    def _choose(self, inst: InstrumentModel) -> tuple[int, float]:
        free = self._free(inst)
        if len(free) == 0:
            raise RuntimeError(f"{self.name}: no free candidate left for {inst.name!r}")
        if not self.ready():
            return self._space_filling(inst, free), float("nan")
        with torch_scope(seed=self.seed * 100_003 + self.n_decisions):
            acqf = self._acquisition(inst)
            x = self._unit_t[torch.as_tensor(free)]
            with torch.no_grad():
                score = torch.cat([acqf(chunk.unsqueeze(-2)) for chunk in x.split(_CHUNK)])
        self.n_decisions += 1
        score = score.numpy().astype(float)
        if self.cost_aware:
            score = score - np.log(self._cost(inst)[free])
        best = int(np.nanargmax(score)) if np.isfinite(score).any() else 0
        return int(free[best]), float(score[best])

    def model(self, task: int) -> SingleTaskGP | None:
        """:meth:`BOPolicy.model` with the refit cadence of this policy: every new value while
        the task has fewer than ``refit_all_below``, every ``refit_every`` after."""
        n = sum(1 for t, y in zip(self.obs_t, self.obs_y, strict=True)
                if t == task and np.isfinite(y))
        self.refit_every = 1 if n < self.refit_all_below else self.refit_every_late
        try:
            return super().model(task)
        finally:
            self.refit_every = self.refit_every_late

    def model_list(self) -> ModelListGP:
        """One GP per task on its own values (cached; refitted every ``refit_every``)."""
        gps = [self.model(t) for t in range(self.num_tasks)]
        self.model_version = self.name + "-n" + "-".join(
            str(self._models[t].n_fit) for t in range(self.num_tasks))
        return ModelListGP(*gps)

    def _reference(self) -> np.ndarray:
        """Reference point in objective space (directions applied: larger is better)."""
        if self.ref_point is not None:
            return self.ref_point * self.directions
        ref = np.empty(self.num_tasks)
        for t in range(self.num_tasks):
            _, y = self._task_data(t)
            v = y.numpy().ravel() * self.directions[t]
            span = float(v.max() - v.min()) or max(abs(float(v.min())), 1.0)
            ref[t] = float(v.min()) - 0.1 * span
        return ref

    def _baseline(self, inst: InstrumentModel) -> torch.Tensor:
        """Distinct positions (unit box) where ``inst``'s tasks have values."""
        rows = [i for i, t in enumerate(self.obs_t)
                if t in inst.tasks and np.isfinite(self.obs_y[i])]
        x = np.unique(np.asarray([self.obs_x[i] for i in rows], float), axis=0)
        return torch.as_tensor(x)

    def _acquisition(self, inst: InstrumentModel) -> qLogNoisyExpectedHypervolumeImprovement:
        model = self.model_list()
        pending = [self.unit[c] for _, c in self.pending.values()]
        x_pending = torch.as_tensor(np.asarray(pending, float)) if pending else None
        objective = (None if np.all(self.directions == 1)
                     else WeightedMCMultiOutputObjective(torch.as_tensor(self.directions)))
        return qLogNoisyExpectedHypervolumeImprovement(
            model=model, ref_point=self._reference().tolist(), X_baseline=self._baseline(inst),
            X_pending=x_pending, objective=objective,
            sampler=SobolQMCNormalSampler(torch.Size([self.mc_samples]),
                                          seed=self.seed + self.n_decisions),
            prune_baseline=True, cache_pending=True)

    # -- beliefs -------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance (q, tasks) at library positions ``x``, targets' units."""
        with self._lock, torch_scope():
            model = self.model_list()
            u = torch.as_tensor(self._to_unit(x))
            means, variances = [], []
            with torch.no_grad():
                for chunk in u.split(_CHUNK):
                    post = model.posterior(chunk)
                    means.append(post.mean)
                    variances.append(post.variance)
            return torch.cat(means).numpy(), torch.cat(variances).numpy()

    def observed_objectives(self) -> tuple[np.ndarray, np.ndarray]:
        """(candidate indices (p,), mean value per task (p, tasks)) of the candidate positions
        where every task has been measured."""
        sums = np.zeros((len(self.candidates), self.num_tasks))
        counts = np.zeros_like(sums)
        for x, t, y in zip(self.obs_x, self.obs_t, self.obs_y, strict=True):
            if np.isfinite(y):
                c = self._nearest(x)
                sums[c, t] += y
                counts[c, t] += 1
        full = np.flatnonzero((counts > 0).all(1))
        return full, sums[full] / counts[full]

    def report(self) -> dict:
        out = super().report()
        out.update(directions=self.directions.tolist(), pareto_front=None,
                   pareto_observed=None, ref_point=None)
        with self._lock:
            if not self.ready():
                return out
            mean, _ = self.predict(self.candidates)
            mask = pareto_front(mean * self.directions)
            out["pareto_front"] = {"x": self.candidates[mask].tolist(),
                                   "values": mean[mask].tolist()}
            out["ref_point"] = (self._reference() * self.directions).tolist()
            idx, values = self.observed_objectives()
            if len(idx):
                keep = pareto_front(values * self.directions)
                out["pareto_observed"] = {"x": self.candidates[idx[keep]].tolist(),
                                          "values": values[keep].tolist()}
        return out
