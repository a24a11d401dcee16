"""Conformance suite: what every instrument agent must do, whatever the instrument behind it.

Each test runs, over real HTTP, against every backend in ``BACKENDS`` (four twins and the
replay of real data). A new driver joins by adding one entry there (a factory returning a
Driver) -- or, for an agent already running elsewhere (a real instrument PC), by setting
``COORCH_AGENT_URL``, ``COORCH_AGENT_TOKEN`` and optionally ``COORCH_AGENT_READONLY_TOKEN``
(see docs/drivers.md). The suite only uses the HTTP protocol; the one optional extra it reads is
``status()["n_measured"]`` (acquisitions performed), to prove retries never measure twice.

The lease is a capability: every control call but ``abort`` must carry the lease id the agent
issued (``X-Lease-Id``). The lease tests send raw requests, since the client would take a lease
for them; the calls they expect refused are harmless if an agent wrongly admits them (a move to
the centre, a measure, a reset, a sample load without a sample id, too few fiducials).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from shared_data import REPLAY_FILE

from coorch.instrument_agents.client import (
    AuthError,
    InstrumentClient,
    InstrumentFault,
    LeaseConflict,
    MeasurementAborted,
    OutOfLimits,
)
from coorch.instrument_agents.launch import serve_driver
from coorch.instrument_agents.protocol import Driver
from coorch.instrument_agents.replay import ReplayDriver
from coorch.instrument_agents.twins import make_twin
from coorch.records import InstrumentDescription

# One shared plain-http client: building an httpx.Client loads the CA bundle (~0.1 s).
HTTP = httpx.Client(verify=False, timeout=10)
TOKEN, RO, OTHER = "conf-token", "conf-ro-token", "conf-other-token"

# name -> factory of a Driver. Add a real driver here (or use COORCH_AGENT_URL, below).
BACKENDS: dict[str, Callable[[], Driver]] = {
    "afm": lambda: make_twin("afm", seed=1),
    "raman": lambda: make_twin("raman", seed=2),
    "wds": lambda: make_twin("wds", "alscbn", seed=3),
    "stem": lambda: make_twin("stem", seed=4),
    "replay": lambda: ReplayDriver(REPLAY_FILE, noise=0.01),
}


@dataclass
class Agent:
    url: str
    token: str
    readonly_token: str | None
    other_token: str | None = None  # a second control token (another campaign's)
    in_process: bool = False  # its logs are this process's (checked for secrets)


def _params() -> list:
    params = [pytest.param(name, id=name) for name in BACKENDS]
    if os.environ.get("COORCH_AGENT_URL"):
        params.append(pytest.param("external", id="external"))
    return params


@pytest.fixture(scope="module", params=_params())
def agent(request) -> Iterator[Agent]:
    name = request.param
    if name == "external":
        yield Agent(
            os.environ["COORCH_AGENT_URL"],
            os.environ["COORCH_AGENT_TOKEN"],
            os.environ.get("COORCH_AGENT_READONLY_TOKEN"),
            os.environ.get("COORCH_AGENT_OTHER_TOKEN"),
        )
        return
    if name == "replay" and not REPLAY_FILE.exists():
        pytest.skip(f"replay data not found at {REPLAY_FILE}")
    tokens = {"conformance": TOKEN, "other-campaign": OTHER}
    with serve_driver(BACKENDS[name](), tokens=tokens, readonly_token=RO) as running:
        yield Agent(running.url, TOKEN, RO, OTHER, in_process=True)


@pytest.fixture
def client(agent: Agent) -> Iterator[InstrumentClient]:
    with InstrumentClient(agent.url, agent.token, client_id="conformance", timeout_s=30) as c:
        yield c
        c.release_lease()


@pytest.fixture
def desc(client: InstrumentClient) -> InstrumentDescription:
    return client.describe()


def _centre(desc: InstrumentDescription) -> tuple[float, float]:
    (x0, x1), (y0, y1) = desc.stage_limits["x"], desc.stage_limits["y"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _measure(client: InstrumentClient, modality: str, **kw):
    try:
        return client.measure(modality, **kw)
    except InstrumentFault:  # a latched fault from an earlier test: clear it once
        client.reset()
        return client.measure(modality, **kw)


# ------------------------------------------------------------------ auth


def test_health_is_open_everything_else_needs_a_token(agent: Agent):
    assert HTTP.get(f"{agent.url}/v1/health").status_code == 200
    for method, path in [
        ("GET", "/v1/describe"),
        ("GET", "/v1/status"),
        ("POST", "/v1/move"),
        ("POST", "/v1/measure"),
        ("POST", "/v1/lease"),
        ("POST", "/v1/abort"),
        ("POST", "/v1/sample"),
    ]:
        r = HTTP.request(method, f"{agent.url}{path}", json={})
        assert r.status_code == 401, (method, path)


def test_readonly_token_reads_but_cannot_control(agent: Agent):
    if not agent.readonly_token:
        pytest.skip("no read-only token configured")
    with InstrumentClient(agent.url, agent.readonly_token, max_retries=0) as ro:
        d = ro.describe()
        ro.status()
        x, y = _centre(d)
        for call in (
            lambda: ro.move(x, y, frame="stage"),
            lambda: ro.measure(d.modalities[0].name),
            ro.acquire_lease,
        ):
            with pytest.raises(AuthError) as exc:
                call()
            assert exc.value.status == 403


# ------------------------------------------------------------------ describe / cost model


def test_describe_declares_modalities_costs_and_limits(desc: InstrumentDescription):
    assert desc.id and desc.kind and desc.modalities
    for m in desc.modalities:
        assert m.name and m.signal and m.units is not None
        assert len(m.dims) == len(m.shape) and all(n > 0 for n in m.shape)
        assert m.cost_s > 0
    assert desc.move_cost_s_per_mm >= 0 and desc.time_scale >= 0
    assert set(desc.stage_limits) == {"x", "y"}
    assert all(lo < hi for lo, hi in desc.stage_limits.values())


def test_status_reports_position_and_frame(client: InstrumentClient):
    st = client.status()
    for key in ("stage_x", "stage_y", "library_x", "library_y", "sample", "lease", "frame"):
        assert key in st


# ------------------------------------------------------------------ shapes and units


def test_every_modality_returns_its_documented_array(client, desc):
    x, y = _centre(desc)
    client.move(x, y, frame="stage")
    for spec in desc.modalities:
        m = _measure(client, spec.name)
        sig = m.signal
        assert m.modality == spec.name and m.instrument == desc.id
        assert sig.dims == spec.dims
        assert list(sig.array().shape) == spec.shape
        assert sig.units == spec.units
        assert np.isfinite(sig.array()).all()
        for dim, unit in spec.coord_units.items():
            assert sig.coord_units.get(dim) == unit
        for dim, values in sig.coords.items():
            assert len(values) == spec.shape[spec.dims.index(dim)]
        assert m.stage_x == pytest.approx(x) and m.stage_y == pytest.approx(y)
        assert m.started <= m.ended


# ------------------------------------------------------------------ limits


def test_moves_outside_the_limits_are_refused_before_moving(client, desc):
    x, y = _centre(desc)
    client.move(x, y, frame="stage")
    (x0, x1), (y0, y1) = desc.stage_limits["x"], desc.stage_limits["y"]
    for tx, ty in [(x1 + 1.0, y), (x0 - 1.0, y), (x, y1 + 1.0), (x, y0 - 1.0)]:
        with pytest.raises(OutOfLimits) as exc:
            client.move(tx, ty, frame="stage")
        assert exc.value.status == 422
        st = client.status()
        assert (st["stage_x"], st["stage_y"]) == pytest.approx((x, y))
    with pytest.raises(OutOfLimits):
        client.move(1e6, 1e6, frame="library")


def test_a_move_returns_both_frames(client, desc):
    x, y = _centre(desc)
    out = client.move(x, y, frame="stage")
    assert (out["stage_x"], out["stage_y"]) == pytest.approx((x, y))
    back = client.move(out["library_x"], out["library_y"], frame="library")
    assert (back["stage_x"], back["stage_y"]) == pytest.approx((x, y), abs=1e-9)


# ------------------------------------------------------------------ idempotent retry


def test_a_retried_request_id_is_measured_once(client, desc, request):
    modality = desc.modalities[0].name
    rid = f"conf-idem-{request.node.callspec.id}"
    n0 = client.status().get("n_measured")
    first = _measure(client, modality, request_id=rid)
    second = client.measure(modality, request_id=rid)
    assert second == first and first.measurement_id == rid
    n1 = client.status().get("n_measured")
    if n0 is not None and n1 is not None:
        assert n1 == n0 + 1


# ------------------------------------------------------------------ lease and abort


def test_a_lease_excludes_other_controllers(agent: Agent, desc):
    x, y = _centre(desc)
    modality = desc.modalities[0].name
    with (
        InstrumentClient(agent.url, agent.token, client_id="conf-a") as a,
        InstrumentClient(agent.url, agent.token, client_id="conf-b", max_retries=0) as b,
    ):
        a.acquire_lease(ttl_s=30)
        try:
            for call in (
                lambda: b.move(x, y, frame="stage"),
                lambda: b.measure(modality),
                b.acquire_lease,
            ):
                with pytest.raises(LeaseConflict) as exc:
                    call()
                assert exc.value.status == 409
            a.move(x, y, frame="stage")
        finally:
            a.release_lease()
        b.move(x, y, frame="stage")


def test_abort_leaves_the_instrument_usable(client, desc):
    modality = desc.modalities[0].name
    done: list[object] = []

    def run() -> None:
        try:
            done.append(_measure(client, modality))
        except MeasurementAborted as exc:
            done.append(exc)

    t = threading.Thread(target=run)
    t.start()
    client.abort()
    t.join(30)
    assert done, "measurement neither finished nor aborted"
    assert _measure(client, modality).modality == modality


# ------------------------------------------------------------------ the lease is a capability


def _raw(
    agent: Agent,
    method: str,
    path: str,
    *,
    lease_id: str | None = None,
    token: str | None = None,
    body: object = None,
) -> httpx.Response:
    """One request as a bare HTTP controller would send it (no client, no lease taken)."""
    headers = {"Authorization": f"Bearer {token or agent.token}", "X-Client-Id": "conf-raw"}
    if lease_id is not None:
        headers["X-Lease-Id"] = lease_id
    return HTTP.request(method, f"{agent.url}{path}", headers=headers, json=body)


@contextlib.contextmanager
def _lease(
    agent: Agent, *, ttl_s: float = 30.0, token: str | None = None, holder: str = "conf-holder"
) -> Iterator[str]:
    """Take the lease with raw HTTP, yield its id, and give it back (if it is still ours)."""
    headers = {"Authorization": f"Bearer {token or agent.token}", "X-Client-Id": holder}
    r = HTTP.post(f"{agent.url}/v1/lease", headers=headers, json={"ttl_s": ttl_s})
    assert r.status_code == 200, r.text
    lease_id = r.json()["lease_id"]
    assert isinstance(lease_id, str) and len(lease_id) >= 22  # >= 128 bits of urlsafe text
    try:
        yield lease_id
    finally:
        HTTP.delete(f"{agent.url}/v1/lease", headers={**headers, "X-Lease-Id": lease_id})


def _controls(desc: InstrumentDescription) -> list[tuple[str, str, object]]:
    """Every control route but abort, with bodies that do no harm if wrongly admitted."""
    x, y = _centre(desc)
    return [
        ("POST", "/v1/move", {"x": x, "y": y, "frame": "stage"}),
        ("POST", "/v1/measure", {"modality": desc.modalities[0].name}),
        ("POST", "/v1/sample", {}),
        ("POST", "/v1/reset", None),
        ("POST", "/v1/frame", {"library": [[0, 0]], "stage": [[0, 0]]}),
        ("DELETE", "/v1/lease", None),
    ]


def _refused(r: httpx.Response, status: int, error: str) -> None:
    """Refused with ``status`` and the agent's usual error shape (``error`` code, ``detail``)."""
    assert r.status_code == status, (r.request.method, r.request.url.path, r.text)
    body = r.json()
    assert body["error"] == error and isinstance(body["detail"], str), body


