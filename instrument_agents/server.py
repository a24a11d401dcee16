"""The HTTP face of any driver: auth, lease, stage limits, frames and exactly-once measure.

Every rule that protects an instrument lives here, once, rather than in each driver: a real
driver only moves and acquires; this wrapper decides who may ask (bearer tokens, one controller
at a time), what may be asked (stage limits checked before anything moves), and makes retries
safe (a measurement is cached by its request id, so a client that lost an answer gets the same
one back instead of a second acquisition).

Routes (all JSON, prefix ``/v1``): ``GET health`` (no token), ``GET describe``, ``GET status``
(any valid token), ``POST/DELETE lease``, ``POST sample``, ``POST move``, ``POST measure``,
``POST abort``, ``POST reset``, ``POST frame`` (control token). Errors are
``{"error": <code>, "detail": <text>}`` with codes the client maps to exceptions.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

from coorch.instrument_agents.faults import ResponseLost
from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.protocol import Aborted, Driver, DriverError
from coorch.records import InstrumentDescription, Measurement, new_id


class ApiError(Exception):
    """An HTTP error with a machine-readable code (``error``) the client turns into a type."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class MoveBody(BaseModel):
    x: float
    y: float
    frame: Literal["stage", "library"] = "library"


class MeasureBody(BaseModel):
    modality: str
    request_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class SampleBody(BaseModel):
    sample_id: str


class LeaseBody(BaseModel):
    ttl_s: float | None = None


class FrameBody(BaseModel):
    library: list[tuple[float, float]]
    stage: list[tuple[float, float]]


class Lease:
    """One controller at a time; the lease lapses after ``ttl`` s without activity."""

    def __init__(self, default_ttl_s: float) -> None:
        self.default_ttl_s = default_ttl_s
        self.holder: str | None = None
        self.expires = 0.0
        self._ttl = default_ttl_s
        self._lock = threading.Lock()

    def _live_holder(self) -> str | None:
        if self.holder is not None and time.monotonic() >= self.expires:
            self.holder = None
        return self.holder

    def check(self, client_id: str) -> None:
        """Refuse ``client_id`` if someone else holds the lease; renew it if it is the holder."""
        with self._lock:
            holder = self._live_holder()
            if holder is None:
                return
            if holder != client_id:
                raise ApiError(409, "lease_conflict", f"instrument is leased by {holder!r}")
            self.expires = time.monotonic() + self._ttl

    def acquire(self, client_id: str, ttl_s: float | None) -> dict[str, Any]:
        with self._lock:
            holder = self._live_holder()
            if holder not in (None, client_id):
                raise ApiError(409, "lease_conflict", f"instrument is leased by {holder!r}")
            self._ttl = ttl_s if ttl_s and ttl_s > 0 else self.default_ttl_s
            self.holder, self.expires = client_id, time.monotonic() + self._ttl
            return self.info()

    def release(self, client_id: str) -> None:
        with self._lock:
            holder = self._live_holder()
            if holder not in (None, client_id):
                raise ApiError(409, "lease_conflict", f"instrument is leased by {holder!r}")
            self.holder = None

    def info(self) -> dict[str, Any]:
        holder = self._live_holder()
        left = max(0.0, self.expires - time.monotonic()) if holder else 0.0
        return {"holder": holder, "expires_in_s": left}


class _ExpectedDropFilter(logging.Filter):
    """Hides uvicorn's complaint about the responses we cut on purpose (simulated disconnects)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0
        self._lock = threading.Lock()

    def expect(self) -> None:
        with self._lock:
            self.pending += 1

    def filter(self, record: logging.LogRecord) -> bool:
        if "without completing response" in record.getMessage():
            with self._lock:
                if self.pending > 0:
                    self.pending -= 1
                    return False
        return True


_DROP_FILTER = _ExpectedDropFilter()
logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)


class _DroppedResponse(Response):
    """Starts an answer and stops mid-body: the client sees the connection drop."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        _DROP_FILTER.expect()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4096"),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"measurement_id"',
                    "more_body": True})


