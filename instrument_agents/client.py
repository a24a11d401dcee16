"""Synchronous httpx client for an instrument agent, with safe retries.

Networks and instruments fail in ways a campaign must ride out: a 503, a timeout, a dropped
connection. Every call here retries those with exponential backoff; ``measure`` sends the same
request id on every attempt, and the server answers a repeated id from its cache, so a
measurement is performed exactly once however many attempts it took. Errors a retry cannot fix
(4xx, a latched instrument fault) raise at once as typed exceptions.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx

from coorch.records import InstrumentDescription, Measurement, new_id

RETRY_STATUS = {502, 503, 504}


class InstrumentError(Exception):
    """The agent refused or failed a call. ``status`` and ``error`` come from the response."""

    def __init__(self, message: str, *, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status, self.error = status, error


class AuthError(InstrumentError):
    """401 (no/bad token) or 403 (read-only token on a control route)."""


class LeaseConflict(InstrumentError):
    """409: another client holds the instrument's lease."""


class OutOfLimits(InstrumentError):
    """422: the move target is outside the stage limits; nothing moved."""


class MeasurementAborted(InstrumentError):
    """409: the operation was stopped by an abort."""


class InstrumentFault(InstrumentError):
    """500: a fault a retry will not clear (broken tip, lost beam): reset the instrument."""


class InstrumentUnavailable(InstrumentError):
    """Retries exhausted on transient errors, timeouts or lost connections."""


def _default_client_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class InstrumentClient:
    """One controller of one instrument agent (use as a context manager)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 0.05,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or _default_client_id()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.attempts = 0  # HTTP attempts made (for tests and diagnostics)
        self._description: InstrumentDescription | None = None
        # Plain http needs no TLS context; building one loads the CA bundle (~0.1 s per client).
        plain = self.base_url.startswith("http://")
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_s,
            verify=not plain,
            headers={"Authorization": f"Bearer {token}", "X-Client-Id": self.client_id},
        )

    # ----------------------------------------------------------------- plumbing
    def __enter__(self) -> InstrumentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self, method: str, path: str, *, json: Any = None, timeout_s: float | None = None
    ) -> Any:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.attempts += 1
            try:
                r = self._http.request(method, path, json=json, timeout=timeout_s or self.timeout_s)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = exc
                continue
            if r.status_code in RETRY_STATUS:
                last = _error_for(r)
                continue
            if r.status_code >= 400:
                raise _error_for(r)
            return r.json()
        raise InstrumentUnavailable(
            f"{method} {self.base_url}{path} failed after {self.max_retries + 1} attempts: {last!r}"
        ) from last

    # ----------------------------------------------------------------- API
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def describe(self) -> InstrumentDescription:
        self._description = InstrumentDescription.model_validate(
            self._request("GET", "/v1/describe")
        )
        return self._description

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/v1/status")

    def acquire_lease(self, ttl_s: float = 30.0) -> dict[str, Any]:
        return self._request("POST", "/v1/lease", json={"ttl_s": ttl_s})

    def release_lease(self) -> None:
        self._request("DELETE", "/v1/lease")

    def load_sample(self, sample_id: str) -> dict[str, Any]:
        """Load a sample; the timeout allows for the instrument's (scaled) load time."""
        d = self._description or self.describe()
        return self._request(
            "POST",
            "/v1/sample",
            json={"sample_id": sample_id},
            timeout_s=self.timeout_s + d.sample_load_cost_s * d.time_scale,
        )

    def move(self, x: float, y: float, frame: str = "library") -> dict[str, float]:
        """Absolute move (so a retry is harmless). Returns stage and library coordinates."""
        if not (math.isfinite(x) and math.isfinite(y)):
            raise OutOfLimits(
                f"move target ({x}, {y}) is not finite; nothing moved",
                status=422,
                error="out_of_limits",
            )
        return self._request(
            "POST",
            "/v1/move",
            json={"x": x, "y": y, "frame": frame},
            timeout_s=self.timeout_s + self._move_allowance(x, y),
        )

    def measure(
        self, modality: str, request_id: str | None = None, params: dict[str, Any] | None = None
    ) -> Measurement:
        """Acquire once. Every retry reuses ``request_id`` (generated if None)."""
        rid = request_id or new_id("m")
        body = {"modality": modality, "request_id": rid, "params": params or {}}
        data = self._request(
            "POST",
            "/v1/measure",
            json=body,
            timeout_s=self.timeout_s + self._cost_allowance(modality),
        )
        return Measurement.model_validate(data)

    def abort(self) -> None:
        self._request("POST", "/v1/abort")

    def reset(self) -> dict[str, Any]:
        """Clear a latched fault (``POST /v1/reset``)."""
        return self._request("POST", "/v1/reset")

    def set_frame(
        self, library_pts: Sequence[Sequence[float]], stage_pts: Sequence[Sequence[float]]
    ) -> dict[str, Any]:
        """Fit the agent's library->stage frame from >= 3 fiducial pairs; returns the residual."""
        return self._request(
            "POST",
            "/v1/frame",
            json={"library": [list(p) for p in library_pts], "stage": [list(p) for p in stage_pts]},
        )

    # ----------------------------------------------------------------- time model
    def _cost_allowance(self, modality: str) -> float:
        """Scaled instrument time for one acquisition: the timeout must not fire before it."""
        d = self._description or self.describe()
        try:
            return d.modality(modality).cost_s * d.time_scale
        except KeyError:
            return 0.0

    def _move_allowance(self, x: float, y: float) -> float:
        d = self._description or self.describe()
        if d.move_cost_s_per_mm <= 0:
            return 0.0
        span = max(hi - lo for lo, hi in d.stage_limits.values())
        return 2 * span * d.move_cost_s_per_mm * d.time_scale


def _error_for(r: httpx.Response) -> InstrumentError:
    try:
        body = r.json()
    except ValueError:
        body = {}
    error = body.get("error", "") if isinstance(body, dict) else ""
    detail = body.get("detail", r.text) if isinstance(body, dict) else r.text
    msg = f"HTTP {r.status_code} {error or ''}: {detail}".strip()
    cls: type[InstrumentError] = InstrumentError
    if r.status_code in (401, 403):
        cls = AuthError
    elif r.status_code == 409:
        cls = MeasurementAborted if error == "aborted" else LeaseConflict
    elif r.status_code == 422 and error == "out_of_limits":
        cls = OutOfLimits
    elif r.status_code == 500:
        cls = InstrumentFault
    return cls(msg, status=r.status_code, error=error)
