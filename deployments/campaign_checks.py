"""What ``coorch campaign submit`` refuses before anything moves, and the spec it submits.

A submitted campaign runs later, in another process (the facility's worker), where a refusal
is a failed run in a log nobody watches. Everything knowable at submission is therefore asked
here, with the spec file and the field named: instruments the facility does not have, a store
that cannot be written, a token that cannot be read, a deadline already past, a sample another
campaign holds, a store another campaign writes.

Two halves: :func:`prepare` needs only the spec and ``facility.json`` (no server);
:func:`conflicts` weighs the spec against the campaigns the facility already has (their flow
runs' parameters, the samples registry, the store's own metadata). Both raise ``ValueError``
with the lines a user reads (:func:`coorch.errors.user_errors`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from coorch.deployments.config import CampaignSpec
from coorch.deployments.facility_state import FacilityInfo
from coorch.errors import check_writable, validation_lines


def local_path(location: str) -> str | None:
    """A store location's local path (``file://`` stripped), None for an object-store URL."""
    local = location.removeprefix("file://")
    return None if "://" in local else local


def same_store(a: str, b: str) -> bool:
    """Do two store locations name one store (local paths compared normalised, absolute)?"""
    la, lb = local_path(a), local_path(b)
    if la is None or lb is None:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.normpath(os.path.abspath(la)) == os.path.normpath(os.path.abspath(lb))


def _absolute(spec: CampaignSpec, cwd: Path) -> dict:
    """The spec as JSON with every local path made absolute against ``cwd``: the flow runs in
    the worker's folder, and must find the files the submitter meant."""
    data = spec.model_dump(mode="json")

    def fix(path: str | None) -> str | None:
        return path if path is None or os.path.isabs(path) else str(cwd / path)

    store = local_path(spec.store)
    if store is not None:
        data["store"] = os.path.normpath(fix(store))
    if spec.report:
        data["report"] = fix(spec.report)
    for inst in data["instruments"]:
        inst["token_file"] = fix(inst["token_file"])
    data["steering"]["token_file"] = fix(data["steering"]["token_file"])
    return data


def _check_instruments(spec: CampaignSpec, info: FacilityInfo, where: str, run_dir: Path) -> None:
    """Every instrument of the spec is one of the facility's, by name and URL."""
    agents = {a.name: a for a in info.instruments}
    has = ", ".join(f"{a.name} {a.url}" for a in info.instruments)
    for k, inst in enumerate(spec.instruments):
        agent = agents.get(inst.name)
        if agent is None:
            raise ValueError(
                f"{where}: instruments.{k}.name: {inst.name!r} is not an instrument of the "
                f"facility in {run_dir}\n{where}: the facility has {has}"
            )
        if agent.url.rstrip("/") != inst.url.rstrip("/"):
            raise ValueError(
                f"{where}: instruments.{k}.url: {inst.url} is not where the facility's "
                f"{inst.name} answers ({agent.url})"
            )


def refresh(spec: CampaignSpec, info: FacilityInfo) -> tuple[CampaignSpec, list[str]]:
    """``spec`` with its instruments' URLs (by name) and its Dask scheduler (if it was a
    loopback one: the facility's) where the facility ``info`` serves them now, and what changed:
    a facility that restarted (``coorch down``, ``coorch up``) serves its twins and Dask on
    new ports, and a campaign submitted before it resumes on the new ones."""
    agents = {a.name: a.url for a in info.instruments}
    data, notes = spec.model_dump(mode="json"), []
    for inst in data["instruments"]:
        url = agents.get(inst["name"])
        if url is not None and url.rstrip("/") != inst["url"].rstrip("/"):
            notes.append(f"{inst['name']} now at {url} (was {inst['url']})")
            inst["url"] = url
    dask = spec.dask.address
    loopback = dask is not None and any(h in dask for h in ("127.0.0.1", "localhost"))
    if loopback and dask != info.dask_address:
        notes.append(f"Dask now at {info.dask_address} (was {dask})")
        data["dask"]["address"] = info.dask_address
    return CampaignSpec.model_validate(data), notes


def _check_files(spec: CampaignSpec, where: str) -> None:
    """Token files readable and not empty; a local store's folder creatable and writable."""
    tokens = {f"instruments.{k}.token_file": i.token_file for k, i in enumerate(spec.instruments)}
    tokens["steering.token_file"] = spec.steering.token_file
    for field, path in tokens.items():
        if path is None:
            continue
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ValueError(f"{where}: {field}: cannot read {path}: {reason}") from exc
        if not token:
            raise ValueError(f"{where}: {field}: {path} is empty (it holds the token)")
    store = local_path(spec.store)
    if store is not None:
        check_writable(store, f"{where}: store", folder=True)


