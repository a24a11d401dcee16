"""Configuration of an image -> spectrum (im2spec) campaign (pydantic, JSON-plain like
:class:`coorch.deployments.config.CampaignSpec`: it is a Prefect flow parameter).

One instrument with two modalities: a cheap structural image (``structure_modality``, e.g. STEM
``stem_haadf`` or AFM ``afm_topo``) taken at every candidate position, and an expensive
spectrum (``instrument.modality``, e.g. ``eels`` or ``pfm_loop``) reduced to one descriptor and
measured only where the deep-kernel model asks for it.

The spec exposes ``instruments``, ``seeds_per_instrument``, ``extent``, ``grid``, ``library``,
``sample``, ``samples()`` and ``facility`` (always None: it holds its one instrument for the
whole run) under the names the campaign helpers in ``coorch.tasks.setup`` read, so
connecting, the store's metadata, the candidate grid and the seed positions are shared with the
co-orchestration flow rather than written again.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from coorch.deployments.config import STRICT, InstrumentConfig, PlainName, StoreLocation
from coorch.instrument_agents.wire import SAFE_ID


class Im2SpecSpec(BaseModel):
    """What to image, which spectrum to learn from the images, how many spectra, where to."""

    # Unknown keys refused, as in CampaignSpec (see coorch.deployments.config): a misspelt
    # option must not silently become its default.
    model_config = STRICT  # NaN and inf refused too

    name: PlainName = "im2spec"
    library: str = "smbfo"
    sample: str = Field("smbfo-001", pattern=SAFE_ID)
    instrument: InstrumentConfig = Field(
        description="the instrument agent; its `modality` is the spectrum (property) modality"
    )
    structure_modality: str = Field(
        "stem_haadf",
        description="the image modality taken at every candidate (stem_haadf, afm_topo, ...)",
    )
    descriptor: Literal["physics", "edge_ratio"] = Field(
        "edge_ratio",
        description="spectrum -> property: `physics` (the modality's physics "
        "descriptor, coorch.models.descriptors) or `edge_ratio` (background-subtracted "
        "fine-structure peak over edge step, windows in `edge_windows`)",
    )
    edge_windows: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = Field(
        ((490.0, 528.0), (530.0, 537.0), (545.0, 570.0)),
        description="(pre-edge background fit, peak, post-edge) windows in the spectrum's axis "
        "units; the default is the O K edge and its pre-peak in Sm-doped BiFeO3 EELS",
    )
    acquisition: Literal["max_variance", "ei"] = Field(
        "max_variance", description="max_variance maps the property, ei seeks its optimum"
    )
    maximize: bool = Field(True, description="direction of the property for ei")
    budget: int = Field(20, ge=1, description="spectra, seeds included")
    seeds: int = Field(4, ge=0, description="seed spectra spread along x before the model decides")
    extent: tuple[tuple[float, float], tuple[float, float]] | None = Field(
        None, description="library bounds ((x0, x1), (y0, y1)) in mm; None: the twin library's"
    )
    grid: tuple[int, int] = Field(
        (21, 3), description="candidate positions along x and y; every one is imaged"
    )
    refit_every: int = Field(
        4,
        ge=1,
        description="train the DKL network again every N spectra "
        "(conditioned on the new ones in between)",
    )
    feature_dim: int = Field(2, ge=1, le=8, description="learned structure features")
    dkl_steps: int = Field(80, ge=1, description="Adam steps per DKL training")
    store: StoreLocation = "runs/im2spec/campaign.zarr"
    seed: int = 0

    @property
    def instruments(self) -> list[InstrumentConfig]:
        """The campaign helpers' view: a list of instrument configs."""
        return [self.instrument]

    @property
    def seeds_per_instrument(self) -> int:
        return self.seeds

    @property
    def facility(self) -> None:
        """Not shared: an im2spec campaign holds its instrument for the whole run."""
        return None

    def samples(self) -> dict[str, str]:
        """The sample its instrument measures, by instrument name (as CampaignSpec's)."""
        return {self.instrument.name: self.instrument.sample or self.sample}

    @property
    def property_modality(self) -> str:
        return self.instrument.modality

    @model_validator(mode="after")
    def _two_modalities(self) -> Im2SpecSpec:
        if self.structure_modality == self.instrument.modality:
            raise ValueError(
                "structure_modality and the instrument's (spectrum) modality must differ"
            )
        if self.grid[0] * self.grid[1] <= self.budget:
            raise ValueError("the grid must have more candidates than the spectrum budget")
        return self
