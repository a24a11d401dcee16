"""What the agent server remembers between requests, and how it refuses or cuts an answer.

The :class:`MeasureCache` that makes ``measure`` exactly-once by request id, :class:`ApiError` (an
answer with an error code the client maps to an exception) and :class:`DroppedResponse` (an
answer cut mid-body, for drivers that simulate a lost connection). The controller lease has its
own module (``lease.py``); the routes live in ``server.py``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from starlette.responses import Response

from coorch.records import Measurement


class ApiError(Exception):
    """An HTTP error with a machine-readable code (``error``) the client turns into a type."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


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


class DroppedResponse(Response):
    """Starts an answer and stops mid-body: the client sees the connection drop."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        _DROP_FILTER.expect()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"4096"), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"measurement_id"', "more_body": True})


class MeasureCache:
    """Results by request id (bounded, oldest evicted) plus the requests still running."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.done: OrderedDict[str, Measurement] = OrderedDict()
        self.running: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def claim(self, rid: str, wait_s: float) -> Measurement | None:
        """The result already made for ``rid``, or None: then the caller must acquire it and
        call :meth:`finish`. A retry of a request still running waits up to ``wait_s`` for the
        first attempt (the client timed out) and answers 503 if it is still running or failed."""
        with self.lock:
            done = self.done.get(rid)
            running = self.running.get(rid)
            if done is None and running is None:
                self.running[rid] = threading.Event()
                return None
        if done is None and running is not None:
            if not running.wait(wait_s):
                raise ApiError(503, "in_progress", f"request {rid!r} is still running")
            done = self.done.get(rid)
            if done is None:
                raise ApiError(503, "transient", f"first attempt of {rid!r} failed; retry")
        return done

    def put(self, rid: str, m: Measurement) -> None:
        with self.lock:
            self.done[rid] = m
            while len(self.done) > self.size:
                self.done.popitem(last=False)

    def finish(self, rid: str) -> None:
        """The attempt that claimed ``rid`` is over (stored or failed): wake its retries."""
        with self.lock:
            self.running.pop(rid).set()
