"""Fault injection and the client's exactly-once retries, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from coorch.instrument_agents.client import (
    InstrumentClient,
    InstrumentFault,
    InstrumentUnavailable,
    MeasurementAborted,
)
from coorch.instrument_agents.launch import serve_driver
from coorch.instrument_agents.twins import make_twin

# One shared plain-http client: building an httpx.Client loads the CA bundle (~0.1 s).
HTTP = httpx.Client(verify=False, timeout=10)
TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _serve(**twin_kw):
    return serve_driver(make_twin("afm", **twin_kw), token=TOKEN)


def _leased(agent) -> dict[str, str]:
    """Headers of a raw controller: the token, and the lease id it just took."""
    lease = HTTP.post(f"{agent.url}/v1/lease", headers=AUTH, json={}).json()
    return {**AUTH, "X-Lease-Id": lease["lease_id"]}


def test_fault_rate_02_delivers_every_measurement_exactly_once():
    """50 requests at fault rate 0.2 (transient, hang, disconnect, latch): each id measured once."""
    with (
        _serve(seed=11, fault_rate=0.2, hang_s=0.4) as agent,
        InstrumentClient(agent.url, TOKEN, timeout_s=0.15, max_retries=8, backoff_s=0.02) as c,
    ):
        twin = agent.driver
        got = {}
        for i in range(50):
            rid = f"fault-req-{i}"
            while True:
                try:
                    got[rid] = c.measure("pfm_loop", request_id=rid)
                    break
                except InstrumentFault:
                    c.reset()  # a broken tip: replace it, then the same request again
        assert twin.n_measured == 50
        assert all(m.measurement_id == rid for rid, m in got.items())
        counts = twin.faults.counts
        assert sum(counts.values()) >= 5
        assert counts["transient"] > 0 and counts["disconnect"] > 0
        assert c.attempts > 50  # the faults really forced retries


def test_transient_errors_exhaust_retries_without_measuring():
    with (
        _serve(fault_rate=1.0, fault_weights={"transient": 1.0}) as agent,
        InstrumentClient(agent.url, TOKEN, max_retries=2, backoff_s=0.01) as c,
    ):
        with pytest.raises(InstrumentUnavailable):
            c.measure("pfm_loop", request_id="t-1")
        assert c.attempts == 1 + 1 + 3  # one describe, one lease, three measure attempts
        assert agent.driver.n_measured == 0
        c.close()  # gives its lease back, for the raw request below
        r = HTTP.post(
            f"{agent.url}/v1/measure",
            headers=_leased(agent),
            json={"modality": "pfm_loop", "request_id": "t-2"},
        )
        assert r.status_code == 503 and r.json()["error"] == "transient"


def test_disconnect_after_acquisition_is_answered_from_cache():
    with _serve(fault_rate=1.0, fault_weights={"disconnect": 1.0}) as agent:
        body, headers = {"modality": "pfm_loop", "request_id": "d-1"}, _leased(agent)
        with pytest.raises(httpx.RemoteProtocolError):
            HTTP.post(f"{agent.url}/v1/measure", headers=headers, json=body)
        assert agent.driver.n_measured == 1
        r = HTTP.post(f"{agent.url}/v1/measure", headers=headers, json=body)
        assert r.status_code == 200 and r.json()["measurement_id"] == "d-1"
        assert agent.driver.n_measured == 1


def test_hang_beyond_client_timeout_is_retried_once_measured():
    with (
        _serve(fault_rate=1.0, fault_weights={"hang": 1.0}, hang_s=0.4) as agent,
        InstrumentClient(agent.url, TOKEN, timeout_s=0.1, max_retries=10, backoff_s=0.02) as c,
    ):
        t0 = time.perf_counter()
        m = c.measure("pfm_loop", request_id="h-1")
        assert time.perf_counter() - t0 >= 0.4
        assert m.measurement_id == "h-1"
        assert agent.driver.n_measured == 1
        assert c.attempts > 2


def test_broken_tip_latches_until_reset():
    with (
        _serve(fault_rate=1.0, fault_weights={"latch": 1.0}) as agent,
        InstrumentClient(agent.url, TOKEN) as c,
    ):
        with pytest.raises(InstrumentFault):
            c.measure("pfm_loop")
        agent.driver.faults.rate = 0.0  # no new faults: the old one must still hold
        with pytest.raises(InstrumentFault, match="tip broken"):
            c.measure("pfm_loop")
        assert c.status()["fault"] == "tip broken"
        assert c.reset()["fault"] is None
        assert c.measure("pfm_loop").signal.array().shape == (2, 64)


def test_abort_stops_a_running_measurement():
    # afm_topo costs 240 s; at time_scale 0.01 it runs 2.4 s unless aborted.
    with (
        _serve(time_scale=0.01) as agent,
        InstrumentClient(agent.url, TOKEN) as c,
        InstrumentClient(agent.url, TOKEN, client_id="operator") as op,
    ):
        c.describe()
        outcome: list[BaseException | object] = []

        def run() -> None:
            try:
                outcome.append(c.measure("afm_topo", request_id="abort-1"))
            except BaseException as exc:  # noqa: BLE001 - hand it to the test thread
                outcome.append(exc)

        t = threading.Thread(target=run)
        t0 = time.perf_counter()
        t.start()
        time.sleep(0.3)
        op.abort()
        t.join(5)
        assert time.perf_counter() - t0 < 2.0
        assert isinstance(outcome[0], MeasurementAborted)
        assert agent.driver.n_measured == 0
        assert c.measure("pfm_loop").signal.array().shape == (2, 64)  # usable afterwards
