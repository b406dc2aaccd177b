"""The append-only audit log: every action, in the transaction that makes it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import event
from sqlmodel import Session, SQLModel, col, select

from server.auth.models import AuditEntry
from server.auth.roles import Principal
from server.clock import Clock, system_clock
from server.errors import InvalidArgumentError
from server.store import Database

MAX_AUDIT_LIMIT = 10_000

# The database itself refuses to change or delete an entry.
_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
]
_POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
]


def _install_triggers(target: Any, connection: Any, **_: Any) -> None:
    statements = _SQLITE_TRIGGERS if connection.dialect.name == "sqlite" else _POSTGRES_TRIGGERS
    for statement in statements:
        connection.exec_driver_sql(statement)


event.listen(SQLModel.metadata.tables["audit_log"], "after_create", _install_triggers)


def record(
    session: Session,
    actor: Principal,
    action: str,
    target: str,
    clock: Clock = system_clock,
    **detail: Any,
) -> None:
    """Adds one entry inside the caller's transaction (it commits or rolls back with it)."""
    session.add(
        AuditEntry(
            at=clock(),
            actor=actor.name,
            action=action,
            target=target,
            detail=json.dumps(detail, sort_keys=True, default=str)[:4096],
        )
    )


def list_audit(database: Database, *, target: str = "", limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, optionally only those about ``target``."""
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise InvalidArgumentError(f"limit must be 1 to {MAX_AUDIT_LIMIT}")
    query = select(AuditEntry)
    if target:
        query = query.where(AuditEntry.target == target)
    with database.session() as session:
        return list(session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit)).all())
