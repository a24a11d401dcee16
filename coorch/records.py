"""The small shared types every layer may use (DESIGN.md, "Layers").

These records are the only things that cross layer boundaries: an instrument agent returns a
:class:`Measurement` (over HTTP, as JSON), the store writes it, the decision agent returns a
:class:`Decision`, the store keeps it beside the measurement it caused. Keeping them here, and
only here, lets ``instrument_agents/``, ``models/`` and ``storage/`` stay ignorant of each other.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator


def new_id(prefix: str) -> str:
    """A sortable-enough unique id with a readable prefix (``m-``, ``d-``, ...)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Signal(BaseModel):
    """One named N-d array with its dims, coords and units: an xarray DataArray in JSON form.

    ``values`` is a nested list so that the record survives JSON unchanged; :meth:`array`
    gives it back as numpy.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    dims: list[str]
    values: Any
    units: str = ""
    long_name: str = ""
    coords: dict[str, list[float] | list[str]] = Field(default_factory=dict)
    coord_units: dict[str, str] = Field(default_factory=dict)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=float)

    @classmethod
    def from_array(cls, name: str, dims: list[str], values: np.ndarray, **kw: Any) -> Signal:
        coords = {k: np.asarray(v).tolist() for k, v in kw.pop("coords", {}).items()}
        return cls(
            name=name, dims=dims, values=np.asarray(values, float).tolist(), coords=coords, **kw
        )


class ModalitySpec(BaseModel):
    """What one modality of an instrument returns and what it costs (from ``describe``)."""

    name: str
    signal: str
    dims: list[str]
    shape: list[int]
    units: str
    coord_units: dict[str, str] = Field(default_factory=dict)
    cost_s: float = Field(description="instrument seconds per measurement (unscaled)")


class InstrumentDescription(BaseModel):
    """An instrument agent's answer to ``GET /v1/describe``."""

    id: str
    kind: str
    modalities: list[ModalitySpec]
    move_cost_s_per_mm: float = 0.0
    sample_load_cost_s: float = 0.0
    stage_limits: dict[str, tuple[float, float]]
    frame: str = "stage"
    library: str | None = None
    time_scale: float = 1.0

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(
            f"instrument {self.id!r} has no modality {name!r}; "
            f"it has {[m.name for m in self.modalities]}"
        )


class Measurement(BaseModel):
    """One acquisition: what, where (library and stage frames), when, and the data.

    ``measurement_id`` is the request id the client sent, so a retried request and the store
    agree on identity. ``decision_id`` and ``flow_run_id`` are filled in by the flow.
    """

    measurement_id: str
    instrument: str
    modality: str
    sample: str
    library_x: float
    library_y: float
    stage_x: float
    stage_y: float
    started: float
    ended: float
    signal: Signal
    decision_id: str | None = None
    flow_run_id: str | None = None
    campaign: str | None = None


class HumanInput(BaseModel):
    """What an operator did to a campaign: who, when, what, and the proposal it replaced.

    ``action`` is one of :data:`STEERING_ACTIONS`; ``detail`` holds its arguments (a position,
    a box, a score with its comment, a weight); ``replaced`` is the agent's proposal (a
    :class:`Decision` as a dict) that an accept or override answered, else None.
    """

    model_config = ConfigDict(frozen=True)

    operator: str
    action: str
    at: float = Field(default_factory=time.time)
    detail: dict[str, Any] = Field(default_factory=dict)
    replaced: dict[str, Any] | None = None


#: What an operator can do: answer a review (accept, override), score a measured signal
#: (vote), redirect (seed, exclude, weight, budget, hold, release, explore) or stop.
STEERING_ACTIONS = (
    "accept",
    "override",
    "vote",
    "seed",
    "exclude",
    "weight",
    "budget",
    "hold",
    "release",
    "explore",
    "stop",
)


class Decision(BaseModel):
    """Why a measurement was asked for: enough to replay or audit the choice later.

    A row with an empty ``modality`` asks for no measurement: it records an operator's input
    that is not a position (a vote, an excluded box, a stop), so the decisions table holds
    every human input (:attr:`requests_measurement`).

    The model's training set is stored as a chain, so that a campaign's decisions take space
    linear in its measurements: ``trained_on`` lists the ids the model read since the
    decision named by ``trained_since`` (the whole set when that is None). A campaign of
    20,000 measurements would otherwise store ~2 x 10^8 ids. ``coorch.storage.training_sets``
    resolves a chain (``trained_on_of``).
    """

    decision_id: str = Field(default_factory=lambda: new_id("d"))
    measurement_id: str = Field(
        default_factory=lambda: new_id("m"), description="the request id the measurement will carry"
    )
    instrument: str
    modality: str
    library_x: float
    library_y: float
    policy: str
    model_version: str = ""
    trained_on: list[str] = Field(default_factory=list)
    trained_since: str | None = None
    pending: list[str] = Field(default_factory=list)
    acquisition_value: float = float("nan")
    n_candidates: int = 0
    human_input: HumanInput | None = None
    created: float = Field(default_factory=time.time)
    flow_run_id: str | None = None
    task_run_id: str | None = None
    campaign: str | None = None

    @property
    def requests_measurement(self) -> bool:
        """False for a row that only records an operator's input (see the class docstring)."""
        return bool(self.modality)


class Simulation(BaseModel):
    """One physics simulation a co-navigation campaign ran, and why it ran (theory in the loop).

    The theory-side twin of :class:`Measurement` plus its :class:`Decision`: what was simulated
    (``composition``, ``parameters``), how the run went (``status``, ``attempts``, ``error``,
    ``worker``, ``runtime_s``), what came out (``outputs``: descriptors; ``signal``: the loop,
    dims and coords like a ``pfm_loop`` measurement's) and what the surrogate that asked for it
    had read (``surrogate_version``, ``n_measurements``, ``n_simulations``), so a campaign's
    theory surrogate can be audited or rebuilt from the store alone.

    Only a ``"done"`` run has outputs or a signal: a ``"failed"`` one (its error in ``error``)
    or a ``"dropped"`` one (abandoned by the campaign, e.g. stale or over budget) has neither,
    which the validator enforces so that a reader never mistakes a partial result for a result.
    Times are timezone-aware and kept in UTC.
    """

    model_config = ConfigDict(frozen=True)

    simulation_id: str = Field(default_factory=lambda: new_id("s"))
    campaign: str
    flow_run_id: str | None = None
    requested_at: AwareDatetime
    finished_at: AwareDatetime
    composition: float = Field(description="Sm fraction simulated")
    parameters: dict[str, float] = Field(default_factory=dict, description="theory parameters")
    status: Literal["done", "failed", "dropped"]
    attempts: int = 1
    error: str | None = None
    worker: str | None = None
    runtime_s: float = 0.0
    outputs: dict[str, float] = Field(default_factory=dict, description="descriptors (if done)")
    signal: Signal | None = None
    surrogate_version: str = ""
    acquisition_value: float = float("nan")
    n_measurements: int = Field(0, description="measurements the surrogate had read")
    n_simulations: int = Field(0, description="simulations the surrogate had read")

    @field_validator("requested_at", "finished_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _results_only_when_done(self) -> Simulation:
        if self.status != "done" and (self.outputs or self.signal is not None):
            raise ValueError(f"a {self.status!r} simulation has no outputs and no signal")
        return self
