"""The HTTP face of any driver: auth, lease, stage limits, frames and exactly-once measure.

Every rule that protects an instrument lives here, once, rather than in each driver: a real
driver only moves and acquires; this wrapper decides who may ask (named bearer tokens, one
controller at a time holding an unguessable lease id), what may be asked (stage limits checked
before anything moves), and makes retries safe (a measurement is cached by its request id, so a
client that lost an answer gets the same one back instead of a second acquisition).

Routes (all JSON, prefix ``/v1``): ``GET health`` (no token), ``GET describe``, ``GET status``
(any valid token), ``POST/DELETE lease``, ``POST sample``, ``POST move``, ``POST measure``,
``POST abort``, ``POST reset``, ``POST frame`` (control token; all but ``abort`` and ``POST
lease`` also need the lease: ``X-Lease-Id``). Errors are ``{"error": <code>, "detail": <text>}``
with codes the client maps to exceptions.

Layout: the served state is one :class:`_Agent` in ``app.state.agent`` (the lease from
:mod:`~coorch.instrument_agents.lease`, the request-id cache from
:mod:`~coorch.instrument_agents.guards`, the tokens from :mod:`~coorch.instrument_agents.tokens`);
who may ask is three FastAPI dependencies (``reader``, ``operator``, ``controller``: tokens, then
the lease); the routes are plain functions on three routers (``reads``, ``leases``,
``controls``); driver errors become answers in one handler. :func:`create_app` only assembles
them. The server knows drivers only through :mod:`~coorch.instrument_agents.protocol`:
``Driver``, the optional ``Resettable`` (checked with ``isinstance``) and the ``DriverError``
family.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.responses import Response

from coorch.instrument_agents.contract import (
    BodyLimit,
    errors,
    install_handlers,
    install_openapi,
)
from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.guards import ApiError, DroppedResponse, MeasureCache
from coorch.instrument_agents.lease import Caller, Lease
from coorch.instrument_agents.protocol import Driver, Resettable, ResponseLost
from coorch.instrument_agents.tokens import ControlTokens
from coorch.instrument_agents.wire import (
    AbortView,
    FrameBody,
    FrameView,
    Health,
    LeaseBody,
    LeaseGrant,
    LeaseView,
    MeasureBody,
    MoveBody,
    Position,
    ResetView,
    SampleBody,
    SampleView,
    StatusView,
)
from coorch.records import InstrumentDescription, Measurement, new_id

#: The name ``create_app(token=...)`` gives its single control token.
DEFAULT_TOKEN_NAME = "default"


@dataclass
class _Agent:
    """Everything one app serves: the driver and the rules around it (``app.state.agent``)."""

    driver: Driver
    tokens: ControlTokens  # its repr shows names only
    readonly_token: str | None = field(repr=False)  # secrets stay out of reprs and logs
    frame: AffineFrame
    lease: Lease
    cache: MeasureCache
    inflight_wait_s: float

    def where(self) -> dict[str, float]:
        """The stage position from the driver, and the same point in library coordinates."""
        st = self.driver.status()
        sx, sy = float(st["stage_x"]), float(st["stage_y"])
        lx, ly = self.frame.to_library(sx, sy)
        return {"stage_x": sx, "stage_y": sy, "library_x": float(lx), "library_y": float(ly)}


# ---------------------------------------------------------------------- dependencies: who asks


async def get_agent(request: Request) -> _Agent:
    return request.app.state.agent


#: How a token and a lease id are sent, as OpenAPI security schemes (so generated clients and
#: fuzzers know them); both read absent as None and the refusals below are the agent's own.
BEARER = HTTPBearer(auto_error=False, description="a control token, or the read-only token")
LEASE_ID = APIKeyHeader(
    name="X-Lease-Id",
    scheme_name="LeaseId",
    auto_error=False,
    description="the lease id POST /v1/lease answered, with the token that took it",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def _bearer(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return creds.credentials.strip() if creds is not None else None


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def _label(client_id: str | None) -> str:
    """The holder name as shown in status and logs: printable, at most 64 characters."""
    text = "".join(ch for ch in (client_id or "") if ch.isprintable())[:64].strip()
    return text or "anonymous"


OptionalHeader = Annotated[str | None, Header()]


async def reader(agent: Annotated[_Agent, Depends(get_agent)], creds: Credentials = None) -> None:
    """Any valid token (control or read-only): describe and status."""
    tok = _bearer(creds)
    if not (tok in agent.tokens or _same(tok, agent.readonly_token)):
        raise ApiError(401, "unauthorized", "a valid bearer token is required")


async def operator(
    agent: Annotated[_Agent, Depends(get_agent)],
    creds: Credentials = None,
    x_client_id: OptionalHeader = None,
) -> Caller:
    """A control token; returns who asks: the holder name it gives (``X-Client-Id``, else
    ``anonymous``; a label, not a credential) and the name of its token."""
    tok = _bearer(creds)
    name = agent.tokens.name_of(tok)
    if name is not None:
        return Caller(client_id=_label(x_client_id), token_name=name)
    if _same(tok, agent.readonly_token):
        raise ApiError(403, "forbidden", "the read-only token cannot control the instrument")
    raise ApiError(401, "unauthorized", "a valid bearer token is required")


LeaseId = Annotated[str | None, Security(LEASE_ID)]


async def controller(
    caller: Caller = Depends(operator), agent: _Agent = Depends(get_agent), lease_id: LeaseId = None
) -> AsyncIterator[Caller]:
    """The lease holder: an operator presenting the current lease id (``X-Lease-Id``) with
    the token that took it. The lease is renewed, and kept alive while the call runs, so a
    long move or transfer cannot lapse it half way; everyone else is refused (409/403)."""
    grant = agent.lease.enter(caller, lease_id)
    try:
        yield caller
    finally:
        agent.lease.leave(grant)


def _ok(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, **errors(*statuses)}


# Statuses per kind of route: driver calls may fail (500 fault, 503 transient, 409 aborted);
# bodies may be unreadable (400), too large (413) or invalid (422); 500 internal is any bug.
READ = (401, 500, 503)
CONTROL = (401, 403, 409, 500, 503)
WITH_BODY = (400, 413, 422)

# ---------------------------------------------------------------------- routes

reads = APIRouter(prefix="/v1")
leases = APIRouter(prefix="/v1")
controls = APIRouter(prefix="/v1")


@reads.get("/health", response_model=Health)
def health() -> dict[str, Any]:
    return {"status": "ok"}


@reads.get("/describe", dependencies=[Depends(reader)], responses=errors(*READ))
def describe(agent: _Agent = Depends(get_agent)) -> InstrumentDescription:
    return agent.driver.describe()


@reads.get(
    "/status", dependencies=[Depends(reader)], response_model=None, responses=_ok(StatusView, *READ)
)
def status(agent: _Agent = Depends(get_agent)) -> dict[str, Any]:
    st = dict(agent.driver.status())
    st.update(agent.where())
    st["lease"] = agent.lease.info()
    st["frame"] = agent.frame.to_dict()
    return st


@leases.post(
    "/lease", response_model=None, responses=_ok(LeaseGrant, 401, 403, 409, 500, *WITH_BODY)
)
def take_lease(
    body: LeaseBody | None = None,
    caller: Caller = Depends(operator),
    agent: _Agent = Depends(get_agent),
    x_lease_id: OptionalHeader = None,
) -> dict[str, Any]:
    """Take the lease (answer: ``lease_id`` plus the public view), or renew it by presenting
    its id in ``X-Lease-Id`` -- which is how a restarted campaign takes over its own lease."""
    body = body or LeaseBody()
    return agent.lease.acquire(caller, x_lease_id, body.ttl_s, body.request_id)


@leases.delete("/lease", response_model=None, responses=_ok(LeaseView, 401, 403, 409, 500))
def drop_lease(
    caller: Caller = Depends(operator), agent: _Agent = Depends(get_agent), lease_id: LeaseId = None
) -> dict[str, Any]:
    """Release: only with the current lease id; a no-op when nothing is leased."""
    agent.lease.release(caller, lease_id)
    return agent.lease.info()


@controls.post("/sample", response_model=None, responses=_ok(SampleView, *CONTROL, *WITH_BODY))
def load_sample(
    body: SampleBody, _: Caller = Depends(controller), agent: _Agent = Depends(get_agent)
) -> dict[str, Any]:
    agent.driver.load_sample(body.sample_id)
    return {"sample": agent.driver.status().get("sample")}


@controls.post("/move", response_model=None, responses=_ok(Position, *CONTROL, *WITH_BODY))
def move(
    body: MoveBody, _: Caller = Depends(controller), agent: _Agent = Depends(get_agent)
) -> dict[str, float]:
    if body.frame == "library":
        sx, sy = agent.frame.to_stage(body.x, body.y)
    else:
        sx, sy = body.x, body.y
    limits = agent.driver.describe().stage_limits
    for axis, value in (("x", sx), ("y", sy)):
        lo, hi = limits[axis]
        if not lo <= value <= hi:  # False for NaN: a frame overflow cannot slip through
            raise ApiError(
                422,
                "out_of_limits",
                f"stage {axis}={value:.4f} mm outside limits [{lo}, {hi}]; nothing moved",
            )
    agent.driver.move(float(sx), float(sy))
    return agent.where()


@controls.post("/measure", response_model=None, responses=_ok(Measurement, *CONTROL, *WITH_BODY))
def measure(
    body: MeasureBody, _: Caller = Depends(controller), agent: _Agent = Depends(get_agent)
) -> Response:
    names = [m.name for m in agent.driver.describe().modalities]
    if body.modality not in names:
        raise ApiError(422, "unknown_modality", f"no modality {body.modality[:64]!r}; have {names}")
    rid = body.request_id or new_id("m")
    done = agent.cache.claim(rid, agent.inflight_wait_s)
    if done is None:
        return _acquire(agent, rid, body)
    if done.modality != body.modality:
        raise ApiError(
            422, "request_id_reused", f"request id {rid!r} was used for {done.modality!r}"
        )
    return _answer(done)


def _answer(m: Measurement) -> Response:
    """``m`` as JSON, serialised by pydantic in one call: FastAPI's own encoder walks a
    spectrum's values one by one in Python, which was most of a measure call's time."""
    return Response(m.model_dump_json(), media_type="application/json")


def _acquire(agent: _Agent, rid: str, body: MeasureBody) -> Response:
    """Measure once for ``rid`` (claimed by the caller), cache it, and answer it -- or, when the
    driver says the answer is lost (:class:`ResponseLost`), cache it and cut the connection."""
    driver, lost = agent.driver, False
    try:
        pos = agent.where()
        sample = driver.status().get("sample") or ""
        started = time.time()
        try:
            signal = driver.measure(body.modality, body.params)
        except ResponseLost as exc:
            signal, lost = exc.signal, True
        m = Measurement(
            measurement_id=rid,
            instrument=driver.describe().id,
            modality=body.modality,
            sample=str(sample),
            started=started,
            ended=time.time(),
            signal=signal,
            **pos,
        )
        agent.cache.put(rid, m)
    finally:
        agent.cache.finish(rid)
    return DroppedResponse() if lost else _answer(m)


@controls.post("/abort", response_model=None, responses=_ok(AbortView, 401, 403, 500, 503))
def abort(_: Caller = Depends(operator), agent: _Agent = Depends(get_agent)) -> dict[str, Any]:
    # Safety first: any control-token holder may stop the instrument, lease or not; an
    # emergency stop must never wait for, or be refused by, a lease.
    agent.driver.abort()
    return {"aborted": True}


@controls.post("/reset", response_model=None, responses=_ok(ResetView, *CONTROL, 501))
def reset(_: Caller = Depends(controller), agent: _Agent = Depends(get_agent)) -> dict[str, Any]:
    if not isinstance(agent.driver, Resettable):
        raise ApiError(501, "not_supported", "this driver has no reset")
    agent.driver.reset()
    return {"fault": agent.driver.status().get("fault")}


@controls.post("/frame", response_model=None, responses=_ok(FrameView, *CONTROL, *WITH_BODY))
def set_frame(
    body: FrameBody, _: Caller = Depends(controller), agent: _Agent = Depends(get_agent)
) -> dict[str, Any]:
    try:
        frame = AffineFrame.fit(body.library, body.stage)
        limits = agent.driver.describe().stage_limits
        frame.check_maps(limits["x"], limits["y"])
    except ValueError as exc:
        raise ApiError(422, "bad_fiducials", str(exc)) from None
    agent.frame = frame
    return agent.frame.to_dict()


# ---------------------------------------------------------------------- the app


def create_app(
    driver: Driver,
    *,
    token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    readonly_token: str | None = None,
    frame: AffineFrame | None = None,
    lease_ttl_s: float = 30.0,
    inflight_wait_s: float = 5.0,
    cache_size: int = 10_000,
    max_body_bytes: int = 1 << 20,
) -> FastAPI:
    """Serve ``driver`` over HTTP.

    Control tokens: ``tokens`` maps a name (a campaign, a person) to its token, and ``token``
    is one more, named ``default``; at least one is required. The lease records the name of
    the token that took it, never the token. ``frame`` maps library mm to this instrument's
    stage mm; it defaults to the driver's own ``frame`` attribute (the twins carry one) or the
    identity. ``inflight_wait_s`` bounds how long a retried measure waits for the first attempt
    still running before answering 503. A request body over ``max_body_bytes`` is refused
    (413) while it is read. Every error answer is the one body of
    :mod:`~coorch.instrument_agents.contract`, and the schema says which statuses each route
    answers.
    """
    named = dict(tokens or {})
    if token:
        if DEFAULT_TOKEN_NAME in named:
            raise ValueError(f"token= and a token named {DEFAULT_TOKEN_NAME!r} in tokens=")
        named[DEFAULT_TOKEN_NAME] = token
    control = ControlTokens(named)  # raises without any
    if readonly_token and readonly_token in control:
        raise ValueError("the read-only token is also a control token")
    app = FastAPI(title="coorch instrument agent", version="1")
    app.state.agent = _Agent(
        driver=driver,
        tokens=control,
        readonly_token=readonly_token,
        frame=frame or getattr(driver, "frame", None) or AffineFrame.identity(),
        lease=Lease(lease_ttl_s),
        cache=MeasureCache(cache_size),
        inflight_wait_s=inflight_wait_s,
    )
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    for router in (reads, leases, controls):
        app.include_router(router)
    desc = driver.describe()
    (x0, x1), (y0, y1) = desc.stage_limits["x"], desc.stage_limits["y"]
    centre = {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "frame": "stage"}
    install_openapi(app, modalities=[m.name for m in desc.modalities], move_example=centre)
    _build_routes(app)
    return app


def _build_routes(app: FastAPI) -> None:
    """Have FastAPI build every route's parameter models now, in the caller's thread.

    FastAPI (0.150) builds an included router's routes on the first request that reaches
    them, hiding pydantic's ``UnsupportedFieldAttributeWarning`` (aliased header and body
    parameters) under ``warnings.catch_warnings()``, which swaps the process's one filter list
    and is not thread-safe. An agent served on a thread beside a flow or a test that also
    enters ``catch_warnings`` then saw its filters restored under it, and the warning leaked
    (two in CI's summary, 2026-12-04); with ``-W error`` the first lease answered 500. Matching
    a path no route has walks, and so builds, every route."""
    scope = {"type": "http", "method": "GET", "path": "/ no route", "root_path": "", "headers": []}
    for route in app.router.routes:
        route.matches(dict(scope))
