"""Prebuilt statements run straight on the DB-API cursor, for the check-in's hot path.

A vehicle's check-in runs a handful of fixed Core statements thousands of times a second.
On SQLite that work runs on the event loop (``server/api/database_work.py``), where
SQLAlchemy's per-execution machinery (execution context, parameter dictionaries, result
objects) cost more interpreter time than SQLite takes to answer. A
:class:`DirectStatement` compiles its statement once per dialect and then runs the same
SQL on the connection's DB-API cursor, converting parameters and result columns with the
dialect's own bind and result processors, so values read and written are exactly what
``Connection.execute`` would read and write. The connection's ``before_cursor_execute``
and ``after_cursor_execute`` listeners still see every statement (without an execution
context), and driver errors are raised as SQLAlchemy's exceptions, as
``Connection.execute`` raises them.

SQLite and PostgreSQL take this path; on other databases the statement goes through
``Connection.execute`` unchanged. On PostgreSQL, a check-in's round trips are its larger
cost: :func:`rows_together` sends independent reads in one (psycopg's pipeline mode).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql import Delete, Insert, Select, Update
from sqlalchemy.util import await_

_Processor = Callable[[Any], Any]
_DIRECT_DIALECTS = frozenset({"sqlite", "postgresql"})


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled for one dialect, with what executing it needs."""

    sql: str
    # Parameters, in order for a positional paramstyle: (name, value when the caller
    # gives none, processor).
    parameters: tuple[tuple[str, Any, _Processor | None], ...]
    named: bool  # the dialect's paramstyle names parameters (psycopg's %(name)s)
    row: Any  # a namedtuple class of the selected columns' keys (None for writes)
    # (column index, processor) for the result columns that need converting.
    results: tuple[tuple[int, _Processor], ...]


_MISSING = object()
# The fields of a statement's rows are known only at run time, which mypy cannot type.
_row_type: Any = namedtuple


