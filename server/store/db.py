"""Engine and sessions for the server's SQL store."""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn
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
# While a task runs blocking database code on the event loop (Database.run_on_loop): the
# database and the engine whose statements await on that loop.
_on_loop: ContextVar[tuple[Database, Engine] | None] = ContextVar("staffel_on_loop", default=None)
# Drivers whose connections can await on the event loop (SQLAlchemy's asyncio dialects).
_LOOP_DRIVERS = frozenset({"psycopg"})
# Seconds a pooled connection (PostgreSQL) may sit idle before its next checkout pings the
# server first; a connection in steady use is not pinged (a round trip each).
IDLE_PING_SECONDS = 5.0
# Connections of the loop engine (PostgreSQL): a check-in holds one for two round trips.
LOOP_POOL_SIZE = 16
_RETURNED_AT = "staffel_returned_at"  # a pooled connection's monotonic check-in time
_T = TypeVar("_T")


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


def _note_returned(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


class Database:
    """A SQLAlchemy engine plus the session helpers every domain uses."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._background_checkpoints = False
        # The engine whose statements await on the event loop (run_on_loop), made on first
        # use for the running loop: (loop, engine).
        self._loop_engine: tuple[asyncio.AbstractEventLoop, AsyncEngine] | None = None
        # Event listeners registered through listen(): each engine gets them all.
        self._listeners: list[tuple[str, Callable[..., Any]]] = []
        # Seconds a pooled connection may sit idle before it is pinged on use (not SQLite).
        self.idle_ping_seconds = IDLE_PING_SECONDS

    @property
    def engine(self) -> Engine:
        """The engine: inside :meth:`run_on_loop`, the one whose statements await on the
        event loop; elsewhere the one for threads."""
        on_loop = _on_loop.get()
        if on_loop is not None and on_loop[0] is self:
            return on_loop[1]
        return self._engine

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
            engine = create_engine(url, pool_size=10, max_overflow=20)
        database = cls(engine)
        if url.startswith("sqlite"):
            event.listen(engine, "checkout", database._on_sqlite_checkout)
        else:
            database._ping_when_idle(engine)
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

    def _ping_when_idle(self, engine: Engine) -> None:
        """Pings a pooled connection of ``engine`` before use only when it sat idle for
        longer than :attr:`idle_ping_seconds`, so that one restarted database server is
        found before a caller's statement fails: ``pool_pre_ping`` would spend a round
        trip on every checkout, a fifth of a repeat offer's on PostgreSQL. A connection
        the server dropped while in steady use fails one statement, and the disconnect
        error makes the pool replace every connection older than it."""
        dialect = engine.dialect

        def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            returned = record.info.get(_RETURNED_AT)
            if returned is None or time.monotonic() - returned < self.idle_ping_seconds:
                return
            try:
                dialect.do_ping(dbapi_connection)
            except dialect.loaded_dbapi.Error as error:
                if dialect.is_disconnect(error, dbapi_connection, None):
                    # The pool drops this connection and checks out another (or a new one).
                    raise DisconnectionError(str(error)) from error
                raise

        event.listen(engine, "checkin", _note_returned)
        event.listen(engine, "checkout", ping)

    def _engines(self) -> list[Engine]:
        engines = [self._engine]
        if self._loop_engine is not None:
            engines.append(self._loop_engine[1].sync_engine)
        return engines

    def listen(self, identifier: str, listener: Callable[..., Any]) -> None:
        """Registers an engine (or pool) event listener on every engine of the database:
        the threads' one and the one :meth:`run_on_loop` uses, made now or later."""
        self._listeners.append((identifier, listener))
        for engine in self._engines():
            event.listen(engine, identifier, listener)

    def remove_listener(self, identifier: str, listener: Callable[..., Any]) -> None:
        """Removes a listener registered with :meth:`listen` from every engine."""
        self._listeners.remove((identifier, listener))
        for engine in self._engines():
            event.remove(engine, identifier, listener)

    @property
    def awaits_on_loop(self) -> bool:
        """Whether blocking database code can run on the event loop with each statement
        awaiting the server's answer (:meth:`run_on_loop`): PostgreSQL through psycopg."""
        return self._engine.url.get_driver_name() in _LOOP_DRIVERS

    @property
    def in_work_on_loop(self) -> bool:
        """Whether the caller is blocking code inside this database's :meth:`run_on_loop`
        (where a coroutine can be awaited, ``sqlalchemy.util.await_``)."""
        on_loop = _on_loop.get()
        return on_loop is not None and on_loop[0] is self

    async def run_on_loop(self, work: Callable[[], _T]) -> _T:
        """Runs ``work``, blocking database code, on the running event loop: its statements
        (through :attr:`engine`) await the database's answers there, so the loop serves
        other calls meanwhile and no thread takes the interpreter lock back and forth.

        ``work`` must not hold a threading lock across a statement: another task's work
        may run on the same thread while it awaits.

        Raises:
            ValueError: the database's driver cannot await (see :attr:`awaits_on_loop`).
        """
        if not self.awaits_on_loop:
            raise ValueError(f"{self._engine.url.get_backend_name()}: cannot await on the loop")
        engine = self._engine_for_loop(asyncio.get_running_loop())
        token = _on_loop.set((self, engine.sync_engine))
        try:
            return await greenlet_spawn(work)
        finally:
            _on_loop.reset(token)

    def _engine_for_loop(self, loop: asyncio.AbstractEventLoop) -> AsyncEngine:
        if self._loop_engine is not None and self._loop_engine[0] is loop:
            return self._loop_engine[1]
        if self._loop_engine is not None:
            raise RuntimeError(
                "the database's loop engine belongs to another event loop: "
                "call close_loop_engine() on that loop first"
            )
        # No overflow: the loop starts as many calls as come, and an overflow connection is
        # closed when it is returned, so a burst would open (and PostgreSQL fork) a new
        # one per call; calls beyond the pool wait for a connection instead.
        engine = create_async_engine(
            self._engine.url, pool_size=LOOP_POOL_SIZE, max_overflow=0, pool_timeout=60
        )
        self._ping_when_idle(engine.sync_engine)
        for identifier, listener in self._listeners:
            event.listen(engine.sync_engine, identifier, listener)
        self._loop_engine = (loop, engine)
        return engine

    async def close_loop_engine(self) -> None:
        """Closes the connections :meth:`run_on_loop` opened (on the loop they belong to)."""
        if self._loop_engine is not None:
            engine = self._loop_engine[1]
            self._loop_engine = None
            await engine.dispose()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A pooled connection of :attr:`engine` in autocommit: each statement stands alone,
        no ``BEGIN`` or ``COMMIT`` (reads, and writes of one statement)."""
        with self.engine.connect() as connection:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")

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
        """Closes every pooled connection of the threads' engine (the loop engine's are
        closed by :meth:`close_loop_engine`)."""
        self._engine.dispose()
