"""The engine's own tables (operations, log lines, diagnostics, peers) and database engines.

Contracts:
- :meth:`Store.locked` is a transaction serialized against every other ``locked`` transaction of every
  coordinator on the database (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction advisory lock).
- Every other write is a single conditional statement or a plain transaction.
- Times are float seconds since the epoch (wall clock of the writing coordinator).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

ENGINE_LOCK_KEY = 0x6672696523  # "frie#": advisory lock of the engine's admission/submit transactions

metadata = sa.MetaData()

ops = sa.Table(
    "frieze_engine_ops",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("args_json", sa.Text, nullable=False),
    sa.Column("args_redacted", sa.Text, nullable=False),
    sa.Column("host", sa.String(255)),
    sa.Column("target", sa.String(255)),
    sa.Column("exclusive_json", sa.Text, nullable=False, default="[]"),
    sa.Column("dedup_key", sa.String(64), unique=True),
    sa.Column("admitted", sa.Integer, nullable=False, default=0),
    sa.Column("enqueued", sa.Integer, nullable=False, default=0),
    sa.Column("run_no", sa.Integer, nullable=False, default=0),
    sa.Column("not_before", sa.Float, nullable=False, default=0.0),
    sa.Column("pos", sa.Integer, nullable=False, default=0),
    sa.Column("checkpoint", sa.String(128)),
    sa.Column("vars_json", sa.Text, nullable=False),
    sa.Column("phase", sa.String(16), nullable=False, default="forward"),
    sa.Column("undo_from", sa.String(128)),
    sa.Column("cancel_requested", sa.Integer, nullable=False, default=0),
    sa.Column("started", sa.Integer, nullable=False, default=0),
    sa.Column("step", sa.String(128)),
    sa.Column("steps_done", sa.Integer, nullable=False, default=0),
    sa.Column("steps_total", sa.Integer, nullable=False, default=0),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, default=0),
    sa.Column("bytes_total", sa.BigInteger, nullable=False, default=0),
    sa.Column("error_json", sa.Text),
    sa.Column("undo_errors_json", sa.Text, nullable=False, default="[]"),
    sa.Column("executor_id", sa.String(128)),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("finished", sa.Float),
    sa.Index("frieze_engine_ops_state", "state", "created"),
)

logs = sa.Table(
    "frieze_engine_logs",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("op_id", sa.String(64), nullable=False, index=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("step", sa.String(128)),
    sa.Column("message", sa.Text, nullable=False),
)

diag = sa.Table(
    "frieze_engine_diag",
    metadata,
    sa.Column("op_id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("bundle", sa.LargeBinary, nullable=False),
)

peers = sa.Table(
    "frieze_engine_peers",
    metadata,
    sa.Column("executor_id", sa.String(128), primary_key=True),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
)


def is_sqlite(url: str) -> bool:
    """True for an SQLite URL."""
    return url.startswith("sqlite")


def normalize_pg_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3 is the installed driver)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://"):]
    return url


def _sqlite_pragmas(dbapi_conn: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_dbos_sqlite_engine(url: str) -> sa.Engine:
    """The DBOS system database engine for SQLite: as DBOS makes it, plus WAL and ``synchronous=NORMAL``."""
    eng = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20,
                           max_overflow=20)

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        _sqlite_pragmas(dbapi_conn)
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return eng


def make_store_engine(url: str) -> sa.Engine:
    """Our engine. On SQLite every transaction is ``BEGIN IMMEDIATE`` (no lock upgrade deadlocks)."""
    if not is_sqlite(url):
        return sa.create_engine(normalize_pg_url(url), pool_size=10, max_overflow=10, pool_pre_ping=True)
    eng = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=10,
                           max_overflow=20)

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None
        _sqlite_pragmas(dbapi_conn)

    @event.listens_for(eng, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


class Store:
    """Access to the engine tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self.engine = make_store_engine(url)

    def create(self) -> None:
        """Create the tables if absent (concurrent coordinators: serialized by the lock)."""
        with self.locked() as c:
            metadata.create_all(c, checkfirst=True)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def locked(self) -> Iterator[sa.Connection]:
        """A transaction serialized against all other ``locked`` ones on this database."""
        with self.engine.begin() as c:
            if not self.sqlite:
                c.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": ENGINE_LOCK_KEY})
            yield c

    @contextmanager
    def tx(self, durable: bool = True) -> Iterator[sa.Connection]:
        """A plain transaction. ``durable=False`` (progress, log lines): on PostgreSQL its commit does not wait
        for the WAL flush (``synchronous_commit off``); a database crash may lose it, a coordinator crash not."""
        with self.engine.begin() as c:
            if not durable and not self.sqlite:
                c.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
            yield c

    def get(self, op_id: str) -> dict[str, Any] | None:
        with self.tx() as c:
            row = c.execute(sa.select(ops).where(ops.c.id == op_id)).mappings().first()
            return dict(row) if row else None

    def update(self, op_id: str, durable: bool = True, **values: Any) -> int:
        """Unconditional update of an op row (``updated`` set); returns the row count."""
        values.setdefault("updated", time.time())
        with self.tx(durable) as c:
            return c.execute(sa.update(ops).where(ops.c.id == op_id).values(**values)).rowcount

    def add_log(self, op_id: str, level: str, step: str | None, message: str) -> None:
        with self.tx(durable=False) as c:
            c.execute(sa.insert(logs).values(op_id=op_id, ts=time.time(), level=level, step=step,
                                             message=message))
