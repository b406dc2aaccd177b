"""Tables of tokens and of the audit log."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class ApiToken(SQLModel, table=True):
    """A bearer token of a person or script; only its SHA-256 is stored."""

    __tablename__ = "auth_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=64)
    role: str = Field(max_length=32)
    token_sha256: str = Field(unique=True, max_length=64)
    created_by: str = Field(max_length=64)
    created_at: datetime
    revoked_at: datetime | None = None


class AuditEntry(SQLModel, table=True):
    """One action, written in the transaction of the action itself; never changed."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    actor: str = Field(max_length=64)
    action: str = Field(max_length=64)
    target: str = Field(index=True, max_length=64)
    detail: str = Field(default="", max_length=4096)
