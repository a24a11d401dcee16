"""Bad requests to an agent, generated: each gets a clear 4xx, and the instrument stays safe.

Hypothesis draws what a confused script, a wrong unit or a hostile caller might send the
lease holder's routes: NaN, inf, huge and non-number coordinates, wrong units and frames,
unknown fields, wrong shapes, huge bodies and arrays, path-traversal-like sample ids, request
ids and modality names, unknown modalities. Every answer must be a 2xx for a request that is
really valid, else a 4xx with the documented error body (the contract's per-status model); the
stage never leaves its limits, a refused move moves nothing, and nothing is written to disk
(every traversal payload carries a unique marker that no file name may carry afterwards).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coorch.instrument_agents.contract import MODELS
from coorch.instrument_agents.launch import RunningAgent, start_twin

HTTP = httpx.Client(verify=False, timeout=30)
TOKEN = "bad-input-token"
MARK = f"coorch-traversal-{uuid.uuid4().hex[:12]}"
EXAMPLES = int(os.environ.get("COORCH_BAD_INPUT_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    with start_twin("afm", token=TOKEN, seed=11) as running:
        yield running


@pytest.fixture(scope="module")
def holder(agent) -> dict[str, str]:
    """The lease holder's headers: bad input comes from the caller who is allowed to ask."""
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Client-Id": "bad-input"}
    r = HTTP.post(f"{agent.url}/v1/lease", headers=auth, json={"ttl_s": 3600})
    return {**auth, "X-Lease-Id": r.json()["lease_id"], "Content-Type": "application/json"}


def _send(agent: RunningAgent, holder: dict[str, str], path: str, body: Any) -> httpx.Response:
    """POST ``body`` as JSON text; NaN and Infinity are written as Python's json does."""
    return HTTP.post(f"{agent.url}{path}", headers=holder, content=json.dumps(body))


def _refused_as_documented(r: httpx.Response, *codes: str) -> str:
    """A 4xx whose body is the documented model for its status; returns the code."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = MODELS[r.status_code].model_validate(r.json())
    assert body.detail and body.transient is False
    if codes:
        assert body.error in codes, body
    return body.error


def _position(agent: RunningAgent) -> tuple[float, float]:
    st_ = agent.driver.status()
    x, y = float(st_["stage_x"]), float(st_["stage_y"])
    (x0, x1), (y0, y1) = agent.driver.limits["x"], agent.driver.limits["y"]
    assert x0 <= x <= x1 and y0 <= y <= y1, "the stage is outside its limits"
    return x, y


# ------------------------------------------------------------------ strategies

huge = st.integers(min_value=10**300, max_value=10**400) | st.integers(max_value=-(10**300))
coordinate = (
    st.floats(allow_nan=True, allow_infinity=True)
    | huge
    | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324])
    | st.booleans()
    | st.none()
    | st.text(max_size=8)
    | st.lists(st.floats(), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
traversal = st.sampled_from(
    [
        f"../../../../tmp/{MARK}",
        f"..\\..\\{MARK}",
        f"/tmp/{MARK}",
        f"{MARK}/../../../etc/passwd",
        f"{MARK}\x00.txt",
        f"~/{MARK}",
        f"./{MARK}",
        f"{MARK}%2F..%2F..",
        f".{MARK}",
        f"{MARK}\n{MARK}",
    ]
)
name = traversal | st.text(max_size=40) | st.text(min_size=129, max_size=300)
units = st.sampled_from(["mm", "um", "µm", "nm", "m", "in", "MM", ""]) | st.text(max_size=5)
frames = st.sampled_from(["stage", "library", "Stage", "LIBRARY", "microscope", ""])


@st.composite
def move_bodies(draw) -> dict[str, Any]:
    body: dict[str, Any] = {"x": draw(coordinate), "y": draw(coordinate)}
    if draw(st.booleans()):
        body["frame"] = draw(frames)
    if draw(st.booleans()):
        body["units"] = draw(units)
    if draw(st.booleans()):
        body[draw(st.sampled_from(["x_um", "z", "speed", "force"]))] = draw(coordinate)
    for key in draw(st.lists(st.sampled_from(["x", "y"]), max_size=1)):
        body.pop(key, None)
    return body


def _number(v: Any) -> bool:
    """A finite JSON number (an int beyond a double is not one)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _valid_move(body: dict[str, Any]) -> bool:
    """Whether a move body is valid by the schema (its target may still be out of limits)."""
    real = _number(body.get("x")) and _number(body.get("y"))
    known = set(body) <= {"x", "y", "frame", "units"}
    return (
        real
        and known
        and body.get("frame", "library") in ("stage", "library")
        and body.get("units", "mm") == "mm"
    )


# ------------------------------------------------------------------ properties


@SETTINGS
@given(body=move_bodies())
def test_a_bad_move_is_refused_and_nothing_moves(agent, holder, body):
    before = _position(agent)
    r = _send(agent, holder, "/v1/move", body)
    after = _position(agent)  # inside the limits whatever was asked
    if r.status_code == 200:
        assert _valid_move(body), body
        return
    code = _refused_as_documented(r, "invalid_request", "out_of_limits")
    assert after == before, "a refused move moved the stage"
    if not _valid_move(body):
        assert code == "invalid_request", (body, r.text)


