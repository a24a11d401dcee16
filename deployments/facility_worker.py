"""The facility's process worker: what runs the campaigns submitted with ``coorch campaign``.

``prefect worker start --pool coorch-process --type process``, a child of the supervisor with
the facility's ``PREFECT_API_URL``, run from the folder ``coorch up`` was run in (``$COORCH_HOME``
for the deployment's pull step: a spec's relative paths mean the same to the flow as to the
shell that started the facility). Each flow run it picks up is a process of its own; its output
and the worker's go to ``<dir>/worker.log``.

Why its stop also stops its flow runs: Prefect starts each flow run in a process group of its
own, so neither the worker's exit nor a signal to its group reaches them, and a campaign left
running after ``coorch down`` would hold its instruments with no server to report to. They are
stopped as a cancel stops them (SIGTERM, then SIGKILL); the store is crash-safe, and ``coorch
campaign resume`` continues from it. Their flow runs would then stay Running in the server's
database for ever (and ``resume`` refuses a campaign that is still active), so the runs no
worker runs any more are marked Crashed (:func:`crash_orphans`) as the facility stops, and as
it starts again (a supervisor killed with -9 stopped nothing politely).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path

import psutil

from coorch.deployments.facility_state import FacilityError
from coorch.deployments.prefect_server import die_with_parent
from coorch.deployments.work_pool import DEPLOYMENT_PATH, HOME_ENV, POOL, worker_command

LOG = logging.getLogger("coorch.facility")

#: How often the worker asks for runs to start (Prefect's default is 10 s): a submitted
#: campaign starts within this; the server's load is one query per interval.
QUERY_SECONDS = 2


def spawn_worker(name: str, api_url: str, log_path: Path, home: Path) -> subprocess.Popen:
    """Start the worker ``name`` for :data:`~coorch.deployments.work_pool.POOL` on the server
    at ``api_url``; flow runs work in ``home``. Call it before any thread starts
    (``preexec_fn``: see :mod:`~coorch.deployments.facility_services`)."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        HOME_ENV: str(home),
        "PREFECT_WORKER_QUERY_SECONDS": str(QUERY_SECONDS),
        # never `uv run` a flow in a project it finds above its folder: it runs in this venv
        "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "false",
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            worker_command(name),
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )


def await_worker(proc: subprocess.Popen, name: str, log_path: Path, timeout_s: float) -> None:
    """Wait until the worker ``name`` has reported to its pool (it then polls for runs), or
    raise :class:`FacilityError` if it exits or is not online within ``timeout_s``."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FacilityError(
                    f"the process worker exited (code {proc.returncode}); see {log_path}"
                )
            with contextlib.suppress(Exception):  # the pool may not exist for a moment
                workers = client.read_workers_for_work_pool(POOL)
                if any(w.name == name and w.status == "ONLINE" for w in workers):
                    LOG.info("process worker %s for pool %s (pid %d)", name, POOL, proc.pid)
                    return
            time.sleep(0.25)
    raise FacilityError(f"the process worker was not online within {timeout_s:g} s ({log_path})")


def crash_orphans(before: float) -> int:
    """:func:`mark_orphans_crashed`; a server that does not answer is logged, not raised (the
    facility is stopping, or will find them at its next start)."""
    try:
        return mark_orphans_crashed(before)
    except Exception:  # noqa: BLE001 - best effort, see the docstring
        LOG.warning("could not mark the runs left active as Crashed", exc_info=True)
        return 0


def mark_orphans_crashed(before: float) -> int:
    """Mark Crashed every run of the ``coorchestrate`` deployment that is pending, running,
    paused or cancelling since before ``before`` (epoch seconds) while no worker runs it: the
    facility stopped under it. Scheduled runs are left for the worker. Returns how many."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    since = datetime.fromtimestamp(before, UTC)
    states = ["PENDING", "RUNNING", "PAUSED", "CANCELLING"]
    message = "the facility stopped while it was active: coorch campaign resume continues it"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(DEPLOYMENT_PATH)
        except ObjectNotFound:
            return 0
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states)),
            )
        )
        orphans = [r for r in runs if r.state is not None and r.state.timestamp < since]
        for run in orphans:
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            LOG.info("flow run %s (%s) marked Crashed: nobody runs it", run.name, run.id)
    return len(orphans)


def stop_worker(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop the worker and every flow run it started (see the module docstring)."""
    try:
        runs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        runs = []
    for p in [proc, *runs]:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            p.terminate()
    _, alive = psutil.wait_procs(runs, timeout=timeout_s)
    for p in alive:
        LOG.warning("flow run process %d did not stop in %g s: killed", p.pid, timeout_s)
        with contextlib.suppress(psutil.Error):
            p.kill()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        LOG.warning("the process worker did not stop in %g s: killed", timeout_s)
        proc.kill()
        proc.wait(5)
    if runs:
        LOG.info("stopped %d process(es) of running campaigns", len(runs))
    LOG.info("stopped the process worker (pid %d)", proc.pid)
