"""AuthService: tokens and the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from staffel.v1 import auth_pb2, auth_pb2_grpc

from server.api.convert import timestamp
from server.auth.audit import list_audit
from server.auth.interceptor import caller
from server.auth.roles import Permission, Role
from server.auth.tokens import create_token
from server.store import Database

Context = grpc.aio.ServicerContext[Any, Any]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Issues tokens (admins) and shows who is calling and what happened."""

    def __init__(self, *, database: Database) -> None:
        self._database = database

    async def CreateToken(
        self, request: auth_pb2.CreateTokenRequest, context: Context
    ) -> auth_pb2.CreateTokenResponse:
        admin = caller()
        admin.require(Permission.ADMINISTER, "create tokens")
        role = Role.parse(request.role)
        secret = await asyncio.to_thread(
            create_token, self._database, name=request.name, role=role, created_by=admin
        )
        return auth_pb2.CreateTokenResponse(
            principal=auth_pb2.Principal(name=request.name, role=role.value), token=secret
        )

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Context) -> auth_pb2.Principal:
        me = caller()
        return auth_pb2.Principal(name=me.name, role=me.role.value)

    async def ListAudit(
        self, request: auth_pb2.ListAuditRequest, context: Context
    ) -> auth_pb2.ListAuditResponse:
        entries = await asyncio.to_thread(
            list_audit, self._database, target=request.target, limit=request.limit or 100
        )
        return auth_pb2.ListAuditResponse(
            entries=[
                auth_pb2.AuditEntry(
                    id=e.id or 0,
                    at=timestamp(e.at),
                    actor=e.actor,
                    action=e.action,
                    target=e.target,
                    detail=e.detail,
                )
                for e in entries
            ]
        )
