"""The instrument driver contract: a handful of typed methods (DESIGN.md, "Contracts").

Like bluesky's ``protocols.py``, a driver is anything with these methods. The HTTP server
(:mod:`coorch.instrument_agents.server`) wraps any driver; digital twins, the replay backend and
real instruments are drivers, and the conformance suite tests them through that server.

One capability per Protocol: :class:`Driver` is what every instrument must do; an optional
extra is its own small ``runtime_checkable`` Protocol (:class:`Resettable`), which the server
tests with ``isinstance``. The exceptions below are the whole error contract between a driver
and the server: the server imports nothing from the twins or their fault injection.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from coorch.records import InstrumentDescription, Signal


class DriverError(Exception):
    """A fault the driver reports; ``transient`` tells the client whether a retry may help."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Aborted(DriverError):
    """The operation was stopped by :meth:`Driver.abort`; do not retry it blindly."""


class ResponseLost(DriverError):
    """The acquisition finished (``signal`` is its result) but the answer must not arrive.

    A simulation contract (the twins' ``disconnect`` fault): the server caches ``signal`` under
    the request id, then drops the connection mid-answer, which is what a network cut after
    acquisition looks like to a client; the client's retry gets the cached result. A real
    driver never needs to raise it.
    """

    def __init__(self, signal: Signal) -> None:
        super().__init__("connection dropped after acquisition", transient=True)
        self.signal = signal


@runtime_checkable
class Driver(Protocol):
    """One instrument. Positions are in the instrument's stage frame (mm)."""

    def describe(self) -> InstrumentDescription:
        """Static facts: id, kind, modalities (dims, units, cost), stage limits."""

    def status(self) -> dict[str, Any]:
        """Live state. Must hold ``stage_x``, ``stage_y`` (mm) and ``sample`` (str or None);
        should hold ``busy`` (bool) and ``fault`` (str or None)."""

    def load_sample(self, sample_id: str) -> None:
        """Load (or confirm) the sample under the probe."""

    def move(self, stage_x: float, stage_y: float) -> None:
        """Move the stage; the server has already checked the limits."""

    def measure(self, modality: str, params: dict[str, Any]) -> Signal:
        """Acquire one signal at the current position. The server wraps it into a
        :class:`~coorch.records.Measurement` (ids, frames, times) and caches it by request id."""

    def abort(self) -> None:
        """Stop whatever is running, leave the instrument safe.

        A running ``measure``/``move`` should end by raising :class:`Aborted`."""


@runtime_checkable
class Resettable(Protocol):
    """Optional capability: a driver that can clear latched faults (a new tip, a re-aligned
    beam). Served as ``POST /v1/reset``; a driver without it answers 501 there."""

    def reset(self) -> None:
        """Clear latched faults (and any pending abort) so the instrument can measure again."""
