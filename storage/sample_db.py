"""The sample registry's database: its two tables and its SQLite connections.

Why a module of its own: the schema and the connection settings are the part of the registry
that a facility's database administrator reads (and a PostgreSQL migration would touch);
:mod:`coorch.storage.samples` holds the rules over them.

Tables: ``coorch_samples`` (one row per sample: library, parent piece, location, holder) and
``coorch_sample_transfers`` (the append-only transfer log; ``id`` is the commit order). One
sample per instrument is a partial unique index (``location <> 'storage'``), written for
SQLite and PostgreSQL, the two databases the registry supports.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Engine

#: The location of a sample in no instrument (a shelf, a desiccator: anywhere but a stage).
STORAGE = "storage"
#: How long a writer waits for another's lock before SQLite reports "database is locked".
BUSY_TIMEOUT_S = 30.0
#: The execution option naming how a SQLite transaction begins ("IMMEDIATE" for writers).
BEGIN_OPTION = "coorch_sqlite_begin"
#: The longest id or name stored (the agents' sample-id rule allows 128 characters).
NAME_MAX = 128

METADATA = MetaData()
SAMPLES = Table(
    "coorch_samples",
    METADATA,
    Column("id", String(NAME_MAX), primary_key=True),
    Column("library", String(NAME_MAX), nullable=False),
    Column("parent", String(NAME_MAX), ForeignKey("coorch_samples.id"), nullable=True),
    Column("location", String(NAME_MAX), nullable=False),
    Column("held_by", String(NAME_MAX), nullable=True),
)
Index(
    "coorch_samples_one_per_instrument",
    SAMPLES.c.location,
    unique=True,
    sqlite_where=SAMPLES.c.location != STORAGE,
    postgresql_where=SAMPLES.c.location != STORAGE,
)
Index("coorch_samples_held_by", SAMPLES.c.held_by)
TRANSFERS = Table(
    "coorch_sample_transfers",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sample", String(NAME_MAX), ForeignKey("coorch_samples.id"), nullable=False),
    Column("source", String(NAME_MAX), nullable=False),
    Column("destination", String(NAME_MAX), nullable=False),
    Column("campaign", String(NAME_MAX), nullable=True),
    Column("at", Float, nullable=False),
    Column("cost_s", Float, nullable=False),
)
Index("coorch_sample_transfers_sample", TRANSFERS.c.sample)


def sqlite_engine(url: str) -> Engine:
    """An engine whose connections wait for locks (busy timeout), journal in WAL mode, check
    foreign keys, and begin transactions as SQLAlchemy says: ``BEGIN`` for reads, ``BEGIN
    IMMEDIATE`` where the execution option :data:`BEGIN_OPTION` asks (the sqlite3 module's own
    implicit BEGIN is switched off: it would begin no transaction before a SELECT).
    """
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get(BEGIN_OPTION, '')}".strip())

    return engine