class DirectStatement:
    """One prebuilt Core statement (no expanding parameters), runnable on the DB-API cursor.

    Rows come back as named tuples whose fields are the statement's column keys, so code
    that reads ``row.name`` works with these and with SQLAlchemy's rows alike.
    """

    def __init__(self, statement: Select[Any] | Update | Insert | Delete) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        named = compiled.positiontup is None
        names = list(compiled.binds) if named else (compiled.positiontup or [])
        parameters = []
        for name in names:
            bind = compiled.binds[name]
            if bind.expanding:
                raise TypeError(f"parameter {name!r} is expanding: use Connection.execute")
            default = _MISSING if bind.required else bind.effective_value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            parameters.append((name, default, processor))
        row: Any = None
        results: list[tuple[int, _Processor]] = []
        selected = (
            self.statement.selected_columns
            if isinstance(self.statement, Select)
            else self.statement.exported_columns  # RETURNING's, if any
        )
        if len(selected):
            columns = list(selected)
            row = _row_type("Row", selected.keys(), rename=True)
            for index, column in enumerate(columns):
                processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
                if processor is not None:
                    results.append((index, processor))
        return _Compiled(compiled.string, tuple(parameters), named, row, tuple(results))

    def _values(self, compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        """The statement's parameters for the driver: a list in order (a name may repeat
        there), or a dict where the paramstyle names them."""
        values = []
        for name, default, processor in compiled.parameters:
            value = params.get(name, default)
            if value is _MISSING:
                raise KeyError(f"statement parameter {name!r} not given")
            values.append(processor(value) if processor is not None else value)
        if compiled.named:
            return dict(zip((name for name, _, _ in compiled.parameters), values, strict=True))
        return values

    def _compiled_for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = self._compile(dialect)
        return compiled

    def _run(
        self, connection: Connection, params: Sequence[Mapping[str, Any]], *, many: bool
    ) -> tuple[Any, _Compiled]:
        dialect = connection.dialect
        compiled = self._compiled_for(dialect)
        values = [self._values(compiled, each) for each in params]
        arguments: Any = values if many else values[0]
        driver = connection.connection.driver_connection
        dispatch = connection.dispatch
        if isinstance(driver, psycopg.AsyncConnection):
            # On the event loop (Database.run_on_loop): one await for the statement and its
            # rows, on the driver's own cursor.
            dispatch.before_cursor_execute(connection, None, compiled.sql, arguments, None, many)
            fetch = compiled.row is not None
            try:
                done = await_(_awaited(driver, compiled.sql, arguments, many=many, fetch=fetch))
            except psycopg.Error as error:
                raise _translated(connection, error, compiled.sql, arguments) from error
            dispatch.after_cursor_execute(connection, None, compiled.sql, arguments, None, many)
            return done, compiled
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        dispatch.before_cursor_execute(connection, cursor, compiled.sql, arguments, None, many)
        try:
            if many:
                cursor.executemany(compiled.sql, values)
            else:
                cursor.execute(compiled.sql, values[0])
        except dialect.loaded_dbapi.Error as error:
            cursor.close()
            raise _translated(connection, error, compiled.sql, arguments) from error
        dispatch.after_cursor_execute(connection, cursor, compiled.sql, arguments, None, many)
        return cursor, compiled

    def _fetch(self, cursor: Any, compiled: _Compiled) -> list[Any]:
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        return self._made(compiled, fetched)

    def _made(self, compiled: _Compiled, fetched: Sequence[Any]) -> list[Any]:
        """Rows from the driver's tuples, through the dialect's result processors."""
        make = compiled.row._make
        if not compiled.results:
            return [make(raw) for raw in fetched]
        rows = []
        for raw in fetched:
            values = list(raw)
            for index, processor in compiled.results:
                values[index] = processor(values[index])
            rows.append(make(values))
        return rows

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row of the statement (a select, or a write with RETURNING) with ``params``."""
        if connection.dialect.name not in _DIRECT_DIALECTS:
            return list(connection.execute(self.statement, params).all())
        cursor, compiled = self._run(connection, [params], many=False)
        return self._fetch(cursor, compiled)

    def first(self, connection: Connection, params: Mapping[str, Any]) -> Any | None:
        """The first row of the statement (a select) with ``params``, or None."""
        found = self.rows(connection, params)
        return found[0] if found else None

    def execute(
        self, connection: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> int:
        """Runs the statement (a write) once, or once per mapping in a sequence; returns
        the rows it changed."""
        many = not isinstance(params, Mapping)
        batch: Sequence[Mapping[str, Any]] = [params] if isinstance(params, Mapping) else params
        if connection.dialect.name not in _DIRECT_DIALECTS:
            result = connection.execute(self.statement, list(batch) if many else batch[0])
            return int(result.rowcount)
        cursor, _ = self._run(connection, batch, many=many)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()


def pipelines(connection: Connection) -> bool:
    """Whether :func:`rows_together` sends its reads in one round trip on ``connection``."""
    return isinstance(connection.connection.driver_connection, _PSYCOPG_CONNECTIONS)


def rows_together(
    connection: Connection, *queries: tuple[DirectStatement, Mapping[str, Any]]
) -> list[list[Any]]:
    """The rows of several selects, each as :meth:`DirectStatement.rows` returns them.

    On psycopg they travel in one round trip (pipeline mode), together with the
    transaction's ``BEGIN`` when they are its first statements: each of them waits for
    nothing the others return. Its asyncio connection (``Database.run_on_loop``) awaits
    the answers on the loop. Elsewhere they run one after another.
    """
    if not pipelines(connection):
        return [statement.rows(connection, params) for statement, params in queries]
    dialect = connection.dialect
    driver: Any = connection.connection.driver_connection
    sent = []
    for statement, params in queries:
        compiled = statement._compiled_for(dialect)
        sent.append((statement, compiled, statement._values(compiled, params)))
    dispatch = connection.dispatch
    for _, compiled, values in sent:
        dispatch.before_cursor_execute(connection, None, compiled.sql, values, None, False)
    statements = [(compiled.sql, values) for _, compiled, values in sent]
    try:
        if isinstance(driver, psycopg.AsyncConnection):
            fetched = await_(_pipelined_on_loop(driver, statements))
        else:
            fetched = _pipelined(driver, statements)
    except psycopg.Error as error:
        raise _translated(connection, error, sent[0][1].sql, sent[0][2]) from error
    for _, compiled, values in sent:
        dispatch.after_cursor_execute(connection, None, compiled.sql, values, None, False)
    return [
        statement._made(compiled, raw)
        for (statement, compiled, _), raw in zip(sent, fetched, strict=True)
    ]


_PSYCOPG_CONNECTIONS = (psycopg.Connection, psycopg.AsyncConnection)


@dataclass(frozen=True)
class _Done:
    """A statement awaited on the event loop, read like a closed DB-API cursor."""

    fetched: list[Any]
    rowcount: int

    def fetchall(self) -> list[Any]:
        return self.fetched

    def close(self) -> None:
        """Nothing to close: the driver's cursor was closed on the loop."""


async def _awaited(
    driver: psycopg.AsyncConnection[Any], sql: str, arguments: Any, *, many: bool, fetch: bool
) -> _Done:
    async with driver.cursor() as cursor:
        if many:
            await cursor.executemany(sql, arguments)
        else:
            await cursor.execute(sql, arguments)
        fetched = await cursor.fetchall() if fetch else []
        return _Done(fetched, cursor.rowcount)


def _pipelined(driver: psycopg.Connection[Any], statements: list[tuple[str, Any]]) -> list[Any]:
    with driver.pipeline():
        cursors = [driver.execute(sql, values) for sql, values in statements]
    return [cursor.fetchall() for cursor in cursors]


async def _pipelined_on_loop(
    driver: psycopg.AsyncConnection[Any], statements: list[tuple[str, Any]]
) -> list[Any]:
    async with driver.pipeline():
        cursors = [await driver.execute(sql, values) for sql, values in statements]
    return [await cursor.fetchall() for cursor in cursors]


def _translated(connection: Connection, error: Any, sql: str, arguments: Any) -> StatementError:
    """SQLAlchemy's exception for a driver error, as ``Connection.execute`` raises it; a
    disconnect invalidates the connection first, so the pool never hands it out again."""
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    disconnected = dialect.is_disconnect(error, dbapi_connection, None)
    if disconnected and not connection.invalidated:
        connection.invalidate(error)
    translated: StatementError = DBAPIError.instance(
        sql,
        arguments,
        error,
        dialect.loaded_dbapi.Error,
        dialect=dialect,
        connection_invalidated=disconnected,
    )
    return translated
