"""A real local Prefect server for one run (the demo, the crash tests), in its own process.

Prefect's ephemeral mode would start a server inside our process, and its background services
print CancelledError tracebacks when that process exits. A subprocess with its own log file
keeps the user's terminal clean, survives a crash of the campaign process (which is what the
kill -9 tests need), and is exactly what a facility runs, minus PostgreSQL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from coorch.net import free_port, wait_until_healthy


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies, so a killed
    demo or benchmark (even kill -9) never leaves a server behind. A no-op elsewhere."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def local_prefect_server(
    home: Path,
    *,
    startup_timeout_s: float = 120.0,
    ui: bool = False,
    port: int = 0,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start ``prefect server start`` on loopback with state in ``home``; yield its API URL and
    point this process's Prefect client at it (``PREFECT_API_URL``); stop it on exit.

    ``ui``: serve the Prefect UI at the URL without ``/api`` (``coorch up``); off by default
    because a one-run server (the demo, the crash tests) has nobody to look at it.
    ``port``: 0 picks a free one. The UI is told its API URL explicitly: left to itself it
    derives it from the *settings* host and port (4200), not from ``--port``.
    ``env``: extra environment for the server process only, e.g. a short
    ``PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS`` so a test sees lapsed concurrency leases
    freed in a second instead of the default 15.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = {
        **os.environ,
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": str(ui).lower(),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        **(env or {}),
    }
    server_env.pop("PREFECT_API_URL", None)
    if ui:
        server_env["PREFECT_UI_API_URL"] = url
    prefect = Path(sys.executable).with_name("prefect")
    log = (home / "server.log").open("ab")
    proc = subprocess.Popen(
        [
            str(prefect),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ui" if ui else "--no-ui",
            "--analytics-off",
        ],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        try:
            wait_until_healthy(
                f"{url}/health",
                timeout_s=startup_timeout_s,
                interval_s=0.25,
                alive=lambda: proc.poll() is None,
            )
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}") from exc
        with _client_pointed_at(url):
            yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@contextlib.contextmanager
def _client_pointed_at(url: str) -> Iterator[None]:
    """This process's Prefect client (and the processes it starts) talks to ``url``: the
    environment, and a settings context the caller may be in (a test harness, a profile's
    temporary settings), which outranks the environment. Both restored on exit."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
