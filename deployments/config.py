"""Campaign and facility configuration (pydantic): one file shape for laptop and facility.

A :class:`CampaignSpec` is what a flow run is parameterised with, so it must stay JSON-plain:
tokens are referenced by file, never inlined (flow parameters are stored by Prefect).

Unknown keys are refused (``extra="forbid"``): a misspelt optional field (``budjet: 200``)
would otherwise be dropped without a word and the campaign run on the default. Fields are only
ever added, each with a default, so a spec stored by older code (a store's metadata, a
deployment's parameters) still loads; one from newer code, with a field this code lacks, is
refused, and ``coorch report`` then draws from the records alone
(``tasks/report_data.read_campaign``). Token files need not exist here: the flow may run where
paths differ, so ``coorch run`` checks them itself before it starts the flow.

Everything a campaign would trip over later, after a Prefect server has started, is refused
here with the field named: NaN and infinite numbers (``allow_inf_nan=False``), counts out of
any sane range (a grid of 0 or of a billion candidates, a budget of 10**30), an extent that is
empty or reaches outside a known library, an unknown library without an extent, names that
would climb out of a folder (a campaign's and an instrument's name go into a lease file's
name, a modality's into the store's group names), a store that names no folder of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from coorch.deployments.dask_config import DaskConfig
from coorch.deployments.steering_config import STRICT, SteeringConfig
from coorch.instrument_agents.libraries import LIBRARY_NAMES, get_library
from coorch.instrument_agents.wire import SAFE_ID

#: The most candidate positions a grid may have: the agent scores every one at every decision.
MAX_CANDIDATES = 1_000_000

Extent = tuple[tuple[float, float], tuple[float, float]]


def plain_name(value: str) -> str:
    """``value`` if it can be part of a file or store group name as it is: not empty, no path
    separator, no control character, not hidden (``.``, ``..``), at most 128 characters."""
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > 128:
        raise ValueError(f"at most 128 characters, got {len(value)}")
    bad = next((c for c in value if c in "/\\" or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(
            f"{value!r} holds {bad!r}: names become file and group names (no path separators "
            "or control characters)"
        )
    if value.startswith("."):
        raise ValueError(f"{value!r} starts with '.': names become file and group names")
    return value


#: A campaign's name: it becomes file and group names (:func:`plain_name`).
PlainName = Annotated[str, AfterValidator(lambda v: plain_name(v))]
#: Where a campaign's store goes: a local folder or an object-store URL (:func:`folder_name`).
StoreLocation = Annotated[str, AfterValidator(lambda v: folder_name(v, "folder"))]


def known_extent(library: str) -> Extent | None:
    """The extent (mm) of the virtual library called ``library``, None for another (real)."""
    return get_library(library).extent if library in LIBRARY_NAMES else None


def folder_name(value: str, field: str) -> str:
    """A local path or URL that names a folder or file of its own (not ``/``, ``.``, ``..``)."""
    if "\0" in value:
        raise ValueError(f"{field} {value!r} holds a NUL character")
    local = value.removeprefix("file://")
    if "://" in local:
        path = local.split("://", 1)[1]
        if any(part in (".", "..") for part in path.split("/")):
            raise ValueError(f"{value!r} has a '.' or '..' segment: an object store keeps it")
        if not path.strip("/"):
            raise ValueError(f"{value!r} names no bucket or folder")
        return value
    if os.path.basename(os.path.normpath(local or ".")) in ("", ".", ".."):
        raise ValueError(f"{value!r} names no {field} of its own: e.g. runs/campaign.zarr")
    return value


POLICIES = (
    "coorchestrate",
    "single_task",
    "max_uncertainty",
    "random",
    "grid",
    "ucb",
    "ei",
    "pareto",
)


class InstrumentConfig(BaseModel):
    """One instrument in a campaign: where its agent listens and what the campaign uses."""

    model_config = STRICT

    name: str = Field(description="instrument id, as the agent describes itself")
    kind: str = Field(description="afm | raman | wds | stem (twins) or a real driver's kind")
    modality: str = Field(description="which of the instrument's modalities this campaign uses")
    url: str = Field(description="base URL of the instrument agent, e.g. http://127.0.0.1:8101")
    token_file: Path = Field(description="file holding the bearer token for control")
    descriptor: Literal["physics", "vae"] = Field(
        "physics",
        description="how signals become GP tasks: a physics fit (one task) or the "
        "latents of a VAE trained on this instrument's signals in the background (latent_dim "
        "tasks)",
    )
    latent_dim: int = Field(2, ge=1, le=4, description="VAE latent size (descriptor='vae')")
    sample: str | None = Field(
        None,
        pattern=SAFE_ID,
        description="the sample (piece) this instrument measures; None: the campaign's "
        "sample. A sample is in one instrument at a time, so a campaign on a facility gives "
        "each instrument its own sister piece of the library",
    )
    # The kinds of coorch.models.structured.MeanKind, spelled out: config must not import torch.
    physics_mean: Literal["peak", "step", "constant"] | None = Field(
        None,
        description="structured GP for this task: a physics mean along the composition "
        "axis (library x), its parameters (centre, width, amplitude, offset) fitted with a GP "
        "in the background. 'peak': a response maximal (or minimal) at a phase boundary; "
        "'step': a property that changes across it (e.g. the PFM loop opening, which vanishes "
        "past the boundary); 'constant': a plain GP, as a baseline. The fitted centre is the "
        "campaign's estimate of the boundary. None: no structured GP (decisions always use the "
        "multi-task GP)",
    )

    log_scale: bool = Field(
        False,
        description="model this instrument's task as its logarithm: for an amount that "
        "a deposition spreads multiplicatively over the library, such as a dopant's at.% "
        "falling off exponentially from its sputter gun (the GP then predicts a corner nobody "
        "measured from interior points). Leave it off for a linear wedge: the log of a ramp "
        "from near zero is far from the GP's trend (docs/benchmarks.md, 'Efficiency'). Needs "
        "descriptor='physics' and positive values (values at or below zero count as half the "
        "smallest positive one)",
    )

    repeatability: float | None = Field(
        None,
        gt=0,
        description="the standard deviation of this instrument's value at one spot, from its "
        "own repeat acquisitions (of the log, i.e. relative, with log_scale: 0.05 is 5 %). "
        "The fits then hold the task's noise there instead of estimating it from a handful "
        "of values, which cannot tell noise from signal (docs/benchmarks.md, 'What changed "
        "on 2026-12-03'). Needs descriptor='physics': a VAE latent's noise is not the "
        "instrument's to declare. None: the fits estimate it",
    )

    @field_validator("name", "kind", "modality")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

    @field_validator("modality")
    @classmethod
    def _not_a_store_group(cls, v: str) -> str:
        if v in ("decisions", "simulations"):  # storage's RESERVED_GROUPS: its own tables
            raise ValueError(f"{v!r} is the store's own table, not a modality")
        return v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8101")
        return v

    @model_validator(mode="after")
    def _log_scale_needs_a_physics_task(self) -> InstrumentConfig:
        if self.log_scale and self.descriptor != "physics":
            raise ValueError(
                f"{self.name}: log_scale needs descriptor='physics' (an amount), "
                f"not {self.descriptor!r}: a VAE latent has no sign to keep"
            )
        return self

    @model_validator(mode="after")
    def _repeatability_needs_a_physics_task(self) -> InstrumentConfig:
        if self.repeatability is not None and self.descriptor != "physics":
            raise ValueError(
                f"{self.name}: repeatability needs descriptor='physics' (a value the "
                f"instrument measures), not {self.descriptor!r}: a VAE latent's noise depends "
                "on the VAE, not on the instrument"
            )
        return self

    @model_validator(mode="after")
    def _physics_mean_needs_one_physics_task(self) -> InstrumentConfig:
        if self.physics_mean is not None and self.descriptor != "physics":
            raise ValueError(
                f"{self.name}: physics_mean={self.physics_mean!r} needs descriptor='physics' "
                f"(one task with a physical meaning), not {self.descriptor!r}: a VAE's "
                "latents have no known shape across a phase boundary"
            )
        return self

    @property
    def n_tasks(self) -> int:
        return self.latent_dim if self.descriptor == "vae" else 1

    def token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read token for {self.name} from {self.token_file}: {exc}"
            ) from exc


class CampaignSpec(BaseModel):
    """What to measure, with what, how much, and where the data go."""

    model_config = STRICT

    name: PlainName = "demo"
    owner: PlainName = Field(
        "facility", description="who the campaign is for: fair share is kept per owner"
    )
    priority: int = Field(
        0,
        ge=0,
        le=9,
        description="0-9, higher first: a free shared instrument goes to the highest priority "
        "waiting, then to the owner with the least instrument time used, then to the earliest",
    )
    library: str = "smbfo"
    sample: str = Field(
        "smbfo-001",
        pattern=SAFE_ID,
        description="the physical sample's id, as the instrument agents load it",
    )
    instruments: list[InstrumentConfig]
    policy: str = "coorchestrate"
    policy_options: dict = Field(
        default_factory=dict,
        description="keyword options of the policy, e.g. for 'pareto' "
        "{'directions': [1, -1]} (maximise the first task, minimise the second); for "
        "'coorchestrate' {'min_fit_values': 6, 'max_correlation': 0.7}",
    )
    budget: int = Field(30, ge=1, le=1_000_000, description="total measurements, seeds included")
    budget_s: float | None = Field(
        None,
        gt=0,
        le=1e9,
        description="instrument-seconds the campaign may use on all its instruments together "
        "(each measurement's time, its stage move and any sample transfer it needs, as the "
        "agents describe them); no measurement starts that would pass it. None: no limit "
        "besides the measurement budget",
    )
    deadline: AwareDatetime | None = Field(
        None,
        description="wall-clock time (with a time zone, e.g. 2026-12-03T18:00:00+00:00) after "
        "which the campaign starts no measurement; what it measured by then is kept",
    )
    facility: str | None = Field(
        None,
        description="the facility database's URL (sqlite:////abs/path/facility.db or "
        "postgresql://...): the campaign then shares its instruments with other campaigns, "
        "taking each for one measurement at a time through the facility's arbiter, and its "
        "samples are tracked in the facility's registry. None: the campaign has its "
        "instruments to itself for the whole run",
    )
    seeds_per_instrument: int = Field(3, ge=0, le=10_000)
    extent: Extent | None = Field(
        None,
        description="library bounds ((x0, x1), (y0, y1)) in mm, inside a virtual library's; "
        "None: the virtual library's (a real sample needs one)",
    )
    grid: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        (41, 5),
        description=f"candidate positions along x and y ({MAX_CANDIDATES} at most in all)",
    )
    refit_every: int = Field(
        4, ge=1, le=1_000_000, description="refit hyperparameters every N observations"
    )
    wait_for_refits: bool = Field(
        False,
        description="decide only once the refit and the VAE training due have landed: the "
        "design then depends on the data alone, not on when fits finish (an instrument faster "
        "than a fit waits for it, ~1 s per refit). False: decide at once with the model at hand",
    )
    store: StoreLocation = "runs/demo/campaign.zarr"
    report: str | None = Field(
        None,
        description="the HTML report, rewritten at model updates and at the end (coorch "
        "report); None: <store>-report.html beside a local store, none for a remote one; "
        "'': none",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="numpy's and torch's seeds")
    dask: DaskConfig = Field(default_factory=DaskConfig)
    steering: SteeringConfig = Field(default_factory=SteeringConfig)

    def report_path(self) -> Path | None:
        """Where the campaign's HTML report goes (see ``report``), or None. Paths are
        normalised (``a/../c.zarr`` -> ``c-report.html``): writing the report makes no folder
        ``a``; a ``file://`` store is local."""
        if self.report is not None:
            return Path(os.path.normpath(self.report)) if self.report else None
        local = self.store.removeprefix("file://")
        if "://" in local:
            return None
        store = Path(os.path.normpath(local))
        return store.with_name(f"{store.stem}-report.html")

    def samples(self) -> dict[str, str]:
        """The sample each instrument measures, by instrument name."""
        return {i.name: i.sample or self.sample for i in self.instruments}

    def library_extent(self) -> Extent:
        """The bounds ((x0, x1), (y0, y1)) in mm campaigns measure in: ``extent``, else the
        virtual library's (validation ensured one of them)."""
        extent = self.extent if self.extent is not None else known_extent(self.library)
        assert extent is not None  # _extent_inside_the_library
        return extent

    @field_validator("report")
    @classmethod
    def _report_is_a_file(cls, v: str | None) -> str | None:
        return folder_name(v, "file") if v else v

    @field_validator("grid")
    @classmethod
    def _not_too_many_candidates(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] * v[1] > MAX_CANDIDATES:
            raise ValueError(
                f"{v[0]} x {v[1]} = {v[0] * v[1]} candidates; {MAX_CANDIDATES} at most (the "
                "agent scores every one at every decision)"
            )
        return v

    @field_validator("extent")
    @classmethod
    def _extent_inside_the_library(cls, v: Extent | None, info: ValidationInfo) -> Extent | None:
        if v is None:
            return v
        (x0, x1), (y0, y1) = v
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"{v} is empty: it needs x0 < x1 and y0 < y1 (mm)")
        library = info.data.get("library")
        known = known_extent(library) if isinstance(library, str) else None
        if known is not None:
            (kx0, kx1), (ky0, ky1) = known
            if x0 < kx0 or x1 > kx1 or y0 < ky0 or y1 > ky1:
                raise ValueError(f"{v} mm reaches outside the {library} library, {known} mm")
        return v

    @model_validator(mode="after")
    def _a_library_or_an_extent(self) -> CampaignSpec:
        if self.extent is None and known_extent(self.library) is None:
            raise ValueError(
                f"library: {self.library!r} is no virtual library ({', '.join(LIBRARY_NAMES)}): "
                "a real sample needs extent ((x0, x1), (y0, y1)) in mm"
            )
        return self

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; choose from {POLICIES}")
        return v

    @model_validator(mode="after")
    def _votes_need_a_gp(self) -> CampaignSpec:
        gp = ("coorchestrate", "single_task", "max_uncertainty")
        if self.steering.mode == "votes" and self.policy not in gp:
            raise ValueError(
                f"steering.mode='votes' needs a multi-task GP policy {gp}, not "
                f"{self.policy!r}: votes are learnt over the GP's predicted descriptors"
            )
        return self

    @model_validator(mode="after")
    def _one_place_per_sample(self) -> CampaignSpec:
        if self.facility is None:
            return self  # instruments held for the whole run: the twins do not mind
        where: dict[str, list[str]] = {}
        for name, sample in self.samples().items():
            where.setdefault(sample, []).append(name)
        shared = {s: names for s, names in where.items() if len(names) > 1}
        if shared:
            raise ValueError(
                f"instruments: sample(s) {shared} named for several instruments; a sample is "
                "in one instrument at a time: give each instrument its own sister piece "
                "(instruments[].sample)"
            )
        return self

    @field_validator("facility")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:///", "postgresql")):
            raise ValueError(
                f"{v!r} is no database URL: sqlite:////abs/path/facility.db or postgresql://..."
            )
        return v

    @field_validator("instruments")
    @classmethod
    def _unique_instruments(cls, v: list[InstrumentConfig]) -> list[InstrumentConfig]:
        names = [i.name for i in v]
        if len(set(names)) != len(names):
            raise ValueError(f"instrument names must be unique, got {names}")
        if not names:
            raise ValueError("a campaign needs at least one instrument")
        return v
