"""``coorch bench overhead``: orchestration cost per measurement (flow + agent round trip +
store append), with the instrument itself taking no time.

One twin at ``time_scale=0``, served by ``coorch agent serve`` in its own process as an
instrument PC would, and the ``random`` policy (whose decision costs microseconds), so what is
left between two stored measurements is coorch: the Prefect task run, two HTTP calls (move,
measure) and the store append. The same HTTP calls and appends are also timed bare, in the same
run, to split the figure.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import typer

from coorch.net import free_port, wait_until_healthy


@contextlib.contextmanager
def agent_process(instrument: str, token_file: Path) -> Iterator[str]:
    """``coorch agent serve`` on a free loopback port; yields its URL, stops it on exit."""
    port = free_port()
    coorch = Path(sys.executable).with_name("coorch")
    proc = subprocess.Popen(
        [
            str(coorch),
            "agent",
            "serve",
            "--instrument",
            instrument,
            "--port",
            str(port),
            "--token-file",
            str(token_file),
            "--time-scale",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(
                f"{url}/v1/health",
                timeout_s=30.0,
                interval_s=0.1,
                alive=lambda: proc.poll() is None,
                request_timeout_s=0.5,
            )
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"agent for {instrument} did not start") from exc
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def run(n: int = 200, warmup: int = 20) -> dict:
    from coorch.demo import prepare_environment

    tmp = Path(tempfile.mkdtemp(prefix="coorch-overhead-"))
    prepare_environment(tmp)
    from coorch.deployments.config import CampaignSpec, InstrumentConfig
    from coorch.deployments.prefect_server import local_prefect_server
    from coorch.instrument_agents.client import InstrumentClient
    from coorch.records import new_id
    from coorch.storage import CampaignStore

    token = tmp / "token"
    token.write_text("bench")
    with local_prefect_server(tmp / "prefect"), agent_process("raman", token) as url:
        from coorch.flows.coorchestrate import coorchestrate
        from coorch.flows.progress import watching

        cfg = InstrumentConfig(
            name="raman-twin", kind="raman", modality="raman", url=url, token_file=token
        )
        stamps: list[float] = []
        spec = CampaignSpec(
            name="overhead",
            instruments=[cfg],
            policy="random",
            budget=n + warmup,
            seeds_per_instrument=1,
            store=str(tmp / "flow.zarr"),
            report="",  # background work, like the fits the random policy does not run
        )
        with watching(lambda m, info: stamps.append(time.perf_counter())):
            coorchestrate(spec)
        per_measurement = np.diff(stamps[warmup:]) * 1e3

        bare_http, bare_store = [], []
        store = CampaignStore.open(str(tmp / "bare.zarr"))
        with InstrumentClient(url, "bench", client_id="bench") as client:
            client.acquire_lease(60)
            client.load_sample("s")
            for i in range(n):
                t0 = time.perf_counter()
                client.move(1.0 + (i % 50) * 0.1, 1.0)
                m = client.measure("raman", request_id=new_id("m"))
                t1 = time.perf_counter()
                store.append_measurement(m)
                bare_http.append(t1 - t0)
                bare_store.append(time.perf_counter() - t1)
    http_ms, store_ms = np.median(bare_http) * 1e3, np.median(bare_store) * 1e3
    med = float(np.median(per_measurement))
    quarter = max(len(per_measurement) // 4, 1)
    return {
        "per_measurement_median_ms": med,
        "per_measurement_p95_ms": float(np.percentile(per_measurement, 95)),
        # a cost that grows with the campaign shows as the last quarter above the first
        "first_quarter_median_ms": float(np.median(per_measurement[:quarter])),
        "last_quarter_median_ms": float(np.median(per_measurement[-quarter:])),
        "http_move_measure_median_ms": float(http_ms),
        "store_append_median_ms": float(store_ms),
        "prefect_and_flow_ms": float(med - http_ms - store_ms),
        "n": n,
    }


def bench_overhead_command(
    n: int = typer.Option(200, "--measurements", min=1, help="measurements timed"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Orchestration overhead per measurement (instrument time excluded)."""
    out = run(n)
    if json_out:
        print(json.dumps(out))
        return
    print(
        f"orchestration overhead per measurement: median {out['per_measurement_median_ms']:.1f}"
        f" ms, p95 {out['per_measurement_p95_ms']:.1f} ms (HTTP move+measure "
        f"{out['http_move_measure_median_ms']:.1f} ms, store append "
        f"{out['store_append_median_ms']:.1f} ms, Prefect task run + flow "
        f"{out['prefect_and_flow_ms']:.1f} ms); first quarter "
        f"{out['first_quarter_median_ms']:.1f} ms, last quarter {out['last_quarter_median_ms']:.1f}"
        " ms"
    )