@SETTINGS
@given(
    modality=name | st.sampled_from(["pfm_loop", "afm_topo", "raman", "PFM_LOOP", ""]),
    request_id=st.none() | name,
)
def test_unknown_or_unsafe_modalities_and_request_ids_are_refused(
    agent, holder, modality, request_id
):
    before = agent.driver.status()["n_measured"]
    body = {"modality": modality, "request_id": request_id}
    r = _send(agent, holder, "/v1/measure", body)
    valid_rid = request_id is None or (
        0 < len(request_id) <= 128
        and request_id[0].isascii()
        and request_id[0].isalnum()
        and all(c.isascii() and (c.isalnum() or c in "._+-") for c in request_id)
    )
    if modality in ("pfm_loop", "afm_topo") and valid_rid:
        assert r.status_code in (200, 422), r.text  # 422 only for a reused request id
        if r.status_code == 422:
            _refused_as_documented(r, "request_id_reused")
        return
    _refused_as_documented(r, "invalid_request", "unknown_modality")
    assert agent.driver.status()["n_measured"] == before, "a refused measure acquired"


@SETTINGS
@given(sample_id=name | st.integers() | st.none() | st.lists(st.text(max_size=3), max_size=2))
def test_path_like_sample_ids_are_refused(agent, holder, sample_id):
    before = agent.driver.status()["sample"]
    r = _send(agent, holder, "/v1/sample", {"sample_id": sample_id})
    if r.status_code == 200:
        assert isinstance(sample_id, str) and "/" not in sample_id and "\\" not in sample_id
        assert not sample_id.startswith(".") and MARK not in sample_id
        return
    _refused_as_documented(r, "invalid_request")
    assert agent.driver.status()["sample"] == before


points = st.lists(st.lists(coordinate, min_size=0, max_size=3), max_size=6)


@SETTINGS
@given(library=points | coordinate, stage=points | coordinate)
def test_bad_fiducials_are_refused_and_the_frame_stays(agent, holder, library, stage):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = HTTP.get(f"{agent.url}/v1/status", headers=auth).json()["frame"]
    r = _send(agent, holder, "/v1/frame", {"library": library, "stage": stage})
    if r.status_code == 200:  # hypothesis drew a real frame: put the instrument's back
        lib, stg = agent.driver.fiducials()
        fit = {"library": lib.tolist(), "stage": stg.tolist()}
        assert _send(agent, holder, "/v1/frame", fit).status_code == 200
        return
    _refused_as_documented(r, "invalid_request", "bad_fiducials")
    assert HTTP.get(f"{agent.url}/v1/status", headers=auth).json()["frame"] == before
    _position(agent)


# ------------------------------------------------------------------ sizes and shapes


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_huge_body_is_refused_with_413(agent, holder, chunked):
    params = {"data": [0.0] * 300_000}  # ~1.5 MB of JSON, over the 1 MiB an agent reads
    content = json.dumps({"modality": "pfm_loop", "params": params}).encode()
    before = agent.driver.status()["n_measured"]
    if chunked:
        pieces = [content[i : i + 65536] for i in range(0, len(content), 65536)]
        r = HTTP.post(f"{agent.url}/v1/measure", headers=holder, content=iter(pieces))
    else:
        r = HTTP.post(f"{agent.url}/v1/measure", headers=holder, content=content)
    assert _refused_as_documented(r, "too_large") == "too_large" and r.status_code == 413
    assert agent.driver.status()["n_measured"] == before


def test_too_many_fiducials_and_deep_nesting_are_4xx_not_500(agent, holder):
    many = [[float(i), float(i % 7)] for i in range(1001)]
    r = _send(agent, holder, "/v1/frame", {"library": many, "stage": many})
    assert _refused_as_documented(r, "invalid_request") and r.status_code == 422
    deep = "[" * 100_000 + "]" * 100_000  # parses to a RecursionError, not a 500
    r = HTTP.post(f"{agent.url}/v1/move", headers=holder, content=deep.encode())
    _refused_as_documented(r, "bad_request", "invalid_request")
    r = HTTP.post(f"{agent.url}/v1/move", headers=holder, content=b"\xff\xfe{not json")
    _refused_as_documented(r, "bad_request", "invalid_request")
    r = HTTP.post(
        f"{agent.url}/v1/move",
        headers={**holder, "Content-Type": "text/plain"},
        content=b'{"x": 1, "y": 1}',
    )
    _refused_as_documented(r, "invalid_request")


def test_nothing_was_written_under_a_traversal_name():
    """Runs last in this file: no file or folder anywhere we can look is named after MARK."""
    roots = [Path("/tmp"), Path.cwd(), Path.home(), Path(__file__).resolve().parents[1]]
    found = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).relative_to(root).parts)
            dirnames[:] = [d for d in dirnames if depth < 4 and d not in {".venv", ".git"}]
            found += [os.path.join(dirpath, n) for n in dirnames + filenames if MARK in n]
    assert not found, found
