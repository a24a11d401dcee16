"""The facility arbiter's queue in SQL: who waits for which instrument, whom it was granted to,
and how many instrument-seconds each owner and campaign have used.

Why SQL, and why every decision inside one write transaction: the waiters are campaigns in
separate processes (one Prefect flow run each), so the order cannot live in the memory of any of
them. The tables sit beside the sample registry's in the same database (``arbiter_waiters``,
``arbiter_grants``, ``arbiter_usage``), and every write (an arrival, a grant, a release) is one
transaction that all arbiter writers take in turn:

- SQLite: WAL (readers never block the writer), ``busy_timeout`` 30 s, ``BEGIN IMMEDIATE``,
  so "is this waiter still the head?" and the grant it justifies are one step no other process
  can come between (and ``synchronous=NORMAL``, see :func:`_engine`);
- PostgreSQL: ``LOCK TABLE arbiter_waiters IN EXCLUSIVE MODE`` first thing in each write
  transaction gives the same order (plain reads are not blocked by it);
- any other database: SERIALIZABLE, retried on a serialization failure.

Times are ``time.time()`` read *inside* the write transaction, so on one host the stamps follow
the order in which the transactions took effect: a waiter stamped before a grant was in the
table when that grant was decided, which is what lets the tests check the rule from the records.

The order (:meth:`ArbiterQueue._ranked`): priority (higher first), then fair share (the owner's
instrument-seconds charged so far over all campaigns and instruments, lower first; a waiter
whose sample is already in the instrument is credited ``quantum_s`` so that campaigns do not swap
half-hour sample transfers every measurement), then arrival.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from coorch.deployments.arbiter_records import Grant, Waiter

T = TypeVar("T")
_WRITE = "coorch_arbiter_write"  # execution option: this connection's transaction writes
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock (PostgreSQL and others)
_NAME = 200

metadata = MetaData()
waiters = Table(
    "arbiter_waiters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instrument", String(_NAME), nullable=False),
    Column("campaign", String(_NAME), nullable=False),
    Column("owner", String(_NAME), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("enqueued", Double, nullable=False),
    Column("loaded", Boolean, nullable=False),
    Column("alive_until", Double, nullable=False),  # heartbeat: a lapsed row is a dead waiter
    Index("arbiter_waiters_by_instrument", "instrument", "alive_until"),
)
grants = Table(
    "arbiter_grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instrument", String(_NAME), nullable=False),
    Column("campaign", String(_NAME), nullable=False),
    Column("owner", String(_NAME), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("enqueued", Double, nullable=False),
    Column("granted", Double, nullable=False),
    Column("released", Double, nullable=True),
    Column("charged_s", Double, nullable=True),
    Column("outranked_by", Integer, nullable=True),
    # renewed with the holder's Prefect lease: while an unreleased grant is held, the head of
    # the queue waits on this table instead of asking Prefect for the slot every poll
    Column("held_until", Double, nullable=False),
    Index("arbiter_grants_by_instrument", "instrument", "released"),
)
usage = Table(
    "arbiter_usage",
    metadata,
    Column("owner", String(_NAME), primary_key=True),
    Column("campaign", String(_NAME), primary_key=True),
    Column("seconds", Double, nullable=False),
)


def _engine(db_url: str) -> Engine:
    """An engine whose write transactions are serialized across processes (module docstring)."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN is replaced by ours below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        # WAL + NORMAL: a commit no longer waits for fsync (~4 ms each here, three a turn); a
        # power cut may lose the last commits, never corrupt the file, and takes the Prefect
        # slots (the real lock) with it anyway
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writes = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN DEFERRED")

    return engine


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in _RETRY_SQLSTATES


def _waiter(row) -> Waiter:
    return Waiter(
        id=row.id,
        instrument=row.instrument,
        campaign=row.campaign,
        owner=row.owner,
        priority=row.priority,
        enqueued=row.enqueued,
        loaded=bool(row.loaded),
    )


def _grant(row) -> Grant:
    return Grant(
        id=row.id,
        instrument=row.instrument,
        campaign=row.campaign,
        owner=row.owner,
        priority=row.priority,
        enqueued=row.enqueued,
        granted=row.granted,
        released=row.released,
        charged_s=row.charged_s,
        outranked_by=row.outranked_by,
    )


