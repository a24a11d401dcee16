"""Loopback networking helpers shared by agents, the Prefect server launcher, benchmarks and tests.

The bottom layer: only the standard library and httpx, so any layer (including
``coorch.instrument_agents``, which must stay light) may import it.

* :func:`free_port` -- a TCP port nobody listens on right now, for a child process to bind.
  There is a window between this call and the child's bind in which another process could take
  the port; where the server runs in-process, bind the socket yourself (port 0) and hand it over
  instead, as :func:`coorch.instrument_agents.launch.serve_driver` does.
* :func:`wait_until_healthy` -- poll a health URL until it answers 200, failing fast (and
  clearly) when the process that should answer has died.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

__all__ = ["free_port", "wait_until_healthy"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free when asked (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_healthy(
    url: str,
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    alive: Callable[[], bool] | None = None,
    request_timeout_s: float = 1.0,
) -> None:
    """Poll ``GET url`` until it answers 200.

    Connection errors and other statuses mean "not yet". ``alive`` (for example
    ``lambda: proc.poll() is None`` or ``thread.is_alive``) is asked after every failed poll:
    when it says the server is gone this raises :class:`RuntimeError` at once instead of waiting
    out the timeout. After ``timeout_s`` s without a 200 it raises :class:`TimeoutError`.
    ``request_timeout_s`` bounds each single GET. Plain ``http://`` URLs skip the TLS context
    (building one loads the CA bundle, ~0.1 s).
    """
    if timeout_s < 0 or interval_s < 0:
        raise ValueError("timeout_s and interval_s must be >= 0")
    deadline = time.monotonic() + timeout_s
    last: str = "no answer yet"
    with httpx.Client(verify=not url.startswith("http://"), timeout=request_timeout_s) as http:
        while True:
            try:
                status = http.get(url).status_code
                if status == 200:
                    return
                last = f"HTTP {status}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if alive is not None and not alive():
                raise RuntimeError(f"the server for {url} exited before it answered ({last})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{url} did not answer 200 within {timeout_s:g} s ({last})")
            time.sleep(min(interval_s, left))
