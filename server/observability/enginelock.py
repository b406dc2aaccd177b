"""Which server replica runs the campaign engine: one PostgreSQL advisory lock.

Every replica tries ``pg_try_advisory_lock`` before each engine step; the one that holds it
steps, the others skip. The lock belongs to one database connection kept open for it, so
when its holder dies the connection closes, PostgreSQL releases the lock, and another
replica takes it at its next try. SQLite serves a single process, which needs no lock.
(Each campaign's step also locks its campaign row, so even a step that overlaps a change of
holder cannot count twice.)
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

# The advisory lock key of the campaign engine: "Staffel" in ASCII, one key for all replicas.
ENGINE_LOCK_KEY = 0x5374616666656C


class EngineLock:
    """The right to run campaign-engine steps, held by at most one process at a time."""

    def __init__(self, engine: Engine, *, key: int = ENGINE_LOCK_KEY) -> None:
        self._engine = engine
        self._key = key
        self._shared = engine.dialect.name == "postgresql"
        self._connection: Connection | None = None

    def hold(self) -> bool:
        """True while this process holds the lock; tries to take it when it does not.

        Blocking (database round trips): call it from a worker thread in async code.
        """
        if not self._shared:
            return True
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
            except DBAPIError as error:
                log.warning("lost the campaign-engine lock with its connection: %s", error)
                self._drop()
                return False
            return True
        try:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as error:
            log.warning("cannot try the campaign-engine lock: %s", error)
            return False
        # Out of the pool: the lock must never ride along with a connection lent to others.
        connection.detach()
        try:
            taken = bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                ).scalar_one()
            )
        except DBAPIError as error:
            log.warning("cannot try the campaign-engine lock: %s", error)
            taken = False
        if not taken:
            connection.close()
            return False
        self._connection = connection
        log.info("this replica now runs the campaign engine")
        return True

    def release(self) -> None:
        """Gives the lock up (closing its connection), so another replica takes over now."""
        if self._connection is not None:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except DBAPIError as error:
                log.warning("closing the campaign-engine lock's connection: %s", error)
