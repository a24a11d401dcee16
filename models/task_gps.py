"""One botorch ``SingleTaskGP`` per task, fitted on the decision path at an explicit cadence.

The single-task BO baselines and the Pareto agent fit their GPs inside ``ask`` (no background
fit: the flow starts none for them), so how often they refit is what a decision costs: a fit at
50 values takes ~0.3-0.5 s on a busy core. :class:`TaskGPs` holds the per-task cache and
applies a :class:`RefitCadence`; in between fits a task's GP is rebuilt on all its values with
the last fitted hyperparameters (no optimisation), and with unchanged values the cached GP is
reused as is. :func:`fit_seed` is the one seed formula of every fit on the decision path (the
deep-kernel agent uses it too), so a campaign replays with the same models.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import torch
from botorch.exceptions import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from gpytorch.mlls import ExactMarginalLogLikelihood

from coorch.models._threads import torch_scope
from coorch.models.observations import ObservationLog

__all__ = ["RefitCadence", "TaskGPs", "evaluate_in_chunks", "fit_seed"]


def fit_seed(seed: int, task: int, n: int) -> int:
    """The torch seed of a fit of ``task`` on ``n`` values for an agent seeded ``seed``: a fit
    depends only on what it reads, not on how many fits or decisions came before."""
    return seed * 100_003 + 7919 * task + n


@dataclasses.dataclass(frozen=True)
class RefitCadence:
    """When a model's hyperparameters are fitted again: after ``every`` new values, or after
    each new value while there are fewer than ``all_below`` (early hyperparameters move most
    and cost least)."""

    every: int = 1
    all_below: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("refit_every must be >= 1")

    def due(self, n_fit: int, n: int) -> bool:
        """A model fitted on ``n_fit`` values, now with ``n``: fit again?"""
        return n - n_fit >= (1 if n < self.all_below else self.every)


@dataclasses.dataclass(frozen=True)
class _Cached:
    """A task's GP, the values (n, 1) it was built on and how many of them it was fitted on."""

    y: torch.Tensor
    n_fit: int
    gp: SingleTaskGP


class TaskGPs:
    """A ``SingleTaskGP`` per task on that task's own values in ``log`` (unit box inputs, outputs
    standardised), refitted at ``cadence``.

    A fit whose values changed in place (``relabel``: a retrained VAE re-encodes its modality)
    is stale whatever the cadence says, so it is refitted at once.
    """

    def __init__(
        self, log: ObservationLog, cadence: RefitCadence, *, seed: int = 0, name: str = "gp"
    ) -> None:
        self.log, self.cadence, self.seed, self.name = log, cadence, int(seed), name
        self._cache: dict[int, _Cached] = {}
        self.n_fits = 0  # hyperparameter fits so far, all tasks

    def data(self, task: int, *, known: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (n, d), y (n, 1)) of ``task``; ``known``: only rows with a value (a row told as
        NaN has its position known and its value not yet)."""
        x, _, y = self.log.data(known=known, tasks=(task,))
        return torch.as_tensor(x), torch.as_tensor(y).reshape(-1, 1)

    def model(self, task: int) -> SingleTaskGP | None:
        """The GP of ``task`` on all its values (None with fewer than 2: nothing to
        standardise)."""
        x, y = self.data(task)
        n = len(y)
        if n < 2:
            return None
        cached = self._cache.get(task)
        if cached is not None and torch.equal(cached.y, y):
            return cached.gp
        gp = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        if (
            cached is not None
            and not self.cadence.due(cached.n_fit, n)
            and torch.equal(y[: cached.n_fit], cached.y[: cached.n_fit])
        ):
            # the outcome transform's statistics belong to the new values and are kept
            state = {
                k: v
                for k, v in cached.gp.state_dict().items()
                if not k.startswith("outcome_transform")
            }
            gp.load_state_dict(state, strict=False)
            n_fit = cached.n_fit
        else:
            self._fit(gp, task, n)
            n_fit = n
        gp.eval()
        self._cache[task] = _Cached(y=y, n_fit=n_fit, gp=gp)
        return gp

    def _fit(self, gp: SingleTaskGP, task: int, n: int) -> None:
        with torch_scope(seed=fit_seed(self.seed, task, n)):
            try:
                fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            except ModelFittingError as err:  # keep the default hyperparameters
                warnings.warn(
                    f"{self.name}: GP fit of task {task} failed ({err}); "
                    "using default hyperparameters",
                    stacklevel=3,
                )
        self.n_fits += 1

    def n_fit(self, task: int) -> int:
        """Values the current hyperparameters of ``task`` were fitted on (0: none yet)."""
        cached = self._cache.get(task)
        return 0 if cached is None else cached.n_fit

    def lengthscales(self) -> dict[int, list[float]]:
        """Per task with a model, its fitted lengthscales (botorch >= 0.12: ARD RBF, no
        outputscale)."""
        return {
            task: c.gp.covar_module.lengthscale.detach().reshape(-1).tolist()
            for task, c in self._cache.items()
        }


def evaluate_in_chunks(
    acqf: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int
) -> np.ndarray:
    """(len(x),) acquisition values of single points (q = 1), ``chunk`` at a time: one batch
    over tens of thousands of candidates would hold their joint covariance blocks at once."""
    with torch.no_grad():
        return torch.cat([acqf(c.unsqueeze(-2)) for c in x.split(chunk)]).numpy().astype(float)
