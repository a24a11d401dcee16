"""How operators steer a running campaign: the ``steering`` part of a
:class:`~coorch.deployments.config.CampaignSpec`, in a module of its own to keep that one short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Models of a spec: unknown keys refused (see deployments/config.py), NaN and inf too.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class SteeringConfig(BaseModel):
    """How operators steer a running campaign (``coorch steer``, the Prefect UI).

    Redirects, votes and stop are always accepted from holders of the steering token when one
    is set; ``mode`` says whether decisions also wait for a review.
    """

    model_config = STRICT

    mode: Literal["off", "review", "votes"] = Field(
        "off",
        description="off: the agent alone (redirects still accepted when a token is set); "
        "review: a decision waits for the operator (accept, override, stop), with the agent's "
        "proposal as the answer after deadline_s; votes: never waits, operators score "
        "measured signals and the agent also seeks what they score high",
    )
    every: int = Field(1, ge=1, le=1_000_000, description="review every N-th decision")
    below: float | None = Field(
        None,
        description="review only decisions whose acquisition value is below this (None: all)",
    )
    deadline_s: float = Field(
        300.0,
        gt=0,
        le=30 * 86400.0,
        description="seconds a review waits for an answer before the proposal runs (30 days "
        "at most)",
    )
    target_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="once votes exist: 0 seeks knowledge only, 1 only what operators score "
        "high; changeable mid-run (coorch steer explore)",
    )
    token_file: Path | None = Field(
        None,
        description="file holding the campaign's steering token: only its holders may steer "
        "(None: nobody may)",
    )

    @model_validator(mode="after")
    def _steering_needs_a_token(self) -> SteeringConfig:
        if self.mode != "off" and self.token_file is None:
            raise ValueError(
                f"steering.mode={self.mode!r} needs steering.token_file: only holders of the "
                "campaign's steering token may steer"
            )
        return self

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"steering.token_file: cannot read {self.token_file}: {exc}") from exc
