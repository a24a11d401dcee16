"""The facility's supervisor: the one detached process that owns every service.

Why one supervisor: ``coorch up`` must return while everything keeps running, and ``coorch
down`` must stop all of it even when ``up``'s shell is gone. A single process that owns every
service (``python -m coorch.deployments.facility serve``, a new session, logging to
``<dir>/facility.log``) gives one pid to signal; its children are started with a parent-death
signal, so even ``kill -9`` of the supervisor leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
from pathlib import Path

from coorch.deployments.facility_config import FacilityConfig
from coorch.deployments.facility_services import start_services
from coorch.deployments.facility_state import (
    STARTUP_ERROR,
    FacilityError,
    facility_paths,
    hold_lock,
    write_atomic,
)

LOG = logging.getLogger("coorch.facility")


def _watch(procs: list[tuple[str, subprocess.Popen]], stop: threading.Event) -> int:
    """Until asked to stop: a facility with a dead agent (or a dead worker: submitted campaigns
    would wait forever) is not a facility, so stop it all."""
    while not stop.wait(1.0):
        for name, proc in procs:
            if proc.poll() is not None:
                LOG.error("the %s exited (code %s): stopping", name, proc.returncode)
                return 1
    return 0


class _Stopped(Exception):
    """SIGTERM/SIGINT during startup: unwind what has started."""


def serve(run_dir: Path, config: Path | None, port: int) -> int:
    """The supervisor's main: start all, write facility.json, wait for a signal, stop all.

    Startup failures unwind everything started so far and end with one ``ERROR`` line
    (:data:`STARTUP_ERROR`) that ``up`` shows the user.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health poll otherwise
    p = facility_paths(run_dir)
    stop, starting = threading.Event(), [True]

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if starting[0]:
            starting[0] = False  # a second signal must not interrupt the unwinding
            raise _Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        lock = hold_lock(p["lock"])
    except FacilityError as exc:
        LOG.error("%s %s", STARTUP_ERROR, exc)
        return 1
    code, up_ = 0, False
    try:
        with contextlib.ExitStack() as stack:
            info, procs = start_services(stack, run_dir, FacilityConfig.from_file(config), port)
            starting[0] = False
            write_atomic(p["info"], info.model_dump_json(indent=2))
            up_ = True
            LOG.info("facility up: UI %s, Dask %s", info.ui_url, info.dask_address)
            code = _watch(procs, stop)
            p["info"].unlink(missing_ok=True)  # not up any more while stopping
            LOG.info("stopping the facility")
    except _Stopped as exc:
        LOG.info("stopped by %s during startup", exc)
    except Exception as exc:
        if up_:
            LOG.exception("error while running or stopping the facility")
        else:  # one line for `up` to repeat, after the traceback of a surprise
            if not isinstance(exc, FacilityError):
                LOG.info("startup failed", exc_info=True)
            LOG.error("%s %s", STARTUP_ERROR, " ".join(str(exc).split()) or type(exc).__name__)
        code = 1
    finally:
        p["info"].unlink(missing_ok=True)
        lock.close()
    LOG.info("facility stopped")
    return code
