"""Who may do what on an agent: every route against every kind of caller, as one table.

Callers: no token, a wrong token, the read-only token, a lease that lapsed, a second controller
while the lease is held, another campaign's token presenting the holder's lease id, and the
holder itself. Each refusal must come with its documented status and error code (the
:mod:`~coorch.instrument_agents.contract` body), and a refused call must change nothing on the
instrument (position, measurements, sample, frame); the holder succeeds everywhere. One twin is
enough: who may ask is decided by the server, never by a driver (the conformance suite runs the
lease rules over every backend).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coorch.instrument_agents.contract import CODES
from coorch.instrument_agents.launch import RunningAgent, start_twin

HTTP = httpx.Client(verify=False, timeout=10)
A, B, RO = "campaign-a-token", "campaign-b-token", "read-only-token"

READ, TAKE, BOUND, ABORT = "read", "take", "bound", "abort"
#: (method, path, kind): every route but health, which is open by design.
ROUTES = [
    ("GET", "/v1/describe", READ),
    ("GET", "/v1/status", READ),
    ("POST", "/v1/lease", TAKE),
    ("DELETE", "/v1/lease", BOUND),
    ("POST", "/v1/sample", BOUND),
    ("POST", "/v1/move", BOUND),
    ("POST", "/v1/measure", BOUND),
    ("POST", "/v1/reset", BOUND),
    ("POST", "/v1/frame", BOUND),
    ("POST", "/v1/abort", ABORT),
]
OK = (200, None)
#: caller -> route kind -> (status, error code). DELETE with a lapsed lease is the documented
#: no-op on a free instrument; presenting a lapsed id to POST /v1/lease takes a new lease.
MATRIX: dict[str, dict[str, tuple[int, str | None]]] = {
    "no token": dict.fromkeys((READ, TAKE, BOUND, ABORT), (401, "unauthorized")),
    "wrong token": dict.fromkeys((READ, TAKE, BOUND, ABORT), (401, "unauthorized")),
    "read-only token": {
        READ: OK,
        TAKE: (403, "forbidden"),
        BOUND: (403, "forbidden"),
        ABORT: (403, "forbidden"),
    },
    "expired lease": {READ: OK, TAKE: OK, BOUND: (403, "lease_expired"), ABORT: OK},
    "second controller": {
        READ: OK,
        TAKE: (409, "lease_conflict"),
        BOUND: (409, "lease_conflict"),
        ABORT: OK,
    },
    "other campaign's lease id": {
        READ: OK,
        TAKE: (403, "lease_invalid"),
        BOUND: (403, "lease_invalid"),
        ABORT: OK,
    },
    "lease holder": dict.fromkeys((READ, TAKE, BOUND, ABORT), OK),
}
EXCEPTIONS = {("expired lease", "DELETE", "/v1/lease"): OK}


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    tokens = {"campaign-a": A, "campaign-b": B}
    with start_twin("afm", tokens=tokens, readonly_token=RO, seed=7) as running:
        yield running


def _headers(token: str | None, lease_id: str | None = None, who: str = "a") -> dict[str, str]:
    h = {"X-Client-Id": who}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if lease_id is not None:
        h["X-Lease-Id"] = lease_id
    return h


def _take(agent: RunningAgent, token: str, ttl_s: float = 30.0) -> str:
    r = HTTP.post(f"{agent.url}/v1/lease", headers=_headers(token), json={"ttl_s": ttl_s})
    assert r.status_code == 200, r.text
    return r.json()["lease_id"]


def _body(agent: RunningAgent, path: str) -> Any:
    """A body the holder's call succeeds with (and that would change something)."""
    twin = agent.driver
    (x0, x1), (y0, y1) = twin.limits["x"], twin.limits["y"]
    lib, stage = twin.fiducials()
    return {
        "/v1/lease": {"ttl_s": 30},
        "/v1/sample": {"sample_id": "sample-2"},
        "/v1/move": {"x": x0 + 0.3 * (x1 - x0), "y": y0 + 0.6 * (y1 - y0), "frame": "stage"},
        "/v1/measure": {"modality": "pfm_loop"},
        "/v1/frame": {"library": lib.tolist(), "stage": stage.tolist()},
    }.get(path)


def _caller(agent: RunningAgent, caller: str) -> tuple[dict[str, str], str | None]:
    """Headers of ``caller``, and the id of the lease held meanwhile (to release after)."""
    if caller == "expired lease":
        lapsed = _take(agent, A, ttl_s=0.05)
        time.sleep(0.1)
        return _headers(A, lapsed), None
    held = _take(agent, A)
    return {
        "no token": _headers(None),
        "wrong token": _headers("not-a-token"),
        "read-only token": _headers(RO),
        "second controller": _headers(A, who="b"),
        "other campaign's lease id": _headers(B, held, who="b"),
        "lease holder": _headers(A, held),
    }[caller], held


def _state(agent: RunningAgent) -> tuple:
    """What a control call could change, as any reader sees it."""
    st = HTTP.get(f"{agent.url}/v1/status", headers=_headers(RO)).json()
    return st["stage_x"], st["stage_y"], st["sample"], st["n_measured"], st["frame"]


CASES = [
    pytest.param(caller, method, path, kind, id=f"{caller}-{method} {path}")
    for caller in MATRIX
    for method, path, kind in ROUTES
]


@pytest.mark.parametrize(("caller", "method", "path", "kind"), CASES)
def test_each_caller_gets_its_documented_answer(agent, caller, method, path, kind):
    status, code = EXCEPTIONS.get((caller, method, path), MATRIX[caller][kind])
    headers, held = _caller(agent, caller)
    before = _state(agent)
    try:
        r = HTTP.request(method, f"{agent.url}{path}", headers=headers, json=_body(agent, path))
    finally:
        got = r.json().get("lease_id") if r.status_code == 200 and path == "/v1/lease" else None
        for lease_id in {held, got} - {None}:
            HTTP.delete(f"{agent.url}/v1/lease", headers=_headers(A, lease_id))
        agent.driver.reset()  # an abort or a refused call must not leak into the next case
    assert r.status_code == status, (caller, method, path, r.text)
    if status != 200:
        body = r.json()
        assert body["error"] == code and body["error"] in CODES[status], body
        assert isinstance(body["detail"], str) and body["transient"] is False, body
        assert _state(agent) == before, "a refused call changed the instrument"


def test_the_matrix_covers_every_route_the_agent_serves(agent):
    schema = HTTP.get(f"{agent.url}/openapi.json").json()
    served = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert served - {("GET", "/v1/health")} == {(m, p) for m, p, _ in ROUTES}
    for method, path, _ in ROUTES:  # and each status the table expects is documented there
        documented = set(schema["paths"][path][method.lower()]["responses"])
        kind = next(k for m, p, k in ROUTES if (m, p) == (method, path))
        expected = {str(EXCEPTIONS.get((c, method, path), MATRIX[c][kind])[0]) for c in MATRIX}
        assert expected <= documented, (method, path, expected - documented)