def test_control_calls_without_a_lease_id_are_refused(agent: Agent, desc):
    for method, path, body in _controls(desc):
        if path == "/v1/lease":
            continue  # releasing a free instrument is a harmless no-op
        _refused(_raw(agent, method, path, body=body), 403, "lease_required")
    with _lease(agent):
        for method, path, body in _controls(desc):
            _refused(_raw(agent, method, path, body=body), 409, "lease_conflict")


def test_a_wrong_lease_id_is_refused(agent: Agent, desc):
    forged = secrets.token_urlsafe(32)
    for method, path, body in _controls(desc):
        if path != "/v1/lease":
            _refused(_raw(agent, method, path, lease_id=forged, body=body), 403, "lease_invalid")
    with _lease(agent) as mine:
        for method, path, body in _controls(desc):
            r = _raw(agent, method, path, lease_id=forged, body=body)
            _refused(r, 409, "lease_conflict")
        x, y = _centre(desc)
        move = {"x": x, "y": y, "frame": "stage"}
        assert _raw(agent, "POST", "/v1/move", lease_id=mine, body=move).status_code == 200


def test_another_holders_lease_id_is_refused(agent: Agent, desc):
    x, y = _centre(desc)
    move = {"x": x, "y": y, "frame": "stage"}
    with _lease(agent, holder="conf-earlier") as earlier:
        pass  # taken and given back: an old holder's id
    with _lease(agent) as mine:
        _refused(
            _raw(agent, "POST", "/v1/move", lease_id=earlier, body=move), 409, "lease_conflict"
        )
        r = _raw(agent, "POST", "/v1/lease", lease_id=earlier, body={})
        _refused(r, 409, "lease_conflict")  # nor can it take the lease over
        if agent.other_token:  # the holder's id, but another campaign's token
            r = _raw(agent, "POST", "/v1/move", lease_id=mine, token=agent.other_token, body=move)
            _refused(r, 403, "lease_invalid")
        assert _raw(agent, "POST", "/v1/move", lease_id=mine, body=move).status_code == 200
    _refused(_raw(agent, "POST", "/v1/move", lease_id=mine, body=move), 403, "lease_invalid")


