"""Engine and sessions for the server's SQL store."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
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


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """A SQLAlchemy engine plus the session helpers every domain uses."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
