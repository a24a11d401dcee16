"""Run an agent in-process: uvicorn on loopback in a background thread.

The demo and the tests need real HTTP services without spawning processes or leaking ports:
``serve_driver`` binds a socket itself (port 0 picks a free one, so parallel tests never clash),
starts uvicorn on it in a daemon thread, waits until ``/v1/health`` answers, and ``stop`` (or
leaving the ``with`` block) shuts it down and aborts the driver so nothing keeps running.
With ``command_log`` the agent appends every control command to that file and answers a
retried measurement it already logged from there, even after a restart
(:mod:`~coorch.instrument_agents.command_log`); pass ``port`` to restart it where it was.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import uvicorn

from coorch.instrument_agents.command_log import CommandLog, attach_command_log
from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.server import create_app
from coorch.instrument_agents.twins import make_twin
from coorch.net import wait_until_healthy


class RunningAgent:
    """A served driver: ``url``, ``driver``, ``stop()``; a context manager."""

    def __init__(
        self,
        driver: Driver,
        server: uvicorn.Server,
        thread: threading.Thread,
        url: str,
        sock: socket.socket,
        command_log: CommandLog | None = None,
    ) -> None:
        self.driver, self.url = driver, url
        self.command_log = command_log
        self._server, self._thread, self._sock = server, thread, sock

    def __enter__(self) -> RunningAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Abort the driver (ends any hang), then stop uvicorn and join its thread."""
        try:
            self._stop(timeout_s)
        finally:
            if self.command_log is not None:
                self.command_log.close()

    def _stop(self, timeout_s: float) -> None:
        if not self._thread.is_alive():
            self._sock.close()
            return
        with contextlib.suppress(Exception):  # a broken driver must not keep the server up
            self.driver.abort()
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self._sock.close()


def serve_driver(
    driver: Driver,
    *,
    token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    readonly_token: str | None = None,
    frame: AffineFrame | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout_s: float = 10.0,
    command_log: str | os.PathLike[str] | None = None,
    **app_kw: Any,
) -> RunningAgent:
    """Serve ``driver`` on ``host:port`` (0 = a free port) and return once it answers health.
    ``token`` / ``tokens`` are the control tokens as :func:`create_app` takes them;
    ``command_log`` a file for the agent's command log (appended to, and read back first)."""
    app = create_app(
        driver, token=token, tokens=tokens, readonly_token=readonly_token, frame=frame, **app_kw
    )
    log = attach_command_log(app, command_log) if command_log is not None else None
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are
    # TCP, and without it every keep-alive request waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        if log is not None:
            log.close()
        raise
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        # uvicorn's own logging config would replace the process's handlers (dictConfig), and
        # under a running Prefect flow that deadlocks on the flush of Prefect's API log handler
        log_config=None,
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"agent-{bound_port}"
    )
    thread.start()
    url = f"http://{host}:{bound_port}"
    agent = RunningAgent(driver, server, thread, url, sock, log)
    try:
        wait_until_healthy(
            f"{url}/v1/health",
            timeout_s=startup_timeout_s,
            interval_s=0.01,
            alive=thread.is_alive,
            request_timeout_s=0.5,
        )
    except (TimeoutError, RuntimeError) as exc:
        agent.stop()
        raise RuntimeError(f"agent on {url} did not start") from exc
    return agent


def start_twin(
    instrument: str,
    library: str = "smbfo",
    *,
    token: str | None = None,
    seed: int = 0,
    time_scale: float = 0.0,
    fault_rate: float = 0.0,
    readonly_token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    port: int = 0,
    command_log: str | os.PathLike[str] | None = None,
    **twin_kw: Any,
) -> RunningAgent:
    """Build a twin with :func:`make_twin` and serve it on loopback: on a free port, or on
    ``port`` (an agent restarted where it was); ``command_log`` as :func:`serve_driver`."""
    twin = make_twin(
        instrument, library, seed=seed, time_scale=time_scale, fault_rate=fault_rate, **twin_kw
    )
    return serve_driver(
        twin,
        token=token,
        tokens=tokens,
        readonly_token=readonly_token,
        port=port,
        command_log=command_log,
    )
