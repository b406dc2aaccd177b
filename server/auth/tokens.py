"""Bearer tokens: issued once, stored as SHA-256, looked up on every call."""

from __future__ import annotations

import hashlib
import secrets

from sqlmodel import select

from server.auth import audit
from server.auth.models import ApiToken
from server.auth.roles import Principal, Role
from server.clock import system_clock
from server.errors import UnauthenticatedError
from server.store import Database
from server.validation import check_name

TOKEN_PREFIX = "stf_"  # noqa: S105 - a public marker of Staffel tokens, not a secret
MAX_TOKEN_CHARS = 128


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(database: Database, *, name: str, role: Role, created_by: Principal) -> str:
    """Issues a token for ``name`` with ``role``; returns the secret (shown only once)."""
    check_name(name, "token name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with database.session() as session:
        session.add(
            ApiToken(
                name=name,
                role=role.value,
                token_sha256=_digest(secret),
                created_by=created_by.name,
                created_at=system_clock(),
            )
        )
        audit.record(session, created_by, "token.create", name, role=role.value)
    return secret


def authenticate(database: Database, secret: str) -> Principal:
    """The principal behind a bearer token.

    Raises:
        UnauthenticatedError: the token is unknown or revoked.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_TOKEN_CHARS:
        raise UnauthenticatedError(
            "the token is not a Staffel token: pass --token or set STAFFEL_TOKEN "
            "to a token from 'staffel token create'"
        )
    with database.session() as session:
        row = session.exec(select(ApiToken).where(ApiToken.token_sha256 == _digest(secret))).first()
    if row is None or row.revoked_at is not None:
        raise UnauthenticatedError("the token is unknown or revoked: ask an admin for a new one")
    return Principal(name=row.name, role=Role(row.role))