def test_an_expired_lease_frees_the_instrument(agent: Agent, desc):
    x, y = _centre(desc)
    move = {"x": x, "y": y, "frame": "stage"}
    with _lease(agent, ttl_s=0.5) as lapsed:
        assert _raw(agent, "POST", "/v1/move", lease_id=lapsed, body=move).status_code == 200
        time.sleep(1.0)  # no activity for twice its ttl
        status = _raw(agent, "GET", "/v1/status").json()
        assert status["lease"]["held"] is False and status["lease"]["holder"] is None
        _refused(_raw(agent, "POST", "/v1/move", lease_id=lapsed, body=move), 403, "lease_expired")
        with _lease(agent, holder="conf-next") as next_id:
            assert next_id != lapsed
            assert _raw(agent, "POST", "/v1/move", lease_id=next_id, body=move).status_code == 200


def test_releasing_needs_the_lease_id(agent: Agent):
    with _lease(agent) as mine:
        _refused(_raw(agent, "DELETE", "/v1/lease"), 409, "lease_conflict")
        _refused(_raw(agent, "DELETE", "/v1/lease", lease_id="x" * 43), 409, "lease_conflict")
        assert _raw(agent, "GET", "/v1/status").json()["lease"]["held"] is True
        r = _raw(agent, "DELETE", "/v1/lease", lease_id=mine)
        assert r.status_code == 200 and r.json()["held"] is False
        assert _raw(agent, "DELETE", "/v1/lease", lease_id=mine).status_code == 200  # a retry


