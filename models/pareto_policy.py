"""Multi-objective campaigns: the Pareto front of the GP tasks, by qLogNEHVI over a model list.

Why an agent of its own: textbook multi-objective BO assumes every objective is measured at
every point (one ``(n, k)`` table of outcomes). In a co-orchestrated campaign each
objective is one instrument's descriptor, and the instruments measure their own task at their own
positions, asynchronously. So here:

* **objectives** are the GP tasks (one per instrument physics descriptor, or per VAE latent),
  maximised unless ``directions`` gives ``-1`` for a task;
* **surrogate**: one botorch ``SingleTaskGP`` per task on that task's own values (a
  ``ModelListGP``), cached as the single-task baselines cache theirs
  (:class:`~coorch.models.task_gps.TaskGPs`) and fitted inside ``ask`` (no Dask: the flow
  starts none for this agent) after every new value of a task while it has fewer than
  ``refit_all_below`` values, then every ``refit_every``;
* **acquisition**: ``qLogNoisyExpectedHypervolumeImprovement`` of the whole model list on the
  free candidates (q = 1), every pending point (any instrument) as ``X_pending`` (cached into the
  box decomposition, so a candidate next to a pending point is worth little);
* **decoupled baseline**: NEHVI's ``X_baseline`` is the set of positions where the *asked
  instrument's* tasks have values, not every observed position. With every observed position as
  baseline, NEHVI samples the unmeasured objectives there from the posterior and scores the
  same position as a candidate with the same samples: zero improvement, so an instrument would
  never complete a point another instrument found promising. With its own positions as
  baseline, a point known in the other objectives and uncertain in this one is valued by how
  likely measuring it here lifts the front, which is the decoupled question the instrument faces;
* **cost**: log HVI minus log instrument-seconds (HVI per second; ``coorch.models.cost``, the
  modality's cost plus the stage move). Values of different instruments share one unit (log
  hypervolume of the same objectives per second), so ``ask(None)`` compares them;
* **free candidates**: not pending on any instrument and not yet visited by the asked instrument
  (a noise-free re-measurement adds nothing to a front, and a second dose of beam or tip rarely
  helps);
* **start**: until every task has ``n_initial`` (default 2) values, space-filling
  (:meth:`ParetoPolicy.space_filling`: a scrambled Sobol sequence, not the base's farthest
  point) and ``ask(None)`` takes turns by load (:func:`~coorch.models.bo_policies.least_loaded`);
  acquisition value ``nan``.

``report()`` adds ``pareto_front`` (non-dominated posterior means over the candidates, positions
in library mm, objectives in the targets' units) and ``pareto_observed`` (non-dominated positions
where every objective was measured, values averaged per candidate position), with the reference
point and directions used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from botorch.acquisition.multi_objective import logei
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import WeightedMCMultiOutputObjective
from botorch.models import ModelListGP
from botorch.sampling import SobolQMCNormalSampler
from scipy.spatial import cKDTree

from coorch.models._threads import torch_scope
from coorch.models.agent import Agent
from coorch.models.bo_policies import least_loaded
from coorch.models.cost import InstrumentCost, instrument_seconds, unit_cost
from coorch.models.pareto import pareto_front
from coorch.models.task_gps import RefitCadence, TaskGPs, evaluate_in_chunks

# botorch JIT-compiles a fused C++ kernel the first time qLogNEHVI is built: minutes and a
# compiler on a fresh machine, and a compile killed midway leaves a lock file on which every
# later process waits forever (a campaign and CI hung on it here). The pure-PyTorch path gives
# the same values; mark the load as done so it is never attempted.
logei._load_attempted = True

__all__ = ["ParetoPolicy"]

_CHUNK = 1024  # candidates per acquisition evaluation


class ParetoPolicy(Agent):
    """Cost-aware decoupled multi-objective BO over the tasks (see the module docstring).

    Args:
        directions: per task ``+1`` (maximise, default) or ``-1`` (minimise).
        ref_point: worst acceptable value per task, in the targets' units. Default: per task,
            the worst observed value pushed out by 10 % of the observed range (as botorch's
            ``infer_reference_point`` does for a front's nadir).
        refit_every: refit a task's GP hyperparameters after this many new values of it (in
            between, the model is rebuilt on all values with the last hyperparameters), once
            it has ``refit_all_below`` values; below that, after every new value. Early
            hyperparameters move most and cost least; a fit at 50 values costs ~0.3-0.5 s on
            a busy core, which every decision would otherwise pay.
        mc_samples: QMC samples of the joint posterior (each gets its own front).
        cost_aware: divide the improvement by instrument-seconds.
        n_initial: values per task before the model decides (space-filling until then); 2 is
            the least a GP can standardise, botorch's tutorials use ``2 (d + 1)``.
    """

    name = "pareto"

    def __init__(
        self,
        candidates: np.ndarray,
        bounds: np.ndarray,
        instruments: Sequence[InstrumentCost],
        *,
        directions: Sequence[float] | None = None,
        ref_point: Sequence[float] | None = None,
        refit_every: int = 3,
        refit_all_below: int = 20,
        mc_samples: int = 64,
        cost_aware: bool = True,
        n_initial: int = 2,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(candidates, bounds, instruments, seed=seed)
        if name is not None:
            self.name = name
        if self.num_tasks < 2:
            raise ValueError("a Pareto campaign needs at least two objectives (GP tasks)")
        d = np.ones(self.num_tasks) if directions is None else np.asarray(directions, float)
        if d.shape != (self.num_tasks,) or not np.all(np.isin(d, (-1.0, 1.0))):
            raise ValueError(f"directions must be {self.num_tasks} values of +1 or -1")
        self.directions = d
        self.ref_point = None if ref_point is None else np.asarray(ref_point, float)
        if self.ref_point is not None and self.ref_point.shape != (self.num_tasks,):
            raise ValueError(f"ref_point must have {self.num_tasks} values")
        self.n_initial = int(n_initial)
        if self.n_initial < 2:
            raise ValueError("n_initial must be >= 2 (a GP needs two values to standardise)")
        self.refit_every, self.refit_all_below = int(refit_every), int(refit_all_below)
        self.gps = TaskGPs(
            self.log,
            RefitCadence(self.refit_every, self.refit_all_below),
            seed=seed,
            name=self.name,
        )
        self.mc_samples, self.cost_aware = int(mc_samples), bool(cost_aware)
        self.cost = instrument_seconds if self.cost_aware else unit_cost
        self.n_decisions = 0
        self._unit_t = torch.as_tensor(self.unit, dtype=torch.float64)
        self._sobol_engine = torch.quasirandom.SobolEngine(
            self.unit.shape[1], scramble=True, seed=seed
        )
        self._sobol = np.zeros((0, self.unit.shape[1]))
        self.model_version = f"{self.name}-none"

    @property
    def n_fits(self) -> int:
        """Hyperparameter fits so far (all tasks)."""
        return self.gps.n_fits

    def ready(self) -> bool:
        """Every task has at least ``n_initial`` values: time to build the model list."""
        return bool(self.log.counts().min() >= self.n_initial)

    # -- the model -----------------------------------------------------------------------
    def model_list(self) -> ModelListGP:
        """One GP per task on its own values (cached; refitted at the cadence)."""
        with torch_scope():
            gps = [self.gps.model(t) for t in range(self.num_tasks)]
        self.model_version = (
            self.name + "-n" + "-".join(str(self.gps.n_fit(t)) for t in range(self.num_tasks))
        )
        return ModelListGP(*gps)

    def _reference(self) -> np.ndarray:
        """Reference point in objective space (directions applied: larger is better)."""
        if self.ref_point is not None:
            return self.ref_point * self.directions
        ref = np.empty(self.num_tasks)
        for t in range(self.num_tasks):
            v = self.log.data(tasks=(t,))[2] * self.directions[t]
            span = float(v.max() - v.min()) or max(abs(float(v.min())), 1.0)
            ref[t] = float(v.min()) - 0.1 * span
        return ref

    def _acquisition(
        self, inst: InstrumentCost, seed: int
    ) -> qLogNoisyExpectedHypervolumeImprovement:
        model = self.model_list()
        pending = [self.unit[c] for _, c in self.pending.values()]
        x_pending = torch.as_tensor(np.asarray(pending, float)) if pending else None
        objective = (
            None
            if np.all(self.directions == 1)
            else WeightedMCMultiOutputObjective(torch.as_tensor(self.directions))
        )
        baseline = np.unique(self.log.data(tasks=inst.tasks)[0], axis=0)
        return qLogNoisyExpectedHypervolumeImprovement(
            model=model,
            ref_point=self._reference().tolist(),
            X_baseline=torch.as_tensor(baseline),
            X_pending=x_pending,
            objective=objective,
            sampler=SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=seed),
            prune_baseline=True,
            cache_pending=True,
        )

    # -- deciding ------------------------------------------------------------------------
    def _contenders(self, instrument: str | None) -> list[str]:
        """Before the model, instruments take turns; after, HVI per second compares them."""
        if instrument is None and not self.ready():
            return [least_loaded(self)]
        return super()._contenders(instrument)

    def _excluded(self, inst: InstrumentCost) -> np.ndarray:
        """Pending on any instrument, or visited by ``inst``."""
        taken = {c for _, c in self.pending.values()} | self.visited[inst.name]
        return np.fromiter(sorted(taken), int, len(taken))

    def _choose(self, inst: InstrumentCost) -> tuple[int, float]:
        if not self.ready():
            return self.space_filling(inst, self._free(inst)), float("nan")
        return super()._choose(inst)

    def space_filling(self, inst: InstrumentCost, free: np.ndarray) -> int:
        """The free candidate nearest the next point of a scrambled Sobol sequence, the k-th
        point for an instrument that has visited k.

        Not the base's farthest point: that one starts at the library's edges and corners,
        where a GP learns little about the interior (on the two-bump test, 15 points, 6 seeds:
        0.57 of the true front's hypervolume against 0.72 from Sobol starts); and one sequence
        for every instrument sends decoupled instruments to the same positions early, which
        completes objective vectors before the model decides.
        """
        k = len(self.visited[inst.name])
        while len(self._sobol) <= k:
            self._sobol = np.vstack([self._sobol, self._sobol_engine.draw(8).double().numpy()])
        return int(free[np.argmin(((self.unit[free] - self._sobol[k]) ** 2).sum(1))])

    def _score(self, inst: InstrumentCost, free: np.ndarray) -> np.ndarray:
        """log HVI per instrument-second at the ``free`` candidates (NaN: never chosen)."""
        seed = self.seed * 100_003 + self.n_decisions  # the sampler's and any pruning draws
        with torch_scope(seed=seed):
            acqf = self._acquisition(inst, seed)
            score = evaluate_in_chunks(acqf, self._unit_t[torch.as_tensor(free)], _CHUNK)
        self.n_decisions += 1
        score -= np.log(self.cost(inst, self.candidates[free], self.position.get(inst.name)))
        return np.where(np.isnan(score), -np.inf, score)

    # -- beliefs -------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance (q, tasks) at library positions ``x``, targets' units."""
        model = self.model_list()
        u = torch.as_tensor(self.geometry.to_unit(x))
        means, variances = [], []
        with torch_scope(), torch.no_grad():
            for chunk in u.split(_CHUNK):
                post = model.posterior(chunk)
                means.append(post.mean)
                variances.append(post.variance)
        return torch.cat(means).numpy(), torch.cat(variances).numpy()

    def observed_objectives(self) -> tuple[np.ndarray, np.ndarray]:
        """(candidate indices (p,), mean value per task (p, tasks)) of the candidate positions
        where every task has been measured."""
        x, t, y = self.log.data()
        near = cKDTree(self.unit).query(x)[1] if len(x) else np.zeros(0, int)
        sums = np.zeros((len(self.candidates), self.num_tasks))
        counts = np.zeros_like(sums)
        np.add.at(sums, (near, t), y)
        np.add.at(counts, (near, t), 1.0)
        full = np.flatnonzero((counts > 0).all(1))
        return full, sums[full] / counts[full]

    def report(self) -> dict:
        out = super().report()
        out.update(
            acquisition=self.name,
            refit_every=self.refit_every,
            n_fits=self.n_fits,
            lengthscale=self.gps.lengthscales(),
            directions=self.directions.tolist(),
            pareto_front=None,
            pareto_observed=None,
            ref_point=None,
        )
        if not self.ready():
            return out
        mean, _ = self.predict(self.candidates)
        mask = pareto_front(mean * self.directions)
        out["pareto_front"] = {"x": self.candidates[mask].tolist(), "values": mean[mask].tolist()}
        out["ref_point"] = (self._reference() * self.directions).tolist()
        idx, values = self.observed_objectives()
        if len(idx):
            keep = pareto_front(values * self.directions)
            out["pareto_observed"] = {
                "x": self.candidates[idx[keep]].tolist(),
                "values": values[keep].tolist(),
            }
        return out
