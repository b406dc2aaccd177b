"""Schema migrations: Alembic, configured in code, with its revisions inside the package.

Every database carries the revision of its schema in Alembic's ``alembic_version`` table.

- :func:`upgrade` brings a database to the newest revision (``staffel-server migrate``, or
  ``--auto-migrate`` at start-up);
- :func:`open_schema` is what :meth:`server.store.Database.from_url` runs: it creates the
  tables of a new database and stamps it with the newest revision, and refuses a database
  at an older revision, telling the operator to migrate.

On PostgreSQL both hold one session advisory lock while they look at or change the schema,
so replicas that start together (or migrate together) take turns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from server.errors import SchemaError

MIGRATIONS_DIR: Final = Path(__file__).parent
VERSION_TABLE: Final = "alembic_version"
# Key of the PostgreSQL advisory lock held while the schema is looked at or changed.
_SCHEMA_LOCK_KEY: Final = "staffel_schema"
MIGRATE_HINT: Final = (
    "run `staffel-server migrate --data-dir DIR [--database-url URL]` "
    "(or start the server with --auto-migrate)"
)


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`upgrade` did: the revisions before and after, and each one applied."""

    before: str | None
    after: str
    applied: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line per step, for the operator."""
        if not self.applied:
            return f"schema already at the newest revision {self.after}; nothing to do"
        start = f"schema at revision {self.before}" if self.before else "empty database"
        lines = [f"{start}; applying {len(self.applied)} revision(s):"]
        lines += [f"  {step}" for step in self.applied]
        lines.append(f"schema now at revision {self.after} (newest)")
        return "\n".join(lines)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: no alembic.ini is needed at run time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Without it Alembic warns that it splits paths the legacy way (warnings fail the tests).
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    """The revisions shipped with this server."""
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this server knows."""
    head = script_directory().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise SchemaError("no schema revisions found in the installed package")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is stamped with; None when it carries none."""
    return MigrationContext.configure(connection).get_current_revision()


def _has_tables(connection: Connection) -> bool:
    names = set(inspect(connection).get_table_names())
    return bool(names - {VERSION_TABLE})


@contextmanager
def schema_lock(connection: Connection) -> Iterator[None]:
    """Holds the schema lock on PostgreSQL (a session advisory lock) for the block."""
    if connection.dialect.name != "postgresql":
        yield
        return
    connection.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": _SCHEMA_LOCK_KEY})
    connection.commit()
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(
            text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": _SCHEMA_LOCK_KEY}
        )
        connection.commit()


def schema_differences(connection: Connection, metadata: MetaData) -> list[Any]:
    """How the database's tables differ from ``metadata`` (Alembic's autogenerate diff)."""
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "render_as_batch": connection.dialect.name == "sqlite"},
    )
    return [
        diff
        for diff in compare_metadata(context, metadata)
        if not (isinstance(diff, tuple) and _names_version_table(diff))
    ]


def _names_version_table(diff: tuple[Any, ...]) -> bool:
    table = getattr(diff[1], "name", None) if len(diff) > 1 else None
    return diff[0] == "remove_table" and table == VERSION_TABLE


def _refuse(current: str) -> SchemaError:
    known = {script.revision for script in script_directory().walk_revisions()}
    head = head_revision()
    if current in known:
        return SchemaError(
            f"the database schema is at revision {current}, older than this server's "
            f"{head}: {MIGRATE_HINT}"
        )
    return SchemaError(
        f"the database schema is at revision {current}, which this server does not know "
        f"(its newest is {head}): it was migrated by a newer Staffel; upgrade this server"
    )


def _adopt(connection: Connection, metadata: MetaData) -> None:
    """Stamps an unversioned database whose tables match the models; refuses otherwise."""
    metadata.create_all(connection)
    differences = schema_differences(connection, metadata)
    if differences:
        listed = "; ".join(str(diff) for diff in differences[:5])
        raise SchemaError(
            "the database has Staffel tables but no schema revision, and they differ from "
            f"this server's models ({listed}): it predates migrations; export its data and "
            "start on a new database, or stamp the matching revision with Alembic"
        )
    MigrationContext.configure(connection).stamp(script_directory(), "head")


def open_schema(engine: Engine, metadata: MetaData) -> None:
    """Makes ``engine``'s database usable by this server, or explains why it is not.

    A new database gets every table of ``metadata`` and is stamped with the newest
    revision; one at the newest revision gets whatever ``metadata`` adds without a table
    change (triggers, tables of domains created on demand).

    Raises:
        SchemaError: the database is at an older revision (run ``staffel-server migrate``),
            at one this server does not know, or unversioned with tables unlike the models.
    """
    with engine.connect() as connection, schema_lock(connection), connection.begin():
        current = current_revision(connection)
        if current is None:
            if _has_tables(connection):
                _adopt(connection, metadata)
            else:
                metadata.create_all(connection)
                MigrationContext.configure(connection).stamp(script_directory(), "head")
            return
        if current != head_revision():
            raise _refuse(current)
        metadata.create_all(connection)


def migration_engine(url: str) -> Engine:
    """An engine for migrating: one connection, foreign keys off on SQLite (batch copies)."""
    if url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    return create_engine(url, poolclass=NullPool)


def upgrade(url: str, metadata: MetaData) -> MigrationReport:
    """Brings the database at ``url`` to the newest revision.

    An empty database gets every revision from the first; an unversioned one whose tables
    match ``metadata`` is stamped with the newest.

    Raises:
        SchemaError: the database is at a revision this server does not know, or
            unversioned with tables unlike the models.
    """
    engine = migration_engine(url)
    try:
        with engine.connect() as connection, schema_lock(connection):
            before = current_revision(connection)
            if before is None and _has_tables(connection):
                with connection.begin():
                    _adopt(connection, metadata)
                return MigrationReport(before=None, after=head_revision())
            connection.commit()
            if before is not None and before not in {
                script.revision for script in script_directory().walk_revisions()
            }:
                raise _refuse(before)
            steps = _steps(before)
            command.upgrade(alembic_config(connection), "head")
            after = current_revision(connection)
            connection.commit()
    finally:
        engine.dispose()
    if after is None:  # pragma: no cover - alembic stamps every revision it applies
        raise SchemaError("the migration left no schema revision behind")
    return MigrationReport(before=before, after=after, applied=steps)


def _steps(before: str | None) -> list[str]:
    """The revisions from ``before`` (exclusive) to the newest, oldest first, described."""
    scripts = list(script_directory().iterate_revisions("head", before or "base"))
    return [f"{script.revision}: {script.doc}" for script in reversed(scripts)]
