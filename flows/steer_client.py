"""The operator's side of steering: find steerable campaigns, answer reviews, send commands.

What ``coorch steer`` calls (and a notebook may): every function talks to the Prefect API named
by ``PREFECT_API_URL``. The campaign checks the token again and is the authority; the checks
here only make a wrong token or a stale proposal fail fast, with a readable message.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.flow_runs import resume_flow_run
from prefect.input import send_input

from coorch.flows.steering import (
    COMMAND_PREFIX,
    FINGERPRINT_TAG,
    STEERABLE_TAG,
    ReviewAnswer,
    SteerCommand,
    command_proof,
    fingerprint,
)


class SteeringError(Exception):
    """What an operator did cannot be done (unknown run, wrong token, nothing to answer)."""


@dataclasses.dataclass
class Proposal:
    """A review waiting for an answer: its run, and the agent's proposal."""

    review_run: FlowRun
    decision: dict[str, Any]

    @property
    def instrument(self) -> str:
        return self.decision["instrument"]


def steerable_runs() -> list[FlowRun]:
    """Running campaigns that accept steering, newest first."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[STEERABLE_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            ),
            sort=FlowRunSort.START_TIME_DESC,
        )


def find_run(run: str) -> FlowRun:
    """A steerable campaign's flow run by id or by name."""
    with get_client(sync_client=True) as client:
        try:
            found = [client.read_flow_run(UUID(run))]
        except ValueError:
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run]))
            )
        except Exception:  # noqa: BLE001 - a well-formed id nobody knows
            found = []
    if not found:
        raise SteeringError(f"no flow run {run!r} (coorch steer list shows steerable runs)")
    r = found[0]
    if STEERABLE_TAG not in r.tags:
        raise SteeringError(f"flow run {r.name} ({r.id}) is not a steerable campaign")
    if r.state is None or r.state.type != StateType.RUNNING:
        raise SteeringError(f"campaign {r.name} is not running ({r.state and r.state.name})")
    return r


def check_token(run: FlowRun, token: str) -> None:
    """Refuse a token whose fingerprint is not the campaign's."""
    want = next(t[len(FINGERPRINT_TAG) :] for t in run.tags if t.startswith(FINGERPRINT_TAG))
    if fingerprint(token) != want:
        raise SteeringError(f"refused: wrong steering token for campaign {run.name}")


def open_proposals(run: FlowRun) -> list[Proposal]:
    """The campaign's proposals waiting for an answer, oldest first."""
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
            ),
            sort=FlowRunSort.START_TIME_ASC,
        )
    return [Proposal(c, c.parameters["proposal"]) for c in children if c.name.startswith("review")]


def answer(
    run: FlowRun, token: str, operator: str, *, of: str | None = None, **fields: Any
) -> Proposal:
    """Answer the oldest open proposal (of instrument ``of``, if given) with ``fields`` of a
    :class:`ReviewAnswer` (action, x, y, instrument); returns the proposal answered."""
    check_token(run, token)
    pending = [p for p in open_proposals(run) if of in (None, p.instrument)]
    if not pending:
        which = f" for {of}" if of else ""
        raise SteeringError(f"campaign {run.name} has no proposal waiting{which}")
    p = pending[0]
    reply = ReviewAnswer(operator=operator, token=token, **fields)
    try:
        resume_flow_run(p.review_run.id, run_input=reply.model_dump())
    except Exception as exc:  # noqa: BLE001 - answered meanwhile (deadline, another operator)
        raise SteeringError(f"proposal {p.decision['measurement_id']} was answered: {exc}") from exc
    return p


def send(run: FlowRun, token: str, operator: str, action: str, **fields: Any) -> SteerCommand:
    """Send a redirect or a vote to the campaign; it applies it at the next decision.

    The command carries a proof that the sender holds the token, not the token: a command that
    arrives as the campaign ends is never read nor deleted, and stays in Prefect's database."""
    check_token(run, token)
    cmd = SteerCommand(action=action, operator=operator, nonce=secrets.token_hex(16), **fields)
    cmd.proof = command_proof(token, run.id, cmd)
    send_input(cmd, flow_run_id=run.id, key_prefix=COMMAND_PREFIX)
    return cmd
