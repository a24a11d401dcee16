"""The sample registry: where each physical sample is, which campaign holds it, and every
transfer that took it there (with its time cost).

Why a database: a facility runs several campaigns at once, each campaign flow in its own
process, over instruments that hold one sample each. Who may move which sample, and where it
is now, must be one truth every process reads and changes atomically: an embedded SQLite file
by default (WAL journal, so readers never wait for the writer), a PostgreSQL URL for a
facility. The SQL is portable (SQLAlchemy Core); SQLite specifics are set in one place
(:mod:`coorch.storage.sample_db`).

Concurrency, the rules this module keeps:

- every change runs in one write transaction. On SQLite that transaction starts with
  ``BEGIN IMMEDIATE``: it takes the write lock before its first read, so a read-then-write
  (claim, transfer) cannot interleave with another writer, and a waiting writer sleeps in the
  busy timeout (30 s) instead of failing at once, as a deferred transaction upgrading its lock
  does. On PostgreSQL the rows read are locked (``SELECT ... FOR UPDATE``, in id order);
- a location changes by compare-and-set (``UPDATE ... WHERE location = <what was read>``): a
  lost race is retried from the start, never written over;
- one sample per instrument is also a unique index (partial: ``location <> 'storage'``), so the
  database itself refuses a second sample in an instrument whatever the code above does;
- every transfer is a row of an append-only log, written in the same transaction as the move:
  replaying the log from where a sample was registered ends where it is (tests check this with
  threads and processes at once).

Ids: sample ids follow the instrument agents' rule for the sample ids they load (a letter or
digit, then letters, digits, ``._+-``; 1-128 characters). The rule is written here again
(:data:`SAFE_SAMPLE_ID`) because storage may not import the agents' layer; keep the two equal.
Campaigns, libraries and locations are plain names (not empty, at most 128 characters, no
control characters).
"""

from __future__ import annotations

import math
import pathlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Row, create_engine, make_url
from sqlalchemy.exc import IntegrityError

from .sample_db import BEGIN_OPTION, METADATA, NAME_MAX, SAMPLES, STORAGE, TRANSFERS, sqlite_engine

__all__ = [
    "STORAGE",
    "Sample",
    "SampleBusy",
    "SampleRegistry",
    "Transfer",
    "UnknownSample",
]

#: The agents' sample-id rule (``coorch.instrument_agents.wire.SAFE_ID``), duplicated: see above.
SAFE_SAMPLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
#: How many times a write transaction that lost a race (PostgreSQL only) is run again.
_ATTEMPTS = 5
#: How many known ids an UnknownSample names.
_SHOWN = 5

_T = TypeVar("_T")


class UnknownSample(ValueError):
    """A sample id the registry has never registered."""

    def __init__(self, sample_id: str, known: Sequence[str] = (), n_known: int | None = None):
        self.sample_id, self.known = sample_id, list(known)
        self.n_known = len(self.known) if n_known is None else n_known
        shown = ", ".join(repr(k) for k in self.known[:_SHOWN]) or "none"
        more = self.n_known - min(len(self.known), _SHOWN)
        tail = f" and {more} more" if more > 0 else ""
        super().__init__(f"unknown sample {sample_id!r}; known: {shown}{tail}")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries intact
        return (type(self), (self.sample_id, self.known, self.n_known))


class SampleBusy(RuntimeError):
    """A sample held by another campaign: only its holder may claim or move it."""

    def __init__(self, sample_id: str, holder: str, wanted_by: str | None = None):
        self.sample_id, self.holder, self.wanted_by = sample_id, holder, wanted_by
        who = "no campaign" if wanted_by is None else f"campaign {wanted_by!r}"
        super().__init__(
            f"sample {sample_id!r} is held by campaign {holder!r}; {who} may not claim or move "
            "it until that campaign releases it"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.sample_id, self.holder, self.wanted_by))


class _LostRace(Exception):
    """A compare-and-set found the row changed since it was read: run the transaction again."""


@dataclass(frozen=True)
class Sample:
    """One physical sample: a library piece, where it is now and the campaign holding it."""

    id: str
    library: str
    parent: str | None
    location: str
    held_by: str | None


@dataclass(frozen=True)
class Transfer:
    """One move of a sample, as logged: ``id`` orders the log (commit order)."""

    id: int
    sample: str
    source: str
    destination: str
    campaign: str | None
    at: float
    cost_s: float


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not SAFE_SAMPLE_ID.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: expected a letter or digit, then letters, digits or ._+- "
            "(1-128 characters), the instrument agents' rule for sample ids"
        )
    return value


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_MAX:
        raise ValueError(f"{what} {value!r}: expected a name of 1-{NAME_MAX} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} holds a control character")
    return value


def _sample(row: Row) -> Sample:
    return Sample(row.id, row.library, row.parent, row.location, row.held_by)


def _transfer(row: Row) -> Transfer:
    return Transfer(
        row.id, row.sample, row.source, row.destination, row.campaign, row.at, row.cost_s
    )


def _check_holder(row: Row, campaign: str | None) -> None:
    if row.held_by is not None and row.held_by != campaign:
        raise SampleBusy(row.id, row.held_by, campaign)


