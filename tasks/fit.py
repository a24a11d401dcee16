"""Background hyperparameter refits on Dask (DESIGN.md, "Performance").

The flow submits a fit with the training data so far and keeps deciding with the last model;
when the fit is done, the policy builds the new posterior off the decision path and swaps it in.
"""

from __future__ import annotations

from distributed import Client, Future

from coorch.models.mtgp import fit_hyperparameters
from coorch.models.policies import BasePolicy, GPPolicy


def _warm_up() -> None:
    """Pay the worker's first-fit costs (imports, torch's first-call setup) before the campaign
    needs a fit, and keep fits to one core: the other one decides."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    x = np.linspace(0, 1, 6)[:, None]
    fit_hyperparameters(x, np.arange(6) % 2, np.sin(3 * x[:, 0]), 2, max_iter=5)


def needs_fits(policy: BasePolicy) -> bool:
    """Only GP policies learn hyperparameters; random and grid need no Dask cluster."""
    return isinstance(policy, GPPolicy)


class BackgroundRefit:
    """At most one refit in flight per policy; a newer request waits for the running one."""

    def __init__(self, client: Client | None, policy: BasePolicy, *, every: int,
                 min_obs: int = 4):
        self.client, self.policy, self.every, self.min_obs = client, policy, every, min_obs
        self.future: Future | None = None
        self.last_n = 0
        self.fits = 0
        if self.enabled:  # pay the worker's torch/gpytorch import now, not at the first refit
            client.run(_warm_up)

    @property
    def enabled(self) -> bool:
        return self.client is not None and needs_fits(self.policy)

    def poll(self) -> None:
        """Swap in a finished fit, start a new one when enough new data have arrived."""
        if not self.enabled:
            return
        if self.future is not None and self.future.done():
            hyper = self.future.result()
            self.future = None
            self.fits += 1
            self.policy.swap_hyperparameters_async(hyper)
        n = len(self.policy.obs_y)
        if self.future is None and n >= self.min_obs and n - self.last_n >= self.every:
            self.submit()

    def submit(self) -> Future:
        x, t, y = self.policy.training_data()
        self.last_n = len(y)
        self.future = self.client.submit(
            fit_hyperparameters, x, t, y, self.policy.num_tasks, coupled=self.policy.coupled,
            pure=False)
        return self.future

    def finish(self) -> None:
        """Wait for a last fit on all the data and swap it in synchronously (for reporting)."""
        if not self.enabled:
            return
        if len(self.policy.obs_y) != self.last_n or self.future is None:
            self.submit()
        hyper = self.future.result()
        self.future = None
        self.fits += 1
        self.policy.set_hyperparameters(hyper)
