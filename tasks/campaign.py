"""Setting a campaign up: connect to its instruments, open its store, build its policy, seed it.

Plain functions and one context manager; the flow calls them once per run, so they are not on
the per-measurement path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pydantic import BaseModel

from coorch.deployments.config import CampaignSpec
from coorch.instrument_agents.client import InstrumentClient
from coorch.instrument_agents.libraries import get_library
from coorch.models.policies import BasePolicy, InstrumentModel, make_policy
from coorch.records import Decision, InstrumentDescription
from coorch.storage import CampaignStore, code_version
from coorch.tasks.decide import to_decision


class CampaignResult(BaseModel):
    """What a campaign flow run returns (and Prefect shows as its result)."""

    store: str
    flow_run_id: str
    n_measurements: int
    n_fits: int
    n_vae_trainings: int = 0
    policy: dict
    hyperparameters: dict | None = None
    #: Structured-GP physics parameters per instrument with ``physics_mean`` set
    #: (``center``/``width`` in library mm, ``amplitude``/``offset`` in descriptor units).
    physics: dict[str, dict[str, float]] = {}


class Instruments:
    """The campaign's connected instruments: clients holding leases, and their descriptions."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.clients: dict[str, InstrumentClient] = {}
        self.descriptions: dict[str, InstrumentDescription] = {}
        self.modalities = {i.name: i.modality for i in spec.instruments}

    @classmethod
    @contextlib.contextmanager
    def connect(cls, spec: CampaignSpec) -> Iterator[Instruments]:
        """Take every instrument's lease and load the sample (all instruments at once: a
        STEM transfer takes half an hour); release every lease on exit."""
        self = cls(spec)
        with contextlib.ExitStack() as stack:
            for cfg in spec.instruments:
                client = stack.enter_context(
                    InstrumentClient(cfg.url, cfg.token(), client_id=f"coorch-{spec.name}"))
                desc = client.describe()
                desc.modality(cfg.modality)  # fails early on a wrong modality name
                client.acquire_lease(ttl_s=300)
                stack.callback(client.release_lease)
                self.clients[cfg.name] = client
                self.descriptions[cfg.name] = desc
            with ThreadPoolExecutor(len(self.clients)) as pool:
                list(pool.map(lambda c: c.load_sample(spec.sample), self.clients.values()))
            yield self

    def open_store(self, spec: CampaignSpec, flow_run_id: str) -> CampaignStore:
        store = CampaignStore.open(spec.store, create=True)
        store.set_metadata(
            campaign=spec.name, spec=spec.model_dump(mode="json"),
            code_version=code_version(),  # of this run: a resumed campaign may run newer code
            library=spec.library, sample=spec.sample, flow_run_id=flow_run_id,
            instruments={k: v.model_dump(mode="json") for k, v in self.descriptions.items()})
        return store


def library_extent(spec: CampaignSpec) -> np.ndarray:
    """(2, 2) bounds in library mm: from the spec, else from the known virtual library."""
    if spec.extent is not None:
        return np.asarray(spec.extent, float)
    return np.asarray(get_library(spec.library).extent, float)


def candidate_grid(spec: CampaignSpec) -> np.ndarray:
    """The positions the policy chooses among: a regular grid over the library."""
    (x0, x1), (y0, y1) = library_extent(spec)
    nx, ny = spec.grid
    gx, gy = np.meshgrid(np.linspace(x0, x1, nx), np.linspace(y0, y1, ny))
    return np.column_stack([gx.ravel(), gy.ravel()])


def build_policy(spec: CampaignSpec, descriptions: dict[str, InstrumentDescription]
                 ) -> BasePolicy:
    """The spec's policy over the candidate grid; GP tasks per instrument as its descriptor
    gives (one physics value, or ``latent_dim`` VAE latents); costs as the agents serve them."""
    models, first = [], 0
    for cfg in spec.instruments:
        desc = descriptions[cfg.name]
        tasks = tuple(range(first, first + cfg.n_tasks))
        first += cfg.n_tasks
        models.append(InstrumentModel(cfg.name, tasks, desc.modality(cfg.modality).cost_s,
                                      desc.move_cost_s_per_mm,
                                      cfg.log_scale))
    try:
        return make_policy(spec.policy, candidate_grid(spec), library_extent(spec), models,
                           seed=spec.seed, **spec.policy_options)
    except TypeError as exc:  # an option the policy does not take
        raise ValueError(f"policy {spec.policy!r} does not accept policy_options "
                         f"{spec.policy_options}: {exc}") from None


def seed_positions(spec: CampaignSpec, k: int) -> np.ndarray:
    """``seeds_per_instrument`` points spread along x, shifted per instrument, mid-y."""
    (x0, x1), (y0, y1) = library_extent(spec)
    n = spec.seeds_per_instrument
    frac = (np.arange(n) + 0.5 + (k - (len(spec.instruments) - 1) / 2) / len(spec.instruments)
            ) / max(n, 1)
    xs = x0 + np.clip(frac, 0, 1) * (x1 - x0)
    return np.column_stack([xs, np.full(n, (y0 + y1) / 2)])


def seed_decisions(spec: CampaignSpec, policy: BasePolicy, instruments: Instruments,
                   store: CampaignStore, flow_run_id: str) -> list[Decision]:
    """The seed measurements, stored as decisions (policy ``seed``) before any is made."""
    out = []
    for k, cfg in enumerate(spec.instruments):
        for x in seed_positions(spec, k):
            s = policy.plan(cfg.name, x, reason="seed")
            d = to_decision(s, cfg.modality, campaign=spec.name, flow_run_id=flow_run_id)
            store.append_decision(d)
            out.append(d)
    return out
