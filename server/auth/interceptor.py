"""Authentication of every call except the vehicles': ``authorization: Bearer TOKEN``."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from server.auth.roles import Principal, permission_for
from server.auth.tokens import authenticate
from server.errors import UnauthenticatedError
from server.store import Database

_CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "staffel_caller", default=None
)


def caller() -> Principal:
    """The authenticated caller of the current RPC (set by :class:`AuthInterceptor`)."""
    principal = _CALLER.get()
    if principal is None:
        raise UnauthenticatedError("this call needs a token: authorization: Bearer TOKEN")
    return principal


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    raise UnauthenticatedError(
        "this call needs a token (gRPC metadata 'authorization: Bearer TOKEN'): "
        "pass --token or set STAFFEL_TOKEN"
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Resolves the caller's token and checks the method's permission before the handler.

    Errors are raised as StaffelError, so the error interceptor (outside this one) maps them.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    async def _authorize(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        permission = permission_for(method)
        if permission is None:
            return
        principal = await asyncio.to_thread(authenticate, self._database, _bearer(context))
        principal.require(permission, f"call {method.rsplit('/', 1)[-1]}")
        _CALLER.set(principal)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or permission_for(method) is None:
            return handler  # type: ignore[return-value]
        authorize = self._authorize
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                await authorize(method, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = cast(Callable[..., Awaitable[Any]], handler.stream_unary)

            async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
                await authorize(method, context)
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await authorize(method, context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
