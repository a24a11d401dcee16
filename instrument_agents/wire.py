"""What goes over the wire: the bodies the agent takes and the answers it gives.

The request bodies are strict on purpose, since each is a command to an instrument: an unknown
field is refused rather than ignored (``{"x_um": 5}`` must not move anywhere), numbers must be
finite, ids must be plain names (they end up in logs and store paths), lists and lifetimes are
bounded. The answer models document what the routes return (the routes return plain dicts; the
schema fuzzer checks that the two agree).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: A finite JSON number: ``true``, ``"1.5"``, NaN, inf and ints beyond a double are refused
#: (pydantic's lax mode would read ``{"y": false}`` as y = 0 and move there).
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]

#: Sample and request ids become names in logs and stores: no path separators, no dot first.
SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
#: The largest lease lifetime (s) one may ask for; a lease that never lapses would lock out all.
MAX_TTL_S = 86_400.0
MAX_FIDUCIALS = 1_000


class _Body(BaseModel):
    # An unknown field is refused, not ignored: {"x_um": ...} must not move to x = default.
    model_config = ConfigDict(extra="forbid")


class MoveBody(_Body):
    x: Number = Field(description="target x, mm")
    y: Number = Field(description="target y, mm")
    frame: Literal["stage", "library"] = "library"
    units: Literal["mm"] = Field("mm", description="positions are in mm; nothing else is taken")


class MeasureBody(_Body):
    modality: str = Field(max_length=128, description="one of describe().modalities")
    request_id: str | None = Field(None, pattern=SAFE_ID, description="same id, same answer")
    params: dict[str, Any] = Field(default_factory=dict)


class SampleBody(_Body):
    sample_id: str = Field(pattern=SAFE_ID)


class LeaseBody(_Body):
    ttl_s: Number | None = Field(None, gt=0, le=MAX_TTL_S)
    #: Makes a retried take safe: the same id gets the same grant back (until the lease is used).
    request_id: str | None = Field(None, max_length=128)


Point = tuple[Number, Number]


class FrameBody(_Body):
    library: list[Point] = Field(min_length=3, max_length=MAX_FIDUCIALS)
    stage: list[Point] = Field(min_length=3, max_length=MAX_FIDUCIALS)


# ---------------------------------------------------------------------- answers


class Position(BaseModel):
    stage_x: float
    stage_y: float
    library_x: float
    library_y: float


class LeaseView(BaseModel):
    """Who holds the instrument; never the lease id."""

    held: bool
    holder: str | None
    token_name: str | None
    since: float | None
    ttl_s: float | None = None
    expires_in_s: float


class LeaseGrant(LeaseView):
    lease_id: str = Field(description="send it as X-Lease-Id; keep it like a token")


class FrameView(BaseModel):
    matrix: list[list[float]]
    offset: list[float]
    residual_mm: float


class StatusView(Position):
    """The driver's status (its own keys kept) plus position, lease and frame."""

    model_config = ConfigDict(extra="allow")
    sample: str | None
    lease: LeaseView
    frame: FrameView


class Health(BaseModel):
    status: Literal["ok"]


class SampleView(BaseModel):
    sample: str | None


class AbortView(BaseModel):
    aborted: bool


class ResetView(BaseModel):
    fault: str | None