class _MeasureCache:
    """Results by request id (bounded, oldest evicted) plus the requests still running."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.done: OrderedDict[str, Measurement] = OrderedDict()
        self.running: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def put(self, rid: str, m: Measurement) -> None:
        with self.lock:
            self.done[rid] = m
            while len(self.done) > self.size:
                self.done.popitem(last=False)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


def create_app(driver: Driver, *, token: str, readonly_token: str | None = None,
               frame: AffineFrame | None = None, lease_ttl_s: float = 30.0,
               inflight_wait_s: float = 5.0, cache_size: int = 10_000) -> FastAPI:
    """Serve ``driver`` over HTTP.

    ``frame`` maps library mm to this instrument's stage mm; it defaults to the driver's own
    ``frame`` attribute (the twins carry one) or the identity. ``inflight_wait_s`` bounds how
    long a retried measure waits for the first attempt still running before answering 503.
    """
    if not token:
        raise ValueError("a control token is required")
    app = FastAPI(title="coorch instrument agent", version="1")
    lease = Lease(lease_ttl_s)
    cache = _MeasureCache(cache_size)
    state: dict[str, Any] = {"frame": frame or getattr(driver, "frame", None)
                             or AffineFrame.identity()}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(DriverError)
    async def _driver_error(_: Request, exc: DriverError) -> JSONResponse:
        if isinstance(exc, Aborted):
            status, code = 409, "aborted"
        elif exc.transient:
            status, code = 503, "transient"
        else:
            status, code = 500, "fault"
        return JSONResponse({"error": code, "detail": str(exc), "transient": exc.transient},
                            status_code=status)

    def reader(authorization: str | None = Header(default=None)) -> None:
        tok = _bearer(authorization)
        if not (_same(tok, token) or _same(tok, readonly_token)):
            raise ApiError(401, "unauthorized", "a valid bearer token is required")

    def operator(authorization: str | None = Header(default=None),
                 x_client_id: str | None = Header(default=None)) -> str:
        tok = _bearer(authorization)
        if _same(tok, token):
            return x_client_id or "anonymous"
        if _same(tok, readonly_token):
            raise ApiError(403, "forbidden", "the read-only token cannot control the instrument")
        raise ApiError(401, "unauthorized", "a valid bearer token is required")

    def controller(client_id: str = Depends(operator)) -> str:
        lease.check(client_id)
        return client_id

    def where() -> dict[str, float]:
        st = driver.status()
        sx, sy = float(st["stage_x"]), float(st["stage_y"])
        lx, ly = state["frame"].to_library(sx, sy)
        return {"stage_x": sx, "stage_y": sy, "library_x": float(lx), "library_y": float(ly)}

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/describe", dependencies=[Depends(reader)])
    def describe() -> InstrumentDescription:
        return driver.describe()

    @app.get("/v1/status", dependencies=[Depends(reader)])
    def status() -> dict[str, Any]:
        st = dict(driver.status())
        st.update(where())
        st["lease"] = lease.info()
        st["frame"] = state["frame"].to_dict()
        return st

    @app.post("/v1/lease")
    def take_lease(body: LeaseBody | None = None,
                   client_id: str = Depends(operator)) -> dict[str, Any]:
        return lease.acquire(client_id, body.ttl_s if body else None)

    @app.delete("/v1/lease")
    def drop_lease(client_id: str = Depends(operator)) -> dict[str, Any]:
        lease.release(client_id)
        return {"holder": None}

    @app.post("/v1/sample")
    def load_sample(body: SampleBody, _: str = Depends(controller)) -> dict[str, Any]:
        driver.load_sample(body.sample_id)
        return {"sample": driver.status().get("sample")}

    @app.post("/v1/move")
    def move(body: MoveBody, _: str = Depends(controller)) -> dict[str, float]:
        if not (math.isfinite(body.x) and math.isfinite(body.y)):
            raise ApiError(422, "out_of_limits", "target is not a finite number")
        if body.frame == "library":
            sx, sy = state["frame"].to_stage(body.x, body.y)
        else:
            sx, sy = body.x, body.y
        limits = driver.describe().stage_limits
        for axis, value in (("x", sx), ("y", sy)):
            lo, hi = limits[axis]
            if not lo <= value <= hi:
                raise ApiError(422, "out_of_limits",
                               f"stage {axis}={value:.4f} mm outside limits [{lo}, {hi}]; "
                               "nothing moved")
        driver.move(float(sx), float(sy))
        return where()

    @app.post("/v1/measure", response_model=None)
    def measure(body: MeasureBody, _: str = Depends(controller)) -> Measurement | Response:
        names = [m.name for m in driver.describe().modalities]
        if body.modality not in names:
            raise ApiError(422, "unknown_modality", f"no modality {body.modality!r}; have {names}")
        rid = body.request_id or new_id("m")
        with cache.lock:
            done = cache.done.get(rid)
            running = cache.running.get(rid)
            if done is None and running is None:
                cache.running[rid] = threading.Event()
        if done is None and running is not None:
            # A retry while the first attempt still runs (the client timed out): wait for it.
            if not running.wait(inflight_wait_s):
                raise ApiError(503, "in_progress", f"request {rid!r} is still running")
            done = cache.done.get(rid)
            if done is None:
                raise ApiError(503, "transient", f"first attempt of {rid!r} failed; retry")
        if done is not None:
            if done.modality != body.modality:
                raise ApiError(422, "request_id_reused",
                               f"request id {rid!r} was used for {done.modality!r}")
            return done
        return _acquire(rid, body)

    def _acquire(rid: str, body: MeasureBody) -> Measurement | Response:
        lost = False
        try:
            pos = where()
            sample = driver.status().get("sample") or ""
            started = time.time()
            try:
                signal = driver.measure(body.modality, body.params)
            except ResponseLost as exc:
                signal, lost = exc.signal, True
            m = Measurement(measurement_id=rid, instrument=driver.describe().id,
                            modality=body.modality, sample=str(sample), started=started,
                            ended=time.time(), signal=signal, **pos)
            cache.put(rid, m)
        finally:
            with cache.lock:
                cache.running.pop(rid).set()
        return _DroppedResponse() if lost else m

    @app.post("/v1/abort")
    def abort(_: str = Depends(operator)) -> dict[str, Any]:
        # Safety first: any control-token holder may stop the instrument, lease or not.
        driver.abort()
        return {"aborted": True}

    @app.post("/v1/reset")
    def reset(_: str = Depends(controller)) -> dict[str, Any]:
        fn = getattr(driver, "reset", None)
        if fn is None:
            raise ApiError(501, "not_supported", "this driver has no reset")
        fn()
        return {"fault": driver.status().get("fault")}

    @app.post("/v1/frame")
    def set_frame(body: FrameBody, _: str = Depends(controller)) -> dict[str, Any]:
        try:
            state["frame"] = AffineFrame.fit(body.library, body.stage)
        except ValueError as exc:
            raise ApiError(422, "bad_fiducials", str(exc)) from None
        return state["frame"].to_dict()

    return app
