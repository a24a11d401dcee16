"""A facility's campaigns as Prefect sees them: flow runs of the ``coorchestrate`` deployment.

What ``coorch campaign`` asks the facility's Prefect server (the one in ``facility.json``, not
whatever ``PREFECT_API_URL`` says: ``--dir`` names the facility). A campaign's spec is its
flow run's ``spec`` parameter, its owner and priority are also tags (``owner:alice``,
``priority:5``: the UI filters by tag), and a resume is a new flow run with the same
parameters: the flow continues from the store, which says what is measured already.

Errors a user can act on (no server, an unknown or ambiguous run, a run not of this
facility's deployment) are :class:`CampaignRunError`, a ``ValueError`` with readable lines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from pydantic import ValidationError

from coorch.deployments.campaign_checks import local_path
from coorch.deployments.config import CampaignSpec
from coorch.deployments.facility_state import FacilityInfo
from coorch.deployments.work_pool import DEPLOYMENT_PATH

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

#: States of a flow run that may still measure (the worker has it, or will).
ACTIVE = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
#: Flow runs per page the server returns (its maximum).
_PAGE = 200


class CampaignRunError(ValueError):
    """What ``coorch campaign`` cannot do, in one or two lines for the user."""


@contextlib.contextmanager
def facility_client(info: FacilityInfo, run_dir: Path) -> Iterator[SyncPrefectClient]:
    """A sync Prefect client on the facility's server; a server that does not answer is a
    :class:`CampaignRunError` naming it and ``coorch up``."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = info.prefect_api_url
    try:
        with (
            temporary_settings(updates={PREFECT_API_URL: url}),
            get_client(sync_client=True) as client,
        ):
            yield client
    except httpx.TransportError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CampaignRunError(
            f"cannot reach the facility's Prefect server at {url}: {reason}\n"
            f"(is the facility up? start it with coorch up --dir {run_dir})"
        ) from exc
    except httpx.HTTPStatusError as exc:
        raise CampaignRunError(
            f"the facility's Prefect server at {url} answered {exc.response.status_code}: "
            f"{' '.join(exc.response.text.split())[:200]}"
        ) from exc


def deployment_id(client: SyncPrefectClient, run_dir: Path) -> UUID:
    """The id of the facility's ``coorchestrate`` deployment (``coorch up`` registers it)."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(DEPLOYMENT_PATH).id
    except ObjectNotFound:
        raise CampaignRunError(
            f"the facility in {run_dir} has no deployment {DEPLOYMENT_PATH}: restart it "
            f"(coorch down --dir {run_dir}; coorch up --dir {run_dir})"
        ) from None


def campaign_runs(
    client: SyncPrefectClient, deployment: UUID, *, active_only: bool = False
) -> list[FlowRun]:
    """Every flow run of the deployment (or only those in :data:`ACTIVE` states), newest
    first."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ACTIVE)))
    filt = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment]),
        state=state if active_only else None,
    )
    runs: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(flow_run_filter=filt, limit=_PAGE, offset=len(runs))
        runs.extend(page)
        if len(page) < _PAGE:
            break
    return sorted(runs, key=lambda r: r.created or 0, reverse=True)


def spec_of(run: FlowRun) -> CampaignSpec | None:
    """The campaign a flow run runs (its ``spec`` parameter), None if it does not read as a
    spec of this code's (a newer spec, or not a campaign)."""
    try:
        return CampaignSpec.model_validate(run.parameters.get("spec"))
    except (ValidationError, TypeError):
        return None


def short(run: FlowRun) -> str:
    """A run's id as ``coorch campaign`` shows it: its first 8 hex digits."""
    return str(run.id)[:8]


def label(run: FlowRun) -> str:
    return f"{short(run)} ({run.name})"


def state_name(run: FlowRun) -> str:
    return run.state.name if run.state is not None else "?"


def is_active(run: FlowRun) -> bool:
    return run.state is not None and run.state.type.value in ACTIVE


def find_run(client: SyncPrefectClient, deployment: UUID, ref: str) -> FlowRun:
    """The deployment's flow run named by ``ref``: its id, an unambiguous prefix of it (4
    characters at least), its name, or else a campaign's name (its newest run: a flow run is
    renamed as it starts, a campaign keeps its name across resumes)."""
    ref = ref.strip()
    runs = campaign_runs(client, deployment)
    exact = [r for r in runs if str(r.id) == ref.lower() or r.name == ref]
    prefix = [r for r in runs if str(r.id).startswith(ref.lower())] if len(ref) >= 4 else []
    found = exact or prefix
    if not found:
        found = [r for r in runs if (s := spec_of(r)) is not None and s.name == ref][:1]
    if len(found) == 1:
        return found[0]
    if not found:
        raise CampaignRunError(
            f"no campaign run {ref!r} in this facility (coorch campaign list shows them; "
            "an id prefix needs 4 characters at least)"
        )
    shown = ", ".join(label(r) for r in found[:4])
    raise CampaignRunError(f"{ref!r} names {len(found)} runs ({shown}): give more of the id")


def _run_name(spec: CampaignSpec) -> str:
    """The name the flow gives its run (``flows.coorchestrate.run_name``'s pattern)."""
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def tags(spec: CampaignSpec) -> list[str]:
    return [f"owner:{spec.owner}", f"priority:{spec.priority}"]


def create_run(
    client: SyncPrefectClient, deployment: UUID, parameters: dict, spec: CampaignSpec
) -> FlowRun:
    """A new flow run of the deployment with ``parameters`` (``{"spec": ...}``), tagged with
    the campaign's owner and priority; the worker picks it up."""
    return client.create_flow_run_from_deployment(
        deployment, parameters=parameters, name=_run_name(spec), tags=tags(spec)
    )


def cancel_run(client: SyncPrefectClient, run: FlowRun) -> str:
    """Ask for ``run``'s cancellation (Prefect's Cancelling state: its worker stops the
    process; a run no worker has taken yet is cancelled at once). Returns what the server
    made of it: its state's name."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    result = client.set_flow_run_state(run.id, State(type=StateType.CANCELLING))
    if result.status.value == "ABORT":
        reason = result.details.reason if result.details else "refused"
        raise CampaignRunError(f"the server refused to cancel {label(run)}: {reason}")
    return client.read_flow_run(run.id).state.name


def wait_final(client: SyncPrefectClient, run: FlowRun, timeout_s: float) -> FlowRun:
    """``run`` as it is once final, or as it is after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.read_flow_run(run.id)
        if (run.state is not None and run.state.is_final()) or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def measured(store: str) -> int | None:
    """How many measurements a local store holds now (its committed and journaled records);
    None for a remote store, one not created yet, or one that cannot be read."""
    path = local_path(store)
    if path is None or not Path(path).exists():
        return None
    from coorch.storage import CampaignStore

    try:
        with CampaignStore.open(path, create=False) as opened:
            return len(opened.measurement_ids())
    except (OSError, ValueError):
        return None
