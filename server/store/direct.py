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

Only SQLite takes this path; on other databases the statement goes through
``Connection.execute`` unchanged (there the work runs in threads and waits on the network,
which the interpreter time saved here would not shorten).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Delete, Insert, Select, Update

_Processor = Callable[[Any], Any]
_DIRECT_DIALECTS = frozenset({"sqlite"})


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled for one dialect, with what executing it needs."""

    sql: str
    # Positional parameters in order: (name, value when the caller gives none, processor).
    parameters: tuple[tuple[str, Any, _Processor | None], ...]
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
        names = compiled.positiontup
        if names is None:
            raise TypeError(f"{dialect.name}: DirectStatement needs a positional paramstyle")
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
        if isinstance(self.statement, Select):
            columns = list(self.statement.selected_columns)
            row = _row_type("Row", self.statement.selected_columns.keys(), rename=True)
            for index, column in enumerate(columns):
                processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
                if processor is not None:
                    results.append((index, processor))
        return _Compiled(compiled.string, tuple(parameters), row, tuple(results))

    def _values(self, compiled: _Compiled, params: Mapping[str, Any]) -> list[Any]:
        values = []
        for name, default, processor in compiled.parameters:
            value = params.get(name, default)
            if value is _MISSING:
                raise KeyError(f"statement parameter {name!r} not given")
            values.append(processor(value) if processor is not None else value)
        return values

    def _run(
        self, connection: Connection, params: Sequence[Mapping[str, Any]], *, many: bool
    ) -> tuple[Any, _Compiled]:
        dialect = connection.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = self._compile(dialect)
        values = [self._values(compiled, each) for each in params]
        arguments: Any = values if many else values[0]
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        dispatch = connection.dispatch
        dispatch.before_cursor_execute(connection, cursor, compiled.sql, arguments, None, many)
        try:
            if many:
                cursor.executemany(compiled.sql, values)
            else:
                cursor.execute(compiled.sql, values[0])
        except dialect.loaded_dbapi.Error as error:
            cursor.close()
            raise DBAPIError.instance(
                compiled.sql, arguments, error, dialect.loaded_dbapi.Error, dialect=dialect
            ) from error
        dispatch.after_cursor_execute(connection, cursor, compiled.sql, arguments, None, many)
        return cursor, compiled

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row of the statement (a select) with ``params``."""
        if connection.dialect.name not in _DIRECT_DIALECTS:
            return list(connection.execute(self.statement, params).all())
        cursor, compiled = self._run(connection, [params], many=False)
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
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
