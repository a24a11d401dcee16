"""One Prefect global concurrency limit per instrument (``instrument:<name>``, one slot), taken
with a lease: the instrument's lock that outlives no crash.

Why a leased slot and not a row in the arbiter's tables: the Prefect server frees a lapsed lease
itself (its repossessor service), so a campaign killed while it held an instrument gives it back
within the lease without anyone cleaning up after it, and the limit is the same one the
Prefect UI shows and a facility operator can see or change. The arbiter
(:mod:`~coorch.deployments.arbiter`) decides who asks; this module only asks.

Prefect facts this relies on (read in the installed server, 3.9): leases are 60 s at least
(the server refuses less); a full limit answers 423 Locked; a lease on a name with *no* limit is
granted and holds nothing (so :meth:`InstrumentSlots.take` refuses it); renewing a lease that
lapsed or was released answers 410 Gone; a server whose SQLite database is busy answers 503,
which Prefect's client retries after a Retry-After of about 2 s. On a busy facility day that
was most slot calls' fate (instruments idle ~2 s between measurements, `docs/benchmarks.md`),
so slot calls here make one attempt each and retry on their own short clock. With its retries
off, the client also no longer rides out a dropped connection (a pooled connection the server
closed as idle just as a request went out reads as "connection reset by peer"; uvicorn closes
idle connections after 5 s, the client pool keeps them 5 s): those are asked again here too
(:data:`DROPPED`), as Prefect's own client would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

log = logging.getLogger(__name__)
MIN_LEASE_S = 60.0  # the Prefect server's minimum lease duration
#: Statuses of a server too busy to answer now (503: its database is locked): asked again.
BUSY = (503, 502, 429, 408)
#: Transport failures of one request that Prefect's client retries (prefect/client/base.py):
#: the connection dropped or timed out mid-request. A refused connection is not among them (a
#: wrong URL or a server that is down should not look like a busy instrument).
DROPPED = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.LocalProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
    httpx.ConnectTimeout,
)
#: Attempts of a release or renewal that the server was too busy for, RETRY_S apart.
ATTEMPTS, RETRY_S = 40, 0.05


def limit_name(instrument: str) -> str:
    return f"instrument:{instrument}"


def _client() -> SyncPrefectClient:
    """A sync client for the ``PREFECT_API_URL`` of the environment *now*, else of Prefect's
    settings. Prefect reads its settings when first imported, so a URL set later in this
    process (:func:`~coorch.deployments.prefect_server.local_prefect_server`, a facility that
    starts its own server) would otherwise be missed, and Prefect would start a server of its
    own inside this process instead."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return get_client(sync_client=True)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        return get_client(sync_client=True)


class InstrumentSlots:
    """Take, renew and give back instrument slots through one Prefect sync client.

    The client is made on first use, for whatever ``PREFECT_API_URL`` the process has then
    (:func:`_client`), and shared by the threads of this process (waiters, lease keepers)
    behind a lock: one client instead of one per call saves ~20 ms a call (measured), and the
    calls are short.
    """

    def __init__(self, lease_s: float) -> None:
        if lease_s < MIN_LEASE_S:
            raise ValueError(f"lease_s must be >= {MIN_LEASE_S:g} s (Prefect refuses shorter)")
        self.lease_s = float(lease_s)
        self._lock = threading.Lock()
        self._client: SyncPrefectClient | None = None

    def _call(self, work: Callable[[SyncPrefectClient], Any]) -> Any:
        """One attempt of ``work`` (no client-side retries: see the module docstring)."""
        with self._lock:
            if self._client is None:
                client = _client()
                client.__enter__()
                self._client = client
            with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
                return work(self._client)

    def _insist(self, work: Callable[[SyncPrefectClient], Any]) -> Any:
        """``work`` until the server is not too busy to answer and the connection holds,
        :data:`RETRY_S` apart. ``work`` must be safe to repeat (a dropped request may have been
        done): an upsert, a renewal, a release (of a lease already released: 404/410)."""
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                return self._call(work)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code not in BUSY or last:
                    raise
            except DROPPED:
                if last:
                    raise
            time.sleep(RETRY_S)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.__exit__(None, None, None)
                self._client = None

    def ensure(self, instruments: Sequence[str]) -> None:
        """One limit of one slot per instrument; idempotent (an existing limit is set to 1)."""
        for instrument in instruments:
            self._insist(lambda c, n=limit_name(instrument): _upsert_one_slot(c, n))

    def take(self, instrument: str) -> UUID | None:
        """The slot's lease id, or None if the instrument is busy (one call, never waits)."""
        name = limit_name(instrument)
        try:
            response = self._call(
                lambda c: c.increment_concurrency_slots_with_lease(
                    [name], slots=1, mode="concurrency", lease_duration=self.lease_s
                )
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 423 or exc.response.status_code in BUSY:
                return None  # held, or the server busy: the waiter asks again at its next poll
            raise
        except DROPPED:
            # the waiter asks again at its next poll. Had the server granted the lost request,
            # its lease lapses unrenewed (``lease_s``) and the repossessor frees the slot
            log.warning("%s: the request for its slot was dropped; asking again", instrument)
            return None
        body = response.json()
        lease_id = UUID(body["lease_id"])
        if not any(limit["name"] == name for limit in body["limits"]):
            self.release(lease_id)
            raise LookupError(
                f"no Prefect global concurrency limit {name!r}: nothing would keep two "
                "campaigns off the instrument; call Arbiter.ensure_limits first"
            )
        return lease_id

    def renew(self, lease_id: UUID) -> bool:
        """Extend the lease by ``lease_s``; False if it is gone (lapsed or released)."""
        try:
            self._insist(lambda c: c.renew_concurrency_lease(lease_id, self.lease_s))
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code in (404, 410):
                return False
            raise
        return True

    def release(self, lease_id: UUID) -> None:
        """Give the slot back; a lease already gone is not an error (the slot is free)."""
        try:
            self._insist(lambda c: c.release_concurrency_slots_with_lease(lease_id))
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code not in (404, 410):
                raise


class LeaseKeeper:
    """Renew a held slot's lease every ``lease_s / 3`` in a daemon thread until stopped.

    ``on_renew`` runs after each renewal (the arbiter marks its grant as still held). A lease
    found gone is logged and no longer renewed: the instrument may be someone else's by now
    (this process was suspended longer than the lease). A failed call (server unreachable) is
    logged and retried at the next tick: two more ticks fit in the lease.
    """

    def __init__(
        self, slots: InstrumentSlots, lease_id: UUID, label: str, on_renew: Callable[[], None]
    ) -> None:
        self.lease_id = lease_id
        self._slots = slots
        self._label = label
        self._on_renew = on_renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._slots.lease_s / 3):
            try:
                if not self._slots.renew(self.lease_id):
                    log.warning(
                        "%s: the instrument's lease lapsed; it is no longer held", self._label
                    )
                    return
                self._on_renew()
            except Exception:  # any failure: try again next tick
                log.warning(
                    "%s: could not renew the instrument's lease", self._label, exc_info=True
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


def _upsert_one_slot(client: SyncPrefectClient, name: str) -> None:
    """Prefect's upsert reads, then creates: two campaigns starting together both read
    nothing and one create fails. The loser finds the limit there and sets it."""
    try:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    except ObjectAlreadyExists:
        client.upsert_global_concurrency_limit_by_name(name, 1)
