"""Single-task Bayesian-optimisation baselines: UCB and EI on a botorch ``SingleTaskGP``.

These policies *maximise* a descriptor; they are optimisation baselines, not mapping policies.
In the efficiency benchmark they show what a property-seeking, single-instrument agent gets on
the mapping task (it spends its budget near the optimum it believes in, so its map of the rest
of the library is expected to be poor; that is the point of the comparison).

Per asked instrument:

* **single task**: the GP sees only the observations of that instrument's objective task (its
  first task, ``inst.tasks[0]``); nothing is borrowed from other instruments or tasks;
* **model**: botorch ``SingleTaskGP`` on the unit box (``self.unit``; no input transform
  needed), outputs standardised by ``Standardize(m=1)``, hyperparameters by ``fit_gpytorch_mll``
  on one torch thread (:func:`~coorch.models._threads.torch_scope`), seeded per fit;
* **acquisition**: ``UpperConfidenceBound`` (``beta``, default 2.0) or ``LogExpectedImprovement``
  (``best_f`` = the largest observed value) evaluated on the discrete candidate set in chunks;
  candidates pending on that instrument (``self._taken(inst)``) are never picked;
* **fallback**: with fewer than 2 observations of the task with values (a row told as NaN,
  position known and value not yet, does not count), a uniformly random free candidate
  (acquisition value ``nan``);
* **cost of a decision**: hyperparameters are refitted at most every ``refit_every``
  observations of the task; in between, the model is rebuilt on all data with the last fitted
  hyperparameters (no optimisation), and with unchanged data the cached model is reused as is.
  Values changed in place (``relabel``: a retrained VAE re-encodes its modality) force a refit.

``ask(None)``: acquisition values of different instruments are in different units (UCB) or not
comparable at all (log EI of different functions), so the baselines do not compare them. Each
instrument runs its own single-task agent and they take turns: the instrument with the fewest
observations plus pending suggestions is asked, ties to the first in order.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from botorch.acquisition import LogExpectedImprovement, UpperConfidenceBound
from botorch.exceptions import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from ._threads import torch_scope
from .policies import BasePolicy, InstrumentModel, Suggestion

__all__ = ["BOPolicy", "EIPolicy", "UCBPolicy"]

_CHUNK = 4096  # candidates per acquisition evaluation


@dataclasses.dataclass(frozen=True)
class _Cached:
    """A task's GP, the values (n, 1) it was built on and how many of them it was fitted on."""

    y: torch.Tensor
    n_fit: int
    gp: SingleTaskGP


