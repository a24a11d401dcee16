"""Synchronous httpx client for an instrument agent, with safe retries.

Networks and instruments fail in ways a campaign must ride out: a 503, a timeout, a dropped
connection. Every call here retries those with exponential backoff; ``measure`` sends the same
request id on every attempt, and the server answers a repeated id from its cache, so a
measurement is performed exactly once however many attempts it took. Errors a retry cannot fix
(4xx, a latched instrument fault) raise at once as typed exceptions.

The lease: the client takes the agent's lease on its first control call (or when
:meth:`InstrumentClient.acquire_lease` says so), keeps the unguessable ``lease_id`` the agent
answers, and sends it as ``X-Lease-Id`` on every control call. If the lease lapsed or was
released under it, the client takes it again once and repeats the call (a measure repeats with
the same request id, so still exactly once); if someone else holds it by then, it raises
:class:`LeaseLost`. With ``lease_file`` the id is also kept on disk (0600), so a process that
restarts after a crash takes over its own lease instead of waiting for it to lapse. Leaving the
``with`` block gives the lease back.

An agent that restarted has forgotten every lease: it answers the id this client holds with 403
``lease_invalid``, which is handled as above (taken again if nobody else took the instrument in
between, then the call is repeated). A take is itself crash-safe: before asking, the client
writes ``pending:<request id>`` to ``lease_file``, so a process killed between the agent's grant
and writing the id down asks again with the same request id and gets the same lease back, instead
of a 409 from its own lease until it lapses.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from coorch.records import InstrumentDescription, Measurement, new_id

RETRY_STATUS = {502, 503, 504}
LEASE_HEADER = "X-Lease-Id"
#: How ``lease_file`` marks a take sent but not (yet) answered: ``pending:<request id>``.
PENDING = "pending:"
LOG = logging.getLogger(__name__)


class InstrumentError(Exception):
    """The agent refused or failed a call. ``status`` and ``error`` come from the response."""

    def __init__(self, message: str, *, status: int | None = None, error: str = "") -> None:
        super().__init__(message)
        self.status, self.error = status, error


class AuthError(InstrumentError):
    """401 (no/bad token) or 403 (read-only token on a control route)."""


class LeaseConflict(InstrumentError):
    """409: another client holds the instrument's lease."""


