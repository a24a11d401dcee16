"""What ``coorch up`` runs: :class:`FacilityConfig` (``--config FACILITY.yaml``) and its twins.

Its own module because both sides need it: ``coorch up`` reads it to refuse a bad file before
anything starts (:mod:`~coorch.deployments.facility_control`), and the supervisor reads it
again to start the services (:mod:`~coorch.deployments.facility_supervisor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coorch.deployments.config import POLICIES
from coorch.errors import load_spec


class TwinConfig(BaseModel):
    """One digital-twin agent of the facility and the modality campaigns use on it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as CampaignSpec's

    kind: Literal["afm", "raman", "wds", "stem"] = Field(description="which twin")
    modality: str = Field(description="the modality campaign.yaml uses, e.g. pfm_loop")
    seed: int | None = Field(None, description="twin seed; None: the facility seed + position")
    fault_rate: float = Field(0.0, ge=0.0, le=1.0, description="faults per measurement")


def _demo_twins() -> list[TwinConfig]:
    """The four twins of ``coorch demo`` (coorch/demo.py, DEMO_INSTRUMENTS)."""
    pairs = (("afm", "pfm_loop"), ("raman", "raman"), ("wds", "wds"), ("stem", "stem_haadf"))
    return [TwinConfig(kind=k, modality=m) for k, m in pairs]


class FacilityConfig(BaseModel):
    """What ``coorch up`` runs (``--config FACILITY.yaml``; every field has a default).

    Unknown keys and NaN or infinite numbers are refused, as in a
    :class:`~coorch.deployments.config.CampaignSpec`: a misspelt ``budjet`` would otherwise run
    the facility's campaign on the default without a word."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    library: Literal["smbfo", "smbfo-lgd", "alscbn"] = Field("smbfo", description="virtual library")
    instruments: list[TwinConfig] = Field(default_factory=_demo_twins)
    time_scale: float = Field(
        0.05,
        ge=0.0,
        description="instrument seconds -> wall seconds (the demo's 0.05: a 30 s PFM loop "
        "takes 1.5 s)",
    )
    seed: int = 0
    n_workers: int = Field(1, ge=1, description="Dask worker processes")
    threads_per_worker: int = Field(1, ge=1)
    dask_port: int = Field(0, ge=0, description="Dask scheduler port; 0 picks a free one")
    budget: int = Field(40, ge=1, description="campaign.yaml's measurement budget")
    policy: str = Field("coorchestrate", description="campaign.yaml's policy")
    steering: Literal["off", "review", "votes"] = Field(
        "review",
        description="campaign.yaml's steering mode (review: every 5th decision waits up to "
        "60 s for an operator; the token is <dir>/steer.token)",
    )
    startup_timeout_s: float = Field(120.0, gt=0, description="per service")

    @model_validator(mode="after")
    def _one_twin_per_kind(self) -> FacilityConfig:
        """A twin names itself ``<kind>-twin``: two of a kind would share a campaign name."""
        kinds = [t.kind for t in self.instruments]
        if not kinds or len(set(kinds)) != len(kinds):
            raise ValueError(f"instruments: one twin per kind, at least one; got {kinds}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {POLICIES}")
        return self

    @classmethod
    def from_file(cls, path: Path | None) -> FacilityConfig:
        """The config in YAML file ``path`` (an empty file: the defaults), or the defaults for
        None. A bad file raises an ``OSError`` or a ``ValueError`` whose lines name the file
        and the field (:func:`coorch.errors.load_spec`)."""
        if path is None:
            return cls()
        if not path.read_text().strip():
            return cls()
        return load_spec(path, cls)
