"""Engine and sessions for the server's SQL store."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from server.store.migrations import open_schema

# Every domain keeps its tables beside its code; they are imported here so that
# `create_all` knows them all.
_MODEL_MODULES = (
    "server.repository.models",
    "server.releases.models",
    "server.fleet.models",
    "server.campaigns.models",
    # The offer epoch and the triggers that advance it (quiet check-ins skip the store).
    "server.campaigns.offers",
    "server.auth.models",
    # Installs the triggers that keep the audit log append-only.
    "server.auth.audit",
    "server.staging.models",
)


def load_models() -> MetaData:
    """Imports every domain's tables; returns the metadata that holds them all."""
    for module in _MODEL_MODULES:
        importlib.import_module(module)
    return SQLModel.metadata


# Milliseconds a SQLite statement waits for another connection's write lock.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
_BUSY_TIMEOUT = "staffel_busy_timeout_ms"  # a pooled connection's current busy timeout
_AUTOCHECKPOINT = "staffel_wal_autocheckpoint"  # and its WAL auto-checkpoint threshold
SQLITE_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
# True while the current thread (or task) must not wait for SQLite's locks.
_not_waiting: ContextVar[bool] = ContextVar("staffel_not_waiting", default=False)


class LockBusyError(Exception):
    """A statement run by :meth:`Database.without_waiting` found SQLite's lock taken."""


def _enable_sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
    record.info[_BUSY_TIMEOUT] = SQLITE_BUSY_TIMEOUT_MS


def _set_pragma(dbapi_connection: Any, record: Any, key: str, pragma: str, wanted: int) -> None:
    """Sets a connection's integer PRAGMA unless ``record.info[key]`` says it holds it."""
    if record.info.get(key) != wanted:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA {pragma}={wanted}")
        cursor.close()
        record.info[key] = wanted


def _is_lock_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (or "table is locked")."""
    cause = error.orig if isinstance(error, OperationalError) else error
    if not isinstance(cause, sqlite3.OperationalError):
        return False
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(cause)


class Database:
    """A SQLAlchemy engine plus the session helpers every domain uses."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._background_checkpoints = False

    @classmethod
    def from_url(cls, url: str) -> Database:
        """Opens the database at ``url`` (any SQLAlchemy URL); creates the tables of a new one.

        Raises:
            SchemaError: the database is at an older schema revision (run
                ``staffel-server migrate``) or at one this server does not know.
        """
        if url.startswith("sqlite"):
            # Last in, first out: the vehicles' single thread gets back the connection it
            # just used, whose page cache is warm (a write through another connection
            # would make SQLite drop it).
            engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}, pool_use_lifo=True
            )
            event.listen(engine, "connect", _enable_sqlite_pragmas)
        else:
            engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        database = cls(engine)
        if url.startswith("sqlite"):
            event.listen(engine, "checkout", database._on_sqlite_checkout)
        try:
            database.create_all()
        except BaseException:
            engine.dispose()
            raise
        return database

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Database:
        """The default store: a SQLite file inside the server's data directory."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls.from_url(f"sqlite:///{data_dir / 'staffel.db'}")

    def create_all(self) -> None:
        """Creates every table of a new database, stamped with the newest schema revision.

        A database at the newest revision gets only what is missing (triggers, tables
        created on demand); one at an older revision raises ``SchemaError``.
        """
        open_schema(self.engine, load_models())

    @property
    def answers_without_io_wait(self) -> bool:
        """Whether statements are answered from a local file, without network round trips
        (SQLite): worth running on the event loop (:meth:`without_waiting`) rather than
        paying a thread hop per call."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def without_waiting(self) -> Iterator[None]:
        """Connections taken inside the block do not wait for another connection's write
        lock: a statement that would raises :class:`LockBusyError` at once (its
        transaction rolled back), so the caller can retry where waiting is harmless.

        Only SQLite waits for locks this way; on other databases the block changes nothing.
        """
        token = _not_waiting.set(True)
        try:
            yield
        except (OperationalError, sqlite3.OperationalError) as error:
            if _is_lock_busy(error):
                raise LockBusyError(str(error)) from error
            raise
        finally:
            _not_waiting.reset(token)

    def checkpoint_in_background(self) -> None:
        """From now on, commits never copy the SQLite write-ahead log into the database
        file (SQLite does that, with an fsync, in whichever commit crosses 1,000 pages,
        which could be one on the event loop): the caller runs :meth:`checkpoint`
        in a thread of its own, every second or so. Nothing changes on other databases."""
        self._background_checkpoints = True

    def checkpoint(self) -> tuple[int, int]:
        """Copies what it can of SQLite's write-ahead log into the database file without
        waiting for readers or writers (a passive checkpoint; blocking, for a thread).

        Returns the frames in the log and how many of them are now in the database file;
        (0, 0) on other databases.
        """
        if not self.answers_without_io_wait:
            return (0, 0)
        with self.engine.connect() as connection:
            row = connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        return int(row[1]), int(row[2])

    def _on_sqlite_checkout(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        """No wait for a connection taken by :meth:`without_waiting`, the usual wait for
        any other; no automatic checkpoint once :meth:`checkpoint_in_background` was
        called. Each PRAGMA runs only when it changes."""
        timeout = 0 if _not_waiting.get() else SQLITE_BUSY_TIMEOUT_MS
        _set_pragma(dbapi_connection, record, _BUSY_TIMEOUT, "busy_timeout", timeout)
        pages = 0 if self._background_checkpoints else SQLITE_AUTOCHECKPOINT_PAGES
        _set_pragma(dbapi_connection, record, _AUTOCHECKPOINT, "wal_autocheckpoint", pages)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on any exception."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        """Closes every pooled connection."""
        self.engine.dispose()