class SampleRegistry:
    """Where every sample of a facility is, who holds it, and how it moved: one database that
    all campaign processes open (see the module docstring for the concurrency rules)."""

    def __init__(self, url: str) -> None:
        """Open the database at ``url`` (``sqlite:////abs/path/facility.db``, or a PostgreSQL
        URL), creating the tables if they are missing."""
        if make_url(url).get_backend_name() == "sqlite":
            self._engine = sqlite_engine(url)
        else:
            self._engine = create_engine(url)
        self._writer = self._engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        # Inside a write transaction, so two processes opening a new file at once do not both
        # find the tables missing and both create them.
        with self._writer.begin() as conn:
            METADATA.create_all(conn)

    @classmethod
    def at(cls, path: pathlib.Path) -> SampleRegistry:
        """The registry in the SQLite file ``path`` (its folders made if missing)."""
        path = pathlib.Path(path).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        self._engine.dispose()

    def __enter__(self) -> SampleRegistry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------

    def get(self, sample_id: str) -> Sample:
        """The sample ``sample_id`` as it is now; :class:`UnknownSample` if never registered."""
        with self._engine.connect() as conn:
            return _sample(self._row(conn, sample_id))

    def all(self) -> list[Sample]:
        """Every registered sample, by id."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(SAMPLES).order_by(SAMPLES.c.id))
            return [_sample(r) for r in rows]

    def at_location(self, location: str) -> list[Sample]:
        """The samples at ``location`` (at most one in an instrument), by id."""
        with self._engine.connect() as conn:
            query = select(SAMPLES).where(SAMPLES.c.location == location)
            return [_sample(r) for r in conn.execute(query.order_by(SAMPLES.c.id))]

    def transfers(self, sample_id: str | None = None) -> list[Transfer]:
        """The transfer log in commit order: of one sample, or of all with ``None``."""
        with self._engine.connect() as conn:
            query = select(TRANSFERS).order_by(TRANSFERS.c.id)
            if sample_id is not None:
                self._row(conn, sample_id)
                query = query.where(TRANSFERS.c.sample == sample_id)
            return [_transfer(r) for r in conn.execute(query)]

    # -- writes ------------------------------------------------------------------------------

    def register(
        self,
        sample_id: str,
        library: str,
        *,
        parent: str | None = None,
        location: str = STORAGE,
    ) -> Sample:
        """Record a sample (a piece of ``library``, cut from ``parent`` if given) at
        ``location``; return it as it is now.

        Idempotent: registering a known id again changes nothing and returns the sample where
        the registry says it is (a resumed campaign registers its samples again). The same id
        with another library or another parent is a :class:`ValueError` naming both. A parent
        must be registered, of the same library. A new sample cannot be registered into an
        instrument that already holds one (:class:`ValueError` naming it).
        """
        _check_id(sample_id, "sample id")
        _check_name(library, "library")
        _check_name(location, "location")
        if parent is not None:
            _check_id(parent, "parent")

        def work(conn: Connection) -> Sample:
            found = self._row(conn, sample_id, missing_ok=True, lock=True)
            if found is not None:
                if found.library != library:
                    raise ValueError(
                        f"sample {sample_id!r} is registered as a piece of library "
                        f"{found.library!r}, not {library!r}"
                    )
                if parent is not None and found.parent != parent:
                    raise ValueError(
                        f"sample {sample_id!r} is registered as cut from {found.parent!r}, "
                        f"not {parent!r}"
                    )
                return _sample(found)
            if parent is not None and (p := self._row(conn, parent)).library != library:
                raise ValueError(
                    f"parent {parent!r} is a piece of library {p.library!r}, not {library!r}"
                )
            if location != STORAGE:
                occupant = conn.execute(
                    select(SAMPLES.c.id).where(SAMPLES.c.location == location)
                ).scalar()
                if occupant is not None:
                    raise ValueError(
                        f"{location!r} already holds sample {occupant!r}: an instrument holds "
                        f"one sample, so {sample_id!r} cannot be registered there"
                    )
            row = dict(id=sample_id, library=library, parent=parent, location=location)
            conn.execute(insert(SAMPLES).values(held_by=None, **row))
            return Sample(sample_id, library, parent, location, None)

        return self._write(work)

    def claim(self, campaign: str, sample_ids: Sequence[str]) -> None:
        """Hold ``sample_ids`` for ``campaign``: all of them or none.

        :class:`UnknownSample` if one is not registered, :class:`SampleBusy` (naming the
        sample and its holder) if one is held by another campaign; then nothing is claimed.
        Claiming samples the campaign already holds is a no-op (a resumed campaign).
        """
        _check_name(campaign, "campaign")
        ids = sorted({_check_id(s, "sample id") for s in sample_ids})
        if not ids:
            return

        def work(conn: Connection) -> None:
            query = select(SAMPLES).where(SAMPLES.c.id.in_(ids)).order_by(SAMPLES.c.id)
            rows = {r.id: r for r in conn.execute(query.with_for_update())}
            missing = [s for s in ids if s not in rows]
            if missing:
                raise self._unknown(conn, missing[0])
            for row in rows.values():
                _check_holder(row, campaign)
            conn.execute(update(SAMPLES).where(SAMPLES.c.id.in_(ids)).values(held_by=campaign))

        self._write(work)

    def release(self, campaign: str) -> list[str]:
        """Let go of every sample ``campaign`` holds; return their ids (sorted)."""
        _check_name(campaign, "campaign")

        def work(conn: Connection) -> list[str]:
            query = select(SAMPLES.c.id).where(SAMPLES.c.held_by == campaign)
            ids = list(conn.execute(query.order_by(SAMPLES.c.id).with_for_update()).scalars())
            if ids:
                conn.execute(
                    update(SAMPLES)
                    .where(SAMPLES.c.id.in_(ids), SAMPLES.c.held_by == campaign)
                    .values(held_by=None)
                )
            return ids

        return self._write(work)

    def transfer(
        self, sample_id: str, destination: str, *, campaign: str | None, cost_s: float
    ) -> Transfer | None:
        """Move ``sample_id`` to ``destination`` for ``campaign``, costing ``cost_s`` seconds;
        return the logged transfer, or None when the sample is already there.

        :class:`SampleBusy` when the sample is held by a campaign other than ``campaign``. An
        instrument holds one sample: a sample already at ``destination`` (other than
        :data:`STORAGE`) goes back to storage first, logged as its own transfer for
        ``campaign`` with cost 0 (an *eviction*), whoever holds it: campaigns share the
        instrument one turn at a time (the facility's arbiter), and the campaign whose turn it
        is may unload another's sample, which stays held by its campaign, in storage, until
        that campaign's next turn brings it back.
        """
        _check_id(sample_id, "sample id")
        _check_name(destination, "destination")
        if campaign is not None:
            _check_name(campaign, "campaign")
        if not (isinstance(cost_s, int | float) and math.isfinite(cost_s) and cost_s >= 0):
            raise ValueError(f"cost_s {cost_s!r}: expected a finite number of seconds >= 0")

        def work(conn: Connection) -> Transfer | None:
            row = self._row(conn, sample_id, lock=True)
            if row.location == destination:
                return None
            _check_holder(row, campaign)
            now = time.time()
            if destination != STORAGE:
                occupants = conn.execute(
                    select(SAMPLES).where(SAMPLES.c.location == destination).with_for_update()
                ).all()
                for occupant in occupants:
                    self._move(conn, occupant, STORAGE, campaign, 0.0, now, evict=True)
            return self._move(conn, row, destination, campaign, float(cost_s), now)

        return self._write(work)

    # -- internals ---------------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, again if it lost a race to another writer.

        On SQLite a race cannot be lost (``BEGIN IMMEDIATE`` runs writers one at a time); on
        PostgreSQL two writers may read the same instrument empty, and the unique index refuses
        the second (IntegrityError), or a compare-and-set finds its row changed (_LostRace).
        """
        for attempt in range(_ATTEMPTS):
            try:
                with self._writer.begin() as conn:
                    return work(conn)
            except (IntegrityError, _LostRace):
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _row(
        self, conn: Connection, sample_id: str, *, missing_ok: bool = False, lock: bool = False
    ) -> Row:
        query = select(SAMPLES).where(SAMPLES.c.id == sample_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None and not missing_ok:
            raise self._unknown(conn, sample_id)
        return row  # type: ignore[return-value]

    @staticmethod
    def _unknown(conn: Connection, sample_id: str) -> UnknownSample:
        known = conn.execute(select(SAMPLES.c.id).order_by(SAMPLES.c.id).limit(_SHOWN)).scalars()
        n_known = conn.execute(select(func.count()).select_from(SAMPLES)).scalar_one()
        return UnknownSample(sample_id, list(known), n_known)

    @staticmethod
    def _move(
        conn: Connection,
        row: Row,
        destination: str,
        campaign: str | None,
        cost_s: float,
        at: float,
        *,
        evict: bool = False,
    ) -> Transfer:
        """Compare-and-set the location of ``row`` (only if still where it was read, and, unless
        it is an eviction to storage, not since claimed by another campaign), and log the
        transfer in the same transaction."""
        holder_ok = SAMPLES.c.held_by.is_(None)
        if campaign is not None:
            holder_ok = holder_ok | (SAMPLES.c.held_by == campaign)
        if evict:
            holder_ok = SAMPLES.c.id == row.id
        moved = conn.execute(
            update(SAMPLES)
            .where(SAMPLES.c.id == row.id, SAMPLES.c.location == row.location, holder_ok)
            .values(location=destination)
        )
        if moved.rowcount != 1:
            raise _LostRace(row.id)
        logged = dict(
            sample=row.id, source=row.location, destination=destination, campaign=campaign
        )
        result = conn.execute(insert(TRANSFERS).values(at=at, cost_s=cost_s, **logged))
        (transfer_id,) = result.inserted_primary_key  # type: ignore[misc]
        return Transfer(transfer_id, row.id, row.location, destination, campaign, at, cost_s)
