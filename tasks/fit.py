"""Background hyperparameter refits on Dask (DESIGN.md, "Performance").

The flow submits a fit with the training data so far and keeps deciding with the last model;
when the fit is done, the policy builds the new posterior off the decision path and swaps it in.
"""

from __future__ import annotations

import logging

import numpy as np
from distributed import Client, Future

from coorch.models.mtgp import MTGPHyperparameters, aspect, fit_hyperparameters
from coorch.models.policies import BasePolicy, GPPolicy
from coorch.models.vae import fit_vae
from coorch.tasks.ingest import Describer

log = logging.getLogger(__name__)


def _warm_up() -> None:
    """Pay the worker's first-fit costs (imports, torch's first-call setup) before the campaign
    needs a fit, and keep fits to one core: the other one decides."""
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse invariant checks")  # linear_operator
    x = np.linspace(0, 1, 6)[:, None]
    fit_hyperparameters(x, np.arange(6) % 2, np.sin(3 * x[:, 0]), 2, max_iter=5)


def needs_fits(policy: BasePolicy) -> bool:
    """Only GP policies learn hyperparameters; random and grid need no Dask cluster."""
    return isinstance(policy, GPPolicy)


class BackgroundRefit:
    """At most one refit in flight per policy; a newer request waits for the running one."""

    fit_fn = staticmethod(fit_hyperparameters)  # what runs on Dask (a test may inject faults)

    def __init__(self, client: Client | None, policy: BasePolicy, *, every: int,
                 min_per_task: int = 2):
        self.client, self.policy, self.every = client, policy, every
        self.min_per_task = min_per_task
        self.future: Future | None = None
        self.last_n = 0
        self.fits = 0
        self.failed = 0
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
            hyper = self._collect()
            if hyper is not None:
                self.fits += 1
                self.policy.swap_hyperparameters_async(hyper)
        _, tasks, y = self.policy.training_data()
        per_task = np.bincount(tasks, minlength=self.policy.num_tasks).min()
        # A task with one or two values standardises to nothing: its fitted signal variance
        # collapses and every gain with it. Wait until each task has a few.
        if (self.future is None and per_task >= self.min_per_task
                and len(y) - self.last_n >= self.every):
            self.submit()

    def invalidate(self) -> None:
        """The training targets changed (a VAE relabelled them): refit at the next poll."""
        self.last_n = -self.every

    def _collect(self) -> MTGPHyperparameters | None:
        """The finished fit's result, or None if it failed: a failed fit (a numerically
        singular corner of hyperparameter space) is logged and the campaign goes on with the
        model it has; the next refit, on more data, tries again. A week of instrument time
        must not end on one fit."""
        fut, self.future = self.future, None
        try:
            return fut.result()
        except Exception as exc:  # noqa: BLE001 - any failure of the fit, reported below
            log.warning("hyperparameter refit on %d values failed, keeping model %s: %r",
                        self.last_n, self.policy.model_version, exc)
            self.failed += 1
            return None

    def submit(self) -> Future:
        x, t, y = self.policy.training_data()
        self.last_n = len(y)
        self.future = self.client.submit(
            self.fit_fn, x, t, y, self.policy.num_tasks, coupled=self.policy.coupled,
            aspect=aspect(self.policy.bounds), log_tasks=self.policy.log_tasks, pure=False)
        return self.future

    def finish(self) -> None:
        """Wait for a last fit on all the data and swap it in synchronously (for reporting)."""
        if not self.enabled:
            return
        if len(self.policy.training_data()[2]) != self.last_n or self.future is None:
            self.submit()
        hyper = self._collect()
        if hyper is not None:
            self.fits += 1
            self.policy.set_hyperparameters(hyper)


class BackgroundVAE:
    """VAE training on Dask for the instruments whose descriptor is ``vae``.

    A VAE is (re)trained once an instrument has ``min_signals`` signals and again whenever its
    count has grown by ``growth``; when one is ready, every stored signal of that instrument is
    re-encoded, the policy relabelled and a hyperparameter refit requested. Decisions go on
    meanwhile (positions, not values, drive the variance).
    """

    def __init__(self, client: Client | None, describer: Describer, policy: BasePolicy,
                 refit: BackgroundRefit, *, min_signals: int = 6, growth: float = 1.5,
                 epochs: int = 150, seed: int = 0) -> None:
        self.client, self.describer, self.policy, self.refit = client, describer, policy, refit
        self.min_signals, self.growth, self.epochs, self.seed = min_signals, growth, epochs, seed
        self.futures: dict[str, tuple[Future, int]] = {}
        self.trained_on: dict[str, int] = dict.fromkeys(describer.signals, 0)
        self.trainings = 0

    def finish(self) -> None:
        """End of campaign: the last VAE covers every signal, so the final model does too."""
        if self.client is None:
            return
        for name in self.describer.signals:
            self.trained_on[name] = min(self.trained_on[name], 1)  # force a last training
        self.poll()
        for fut, _ in list(self.futures.values()):
            fut.result()
        self.poll(start=False)

    def poll(self, start: bool = True) -> None:
        if self.client is None:
            return
        for name, signals in self.describer.signals.items():
            job = self.futures.get(name)
            if job is not None and job[0].done():
                del self.futures[name]
                self.policy.relabel(self.describer.install_vae(name, job[0].result()))
                self.trained_on[name] = job[1]
                self.trainings += 1
                self.refit.invalidate()
            n = len(signals)
            if (start and name not in self.futures and n >= self.min_signals
                    and n >= self.growth * self.trained_on[name]):
                data = np.stack(list(signals.values()))
                cfg = self.describer.configs[name]
                fut = self.client.submit(fit_vae, data, cfg.latent_dim, self.epochs,
                                         self.seed, pure=False)
                self.futures[name] = (fut, n)