def check_deadline(spec: CampaignSpec, where: str, now: dt.datetime | None = None) -> None:
    """A campaign whose deadline has passed would start no measurement: refuse it."""
    now = now or dt.datetime.now(dt.UTC)
    if spec.deadline is not None and spec.deadline <= now:
        raise ValueError(
            f"{where}: deadline: {spec.deadline.isoformat()} has passed "
            f"(now {now.astimezone(spec.deadline.tzinfo).isoformat(timespec='seconds')})"
        )


def prepare(
    spec: CampaignSpec, where: str, info: FacilityInfo, run_dir: Path, cwd: Path | None = None
) -> CampaignSpec:
    """The spec to submit to the facility ``info`` (in ``run_dir``): ``facility`` set to its
    database, local paths absolute; raise ``ValueError`` (lines starting with ``where``, the
    spec file) for what the facility cannot run. Asks no server."""
    if info.facility_db is None:
        raise ValueError(
            f"the facility in {run_dir} has no facility database (started by older code): "
            f"restart it (coorch down --dir {run_dir}; coorch up --dir {run_dir})"
        )
    if spec.facility is not None and spec.facility != info.facility_db:
        raise ValueError(
            f"{where}: facility: {spec.facility} is not the database of the facility in "
            f"{run_dir} ({info.facility_db}); leave it out, submit sets it"
        )
    _check_instruments(spec, info, where, run_dir)
    check_deadline(spec, where)
    data = _absolute(spec, cwd or Path.cwd())
    data["facility"] = info.facility_db
    try:
        ready = CampaignSpec.model_validate(data)
    except ValidationError as exc:  # e.g. one sample for two instruments, now shared
        lines = validation_lines(exc, CampaignSpec)
        raise ValueError("\n".join(f"{where}: {line}" for line in lines)) from exc
    _check_files(ready, where)
    return ready


def conflicts(
    spec: CampaignSpec,
    where: str,
    active: Iterable[tuple[str, CampaignSpec]],
    known: Iterable[tuple[str, CampaignSpec]],
) -> None:
    """Raise ``ValueError`` if ``spec`` would collide with the facility's other campaigns.

    ``active``: (run label, spec) of the runs not finished (scheduled, running, cancelling);
    ``known``: of every run. A campaign runs once at a time (its name keys its instrument
    leases and its share); a sample is in one campaign's hands at a time; a store holds one
    campaign (another name's measurements would become this one's)."""
    samples = set(spec.samples().values())
    for label, other in active:
        if other.name == spec.name:
            raise ValueError(
                f"{where}: name: campaign {spec.name!r} is already active as run {label}: "
                "cancel it, or wait for it to end"
            )
        shared = sorted(samples & set(other.samples().values()))
        if shared:
            raise ValueError(
                f"{where}: instruments: sample {shared[0]} is held by campaign "
                f"{other.name!r} (run {label}); a sample is in one campaign at a time"
            )
    for label, other in known:
        if other.name != spec.name and same_store(other.store, spec.store):
            raise ValueError(
                f"{where}: store: {spec.store} belongs to campaign {other.name!r} (run "
                f"{label}); choose another store"
            )
    _check_store_owner(spec, where)
    _check_registry(spec, where)


def _check_store_owner(spec: CampaignSpec, where: str) -> None:
    """A local store that exists already belongs to the campaign named in its metadata (one
    written by ``coorch run`` is no flow run of the facility's)."""
    store = local_path(spec.store)
    if store is None or not Path(store).exists():
        return
    from coorch.storage import CampaignStore

    try:
        with CampaignStore.open(store, create=False) as opened:
            owner = opened.metadata().get("campaign")
    except FileNotFoundError:  # an empty folder: the campaign creates its store in it
        return
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: store: {spec.store}: {exc}") from exc
    if owner is not None and owner != spec.name:
        raise ValueError(
            f"{where}: store: {spec.store} holds campaign {owner!r}; choose another store"
        )


def _check_registry(spec: CampaignSpec, where: str) -> None:
    """A sample the facility's registry says another campaign holds (a campaign holds its
    samples while it runs, also one started outside this facility's worker)."""
    from coorch.storage.samples import SampleRegistry, UnknownSample

    assert spec.facility is not None  # prepare() set it
    with SampleRegistry(spec.facility) as registry:
        for sample in sorted(set(spec.samples().values())):
            try:
                holder = registry.get(sample).held_by
            except UnknownSample:
                continue  # the campaign registers it as it starts
            if holder is not None and holder != spec.name:
                raise ValueError(
                    f"{where}: instruments: sample {sample} is held by campaign {holder!r} "
                    "(the facility's sample registry); a sample is in one campaign at a time"
                )
