"""DirectStatement: the check-in's prebuilt statements run on the DB-API cursor read and
write exactly what Connection.execute would, keep the connection's listeners informed,
raise SQLAlchemy's errors, and on SQLite still refuse to wait for another writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import Connection, bindparam, column, event, insert, select, table, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import SQLModel

from server.campaigns.offers import QuietVehicles
from server.store import Database
from server.store.db import LockBusyError
from server.store.direct import DirectStatement, pipelines, rows_together
from tests.server.campaigns.support import add_vehicle, vin

_VEHICLES = SQLModel.metadata.tables["fleet_vehicle"]
_ECUS = SQLModel.metadata.tables["fleet_ecu"]

_VEHICLE_WITH_ECUS = (
    select(
        _VEHICLES.c.vin,
        _VEHICLES.c.last_seen,
        _VEHICLES.c.registered_at,
        _ECUS.c.serial,
        _ECUS.c.primary,
        (_ECUS.c.public_key != "").label("has_key"),
    )
    .select_from(_VEHICLES.outerjoin(_ECUS, _ECUS.c.vin == _VEHICLES.c.vin))
    .where(_VEHICLES.c.vin == bindparam("vin"))
    .order_by(_ECUS.c.serial)
)
_SET_LAST_SEEN = (
    update(_VEHICLES).where(_VEHICLES.c.vin == bindparam("v")).values(last_seen=bindparam("seen"))
)
_SET_INSTALLED = (
    update(_ECUS).where(_ECUS.c.serial == bindparam("s")).values(installed_sha256=bindparam("h"))
)
# A literal value in the statement (no parameter of the caller's) and a LIMIT.
_PRIMARY_ECUS = (
    select(_ECUS.c.serial).where(_ECUS.c.primary == True).order_by(_ECUS.c.serial).limit(2)  # noqa: E712 - SQL
)


def _two_vehicles(database: Database) -> None:
    add_vehicle(database, 1)
    add_vehicle(database, 2)
    with database.engine.begin() as connection:
        connection.execute(
            insert(_ECUS).values(
                serial="tcu-1", vin=vin(1), hardware_id="tcu-x", primary=False,
                installed_sha256="0" * 64, public_key='{"keytype": "ed25519"}',
            )
        )  # fmt: skip
        connection.execute(
            _SET_LAST_SEEN, {"v": vin(1), "seen": datetime(2026, 5, 1, 8, 30, 15, 250, tzinfo=UTC)}
        )


def test_rows_are_what_connection_execute_reads(database: Database) -> None:
    _two_vehicles(database)
    direct = DirectStatement(_VEHICLE_WITH_ECUS)
    with database.engine.connect() as connection:
        for number in (1, 2):
            expected = connection.execute(_VEHICLE_WITH_ECUS, {"vin": vin(number)}).all()
            got = direct.rows(connection, {"vin": vin(number)})
            assert [tuple(row) for row in got] == [tuple(row) for row in expected]
            for mine, theirs in zip(got, expected, strict=True):
                assert [type(value) for value in mine] == [type(value) for value in theirs]
                assert mine.has_key == theirs.has_key
                assert mine.last_seen == theirs.last_seen
        rows = direct.rows(connection, {"vin": vin(1)})
    assert [(row.serial, row.primary, row.has_key) for row in rows] == [
        ("gw-1", True, False),
        ("tcu-1", False, True),
    ]
    assert rows[0].last_seen == datetime(2026, 5, 1, 8, 30, 15, 250, tzinfo=UTC)


def test_first_is_none_without_rows_and_literals_and_limits_apply(database: Database) -> None:
    _two_vehicles(database)
    add_vehicle(database, 3)
    with database.engine.connect() as connection:
        assert DirectStatement(_VEHICLE_WITH_ECUS).first(connection, {"vin": "WNONE"}) is None
        primaries = DirectStatement(_PRIMARY_ECUS).rows(connection, {})
    assert [row.serial for row in primaries] == ["gw-1", "gw-2"]


def test_writes_store_what_connection_execute_would_and_count_rows(database: Database) -> None:
    _two_vehicles(database)
    seen = datetime(2026, 6, 2, 9, 0, 1, 999, tzinfo=UTC)
    with database.engine.begin() as connection:
        assert DirectStatement(_SET_LAST_SEEN).execute(connection, {"v": vin(2), "seen": seen}) == 1
        changed = DirectStatement(_SET_INSTALLED).execute(
            connection, [{"s": "gw-1", "h": "a" * 64}, {"s": "gw-2", "h": "b" * 64}]
        )
        assert changed == 2
        assert (
            DirectStatement(_SET_LAST_SEEN).execute(connection, {"v": "WNONE", "seen": seen}) == 0
        )
    with database.engine.connect() as connection:
        last_seen = connection.execute(
            select(_VEHICLES.c.last_seen).where(_VEHICLES.c.vin == vin(2))
        ).scalar_one()
        images = connection.execute(
            select(_ECUS.c.serial, _ECUS.c.installed_sha256).order_by(_ECUS.c.serial)
        ).all()
    assert last_seen == seen
    assert [tuple(row) for row in images] == [
        ("gw-1", "a" * 64),
        ("gw-2", "b" * 64),
        ("tcu-1", "0" * 64),
    ]


def test_a_write_rolls_back_with_its_transaction(database: Database) -> None:
    _two_vehicles(database)
    with pytest.raises(RuntimeError), database.engine.begin() as connection:
        DirectStatement(_SET_INSTALLED).execute(connection, {"s": "gw-1", "h": "c" * 64})
        raise RuntimeError("the check-in failed after the write")
    with database.engine.connect() as connection:
        image = connection.execute(
            select(_ECUS.c.installed_sha256).where(_ECUS.c.serial == "gw-1")
        ).scalar_one()
    assert image != "c" * 64


def test_listeners_see_every_statement(database: Database) -> None:
    _two_vehicles(database)
    before: list[str] = []
    after: list[str] = []

    def note_before(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        before.append(statement.split(" ", 1)[0])

    def note_after(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        after.append(statement.split(" ", 1)[0])

    event.listen(database.engine, "before_cursor_execute", note_before)
    event.listen(database.engine, "after_cursor_execute", note_after)
    try:
        with database.engine.begin() as connection:
            DirectStatement(_VEHICLE_WITH_ECUS).rows(connection, {"vin": vin(1)})
            DirectStatement(_SET_INSTALLED).execute(connection, {"s": "gw-1", "h": "d" * 64})
    finally:
        event.remove(database.engine, "before_cursor_execute", note_before)
        event.remove(database.engine, "after_cursor_execute", note_after)
    assert before == ["SELECT", "UPDATE"]
    assert after == ["SELECT", "UPDATE"]


def test_a_local_write_that_moves_the_offer_epoch_stops_quiet_answers(database: Database) -> None:
    _two_vehicles(database)
    quiet = QuietVehicles()
    quiet.watch_local_writes(database)
    quiet.refresh(database)
    assert quiet.epoch is not None
    with database.engine.begin() as connection:
        # A new installed image: the ECU trigger moves the epoch in this transaction.
        DirectStatement(_SET_INSTALLED).execute(connection, {"s": "gw-2", "h": "e" * 64})
    assert quiet.epoch is None, "quiet answers wait for the next read of the epoch"


def test_driver_errors_are_sqlalchemy_errors(database: Database) -> None:
    _two_vehicles(database)
    duplicate = DirectStatement(
        insert(_ECUS).values(
            serial=bindparam("serial"), vin=vin(2), hardware_id="gw-x1", primary=False,
            installed_sha256="0" * 64, public_key="",
        )
    )  # fmt: skip
    with pytest.raises(IntegrityError), database.engine.begin() as connection:
        duplicate.execute(connection, {"serial": "gw-1"})
    with database.engine.connect() as connection:
        serials = connection.execute(select(_ECUS.c.serial).where(_ECUS.c.vin == vin(2))).all()
    assert [row.serial for row in serials] == ["gw-2"], "nothing of the failed insert stays"


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'staffel.db'}")
    yield database
    database.dispose()


def test_on_sqlite_a_direct_write_refuses_to_wait_for_another_writer(
    sqlite_database: Database, tmp_path: Path
) -> None:
    _two_vehicles(sqlite_database)
    holder = sqlite3.connect(tmp_path / "staffel.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            pytest.raises(LockBusyError),
            sqlite_database.without_waiting(),
            sqlite_database.engine.begin() as connection,
        ):
            DirectStatement(_SET_INSTALLED).execute(connection, {"s": "gw-1", "h": "f" * 64})
    finally:
        holder.execute("COMMIT")
        holder.close()
    with sqlite_database.engine.begin() as connection:
        assert (
            DirectStatement(_SET_INSTALLED).execute(connection, {"s": "gw-1", "h": "f" * 64}) == 1
        )


def test_on_sqlite_a_missing_parameter_and_an_expanding_one_are_refused(
    sqlite_database: Database,
) -> None:
    expanding = select(_ECUS.c.serial).where(
        _ECUS.c.serial.in_(bindparam("serials", expanding=True))
    )
    with sqlite_database.engine.connect() as connection:
        with pytest.raises(KeyError, match="'vin'"):
            DirectStatement(_VEHICLE_WITH_ECUS).rows(connection, {})
        with pytest.raises(TypeError, match="expanding"):
            DirectStatement(expanding).rows(connection, {"serials": ["gw-1"]})


def _note_pipelined(connection: Connection) -> list[bool]:
    """Whether each statement the connection's psycopg driver sends is in pipeline mode."""
    driver = connection.connection.driver_connection
    sent_in_pipeline: list[bool] = []
    if not isinstance(driver, psycopg.Connection | psycopg.AsyncConnection):
        return sent_in_pipeline
    execute = driver.execute

    def noted(*args: Any, **kwargs: Any) -> Any:
        sent_in_pipeline.append(driver.pgconn.pipeline_status != pq.PipelineStatus.OFF)
        return execute(*args, **kwargs)

    driver.execute = noted  # type: ignore[method-assign]
    return sent_in_pipeline


