"""Setting an im2spec campaign up: its describer and its two agents (survey, spectra).

The survey's agent only reserves the candidates the structure image is taken at; the spectra's
agent is the deep-kernel im2spec agent over the images (``coorch.models.dkl_policy``).
"""

from __future__ import annotations

import numpy as np

from coorch.deployments.im2spec_config import Im2SpecSpec
from coorch.models.agent import Agent, GridAgent
from coorch.models.cost import InstrumentCost
from coorch.models.descriptors import describe, edge_peak_ratio
from coorch.models.dkl_policy import Im2SpecPolicy
from coorch.records import InstrumentDescription, Measurement, Signal
from coorch.tasks.describe import Describer
from coorch.tasks.setup import geometry


def spectral_describer(spec: Im2SpecSpec) -> Describer:
    """Images by their physics descriptor; spectra by the spec's property (edge ratio or
    physics)."""

    def values(modality: str, signal: Signal) -> np.ndarray:
        if modality == spec.property_modality and spec.descriptor == "edge_ratio":
            pre, peak, post = spec.edge_windows
            return edge_peak_ratio(signal, pre, peak, post)
        return describe(modality, signal)

    return Describer(describe=values)


def structure_agent(spec: Im2SpecSpec, candidates: np.ndarray) -> Agent:
    """An agent that knows where images are and have been decided (the survey plans every
    candidate itself, so it is never asked)."""
    inst = InstrumentCost(spec.instrument.name, (0,))
    return GridAgent(candidates, geometry(spec).bounds, [inst], seed=spec.seed)


def im2spec_agent(
    spec: Im2SpecSpec,
    desc: InstrumentDescription,
    candidates: np.ndarray,
    images: list[Measurement],
) -> Im2SpecPolicy:
    """The DKL agent over the candidate grid, one structure image per candidate (the nearest
    stored one), with the instrument's spectrum cost."""
    geo = geometry(spec)
    unit = geo.to_unit(candidates)
    at = {}
    for m in images:
        u = geo.to_unit([m.library_x, m.library_y])[0]
        at.setdefault(int(np.argmin(((unit - u) ** 2).sum(1))), m)
    missing = sorted(set(range(len(candidates))) - set(at))
    if missing:
        raise RuntimeError(f"no structure image at candidates {missing}")
    ordered = [at[i] for i in range(len(candidates))]
    cfg = spec.instrument
    inst = InstrumentCost(
        cfg.name, (0,), desc.modality(cfg.modality).cost_s, desc.move_cost_s_per_mm
    )
    return Im2SpecPolicy(
        candidates,
        geo.bounds,
        [inst],
        structure=np.stack([m.signal.array() for m in ordered]),
        structure_ids=[m.measurement_id for m in ordered],
        acquisition=spec.acquisition,
        maximize=spec.maximize,
        refit_every=spec.refit_every,
        n_initial=max(3, spec.seeds),
        feature_dim=spec.feature_dim,
        steps=spec.dkl_steps,
        seed=spec.seed,
    )
