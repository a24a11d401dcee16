"""A facility's folder: the files in it, who holds it, and what a running facility answers on.

Liveness is an advisory lock on ``<dir>/facility.lock`` held by the supervisor for its whole
life: the kernel releases it when the process dies however it dies, so a stale pid file can
never make ``up`` believe a dead facility is running (or ``down`` signal a reused pid).
Posix only (``fcntl``).

Files in ``<dir>``: ``facility.json`` (:class:`FacilityInfo`, written once all are healthy,
removed on stop), ``campaign.yaml`` (a ready :class:`~coorch.deployments.config.CampaignSpec`),
``agent.token`` (0600), ``facility.log``, ``worker.log`` (the process worker that runs submitted
campaigns, and their output), ``facility.db`` (the facility database: sample registry and
instrument arbiter), ``.prefect/`` (the server's state and log), ``campaigns/`` (the stores).

Both sides use this module: the supervisor writes these files, ``up`` and ``down`` read them.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field, ValidationError

STARTUP_ERROR = "facility did not start:"  # the supervisor's last words, which `up` repeats


class AgentInfo(BaseModel):
    """A running agent, as ``facility.json`` lists it."""

    name: str
    kind: str
    modality: str
    url: str


class FacilityInfo(BaseModel):
    """``<dir>/facility.json``: where everything of a running facility answers."""

    prefect_api_url: str
    ui_url: str
    dask_address: str
    library: str
    instruments: list[AgentInfo]
    token_file: str
    steer_token_file: str
    campaign_spec: str
    log_file: str
    supervisor_pid: int
    started_at: float = Field(default_factory=time.time)
    #: The facility database's URL (``sqlite:////abs/<dir>/facility.db``): a campaign's
    #: ``facility`` field, so campaigns share the instruments through its arbiter.
    facility_db: str | None = None
    #: The process worker's log (``coorch campaign submit`` runs go there).
    worker_log: str | None = None


class FacilityError(RuntimeError):
    """``up`` or ``down`` could not do its job; the message is one line for the user."""


class FacilityInputError(FacilityError, ValueError):
    """What the user gave ``up`` or ``down`` is wrong (a port in use, a config or a
    facility.json that cannot be read), found before anything started: ``coorch up`` says so
    with status 2, where a facility that fails to start is status 1."""


def facility_paths(run_dir: Path) -> dict[str, Path]:
    """Every file of the facility in ``run_dir``, by role (one place names them)."""
    d = run_dir.resolve()
    return {
        "info": d / "facility.json",
        "lock": d / "facility.lock",
        "log": d / "facility.log",
        "token": d / "agent.token",
        "steer_token": d / "steer.token",
        "spec": d / "campaign.yaml",
        "prefect": d / ".prefect",
        "stores": d / "campaigns",
        "db": d / "facility.db",
        "worker_log": d / "worker.log",
    }


def hold_lock(path: Path, wait_s: float = 3.0) -> IO[str]:
    """Take the facility lock for this process's lifetime and write our pid into it. Waits a
    little: a ``running_pid`` check holds a shared lock for an instant."""
    f = path.open("a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise FacilityError(f"a facility already runs here (lock {path})") from None
            time.sleep(0.05)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def running_pid(run_dir: Path) -> int | None:
    """The supervisor's pid if one holds ``run_dir``'s lock (starting or up), else None."""
    lock = facility_paths(run_dir)["lock"]
    if not lock.exists():
        return None
    with lock.open() as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it; closing the file releases ours
        except BlockingIOError:
            pass
        for _ in range(50):  # the holder writes its pid right after locking
            f.seek(0)
            text = f.read().strip()
            if text.isdigit():
                return int(text)
            time.sleep(0.02)
    raise FacilityError(f"{lock} is held but names no pid")


def read_info(run_dir: Path) -> FacilityInfo | None:
    """``facility.json`` if present (a facility is up, or one died without cleaning up)."""
    path = facility_paths(run_dir)["info"]
    try:
        return FacilityInfo.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a facility"
        raise FacilityInputError(
            f"{path}: cannot read it ({why}); `coorch down --dir {run_dir}` removes it"
        ) from exc


def write_token(path: Path) -> None:
    """A fresh control token, never readable by others (created 0600, not chmod-ed later)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(16))
    path.chmod(0o600)  # an older file keeps its mode through O_CREAT


def write_atomic(path: Path, text: str) -> None:
    """Readers (``up`` polling for facility.json) never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
