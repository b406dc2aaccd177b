"""A minimal OTLP/gRPC trace collector on loopback: it keeps the span names it receives."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from types import TracebackType

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: SpanCollector) -> None:
        self._collector = collector

    def Export(  # noqa: N802 - the method name is fixed by the OTLP contract
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._collector.add(attributes.get("service.name", ""), span.name)
        return trace_service_pb2.ExportTraceServiceResponse()


class SpanCollector:
    """Receives OTLP trace exports; ``endpoint`` is what to pass as ``--otlp-endpoint``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[tuple[str, str]] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def add(self, service: str, name: str) -> None:
        """Keeps one received span."""
        with self._lock:
            self._spans.append((service, name))

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received so far."""
        with self._lock:
            return list(self._spans)

    def wait_for(self, service: str, name: str, timeout: float = 60.0) -> bool:
        """Waits until a span of ``service`` named ``name`` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (service, name) in self.spans():
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> SpanCollector:
        self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.stop(None)
