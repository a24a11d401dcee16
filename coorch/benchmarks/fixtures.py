"""Test and benchmark fixtures: synthetic records of the demo shapes, a moto S3 server.

Synthetic records: a 2x64 PFM loop and a 512-point Raman spectrum, used by the ingest
benchmark (``ingest.py``), the crash/concurrency writer processes and the store tests, so that
all of them exercise the store with the shapes the instruments really return. No science here:
values are seeded noise, which also makes the data incompressible (a fair throughput test).

``start_timed_twin``: a twin served over HTTP whose driver notes when each command ran
(:class:`TimedDriver`), so a benchmark can see how long an instrument sat idle between
commands, at the instrument.

``moto_endpoint``: a real S3 API on loopback, ``moto_server`` in its own process (not moto's
in-thread server) so that the server does not compete with the client for the GIL: the
benchmark then measures the store, not Python thread scheduling. moto is a development
dependency, so nothing imports it at module level.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from coorch.instrument_agents.launch import RunningAgent, serve_driver
from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.twins import make_twin
from coorch.net import free_port, wait_until_healthy
from coorch.records import Decision, Measurement, Signal

BIAS = np.linspace(-10.0, 10.0, 64)
WAVENUMBER = np.linspace(100.0, 1100.0, 512)


def loop_signal(values: np.ndarray) -> Signal:
    return Signal(
        name="response",
        dims=["branch", "bias"],
        values=values,
        units="pm/V",
        long_name="piezoresponse amplitude",
        coords={"branch": ["up", "down"], "bias": BIAS.tolist()},
        coord_units={"bias": "V"},
    )


def raman_signal(values: np.ndarray) -> Signal:
    return Signal(
        name="intensity",
        dims=["wavenumber"],
        values=values,
        units="counts",
        long_name="Raman intensity",
        coords={"wavenumber": WAVENUMBER.tolist()},
        coord_units={"wavenumber": "1/cm"},
    )


def measurement(
    i: int,
    modality: str = "pfm_loop",
    *,
    prefix: str = "m",
    decision_id: str | None = None,
    rng: np.random.Generator | None = None,
    flow_run_id: str | None = None,
) -> Measurement:
    """Measurement number ``i`` (id ``{prefix}-{modality}-{i}``) with random values.

    ``values`` are a numpy array (not a list) so that building records does not dominate
    benchmarks; the store accepts both.
    """
    rng = rng or np.random.default_rng(i)
    if modality == "raman":
        sig, instrument = raman_signal(rng.random(512)), "raman1"
    else:
        sig, instrument = loop_signal(rng.random((2, 64))), "afm1"
    t = time.time()
    x = float(i % 50) * 0.2
    return Measurement(
        measurement_id=f"{prefix}-{modality}-{i}",
        instrument=instrument,
        modality=modality,
        sample="BFO-Sm-01",
        library_x=x,
        library_y=1.0,
        stage_x=x + 0.5,
        stage_y=2.0,
        started=t - 1.0,
        ended=t,
        signal=sig,
        decision_id=decision_id,
        flow_run_id=flow_run_id,
    )


def decision(
    i: int,
    *,
    trained_on: list[str] | None = None,
    trained_since: str | None = None,
    modality: str = "pfm_loop",
    prefix: str = "d",
) -> Decision:
    return Decision(
        decision_id=f"{prefix}-{i}",
        instrument="afm1",
        modality=modality,
        library_x=float(i) * 0.1,
        library_y=1.0,
        policy="coorchestrate",
        model_version="gp-1",
        trained_on=list(trained_on or []),
        trained_since=trained_since,
        acquisition_value=0.5,
        n_candidates=100,
    )


class TimedDriver:
    """``driver`` unchanged, except that each command it carries out (load_sample, move,
    measure) is noted as ``(command, start, end, ok)`` in :attr:`commands`, wall-clock seconds.

    Why: an instrument's idle time waiting on orchestration is the gap between the end of one
    command and the start of the next, and only the driver sees both ends (the HTTP request
    and the store's timestamps each miss part of it). Everything else (describe, status,
    abort, reset, frame) is the driver's own, so the agent serves it as it would serve
    ``driver``.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.commands: list[tuple[str, float, float, bool]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def _timed(self, command: str, fn: Any, *args: Any) -> Any:
        t0, ok = time.time(), False
        try:
            out = fn(*args)
            ok = True
            return out
        finally:
            with self._lock:
                self.commands.append((command, t0, time.time(), ok))

    def load_sample(self, sample_id: str) -> None:
        self._timed("load_sample", self.driver.load_sample, sample_id)

    def move(self, stage_x: float, stage_y: float) -> None:
        self._timed("move", self.driver.move, stage_x, stage_y)

    def measure(self, modality: str, params: dict[str, Any]) -> Any:
        return self._timed("measure", self.driver.measure, modality, params)

    def idle_gaps(self) -> list[float]:
        """Seconds from the end of each successful measure to the start of the next command
        (the next measurement's move): how long the instrument waited for its next order."""
        cmds = sorted(self.commands, key=lambda c: c[1])
        return [
            nxt[1] - cur[2]
            for cur, nxt in zip(cmds, cmds[1:], strict=False)
            if cur[0] == "measure" and cur[3]
        ]


def start_timed_twin(
    instrument: str,
    library: str = "smbfo",
    *,
    token: str | None = None,
    seed: int = 0,
    time_scale: float = 0.0,
    instrument_id: str | None = None,
    sample_load_cost_s: float | None = None,
    command_log: str | os.PathLike[str] | None = None,
) -> RunningAgent:
    """A twin (:func:`make_twin`) behind a :class:`TimedDriver`, served on a free loopback
    port; ``agent.driver`` is the :class:`TimedDriver`. ``sample_load_cost_s`` overrides the
    twin's (a STEM transfer is 30 minutes: the demo's sample is already mounted);
    ``command_log`` as :func:`serve_driver` takes it."""
    twin = make_twin(
        instrument, library, seed=seed, time_scale=time_scale, instrument_id=instrument_id
    )
    if sample_load_cost_s is not None:
        twin.sample_load_cost_s = sample_load_cost_s
    return serve_driver(TimedDriver(twin), token=token, command_log=command_log)


@contextlib.contextmanager
def moto_endpoint(timeout_s: float = 30.0) -> Iterator[str]:
    """Start ``moto.server`` on 127.0.0.1:<free port>; yield its endpoint URL; stop it."""
    port = free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(
            endpoint + "/moto-api/", timeout_s=timeout_s, alive=lambda: proc.poll() is None
        )
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
