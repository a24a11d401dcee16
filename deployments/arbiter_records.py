"""What the facility arbiter records: turns granted on shared instruments, and who waits.

Plain frozen dataclasses with no behaviour, in their own module so that the arbiter
(:mod:`~coorch.deployments.arbiter`, which writes them), the plan (``coorch facility plan``,
which draws them) and the tests (which check the rules from them) share one shape. Times are
wall-clock seconds since the epoch (``time.time()``); on a compressed clock (twins with a
``time_scale``) a caller converts them to instrument time itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Waiter:
    """A campaign waiting for a turn on an instrument (one row per waiting measurement)."""

    id: int
    instrument: str
    campaign: str
    owner: str
    priority: int  # higher goes first
    enqueued: float
    loaded: bool  # the campaign's sample is already in the instrument (no transfer needed)


@dataclass(frozen=True)
class Grant:
    """One turn on an instrument: from the moment it was granted until it was released.

    ``outranked_by`` is the highest priority among the *other* live waiters for the same
    instrument at the moment of the grant (None: nobody else waited); the arbiter's rule is
    that it is never above ``priority``. ``released`` and ``charged_s`` are None while the turn
    is held (or when its holder died holding it: its Prefect slot lease then lapses)."""

    id: int
    instrument: str
    campaign: str
    owner: str
    priority: int
    enqueued: float
    granted: float
    released: float | None
    charged_s: float | None  # instrument-seconds charged to the owner (measure, move, transfer)
    outranked_by: int | None
