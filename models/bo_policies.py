"""Single-task Bayesian-optimisation baselines: UCB and EI on a botorch ``SingleTaskGP``.

These agents *maximise* a descriptor; they are optimisation baselines, not mapping agents.
In the efficiency benchmark they show what a property-seeking, single-instrument agent gets on
the mapping task (it spends its budget near the optimum it believes in, so its map of the rest
of the library is expected to be poor; that is the point of the comparison).

Per asked instrument:

* **single task**: the GP sees only the values of that instrument's objective task (its first
  task, ``inst.tasks[0]``); nothing is borrowed from other instruments or tasks;
* **surrogate**: one botorch ``SingleTaskGP`` per task on the unit box
  (:class:`~coorch.models.task_gps.TaskGPs`), fitted inside ``ask`` at most every
  ``refit_every`` new values of the task (values changed by ``relabel`` force a refit);
* **acquisition**: ``UpperConfidenceBound`` (``beta``, default 2.0) or ``LogExpectedImprovement``
  (``best_f`` = the largest observed value) on the free candidates, in chunks; candidates
  pending on that instrument are never picked;
* **start**: with fewer than 2 values of the task (a row told as NaN does not count), a
  uniformly random free candidate (acquisition value ``nan``).

``ask(None)``: acquisition values of different instruments are in different units (UCB) or not
comparable at all (log EI of different functions), so the baselines do not compare them. Each
instrument runs its own single-task agent and they take turns (:func:`least_loaded`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction, LogExpectedImprovement, UpperConfidenceBound
from botorch.models import SingleTaskGP

from coorch.models._threads import torch_scope
from coorch.models.agent import Agent
from coorch.models.cost import InstrumentCost
from coorch.models.task_gps import RefitCadence, TaskGPs, evaluate_in_chunks

__all__ = ["BOPolicy", "EIPolicy", "UCBPolicy", "least_loaded"]

_CHUNK = 4096  # candidates per acquisition evaluation


def least_loaded(agent: Agent) -> str:
    """The instrument with the fewest observations (of its first task, told with or without a
    value) plus pending suggestions; the first in order wins ties. Agents whose values are not
    comparable across instruments take turns by it."""

    def load(name: str) -> int:
        told = len(agent.log.data(known=False, tasks=agent.instruments[name].tasks[:1])[2])
        return told + sum(1 for n, _ in agent.pending.values() if n == name)

    return min(agent.instruments, key=load)


class BOPolicy(Agent):
    """Shared machinery of the single-task BO baselines; subclasses supply :meth:`_acqf`.

    Args:
        refit_every: refit a task's hyperparameters once this many new values of it arrived
            since its last fit (1: every new value).
        exclude_measured: also never pick a candidate the instrument has already measured
            (default False: a maximiser may re-measure its incumbent, which is what a plain BO
            baseline does).
    """

    name = "bo"

    def __init__(
        self,
        candidates: np.ndarray,
        bounds: np.ndarray,
        instruments: Sequence[InstrumentCost],
        *,
        refit_every: int = 1,
        exclude_measured: bool = False,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(candidates, bounds, instruments, seed=seed)
        if name is not None:
            self.name = name
        self.refit_every = int(refit_every)
        self.gps = TaskGPs(self.log, RefitCadence(self.refit_every), seed=seed, name=self.name)
        self.exclude_measured = bool(exclude_measured)
        self._unit_t = torch.as_tensor(self.unit, dtype=torch.float64)
        self.model_version = f"{self.name}-none"

    @property
    def n_fits(self) -> int:
        """Hyperparameter fits so far (all tasks)."""
        return self.gps.n_fits

    def model(self, task: int) -> SingleTaskGP | None:
        """The GP of ``task`` on all its values (None with fewer than 2)."""
        with torch_scope():
            gp = self.gps.model(task)
        if gp is not None:
            self.model_version = f"{self.name}-t{task}-n{self.gps.n_fit(task)}"
        return gp

    def _acqf(self, gp: SingleTaskGP, y_best: float) -> AcquisitionFunction:
        raise NotImplementedError

    # -- deciding -----------------------------------------------------------------------
    def _contenders(self, instrument: str | None) -> list[str]:
        return [instrument or least_loaded(self)]

    def _excluded(self, inst: InstrumentCost) -> np.ndarray:
        taken = super()._excluded(inst)
        if self.exclude_measured:
            x, _ = self.gps.data(inst.tasks[0], known=False)
            if len(x):
                d = ((self.unit[:, None, :] - x.numpy()[None]) ** 2).sum(-1)
                taken = np.union1d(taken, np.flatnonzero(d.min(1) < 1e-12))
        return taken

    def _choose(self, inst: InstrumentCost) -> tuple[int, float]:
        if self.model(inst.tasks[0]) is None:  # nothing to standardise yet
            return int(self.rng.choice(self._free(inst))), float("nan")
        return super()._choose(inst)

    def _score(self, inst: InstrumentCost, free: np.ndarray) -> np.ndarray:
        task = inst.tasks[0]
        gp = self.model(task)
        _, y = self.gps.data(task)
        with torch_scope():
            return evaluate_in_chunks(
                self._acqf(gp, float(y.max())), self._unit_t[torch.as_tensor(free)], _CHUNK
            )

    def report(self) -> dict:
        out = super().report()
        out.update(
            acquisition=self.name,
            refit_every=self.refit_every,
            n_fits=self.n_fits,
            lengthscale=self.gps.lengthscales(),
        )
        return out


class UCBPolicy(BOPolicy):
    """Upper confidence bound ``mean + sqrt(beta) * std`` of the instrument's own task."""

    name = "ucb"

    def __init__(
        self,
        candidates: np.ndarray,
        bounds: np.ndarray,
        instruments: Sequence[InstrumentCost],
        *,
        beta: float = 2.0,
        refit_every: int = 1,
        exclude_measured: bool = False,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            candidates,
            bounds,
            instruments,
            refit_every=refit_every,
            exclude_measured=exclude_measured,
            seed=seed,
            name=name,
        )
        self.beta = float(beta)

    def _acqf(self, gp: SingleTaskGP, y_best: float) -> AcquisitionFunction:
        return UpperConfidenceBound(gp, beta=self.beta)

    def report(self) -> dict:
        return {**super().report(), "beta": self.beta}


class EIPolicy(BOPolicy):
    """Log expected improvement over the best observed value of the instrument's own task."""

    name = "ei"

    def _acqf(self, gp: SingleTaskGP, y_best: float) -> AcquisitionFunction:
        return LogExpectedImprovement(gp, best_f=y_best)
