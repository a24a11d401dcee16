"""Configuration of a co-navigation campaign: the experiment and a physics simulation beside it.

A :class:`ConavigateSpec` is a :class:`~coorch.deployments.config.CampaignSpec` (instruments,
budget, store, Dask cluster for the model fits, steering) plus ``theory``: which instrument's
descriptor the simulator predicts, what the library's nominal composition is, and how
simulations run (how many at once, on which Dask cluster, how long one may take before it
counts as hung, how often a failed one is retried). JSON-plain like every spec: it is a Prefect
flow parameter.

Why a cluster of its own (``theory.dask``): simulations are the long, many, embarrassingly
parallel work that belongs on an HPC queue (dask-jobqueue, docs/hpc.md), while the campaign's
model fits want a small cluster next to the flow, answering in seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from coorch.deployments.config import STRICT, CampaignSpec, PlainName
from coorch.deployments.dask_config import DaskConfig

#: The modalities whose physics descriptor the LGD simulator predicts (a hysteresis loop's
#: opening, ``coorch.models.descriptors.loop_opening``).
SIMULATED_MODALITIES = ("pfm_loop",)


class TheoryConfig(BaseModel):
    """The simulation that co-navigates with the experiment (see the module docstring)."""

    model_config = STRICT

    simulator: Literal["lgd"] = Field(
        "lgd",
        description="the physics model: 'lgd', a Landau-Ginzburg-Devonshire ferroelectric "
        "integrated in time (coorch.lgd), whose parameters (s_c, depol) the campaign infers",
    )
    instrument: str = Field(
        description="the instrument whose descriptor the simulator predicts (a pfm_loop "
        "modality with the physics descriptor, the loop opening)"
    )
    composition_range: tuple[float, float] = Field(
        (0.0, 0.20),
        description="the library's nominal Sm fraction at its x0 and x1 edges (the deposition's "
        "gradient, linear along library x): where a position sits in the simulator's inputs",
    )
    initial_simulations: int = Field(
        16,
        ge=2,
        le=10_000,
        description="a space-filling design over (composition, parameters) "
        "run before the surrogate chooses",
    )
    max_simulations: int = Field(
        160, ge=2, le=100_000, description="simulations in all (failed and dropped included)"
    )
    in_flight: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="simulations submitted at once; None: twice the simulation cluster's worker "
        "threads, so no worker waits for the flow",
    )
    timeout_s: float = Field(
        120.0, gt=0, le=86_400, description="a simulation running longer counts as hung"
    )
    retries: int = Field(
        1,
        ge=0,
        le=10,
        description="times a failed or hung simulation is submitted again "
        "before it is dropped (stored as failed or dropped; the campaign goes on)",
    )
    refit_every: int = Field(
        8,
        ge=1,
        le=10_000,
        description="new simulations or measurements of the instrument "
        "between two surrogate fits and parameter inferences",
    )
    weight: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="how much more the agent values knowledge of the instrument's map where "
        "plausible parameters still disagree (0: theory steers no measurement, only the map)",
    )
    dask: DaskConfig = Field(
        default_factory=DaskConfig,
        description="where simulations run: a LocalCluster by default, an HPC queue through "
        "dask-jobqueue (docs/hpc.md); the campaign's fits stay on `dask`",
    )


class ConavigateSpec(CampaignSpec):
    """A campaign whose experiment co-navigates with a physics simulation (``theory``)."""

    name: PlainName = "conavigate"
    theory: TheoryConfig

    @model_validator(mode="after")
    def _theory_instrument_is_simulated(self) -> ConavigateSpec:
        byname = {i.name: i for i in self.instruments}
        inst = byname.get(self.theory.instrument)
        if inst is None:
            raise ValueError(
                f"theory.instrument {self.theory.instrument!r} is none of the campaign's "
                f"instruments {sorted(byname)}"
            )
        if (
            inst.modality not in SIMULATED_MODALITIES
            or inst.descriptor != "physics"
            or (inst.log_scale)
        ):
            raise ValueError(
                f"theory.instrument {inst.name!r} measures {inst.modality!r} with the "
                f"{inst.descriptor!r} descriptor{' on a log scale' if inst.log_scale else ''}; "
                f"the simulator predicts the physics descriptor of {SIMULATED_MODALITIES} "
                "in its own units"
            )
        lo, hi = self.theory.composition_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"theory.composition_range {lo, hi} is no fraction range lo < hi")
        if self.theory.max_simulations < self.theory.initial_simulations:
            raise ValueError("theory.max_simulations is below theory.initial_simulations")
        return self
