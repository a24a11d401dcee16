"""Setting a campaign up: connect to its instruments, open its store, build its agent, its
background work and its seed plan.

Plain functions and context managers; the flows call them once per run, so they are not on the
per-measurement path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from coorch.deployments.config import CampaignSpec
from coorch.deployments.dask_cluster import dask_client
from coorch.geometry import LibraryGeometry
from coorch.instrument_agents.client import InstrumentClient
from coorch.instrument_agents.libraries import get_library
from coorch.models.agent import Agent
from coorch.models.cost import InstrumentCost
from coorch.models.policies import make_policy
from coorch.records import InstrumentDescription
from coorch.storage import CampaignStore, code_version
from coorch.tasks.fit import HyperparameterRefit, VAETraining, needs_fits, warm_up
from coorch.tasks.hold import Exclusive, Shared
from coorch.tasks.live_report import LiveReport
from coorch.tasks.meter import InstrumentTime, Meter
from coorch.tasks.physics import PhysicsFits
from coorch.tasks.votes import Votes

if TYPE_CHECKING:
    from coorch.tasks.theory import TheoryLoop


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
    #: A co-navigation's theory (:meth:`coorch.tasks.theory.TheoryLoop.report`): the parameter
    #: posterior now and over time, the simulations' fates, where theory and experiment disagree.
    theory: dict = {}


class Instruments:
    """The campaign's connected instruments: clients holding leases, and their descriptions."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.clients: dict[str, InstrumentClient] = {}
        self.descriptions: dict[str, InstrumentDescription] = {}
        self.modalities = {i.name: i.modality for i in spec.instruments}
        self.samples = spec.samples()
        #: a facility campaign takes each instrument one measurement at a time (tasks/hold.py)
        self.shared = spec.facility is not None

    @classmethod
    @contextlib.contextmanager
    def connect(cls, spec: CampaignSpec) -> Iterator[Instruments]:
        """Take every instrument's lease and load the sample (all instruments at once: a
        STEM transfer takes half an hour); release every lease on exit (an agent that is down
        by then lets its lease lapse). A facility campaign only checks that each answers and
        has the modality: it takes nothing until it measures."""
        self = cls(spec)
        with contextlib.ExitStack() as stack:
            for cfg in spec.instruments:
                client = stack.enter_context(
                    InstrumentClient(
                        cfg.url,
                        cfg.token(),
                        client_id=f"coorch-{spec.name}",
                        # a restarted run takes over its own lease (the id is a credential,
                        # kept beside the token it was taken with)
                        lease_file=cfg.token_file.with_name(
                            f"{cfg.token_file.name}.{spec.name}.{cfg.name}.lease"
                        ),
                    )
                )
                desc = client.describe()
                desc.modality(cfg.modality)  # fails early on a wrong modality name
                if not self.shared:
                    client.acquire_lease(ttl_s=300)  # given back as the client closes
                self.clients[cfg.name] = client
                self.descriptions[cfg.name] = desc
            if not self.shared:
                with ThreadPoolExecutor(len(self.clients)) as pool:
                    list(
                        pool.map(
                            lambda n: self.clients[n].load_sample(self.samples[n]), self.clients
                        )
                    )
            yield self

    def reconnect(self, name: str) -> None:
        """Take ``name`` back after it stopped answering: its lease again (a restarted agent
        has forgotten it) and the sample (a restarted agent may have unloaded it; loading the
        loaded sample again is harmless); a facility campaign takes them at its next turn.
        Raises InstrumentError while it is still away."""
        client = self.clients[name]
        client.health()
        if not self.shared:
            client.acquire_lease(ttl_s=300)
            client.load_sample(self.samples[name])

    def open_store(self, spec: CampaignSpec, flow_run_id: str) -> CampaignStore:
        store = CampaignStore.open(spec.store, create=True)
        store.set_metadata(
            campaign=spec.name,
            spec=spec.model_dump(mode="json"),
            code_version=code_version(),  # of this run: a resumed campaign may run newer code
            library=spec.library,
            sample=spec.sample,
            samples=self.samples,
            flow_run_id=flow_run_id,
            instruments={k: v.model_dump(mode="json") for k, v in self.descriptions.items()},
        )
        return store


def geometry(spec: CampaignSpec) -> LibraryGeometry:
    """The library's bounds in mm: from the spec, else from the known virtual library."""
    extent = spec.extent if spec.extent is not None else get_library(spec.library).extent
    return LibraryGeometry(np.asarray(extent, float))


def build_agent(spec: CampaignSpec, descriptions: dict[str, InstrumentDescription]) -> Agent:
    """The spec's policy over its candidate grid; GP tasks per instrument as its descriptor
    gives (one physics value, or ``latent_dim`` VAE latents); costs as the agents serve them."""
    costs, first = [], 0
    for cfg in spec.instruments:
        desc = descriptions[cfg.name]
        tasks = tuple(range(first, first + cfg.n_tasks))
        first += cfg.n_tasks
        costs.append(
            InstrumentCost(
                cfg.name,
                tasks,
                desc.modality(cfg.modality).cost_s,
                desc.move_cost_s_per_mm,
                cfg.log_scale,
                cfg.repeatability,
            )
        )
    geo = geometry(spec)
    try:
        return make_policy(
            spec.policy,
            geo.grid(spec.grid),
            geo.bounds,
            costs,
            seed=spec.seed,
            **spec.policy_options,
        )
    except TypeError as exc:  # an option the policy does not take
        raise ValueError(
            f"policy {spec.policy!r} does not accept policy_options {spec.policy_options}: {exc}"
        ) from None