def test_reads_together_are_the_reads_one_by_one(database: Database) -> None:
    _two_vehicles(database)
    vehicle, primaries = DirectStatement(_VEHICLE_WITH_ECUS), DirectStatement(_PRIMARY_ECUS)
    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with database.engine.begin() as connection:
        sent_in_pipeline = _note_pipelined(connection)
        together = rows_together(connection, (vehicle, {"vin": vin(1)}), (primaries, {}))
        if sent_in_pipeline:
            del connection.connection.driver_connection.execute  # the driver's own again
    with database.engine.connect() as connection:
        one_by_one = [vehicle.rows(connection, {"vin": vin(1)}), primaries.rows(connection, {})]
        on_postgresql = database.engine.dialect.name == "postgresql"
        assert pipelines(connection) is on_postgresql
    assert together == one_by_one
    assert [row.serial for row in together[0]] == ["gw-1", "tcu-1"]
    assert len(statements) == 4, "listeners see the reads sent together too"
    assert sent_in_pipeline == ([True, True] if on_postgresql else [])


async def test_on_postgresql_reads_together_on_the_loop_share_one_pipeline(
    postgres_url: str,
) -> None:
    database = Database.from_url(postgres_url)
    _two_vehicles(database)
    vehicle, primaries = DirectStatement(_VEHICLE_WITH_ECUS), DirectStatement(_PRIMARY_ECUS)

    def work() -> tuple[list[list[Any]], list[bool]]:
        with database.engine.begin() as connection:
            sent_in_pipeline = _note_pipelined(connection)
            together = rows_together(connection, (vehicle, {"vin": vin(2)}), (primaries, {}))
            del connection.connection.driver_connection.execute
            return together, sent_in_pipeline

    try:
        together, sent_in_pipeline = await database.run_on_loop(work)
        with database.engine.connect() as connection:
            assert together == [
                vehicle.rows(connection, {"vin": vin(2)}),
                primaries.rows(connection, {}),
            ]
        assert sent_in_pipeline == [True, True]
    finally:
        await database.close_loop_engine()
        database.dispose()