class BOPolicy(BasePolicy):
    """Shared machinery of the single-task BO baselines; subclasses supply :meth:`_acqf`.

    ``refit_every``: refit hyperparameters when at least this many new observations of the task
    arrived since the last fit (1: every new observation). ``exclude_measured``: also never
    pick a candidate the instrument has already measured (default False: a maximiser may
    re-measure its incumbent, which is what a plain BO baseline does).
    """

    name = "bo"

    def __init__(self, candidates: np.ndarray, bounds: np.ndarray,
                 instruments: Sequence[InstrumentModel], *, refit_every: int = 1,
                 exclude_measured: bool = False, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(candidates, bounds, instruments, seed=seed)
        if refit_every < 1:
            raise ValueError("refit_every must be >= 1")
        self.refit_every = int(refit_every)
        self.exclude_measured = bool(exclude_measured)
        self.seed = int(seed)
        if name is not None:
            self.name = name
        self._unit_t = torch.as_tensor(self.unit, dtype=torch.float64)
        self._models: dict[int, _Cached] = {}  # task -> its GP and the data it was built on
        self.n_fits = 0  # hyperparameter fits so far (all tasks)
        self.model_version = f"{self.name}-none"

    # -- instrument turns ---------------------------------------------------------------
    def ask(self, instrument: str | None = None) -> Suggestion:
        with self._lock:
            if instrument is None:
                instrument = min(self.instruments, key=self._load)  # first wins ties
            return super().ask(instrument)

    def _load(self, name: str) -> int:
        """Observations plus pending suggestions of an instrument."""
        inst = self.instruments[name]
        told = sum(1 for t in self.obs_t if t == inst.tasks[0])
        return told + sum(1 for n, _ in self.pending.values() if n == name)

    # -- the model ----------------------------------------------------------------------
    def _task_data(self, task: int, *, known: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, d), y (n, 1)) of ``task``; ``known``: only rows with a value (told without
        one, NaN, the position is known and the value is not yet)."""
        idx = [i for i, t in enumerate(self.obs_t)
               if t == task and (not known or np.isfinite(self.obs_y[i]))]
        d = self.unit.shape[1]
        x = np.asarray([self.obs_x[i] for i in idx], float).reshape(-1, d)
        y = np.asarray([self.obs_y[i] for i in idx], float).reshape(-1, 1)
        return torch.as_tensor(x), torch.as_tensor(y)

    def model(self, task: int) -> SingleTaskGP | None:
        """The GP of ``task`` on all its observations with values (None with fewer than 2)."""
        x, y = self._task_data(task)
        n = len(y)
        if n < 2:
            return None
        cached = self._models.get(task)
        if cached is not None and torch.equal(cached.y, y):
            return cached.gp
        gp = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        # reuse the last fitted hyperparameters only while the data they were fitted on is
        # unchanged (relabel() re-encodes values: refit) and fewer than refit_every were added
        if (cached is not None and n - cached.n_fit < self.refit_every
                and torch.equal(y[:cached.n_fit], cached.y[:cached.n_fit])):
            # the outcome transform's statistics belong to the new data and are kept
            state = {k: v for k, v in cached.gp.state_dict().items()
                     if not k.startswith("outcome_transform")}
            gp.load_state_dict(state, strict=False)
            n_fit = cached.n_fit
        else:
            with torch_scope(seed=self.seed * 100_003 + 7919 * task + n):
                try:
                    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
                except ModelFittingError as err:  # keep the default hyperparameters
                    warnings.warn(f"{self.name}: GP fit of task {task} failed ({err}); "
                                  "using default hyperparameters", stacklevel=2)
            self.n_fits += 1
            n_fit = n
        gp.eval()
        self._models[task] = _Cached(y=y, n_fit=n_fit, gp=gp)
        self.model_version = f"{self.name}-t{task}-n{n_fit}"
        return gp

    def _acqf(self, gp: SingleTaskGP, y_best: float):
        raise NotImplementedError

    # -- deciding -----------------------------------------------------------------------
    def _excluded(self, inst: InstrumentModel) -> np.ndarray:
        taken = self._taken(inst)
        if self.exclude_measured:
            x, _ = self._task_data(inst.tasks[0], known=False)
            if len(x):
                d = ((self.unit[:, None, :] - x.numpy()[None]) ** 2).sum(-1)
                taken = np.union1d(taken, np.flatnonzero(d.min(1) < 1e-12))
        return taken

    def _choose(self, inst: InstrumentModel) -> tuple[int, float]:
        excluded = self._excluded(inst)
        free = np.setdiff1d(np.arange(len(self.candidates)), excluded)
        if len(free) == 0:
            raise RuntimeError(f"{self.name}: every candidate is pending on {inst.name!r}")
        task = inst.tasks[0]
        with torch_scope():
            gp = self.model(task)
            if gp is None:
                return int(self.rng.choice(free)), float("nan")
            _, y = self._task_data(task)
            acqf = self._acqf(gp, float(y.max()))
            with torch.no_grad():
                score = torch.cat([acqf(chunk.unsqueeze(-2))
                                   for chunk in self._unit_t.split(_CHUNK)]).numpy()
        score = np.asarray(score, float)
        score[excluded] = -np.inf
        c = int(np.argmax(score))
        return c, float(score[c])

    def report(self) -> dict:
        out = super().report()
        out.update(acquisition=self.name, refit_every=self.refit_every, n_fits=self.n_fits)
        lengthscales = {}
        for task, cached in self._models.items():
            ls = cached.gp.covar_module.lengthscale  # botorch >= 0.12: ARD RBF, no scale
            lengthscales[task] = ls.detach().reshape(-1).tolist()
        out["lengthscale"] = lengthscales
        return out


class UCBPolicy(BOPolicy):
    """Upper confidence bound ``mean + sqrt(beta) * std`` of the instrument's own task."""

    name = "ucb"

    def __init__(self, candidates: np.ndarray, bounds: np.ndarray,
                 instruments: Sequence[InstrumentModel], *, beta: float = 2.0,
                 refit_every: int = 1, exclude_measured: bool = False, seed: int = 0,
                 name: str | None = None) -> None:
        super().__init__(candidates, bounds, instruments, refit_every=refit_every,
                         exclude_measured=exclude_measured, seed=seed, name=name)
        self.beta = float(beta)

    def _acqf(self, gp: SingleTaskGP, y_best: float):
        return UpperConfidenceBound(gp, beta=self.beta)

    def report(self) -> dict:
        return {**super().report(), "beta": self.beta}


class EIPolicy(BOPolicy):
    """Log expected improvement over the best observed value of the instrument's own task."""

    name = "ei"

    def _acqf(self, gp: SingleTaskGP, y_best: float):
        return LogExpectedImprovement(gp, best_f=y_best)
