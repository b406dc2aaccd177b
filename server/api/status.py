"""One place that turns domain errors into gRPC status codes, and times every call."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from sqlalchemy.exc import OperationalError

from server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RepositoryError,
    StaffelError,
    UnauthenticatedError,
)
from server.metrics import ServerMetrics

log = logging.getLogger(__name__)

_CODES: dict[type[StaffelError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    RepositoryError: grpc.StatusCode.INTERNAL,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code_for(error: StaffelError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


class ErrorAndMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps StaffelError to its status code and records latency by method."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(  # noqa: PLR0915 - one wrapper per RPC shape, side by side
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # None for a method no servicer implements; gRPC then answers UNIMPLEMENTED.
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:
            return handler  # type: ignore[return-value]
        method = handler_call_details.method
        metrics = self._metrics

        async def guarded(behavior: Callable[..., Any], request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except StaffelError as error:
                code = status_code_for(error)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                await context.abort(code, str(error))
            except OperationalError as error:
                code = grpc.StatusCode.UNAVAILABLE
                log.warning("%s: database unavailable: %s", method, error.orig)
                await context.abort(code, "the server's database is unavailable; retry later")
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.rpc_latency.labels(method, code.name).observe(time.perf_counter() - started)

        async def guarded_stream(
            behavior: Callable[..., AsyncIterator[Any]], request: Any, context: Any
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for item in behavior(request, context):
                    yield item
            except StaffelError as error:
                code = status_code_for(error)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                await context.abort(code, str(error))
            except OperationalError as error:
                code = grpc.StatusCode.UNAVAILABLE
                log.warning("%s: database unavailable: %s", method, error.orig)
                await context.abort(code, "the server's database is unavailable; retry later")
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.rpc_latency.labels(method, code.name).observe(time.perf_counter() - started)

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                return await guarded(inner_uu, request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
                return await guarded(inner_su, requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(
            handler.unary_stream
        ):
            # A streaming handler that writes with context.write (e.g. Health.Watch).
            inner_writer = handler.unary_stream

            async def unary_stream_writer(request: Any, context: Any) -> Any:
                return await guarded(inner_writer, request, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_writer,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                # An async generator function, so grpc.aio streams it as one.
                async for item in guarded_stream(inner_us, request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
