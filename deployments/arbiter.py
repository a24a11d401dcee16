"""The facility arbiter: which waiting campaign gets a free shared instrument next.

Several campaigns (each a Prefect flow run in its own process) share instruments. A measurement
holds its instrument through a Prefect global concurrency limit of one slot, taken with a lease
(:mod:`~coorch.deployments.instrument_slots`) only around the measurement. Prefect orders no
waiters, so the campaigns queue here first (:mod:`~coorch.deployments.arbiter_queue`, SQL beside
the sample registry) and only the head of an instrument's queue asks Prefect for the slot:

    priority (higher first), then fair share (the owner's instrument-seconds used so far, lower
    first, less ``quantum_s`` for a waiter whose sample is already loaded), then arrival.

Higher priority never waits behind lower priority for a free instrument: a waiter that took the
slot is granted only if, in the grant's write transaction, it is still the head; otherwise it
gives the slot back and waits on. What the arbiter decided stays in the tables as
:class:`~coorch.deployments.arbiter_records.Grant` rows (``outranked_by`` records who else was
waiting), from which the tests check the rule.

Crashes: a killed holder's slot comes back when its Prefect lease lapses (``lease_s``, renewed
every ``lease_s / 3`` while held); a killed waiter's row stops counting when its heartbeat lapses
(also ``lease_s``), so neither blocks the queue for longer than a lease.

Usage::

    arbiter = Arbiter("sqlite:////srv/facility.db")
    arbiter.ensure_limits(["afm-1", "raman-1"])
    with arbiter.wait("afm-1", campaign="bfo-sm", owner="alice", priority=1) as turn:
        ...  # move, measure
        turn.release(charged_s=42.0)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType
from uuid import UUID

from coorch.deployments.arbiter_queue import ArbiterQueue
from coorch.deployments.arbiter_records import Grant, Waiter
from coorch.deployments.instrument_slots import InstrumentSlots, LeaseKeeper


class WaitCancelled(Exception):
    """:meth:`Arbiter.wait` returned early because its ``stop`` event was set."""


class Turn:
    """A campaign's turn on an instrument: the Prefect slot, held until :meth:`release`.

    Its lease is renewed in a background thread while held. As a context manager it releases
    on leaving the block if the block did not (charging 0: call ``release(charged_s)`` inside
    the block to charge the owner).
    """

    def __init__(self, arbiter: Arbiter, grant: Grant, lease_id: UUID) -> None:
        self.instrument = grant.instrument
        self.campaign = grant.campaign
        self.owner = grant.owner
        self.priority = grant.priority
        self.grant_id = grant.id
        self.granted = grant.granted
        self._queue = arbiter._queue
        self._slots = arbiter._slots
        self._lock = threading.Lock()
        self._released = False
        self._keeper = LeaseKeeper(
            arbiter._slots,
            lease_id,
            label=f"{grant.campaign} on {grant.instrument}",
            on_renew=lambda: self._queue.hold(grant.id),
        )

    def __repr__(self) -> str:
        return (
            f"Turn(instrument={self.instrument!r}, campaign={self.campaign!r}, "
            f"owner={self.owner!r}, priority={self.priority}, grant_id={self.grant_id})"
        )

    @property
    def released(self) -> bool:
        return self._released

    def release(self, charged_s: float) -> None:
        """Give the instrument back and charge ``charged_s`` instrument-seconds to the owner
        and campaign. Idempotent: a second call does nothing (and charges nothing).

        The grant is stamped released *before* the slot is given back, so the records never
        show two turns on one instrument overlapping."""
        if not charged_s >= 0.0:
            raise ValueError(f"charged_s must be a non-negative number, not {charged_s!r}")
        with self._lock:
            if self._released:
                return
            self._released = True
        self._keeper.stop()
        try:
            self._queue.finish(self.grant_id, float(charged_s))
        finally:
            self._slots.release(self._keeper.lease_id)

    def __enter__(self) -> Turn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(0.0)


class Arbiter:
    """Grants turns on shared instruments in priority, fair-share, arrival order.

    ``db_url``: a SQLAlchemy URL (the sample registry's database; ``sqlite:////abs/path.db`` or
    PostgreSQL). ``lease_s``: the Prefect slot lease (>= 60 s, Prefect's minimum), also the time
    a waiter row stays live without a heartbeat. ``poll_s``: how often a waiter looks at the
    queue. ``quantum_s``: the fair-share credit of a waiter whose sample is already loaded.
    ``grace_s``: how long (wall clock) an instrument just given back is kept for the campaign
    that had it, against waiters of no higher priority (it is deciding its next measurement;
    :meth:`ArbiterQueue._in_grace <coorch.deployments.arbiter_queue.ArbiterQueue._in_grace>`).
    The Prefect API is whatever ``PREFECT_API_URL`` the process has when it is first needed.
    """

    def __init__(
        self,
        db_url: str,
        *,
        lease_s: float = 60.0,
        poll_s: float = 0.05,
        quantum_s: float = 1800.0,
        grace_s: float = 2.0,
    ) -> None:
        self._slots = InstrumentSlots(lease_s)
        self.lease_s = float(lease_s)
        self.poll_s = float(poll_s)
        self.quantum_s = float(quantum_s)
        self._queue = ArbiterQueue(db_url, quantum_s=quantum_s, ttl_s=lease_s, grace_s=grace_s)

    def close(self) -> None:
        """Close the Prefect client and the database connections (turns are not released)."""
        self._slots.close()
        self._queue.close()

    def __enter__(self) -> Arbiter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ensure_limits(self, instruments: Sequence[str]) -> None:
        """Create (or set to 1) the Prefect limit ``instrument:<name>`` of each instrument."""
        self._slots.ensure(instruments)

    def wait(
        self,
        instrument: str,
        *,
        campaign: str,
        owner: str,
        priority: int,
        loaded: bool = False,
        timeout_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> Turn:
        """Queue for ``instrument`` and return the turn once granted.

        Raises TimeoutError after ``timeout_s``, :class:`WaitCancelled` once ``stop`` is set,
        LookupError if the instrument has no Prefect limit (:meth:`ensure_limits`); the waiter's
        row is removed whichever way the wait ends without a turn.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        who = {"campaign": campaign, "owner": owner, "priority": priority, "loaded": loaded}
        waiter_id, enqueued = self._queue.enqueue(instrument, **who)
        beat = time.monotonic() + self.lease_s / 3
        try:
            while True:
                if stop is not None and stop.is_set():
                    raise WaitCancelled(f"{campaign} stopped waiting for {instrument}")
                if time.monotonic() >= beat:
                    beat = time.monotonic() + self.lease_s / 3
                    if not self._queue.heartbeat(waiter_id):  # lapsed (we were suspended): rejoin
                        self._queue.remove(waiter_id)
                        waiter_id, _ = self._queue.enqueue(instrument, enqueued=enqueued, **who)
                turn = self._try_turn(waiter_id, instrument)
                if turn is not None:
                    return turn
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{campaign} waited {timeout_s} s for {instrument}")
                if stop is not None:
                    stop.wait(self.poll_s)
                else:
                    time.sleep(self.poll_s)
        except BaseException:
            self._queue.remove(waiter_id)
            raise

    def _try_turn(self, waiter_id: int, instrument: str) -> Turn | None:
        """If this waiter heads the queue of a free instrument: take the slot, then grant it in
        one write transaction if the waiter is still the head (else give the slot back)."""
        if not self._queue.ready(waiter_id, instrument):
            return None
        lease_id = self._slots.take(instrument)
        if lease_id is None:
            return None
        grant = None
        try:
            grant = self._queue.grant(waiter_id, instrument)
            if grant is not None:
                return Turn(self, grant, lease_id)
        except BaseException:
            if grant is not None:  # granted, but no Turn to release it: close the record
                self._queue.finish(grant.id, 0.0)
            self._slots.release(lease_id)
            raise
        self._slots.release(lease_id)
        return None

    # -- reads -------------------------------------------------------------------------------

    def grants(self, instrument: str | None = None) -> list[Grant]:
        """Every turn granted (on one instrument, or all), in the order granted."""
        return self._queue.grants(instrument)

    def waiting(self, instrument: str | None = None) -> list[Waiter]:
        """The live waiters, per instrument in the order they would be granted."""
        return self._queue.waiting(instrument)

    def usage(self) -> dict[str, float]:
        """Instrument-seconds charged so far, per owner (the fair share's measure)."""
        return self._queue.usage()

    def used(self, campaign: str) -> float:
        """Instrument-seconds charged so far to one campaign (its budget, on resume)."""
        return self._queue.used(campaign)