def test_a_failed_read_together_raises_and_rolls_back(database: Database) -> None:
    _two_vehicles(database)
    seen = datetime(2026, 7, 1, tzinfo=UTC)
    missing = DirectStatement(select(column("n")).select_from(table("no_such_table")))
    with pytest.raises(DBAPIError, match="no_such_table"), database.engine.begin() as connection:
        DirectStatement(_SET_LAST_SEEN).execute(connection, {"v": vin(1), "seen": seen})
        rows_together(connection, (DirectStatement(_PRIMARY_ECUS), {}), (missing, {}))
    with database.engine.connect() as connection:
        last_seen = connection.execute(
            select(_VEHICLES.c.last_seen).where(_VEHICLES.c.vin == vin(1))
        ).scalar_one()
    assert last_seen != seen, "the write before the failed read rolled back"


def test_on_postgresql_a_dropped_connection_is_invalidated(postgres_url: str) -> None:
    database = Database.from_url(postgres_url)
    add_vehicle(database, 1)
    direct = DirectStatement(_VEHICLE_WITH_ECUS)
    try:
        with database.engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(DBAPIError) as dropped:
                direct.rows(connection, {"vin": vin(1)})
            assert dropped.value.connection_invalidated
            assert connection.invalidated
        # The pool never hands the dead connection out again.
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid
            assert [row.vin for row in direct.rows(connection, {"vin": vin(1)})] == [vin(1)]
    finally:
        database.dispose()