def test_a_holder_renews_its_lease_by_presenting_its_id(agent: Agent):
    with _lease(agent, ttl_s=30) as mine:
        r = _raw(agent, "POST", "/v1/lease", lease_id=mine, body={"ttl_s": 60})
        assert r.status_code == 200 and r.json()["lease_id"] == mine
        assert 30 < r.json()["expires_in_s"] <= 60


def test_lease_ids_never_appear_in_status_or_in_logs(agent: Agent, desc, caplog):
    caplog.set_level(logging.DEBUG)
    x, y = _centre(desc)
    with _lease(agent, holder="conf-audited") as mine:
        _raw(agent, "POST", "/v1/move", lease_id=mine, body={"x": x, "y": y, "frame": "stage"})
        _raw(agent, "POST", "/v1/move", lease_id=mine[::-1], body={"x": x, "y": y})
        _raw(agent, "POST", "/v1/lease", lease_id=mine[::-1], body={})
        for token in (agent.readonly_token, agent.token):
            if token:
                seen = _raw(agent, "GET", "/v1/status", token=token).text
                assert mine not in seen and agent.token not in seen
        lease = json.loads(seen)["lease"]
        assert lease["held"] is True and lease["holder"] == "conf-audited"
        assert lease["token_name"] and lease["since"] > 0 and "lease_id" not in lease
    if agent.in_process:
        assert "conf-audited" in caplog.text and "'conformance'" in caplog.text  # it is logged
        for secret in (mine, mine[::-1], agent.token):
            assert secret not in caplog.text
