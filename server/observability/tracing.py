"""OpenTelemetry tracing of gRPC calls, exported over OTLP; off unless an endpoint is set.

The endpoint comes from ``--otlp-endpoint`` or, failing that, the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` variable. Without either, no tracer is created and no
interceptor is installed, so tracing costs nothing when it is off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"


def otlp_endpoint(option: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP endpoint to export to: the option if given, else the standard variable."""
    return option or environ.get(ENDPOINT_VARIABLE) or None


@dataclass
class Tracing:
    """The tracer of one process (or none), and the gRPC server interceptors it needs.

    Build it with ``Tracing.start``; call ``shutdown`` when the process stops so that the
    spans still buffered are exported.
    """

    provider: TracerProvider | None = None
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, *, service_name: str, endpoint: str | None) -> Tracing:
        """Tracing for ``service_name`` exported to ``endpoint``; disabled when it is None.

        Args:
            service_name: The ``service.name`` resource attribute of every span.
            endpoint: An OTLP/gRPC endpoint such as ``http://collector:4317``
                (``http://`` for plaintext, ``https://`` for TLS).
        """
        if endpoint is None:
            return cls()
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        # Health checks are probed every few seconds by Kubernetes: tracing them is noise.
        # The instrumentation package ships no type hints for its factory functions.
        interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=provider, filter_=filters.negate(filters.health_check())
        )
        log.info("tracing gRPC calls to OTLP endpoint %s", endpoint)
        return cls(provider=provider, interceptors=[interceptor])

    def shutdown(self) -> None:
        """Exports the buffered spans and stops the exporter (a no-op when disabled)."""
        if self.provider is not None:
            self.provider.shutdown()
