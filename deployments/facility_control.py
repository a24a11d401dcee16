"""The client side of the facility: ``up`` starts a detached supervisor and waits for it to
say all is healthy; ``down`` signals it and waits for it to let go of the folder.

Neither keeps any state of its own: the folder's lock says whether a supervisor runs and its
pid, ``facility.json`` says what it serves (:mod:`~coorch.deployments.facility_state`), so
``down`` works from any shell, also after ``up``'s is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from coorch.deployments.facility_config import FacilityConfig
from coorch.deployments.facility_state import (
    STARTUP_ERROR,
    FacilityError,
    FacilityInfo,
    FacilityInputError,
    facility_paths,
    read_info,
    running_pid,
)

LOG = logging.getLogger("coorch.facility")


def _startup_error(log: Path, offset: int) -> str:
    """The supervisor's last ERROR line since ``offset``, or a pointer to the log."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [ln.split(STARTUP_ERROR, 1)[1].strip() for ln in lines if STARTUP_ERROR in ln]
    return errors[-1] if errors else "the supervisor exited"


def _wait_ready(
    run_dir: Path, pid: int, proc: subprocess.Popen | None, timeout_s: float, offset: int
) -> FacilityInfo:
    """Poll until supervisor ``pid`` has written facility.json, or has died, or time is up."""
    log = facility_paths(run_dir)["log"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = read_info(run_dir)
        if info is not None and info.supervisor_pid == pid:
            return info
        gone = proc.poll() is not None if proc is not None else running_pid(run_dir) != pid
        if gone:
            raise FacilityError(
                f"the facility did not start: {_startup_error(log, offset)} (see {log})"
            )
        time.sleep(0.1)
    raise FacilityError(f"the facility was not healthy within {timeout_s:g} s (see {log})")


def up(
    run_dir: Path, *, config: Path | None = None, port: int = 4200, timeout_s: float = 300.0
) -> tuple[FacilityInfo, bool]:
    """Start the facility in ``run_dir`` as a detached supervisor and return once all is
    healthy: (its description, False). Already up (or starting): (its description, True).
    On failure nothing is left running and :class:`FacilityError` says why in one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FacilityInputError(f"--dir {run_dir} is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    p = facility_paths(run_dir)
    offset = p["log"].stat().st_size if p["log"].exists() else 0
    if (pid := running_pid(run_dir)) is not None:
        return _wait_ready(run_dir, pid, None, timeout_s, offset), True
    FacilityConfig.from_file(config)  # a bad config fails here, before anything starts
    if not _port_free(port):
        raise FacilityInputError(
            f"--port {port} is in use (another Prefect server?); choose another"
        )
    p["info"].unlink(missing_ok=True)  # left by a supervisor that was killed
    cmd = [sys.executable, "-m", "coorch.deployments.facility", "serve"]
    cmd += ["--dir", str(run_dir.resolve()), "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config.resolve())]
    env = {**os.environ, "PREFECT_HOME": str(p["prefect"])}
    env.pop("PREFECT_API_URL", None)
    with p["log"].open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: outlives this shell, one group to signal
            env=env,
        )
    try:
        return _wait_ready(run_dir, proc.pid, proc, timeout_s, offset), False
    except FacilityError:
        _terminate(proc.pid, timeout_s=30.0)
        raise


def _port_free(port: int) -> bool:
    """Can the Prefect server bind ``port``? Asked before anything starts (it would fail
    ten seconds later, after the agents have booted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _terminate(pid: int, *, timeout_s: float) -> bool:
    """SIGTERM supervisor ``pid`` and wait for it to let go of its lock; past ``timeout_s``
    SIGKILL its process group (its children also get their parent-death SIGTERM).
    True if it stopped by itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    polite = True
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            polite = False
            break
        time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):  # reap it when we started it (tests)
        os.waitpid(pid, 0)
    return polite


def _alive(pid: int) -> bool:
    """Is ``pid`` still alive (and not a zombie we could reap)?"""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def down(run_dir: Path, *, timeout_s: float = 60.0) -> tuple[FacilityInfo | None, int] | None:
    """Stop the facility in ``run_dir``: SIGTERM its supervisor, which stops every child;
    wait; remove facility.json. Returns (its last description or None if it was still
    starting, the supervisor pid), or None when nothing was running."""
    pid = running_pid(run_dir)
    try:
        info = read_info(run_dir)
    except FacilityInputError:  # unreadable: stop the facility all the same, remove the file
        info = None
    if pid is None:
        facility_paths(run_dir)["info"].unlink(missing_ok=True)  # left by a killed supervisor
        return None
    if not _terminate(pid, timeout_s=timeout_s):
        LOG.warning("supervisor %d did not stop in %g s: killed", pid, timeout_s)
    facility_paths(run_dir)["info"].unlink(missing_ok=True)
    return info, pid


@contextlib.contextmanager
def facility(run_dir: Path, **up_kw) -> Iterator[FacilityInfo]:
    """``up`` for the length of a ``with`` block, then ``down`` (tests, scripts)."""
    info, _ = up(run_dir, **up_kw)
    try:
        yield info
    finally:
        down(run_dir)
