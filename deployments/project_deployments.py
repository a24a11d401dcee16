"""Every deployment ``prefect.yaml`` declares, registered on the Prefect server at
``PREFECT_API_URL``: what ``prefect deploy --all`` does for this project, without its prompts.

``prefect.yaml`` is the project's list of deployments, one per flow; ``coorch up`` registers
only ``coorchestrate`` (:mod:`~coorch.deployments.work_pool`), for ``coorch campaign submit``.
This registers them all the same way: module-path entrypoints (the flows load from the
installed package, no code pulled, no image built), process work pools created if missing,
the file's pull steps (``$COORCH_HOME`` as the working directory) and its parameters as the
deployments' defaults. The flow's name and its parameters' schema are read from the flow's
source as ``prefect deploy`` reads them (``load_flow_arguments_from_entrypoint``,
``parameter_schema_from_entrypoint``): this layer may not import ``coorch.flows``, though the
schema costs the flow module's imports (torch: seconds).

A key of a deployment entry that this does not carry out (``schedules``, ``build``, ...) is
refused, not ignored: a deployment registered without what its file says would surprise later.
``{{ ... }}`` templates are left as written (the worker fills the pull step's at run time).

``python -m coorch.deployments.project_deployments [prefect.yaml]`` registers them and prints
``flow/deployment`` and the entrypoint of each.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import yaml

from coorch.deployments.work_pool import QUEUE, create_deployment

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

#: The keys of a deployment entry that :func:`register_project` carries out.
ENTRY_KEYS = frozenset(
    {"name", "entrypoint", "description", "tags", "work_pool", "parameters", "pull"}
)
WORK_POOL_KEYS = frozenset({"name", "work_queue_name", "job_variables"})


class ProjectError(ValueError):
    """``prefect.yaml`` declares something this cannot register; the message names it."""


@dataclass(frozen=True)
class ProjectDeployment:
    """One deployment entry of ``prefect.yaml``, as it will be registered."""

    name: str
    entrypoint: str
    work_pool: str
    work_queue: str = QUEUE
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    pull_steps: list[dict] = field(default_factory=list)
    job_variables: dict = field(default_factory=dict)

    @property
    def flow(self) -> str:
        """The flow's name (its ``@flow(name=...)``), read from its source without importing
        it; Prefect names the deployment ``flow/name``."""
        from prefect.flows import load_flow_arguments_from_entrypoint

        return load_flow_arguments_from_entrypoint(self.entrypoint, {"name"})["name"]

    def schema(self) -> dict:
        """The flow's parameter schema, as ``prefect deploy`` computes it."""
        from prefect.utilities.callables import parameter_schema_from_entrypoint

        return parameter_schema_from_entrypoint(self.entrypoint).model_dump(exclude_unset=True)


def read_project(path: Path | str = "prefect.yaml") -> list[ProjectDeployment]:
    """The deployments ``path`` declares; :class:`ProjectError` names what is malformed."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("deployments") or []
    if not isinstance(entries, list) or not entries:
        raise ProjectError(f"{path}: no `deployments` list")
    pull = data.get("pull") or []
    out = [_entry(path, i, entry, pull) for i, entry in enumerate(entries)]
    names = [d.name for d in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ProjectError(f"{path}: deployments named twice: {', '.join(twice)}")
    return out


def _entry(path: Path, i: int, entry: object, pull: list[dict]) -> ProjectDeployment:
    where = f"{path}: deployments.{i}"
    if not isinstance(entry, dict):
        raise ProjectError(f"{where}: not a mapping")
    unknown = sorted(set(entry) - ENTRY_KEYS)
    if unknown:
        raise ProjectError(f"{where}: {', '.join(unknown)} not supported (only {_keys()})")
    for key in ("name", "entrypoint"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ProjectError(f"{where}.{key}: missing")
    if ":" in entry["entrypoint"]:
        raise ProjectError(
            f"{where}.entrypoint: {entry['entrypoint']!r} is a file path; name the flow by "
            "module path (coorch.flows.x.x): flows load from the installed package"
        )
    pool = entry.get("work_pool") or {}
    if not isinstance(pool, dict) or not pool.get("name"):
        raise ProjectError(f"{where}.work_pool.name: missing")
    unknown = sorted(set(pool) - WORK_POOL_KEYS)
    if unknown:
        raise ProjectError(f"{where}.work_pool: {', '.join(unknown)} not supported")
    return ProjectDeployment(
        name=entry["name"],
        entrypoint=entry["entrypoint"],
        work_pool=pool["name"],
        work_queue=pool.get("work_queue_name") or QUEUE,
        description=entry.get("description"),
        tags=list(entry.get("tags") or []),
        parameters=dict(entry.get("parameters") or {}),
        pull_steps=list(entry.get("pull") or pull),
        job_variables=dict(pool.get("job_variables") or {}),
    )


def _keys() -> str:
    return ", ".join(sorted(ENTRY_KEYS))


def register_project(
    path: Path | str = "prefect.yaml", client: SyncPrefectClient | None = None
) -> dict[str, UUID]:
    """Register every deployment of ``path``; return ``{"flow/name": deployment id}``.

    ``client``: a sync Prefect client; None opens one on ``PREFECT_API_URL``."""
    from prefect.client.orchestration import get_client

    deployments = read_project(path)
    if client is None:
        with get_client(sync_client=True) as own:
            return register_project(path, own)
    out = {}
    for d in deployments:
        flow = d.flow
        out[f"{flow}/{d.name}"] = create_deployment(
            client,
            flow=flow,
            name=d.name,
            entrypoint=d.entrypoint,
            schema=d.schema(),
            work_pool=d.work_pool,
            work_queue=d.work_queue,
            description=d.description,
            parameters=d.parameters,
            tags=d.tags,
            pull_steps=d.pull_steps,
            job_variables=d.job_variables,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m coorch.deployments.project_deployments [prefect.yaml]``."""
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path("prefect.yaml")
    try:
        deployments = read_project(path)
        registered = register_project(path)
    except (ValueError, OSError, yaml.YAMLError) as exc:  # ProjectError, a module not found
        print(f"project_deployments: {exc}", file=sys.stderr)
        return 2
    for d, (full, deployment_id) in zip(deployments, registered.items(), strict=True):
        print(f"{full} ({deployment_id}): {d.entrypoint} in work pool {d.work_pool}")
    for pool in sorted({d.work_pool for d in deployments}):
        print(f"run a worker: prefect worker start --pool {pool} --type process (COORCH_HOME set)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
