"""From a measurement to what the agent learns: signal -> descriptor values.

Plain functions, not Prefect tasks: they run for every measurement and cost microseconds, where
a task run costs ~11 ms (DESIGN.md, "Performance").

A descriptor is a physics fit (``coorch.models.descriptors``) or, for instruments configured
with ``descriptor: vae``, the latent vector of a VAE trained in the background on that
instrument's signals (:class:`coorch.tasks.fit.VAETraining`). Until the first VAE is ready
those measurements are told with NaN values: the agent knows where they are (so it does not
measure there again) but does not fit to them; the VAE's arrival relabels them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from coorch.models.descriptors import describe
from coorch.records import Measurement, Signal


class Describer:
    """Signals to task values, per instrument; keeps the signals a VAE will be trained on.

    Args:
        vae_latents: latent size per instrument whose descriptor is a VAE's latents.
        describe: ``(modality, signal) -> values`` for every other instrument (the physics
            descriptors by default; a replay of stored descriptors passes them through).
    """

    def __init__(
        self,
        vae_latents: Mapping[str, int] | None = None,
        describe: Callable[[str, Signal], np.ndarray] = describe,
    ) -> None:
        self.latent_dim = dict(vae_latents or {})
        self.describe = describe
        self.signals: dict[str, dict[str, np.ndarray]] = {n: {} for n in self.latent_dim}
        self.vae: dict[str, object] = {}

    def values(self, m: Measurement) -> np.ndarray:
        if m.instrument not in self.latent_dim:
            return np.atleast_1d(self.describe(m.modality, m.signal))
        sig = m.signal.array()
        self.signals[m.instrument][m.measurement_id] = sig
        model = self.vae.get(m.instrument)
        if model is None:
            return np.full(self.latent_dim[m.instrument], np.nan)
        return model.encode(sig[None])[0]

    def install_vae(self, instrument: str, model) -> dict[str, np.ndarray]:
        """Use ``model`` for ``instrument`` from now on; the re-encoded values of its past
        signals, for :meth:`coorch.models.agent.Agent.relabel`."""
        self.vae[instrument] = model
        ids = list(self.signals[instrument])
        latents = model.encode(np.stack([self.signals[instrument][i] for i in ids]))
        return dict(zip(ids, latents, strict=True))