class ArbiterQueue:
    """The arbiter's three tables and the transactions over them; no Prefect here.

    ``ttl_s``: how long a waiter row stays live without a heartbeat (a crashed campaign's rows
    stop counting after it) and how long a grant counts as held without a renewal.
    """

    def __init__(
        self, db_url: str, *, quantum_s: float, ttl_s: float, grace_s: float = 0.0
    ) -> None:
        self.quantum_s = float(quantum_s)
        self.ttl_s = float(ttl_s)
        self.grace_s = float(grace_s)
        self.engine = _engine(db_url)
        dialect = self.engine.dialect.name
        self._lock_sql = (
            "LOCK TABLE arbiter_waiters IN EXCLUSIVE MODE" if dialect == "postgresql" else None
        )
        self._write_options = (
            {_WRITE: True}
            if dialect in ("sqlite", "postgresql")
            else {"isolation_level": "SERIALIZABLE"}
        )
        self._write(lambda conn: metadata.create_all(conn), lock=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions ------------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], T], *, lock: bool = True) -> T:
        """Run ``work`` in one write transaction, serialized with every other arbiter write."""
        for attempt in range(8):
            try:
                with self.engine.connect() as conn:
                    conn.execution_options(**self._write_options)
                    with conn.begin():
                        if lock and self._lock_sql:
                            conn.exec_driver_sql(self._lock_sql)
                        return work(conn)
            except DBAPIError as exc:
                if attempt == 7 or not _retryable(exc):
                    raise
            time.sleep(random.uniform(0.0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return work(conn)

    def _ranked(self, instrument: str | None, now: float) -> Select:
        """Live waiters in the order they are to be granted (per instrument)."""
        used = (
            select(usage.c.owner, func.sum(usage.c.seconds).label("used"))
            .group_by(usage.c.owner)
            .subquery()
        )
        credit = case((waiters.c.loaded, literal(self.quantum_s)), else_=literal(0.0))
        share = func.coalesce(used.c.used, literal(0.0)) - credit
        query = (
            select(waiters)
            .outerjoin(used, used.c.owner == waiters.c.owner)
            .where(waiters.c.alive_until >= now)
            .order_by(
                waiters.c.instrument,
                waiters.c.priority.desc(),
                share,
                waiters.c.enqueued,
                waiters.c.id,
            )
        )
        if instrument is not None:
            query = query.where(waiters.c.instrument == instrument)
        return query

    # -- waiting -----------------------------------------------------------------------------

    def enqueue(
        self,
        instrument: str,
        *,
        campaign: str,
        owner: str,
        priority: int,
        loaded: bool,
        enqueued: float | None = None,
    ) -> tuple[int, float]:
        """Add a waiter; return its id and arrival time. ``enqueued``: keep an earlier arrival
        (a waiter whose row lapsed while it was alive, e.g. a suspended process, rejoins)."""

        def work(conn: Connection) -> tuple[int, float]:
            now = time.time()
            conn.execute(delete(waiters).where(waiters.c.alive_until < now))
            arrival = now if enqueued is None else enqueued
            row = conn.execute(
                insert(waiters).values(
                    instrument=instrument,
                    campaign=campaign,
                    owner=owner,
                    priority=int(priority),
                    enqueued=arrival,
                    loaded=bool(loaded),
                    alive_until=now + self.ttl_s,
                )
            )
            return int(row.inserted_primary_key[0]), arrival

        return self._write(work)

    def heartbeat(self, waiter_id: int) -> bool:
        """Keep a waiter live for another ``ttl_s``; False if its row is gone (it had lapsed)."""

        def work(conn: Connection) -> bool:
            now = time.time()
            done = conn.execute(
                update(waiters)
                .where(waiters.c.id == waiter_id, waiters.c.alive_until >= now)
                .values(alive_until=now + self.ttl_s)
            )
            return done.rowcount == 1

        return self._write(work)

    def remove(self, waiter_id: int) -> None:
        self._write(lambda conn: conn.execute(delete(waiters).where(waiters.c.id == waiter_id)))

    def ready(self, waiter_id: int, instrument: str) -> bool:
        """Whether this waiter heads its instrument's live queue and no live turn holds the
        instrument by this table: only then is Prefect asked for the slot. Advisory only: the
        grant re-checks in its own write transaction."""

        def work(conn: Connection) -> bool:
            now = time.time()
            head = conn.execute(self._ranked(instrument, now).limit(1)).first()
            if head is None or head.id != waiter_id:
                return False
            if self._in_grace(conn, instrument, head, now):
                return False
            held = conn.execute(
                select(grants.c.id)
                .where(
                    grants.c.instrument == instrument,
                    grants.c.released.is_(None),
                    grants.c.held_until >= now,
                )
                .limit(1)
            ).first()
            return held is None

        return self._read(work)

    def _in_grace(self, conn: Connection, instrument: str, head: Any, now: float) -> bool:
        """Is the instrument kept for ``grace_s`` for the campaign that just gave it back?

        Why: a campaign is not waiting while it records a measurement and decides the next
        (a fraction of a second), and a lower or equal priority taking the instrument in that
        gap pays a sample transfer (half an hour on a STEM) and then the first pays another one
        to come back. So after a turn ends, another campaign of no higher priority waits up to
        ``grace_s``; if the first comes back in time, the usual order decides between them
        (its loaded sample counts, ``quantum_s``). A higher priority never waits for it."""
        if self.grace_s <= 0:
            return False
        last = conn.execute(
            select(grants.c.campaign, grants.c.priority, grants.c.released)
            .where(grants.c.instrument == instrument)
            .order_by(grants.c.id.desc())
            .limit(1)
        ).first()
        return (
            last is not None
            and last.released is not None
            and last.campaign != head.campaign
            and head.priority <= last.priority
            and now - last.released < self.grace_s
        )

    def grant(self, waiter_id: int, instrument: str) -> Grant | None:
        """Turn the waiter into a grant if it is still the head of the live queue (the caller
        holds the Prefect slot); None if another waiter now goes first."""

        def work(conn: Connection) -> Grant | None:
            now = time.time()
            conn.execute(delete(waiters).where(waiters.c.alive_until < now))
            ranked = conn.execute(self._ranked(instrument, now)).all()
            if not ranked or ranked[0].id != waiter_id:
                return None
            head = ranked[0]
            others = [row.priority for row in ranked[1:]]
            values = {
                "instrument": instrument,
                "campaign": head.campaign,
                "owner": head.owner,
                "priority": head.priority,
                "enqueued": head.enqueued,
                "granted": now,
                "outranked_by": max(others) if others else None,
                "held_until": now + self.ttl_s,
            }
            row = conn.execute(insert(grants).values(**values))
            conn.execute(delete(waiters).where(waiters.c.id == waiter_id))
            return Grant(
                id=int(row.inserted_primary_key[0]),
                released=None,
                charged_s=None,
                **{k: v for k, v in values.items() if k != "held_until"},
            )

        return self._write(work)

    # -- holding -----------------------------------------------------------------------------

    def hold(self, grant_id: int) -> None:
        """The holder is alive: its grant counts as held for another ``ttl_s``."""
        self._write(
            lambda conn: conn.execute(
                update(grants)
                .where(grants.c.id == grant_id, grants.c.released.is_(None))
                .values(held_until=time.time() + self.ttl_s)
            )
        )

    def finish(self, grant_id: int, charged_s: float) -> bool:
        """Stamp the grant released and charge its owner and campaign; False if it already was
        (so a release is charged once)."""

        def work(conn: Connection) -> bool:
            now = time.time()
            done = conn.execute(
                update(grants)
                .where(grants.c.id == grant_id, grants.c.released.is_(None))
                .values(released=now, charged_s=charged_s, held_until=now)
            )
            if done.rowcount != 1:
                return False
            row = conn.execute(
                select(grants.c.owner, grants.c.campaign).where(grants.c.id == grant_id)
            ).one()
            key = (usage.c.owner == row.owner) & (usage.c.campaign == row.campaign)
            added = conn.execute(
                update(usage).where(key).values(seconds=usage.c.seconds + charged_s)
            )
            if added.rowcount == 0:
                conn.execute(
                    insert(usage).values(owner=row.owner, campaign=row.campaign, seconds=charged_s)
                )
            return True

        return self._write(work)

    # -- reads -------------------------------------------------------------------------------

    def grants(self, instrument: str | None = None) -> list[Grant]:
        query = select(grants).order_by(grants.c.granted, grants.c.id)
        if instrument is not None:
            query = query.where(grants.c.instrument == instrument)
        return [_grant(row) for row in self._read(lambda conn: conn.execute(query).all())]

    def waiting(self, instrument: str | None = None) -> list[Waiter]:
        query = self._ranked(instrument, time.time())
        return [_waiter(row) for row in self._read(lambda conn: conn.execute(query).all())]

    def usage(self) -> dict[str, float]:
        query = select(usage.c.owner, func.sum(usage.c.seconds)).group_by(usage.c.owner)
        return {o: float(s) for o, s in self._read(lambda conn: conn.execute(query).all())}

    def used(self, campaign: str) -> float:
        query = select(func.coalesce(func.sum(usage.c.seconds), 0.0)).where(
            usage.c.campaign == campaign
        )
        return float(self._read(lambda conn: conn.execute(query).scalar_one()))
