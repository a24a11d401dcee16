"""The ``coorchestrate`` deployment and the process work pool that runs it.

A campaign submitted to a facility (``coorch campaign submit``) is a flow run of one deployment,
``coorchestrate/coorchestrate``, in the process work pool ``coorch-process``: a process worker
beside the instruments (``prefect worker start --pool coorch-process --type process``; ``coorch
up`` starts one) runs each in its own process, so campaigns run side by side, and a cancelled
one is a process the worker stops.

Registered with Prefect's own client (what ``prefect deploy`` and ``RunnerDeployment.apply``
call), not by loading the flow: this layer may not import ``coorch.flows``, and loading it
means importing torch in whoever registers (the facility's supervisor, seconds at every ``up``).
The entrypoint is a module path (``coorch.flows.coorchestrate.coorchestrate``: Prefect's
``load_flow_from_entrypoint`` imports it from the installed package), so no code is pulled and
no image built; the one pull step sets the working directory to ``$COORCH_HOME`` on the worker,
where a spec's relative paths are meant (``prefect.yaml`` registers the same). The deployment
has no concurrency limit: instruments shared by campaigns are arbitrated per measurement
(:mod:`~coorch.deployments.arbiter`), not per campaign.

``python -m coorch.deployments.work_pool`` registers both on the server at ``PREFECT_API_URL``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING
from uuid import UUID

from coorch.deployments.config import CampaignSpec

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

POOL = "coorch-process"
QUEUE = "default"
FLOW = "coorchestrate"
DEPLOYMENT = "coorchestrate"
#: ``flow/deployment``, as Prefect names a deployment (``read_deployment_by_name``).
DEPLOYMENT_PATH = f"{FLOW}/{DEPLOYMENT}"
ENTRYPOINT = "coorch.flows.coorchestrate.coorchestrate"
#: The worker's environment variable naming the folder a flow run works in.
HOME_ENV = "COORCH_HOME"
PULL_STEPS = [
    {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $COORCH_HOME }}"}}
]
DESCRIPTION = "Co-orchestrated multi-instrument campaign (parameters - a CampaignSpec)."


def _flow_signature(spec: CampaignSpec) -> None:
    """The signature of ``coorch.flows.coorchestrate.coorchestrate`` (tests check they agree),
    whose parameter schema Prefect's UI draws its run form from."""


def parameter_schema() -> dict:
    """The deployment's parameter schema, as ``prefect deploy`` would compute it from the flow,
    from its signature alone (config only: no torch)."""
    from prefect.utilities.callables import parameter_schema as schema_of

    return schema_of(_flow_signature).model_dump(exclude_unset=True)


def ensure_work_pool(client: SyncPrefectClient, name: str = POOL) -> None:
    """Create the process work pool ``name`` if the server lacks it (with the process
    worker's default job template, as ``prefect work-pool create --type process`` does); one
    of another type is refused rather than silently used."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        template = ProcessWorker.get_default_base_job_template()
        with contextlib.suppress(ObjectAlreadyExists):  # created meanwhile by another
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )
        return
    if pool.type != "process":
        raise RuntimeError(f"work pool {name!r} exists with type {pool.type!r}, not 'process'")


def create_deployment(
    client: SyncPrefectClient,
    *,
    flow: str,
    name: str,
    entrypoint: str,
    schema: dict,
    work_pool: str = POOL,
    work_queue: str = QUEUE,
    description: str | None = None,
    parameters: dict | None = None,
    tags: list[str] | None = None,
    pull_steps: list[dict] | None = None,
    job_variables: dict | None = None,
) -> UUID:
    """Create (or update: Prefect upserts by flow and name) the deployment ``flow/name`` of
    the module-path ``entrypoint`` in the process pool ``work_pool``, creating the pool first
    if needed; return the deployment's id. ``schema``: its parameters' OpenAPI schema, which
    the UI draws its run form from. No concurrency limit (see the module docstring)."""
    ensure_work_pool(client, work_pool)
    flow_id = client.create_flow_from_name(flow)
    return client.create_deployment(
        flow_id=flow_id,
        name=name,
        description=description,
        work_pool_name=work_pool,
        work_queue_name=work_queue,
        entrypoint=entrypoint,
        pull_steps=PULL_STEPS if pull_steps is None else pull_steps,
        parameters=parameters or {},
        parameter_openapi_schema=schema,
        # the flow validates its spec (and ``coorch campaign submit`` before it); the
        # server's JSON-schema check would only repeat it, less readably
        enforce_parameter_schema=False,
        job_variables=job_variables or {},
        concurrency_limit=None,
        tags=tags or [],
    )


def register_coorchestrate(client: SyncPrefectClient | None = None) -> UUID:
    """Create (or update) the ``coorchestrate`` deployment in :data:`POOL`, creating the pool
    first if needed; return the deployment's id.

    ``client``: a sync Prefect client; None opens one on ``PREFECT_API_URL``."""
    from prefect.client.orchestration import get_client

    if client is None:
        with get_client(sync_client=True) as own:
            return register_coorchestrate(own)
    return create_deployment(
        client,
        flow=FLOW,
        name=DEPLOYMENT,
        entrypoint=ENTRYPOINT,
        schema=parameter_schema(),
        description=DESCRIPTION,
        tags=["coorch"],
    )


def worker_command(name: str) -> list[str]:
    """The process worker a facility runs for :data:`POOL` (``prefect`` beside this Python)."""
    from pathlib import Path

    prefect = Path(sys.executable).with_name("prefect")
    return [str(prefect), "worker", "start", "--pool", POOL, "--type", "process", "--name", name]


def main() -> int:
    """``python -m coorch.deployments.work_pool``: register on ``PREFECT_API_URL``."""
    deployment_id = register_coorchestrate()
    print(f"deployment {DEPLOYMENT_PATH} ({deployment_id}) in work pool {POOL}")
    print(f"run a worker: prefect {' '.join(worker_command('coorch-worker')[1:])} ({HOME_ENV} set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