@dataclasses.dataclass
class Background:
    """A campaign's background work, in the order it is polled (a VAE's relabelling before
    the refit that uses it)."""

    vae: VAETraining | None = None
    refit: HyperparameterRefit | None = None
    physics: PhysicsFits | None = None
    votes: Votes | None = None
    theory: TheoryLoop | None = None  # a co-navigation's simulations
    report: LiveReport | None = None

    def __iter__(self) -> Iterator:
        work = (self.vae, self.refit, self.physics, self.votes, self.theory, self.report)
        return iter([w for w in work if w is not None])


@contextlib.contextmanager
def background_work(
    spec: CampaignSpec,
    agent: Agent,
    log: logging.Logger | logging.LoggerAdapter,
    store: CampaignStore | None = None,
    flow_run_id: str | None = None,
) -> Iterator[Background]:
    """The campaign's background work: hyperparameter refits (GP agents), VAE trainings
    (instruments with ``descriptor: vae``) and physics fits (``physics_mean``), on a Dask
    cluster started only when one of them needs it; posteriors are built on a thread, and so
    is the operators' reward surrogate (``steering.mode: votes``). A co-navigation spec
    (``theory``) adds its simulations, on a cluster of their own, stored in ``store``."""
    means = {i.name: i.physics_mean for i in spec.instruments if i.physics_mean}
    vae = any(i.descriptor == "vae" for i in spec.instruments)
    with contextlib.ExitStack() as stack:
        dask = None
        if needs_fits(agent) or vae:
            dask = stack.enter_context(dask_client(spec.dask)).get_executor(pure=False)
        work = Background()
        if dask is not None and needs_fits(agent):
            dask.submit(warm_up)  # pay the worker's torch import now, not at the first refit
            builder = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="posterior"))
            work.refit = HyperparameterRefit(
                dask, every=spec.refit_every, builder=builder, wait=spec.wait_for_refits
            )
        if vae:
            work.vae = VAETraining(dask, seed=spec.seed, wait=spec.wait_for_refits)
        if means:
            work.physics = PhysicsFits(dask, means, every=spec.refit_every, seed=spec.seed, log=log)
        if spec.steering.mode == "votes":
            work.votes = Votes(stack.enter_context(ThreadPoolExecutor(1)))
        if getattr(spec, "theory", None) is not None:
            from coorch.tasks.theory import theory_loop  # torch and the simulator: only here

            work.theory = stack.enter_context(theory_loop(spec, agent, store, flow_run_id, log))
        if spec.report_path() is not None:
            work.report = LiveReport(spec.report_path(), stack.enter_context(ThreadPoolExecutor(1)))
        yield work


def seed_plan(spec: CampaignSpec) -> list[tuple[str, np.ndarray]]:
    """``seeds_per_instrument`` points per instrument spread along x, shifted per instrument,
    at mid-y: (instrument, position in mm) in the order they are measured."""
    (x0, x1), (y0, y1) = geometry(spec).bounds
    n, k_all = spec.seeds_per_instrument, len(spec.instruments)
    out = []
    for k, cfg in enumerate(spec.instruments):
        frac = (np.arange(n) + 0.5 + (k - (k_all - 1) / 2) / k_all) / max(n, 1)
        for x in x0 + np.clip(frac, 0, 1) * (x1 - x0):
            out.append((cfg.name, np.array([x, (y0 + y1) / 2])))
    return out


@contextlib.contextmanager
def holding(spec: CampaignSpec, instruments: Instruments) -> Iterator[Exclusive | Shared]:
    """How the campaign holds its instruments while it measures (:mod:`coorch.tasks.hold`):
    for the whole run, or, on a facility (``spec.facility``), one turn per measurement through
    the facility's arbiter, with its samples claimed in the facility's registry until the run
    ends (a sample another campaign holds fails the run here, before anything moves)."""
    times = {n: InstrumentTime.of(d) for n, d in instruments.descriptions.items()}
    if spec.facility is None:
        yield Exclusive(Meter(times, budget_s=spec.budget_s, deadline=spec.deadline))
        return
    from coorch.deployments.arbiter import Arbiter
    from coorch.storage.samples import SampleRegistry

    registry, arbiter = SampleRegistry(spec.facility), Arbiter(spec.facility)
    try:
        arbiter.ensure_limits(list(instruments.clients))
        for sample in instruments.samples.values():
            registry.register(sample, spec.library)
        registry.claim(spec.name, list(instruments.samples.values()))
        meter = Meter(
            times,
            budget_s=spec.budget_s,
            deadline=spec.deadline,
            spent_s=arbiter.used(spec.name),  # a resumed campaign has spent some already
        )
        hold = Shared(
            meter,
            arbiter,
            registry,
            campaign=spec.name,
            owner=spec.owner,
            priority=spec.priority,
            samples=instruments.samples,
        )
        try:
            yield hold
        finally:
            hold.stop.set()  # turns still waited for give up
            registry.release(spec.name)
    finally:
        registry.close()
        arbiter.close()
