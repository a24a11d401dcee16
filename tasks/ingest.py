"""From a stored measurement to what the policy learns: signal -> descriptor -> ``tell``.

Plain functions, not Prefect tasks: they run on the decision path for every measurement and
cost microseconds, where a task run costs ~11 ms (DESIGN.md, "Performance").

A descriptor is a physics fit (``coorch.models.descriptors``) or, for instruments configured
with ``descriptor: vae``, the latent vector of a VAE trained in the background on that
instrument's signals (:class:`coorch.tasks.fit.BackgroundVAE`). Until the first VAE is ready
those measurements are told with NaN values: the policy knows where they are (so it does not
measure there again) but does not fit to them; the VAE's arrival relabels them.
"""

from __future__ import annotations

import numpy as np

from coorch.deployments.config import CampaignSpec
from coorch.models.descriptors import describe
from coorch.models.policies import BasePolicy, Observation
from coorch.records import Measurement


class Describer:
    """Signals to task values, per instrument; keeps the signals a VAE will be trained on."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.configs = {i.name: i for i in spec.instruments}
        self.signals: dict[str, dict[str, np.ndarray]] = {
            i.name: {} for i in spec.instruments if i.descriptor == "vae"}
        self.vae: dict[str, object] = {}

    def values(self, m: Measurement) -> np.ndarray:
        cfg = self.configs[m.instrument]
        if cfg.descriptor == "physics":
            return describe(m.modality, m.signal)
        sig = m.signal.array()
        self.signals[m.instrument][m.measurement_id] = sig
        model = self.vae.get(m.instrument)
        if model is None:
            return np.full(cfg.latent_dim, np.nan)
        return model.encode(sig[None])[0]

    def observation(self, m: Measurement) -> Observation:
        """The policy's view of a measurement: library position and descriptor values."""
        return Observation(instrument=m.instrument, x=np.array([m.library_x, m.library_y]),
                           values=self.values(m), measurement_id=m.measurement_id)

    def install_vae(self, instrument: str, model) -> dict[str, np.ndarray]:
        """Use ``model`` for ``instrument`` from now on; the re-encoded values of its past
        signals, for :meth:`BasePolicy.relabel`."""
        self.vae[instrument] = model
        ids = list(self.signals[instrument])
        latents = model.encode(np.stack([self.signals[instrument][i] for i in ids]))
        return dict(zip(ids, latents, strict=True))


def observe(policy: BasePolicy, describer: Describer, measurements: list[Measurement]
            ) -> list[Observation]:
    """Tell ``policy`` about ``measurements``; returns what it was told."""
    obs = [describer.observation(m) for m in measurements]
    policy.tell(obs)
    return obs