class LeaseLost(LeaseConflict):
    """This client's lease ended (lapsed, released, taken over) and could not be taken back:
    someone else holds the instrument now, or ``retake_lease`` is off. Also what a 403
    ``lease_required`` / ``lease_expired`` / ``lease_invalid`` answer becomes. A subclass of
    :class:`LeaseConflict`, so code that handles "someone else has the instrument" handles it."""


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
    """One controller of one instrument agent (use as a context manager).

    ``client_id`` names the holder in the agent's status and log (a label, not a credential).
    ``lease_ttl_s`` is the lease's lifetime without activity when the client takes it itself;
    ``lease_file`` keeps the lease id across restarts (see the module docstring);
    ``retake_lease=False`` raises :class:`LeaseLost` instead of taking a lapsed lease again.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 0.05,
        lease_ttl_s: float = 30.0,
        lease_file: str | os.PathLike[str] | None = None,
        retake_lease: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or _default_client_id()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.attempts = 0  # HTTP attempts made (for tests and diagnostics)
        self.retake_lease = retake_lease
        self._description: InstrumentDescription | None = None
        self._lease_ttl_s = lease_ttl_s
        self._lease_file = Path(lease_file) if lease_file is not None else None
        self._lease_lock = threading.RLock()
        self._lease_id, self._pending_take = _read_lease_file(self._lease_file)
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
        """Give back a lease still held (one attempt: an agent that is down lets it lapse),
        then close the connection."""
        if self._lease_id is not None:
            try:
                self.release_lease(retries=0)
            except InstrumentError as exc:
                LOG.warning("%s: lease not released on close (%s); it lapses", self.base_url, exc)
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout_s: float | None = None,
        lease_id: str | None = None,
        retries: int | None = None,
    ) -> Any:
        last: Exception | None = None
        headers = {LEASE_HEADER: lease_id} if lease_id else None
        retries = self.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.attempts += 1
            try:
                r = self._http.request(
                    method, path, json=json, headers=headers, timeout=timeout_s or self.timeout_s
                )
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
            f"{method} {self.base_url}{path} failed after {retries + 1} attempts: {last!r}"
        ) from last

    # ----------------------------------------------------------------- the lease
    @property
    def lease_id(self) -> str | None:
        """The id of the lease this client believes it holds (None: none). Keep it secret."""
        return self._lease_id

    def _keep_lease(self, lease_id: str | None) -> None:
        """Remember ``lease_id`` (None: forget it), in memory and in ``lease_file``."""
        self._lease_id, self._pending_take = lease_id, None
        self._persist(lease_id)

    def _persist(self, content: str | None) -> None:
        if self._lease_file is not None:
            try:
                _write_lease_file(self._lease_file, content)
            except OSError as exc:  # persisting only speeds up a restart: never fatal
                LOG.warning("cannot keep the lease id in %s: %s", self._lease_file, exc)

    def _forget_lease(self, lease_id: str) -> None:
        """The agent said ``lease_id`` is not current: drop it unless already replaced."""
        with self._lease_lock:
            if self._lease_id == lease_id:
                self._keep_lease(None)

    def _holding(self) -> str:
        """The lease id to send, taking the lease first if this client holds none."""
        with self._lease_lock:
            if self._lease_id is None:
                self.acquire_lease(self._lease_ttl_s)
            assert self._lease_id is not None
            return self._lease_id

    def _control(
        self, method: str, path: str, *, json: Any = None, timeout_s: float | None = None
    ) -> Any:
        """A call that needs the lease: sent with ``X-Lease-Id``; a lost lease is taken again
        once (the same body, so a measure keeps its request id) or raises :class:`LeaseLost`."""
        lease_id = self._holding()
        try:
            return self._request(method, path, json=json, timeout_s=timeout_s, lease_id=lease_id)
        except LeaseLost as exc:  # 403: no lease is live under our id (lapsed or released)
            self._forget_lease(lease_id)
            if not self.retake_lease:
                raise
            LOG.info("%s: lease lost (%s); taking it again", self.base_url, exc.error)
            try:
                lease_id = self._holding()
            except LeaseConflict as taken:
                raise LeaseLost(
                    f"{self.base_url}: our lease ended ({exc.error}) and {taken}",
                    status=taken.status,
                    error=taken.error,
                ) from taken
            return self._request(method, path, json=json, timeout_s=timeout_s, lease_id=lease_id)
        except LeaseConflict as exc:  # 409: someone else holds it now
            self._forget_lease(lease_id)
            raise LeaseLost(
                f"{self.base_url}: lease lost to another controller: {exc}",
                status=exc.status,
                error=exc.error,
            ) from exc

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
        """Take the lease, or renew the one held (with ``ttl_s`` as its new lifetime). Returns
        the agent's public view of it; the id itself stays in :attr:`lease_id`. The request id
        makes a retry of a take whose answer was lost get the same lease, not a 409; when no
        lease is held, it is written to ``lease_file`` first, so that holds for a retry by the
        next process too (see the module docstring)."""
        with self._lease_lock:
            self._lease_ttl_s = ttl_s
            if self._lease_id is None:
                self._pending_take = self._pending_take or secrets.token_urlsafe(16)
                self._persist(f"{PENDING}{self._pending_take}")
            body = {"ttl_s": ttl_s, "request_id": self._pending_take or secrets.token_urlsafe(16)}
            try:
                grant = self._request("POST", "/v1/lease", json=body, lease_id=self._lease_id)
            except LeaseConflict:  # whatever id we had is not the live lease
                self._keep_lease(None)
                raise
            self._keep_lease(grant.pop("lease_id"))
        return grant

    def release_lease(self, *, retries: int | None = None) -> None:
        """Give the lease back. A no-op when the instrument is free; :class:`LeaseConflict`
        when someone else holds it (the lease this client had is gone either way)."""
        with self._lease_lock:
            lease_id = self._lease_id
            try:
                self._request("DELETE", "/v1/lease", lease_id=lease_id, retries=retries)
            except LeaseConflict:
                if lease_id is not None:
                    self._keep_lease(None)
                raise
            self._keep_lease(None)

    def load_sample(self, sample_id: str) -> dict[str, Any]:
        """Load a sample; the timeout allows for the instrument's (scaled) load time."""
        d = self._description or self.describe()
        return self._control(
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
        return self._control(
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
        data = self._control(
            "POST",
            "/v1/measure",
            json=body,
            timeout_s=self.timeout_s + self._cost_allowance(modality),
        )
        return Measurement.model_validate(data)

    def abort(self) -> None:
        """Stop the instrument. Sent without the lease on purpose: an emergency stop never
        waits for one (the agent allows it to any control token)."""
        self._request("POST", "/v1/abort")

    def reset(self) -> dict[str, Any]:
        """Clear a latched fault (``POST /v1/reset``)."""
        return self._control("POST", "/v1/reset")

    def set_frame(
        self, library_pts: Sequence[Sequence[float]], stage_pts: Sequence[Sequence[float]]
    ) -> dict[str, Any]:
        """Fit the agent's library->stage frame from >= 3 fiducial pairs; returns the residual."""
        return self._control(
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
    if r.status_code == 403 and error.startswith("lease_"):
        cls = LeaseLost
    elif r.status_code in (401, 403):
        cls = AuthError
    elif r.status_code == 409:
        cls = MeasurementAborted if error == "aborted" else LeaseConflict
    elif r.status_code == 422 and error == "out_of_limits":
        cls = OutOfLimits
    elif r.status_code == 500:
        cls = InstrumentFault
    return cls(msg, status=r.status_code, error=error)


def _read_lease_file(path: Path | None) -> tuple[str | None, str | None]:
    """What a previous run of this controller kept in ``path``: ``(lease id, None)``, or
    ``(None, request id)`` of a take it may not have seen answered, or ``(None, None)``."""
    if path is None:
        return None, None
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        return None, None
    except OSError as exc:  # unreadable: start without it (a restart then waits for the lapse)
        LOG.warning("cannot read the lease id in %s: %s", path, exc)
        return None, None
    if kept.startswith(PENDING):
        return None, kept.removeprefix(PENDING) or None
    return kept or None, None


def _write_lease_file(path: Path, lease_id: str | None) -> None:
    """Keep ``lease_id`` in ``path`` (None: remove it), atomically and readable by the owner
    only: the id is a credential, like the token beside it."""
    if lease_id is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # so that O_CREAT below sets the mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(lease_id)
    os.replace(tmp, path)
