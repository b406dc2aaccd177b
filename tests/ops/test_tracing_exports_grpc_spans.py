"""Server and relay trace their gRPC calls to an OTLP collector when one is configured."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.observability.tracing import Tracing, otlp_endpoint
from server.sandbox import Sandbox, tool
from tests.ops.collector import SpanCollector

CHECK_IN = "/staffel.v1.VehicleService/CheckIn"


def test_tracing_is_off_without_an_endpoint() -> None:
    assert otlp_endpoint(None, {}) is None
    assert otlp_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == "http://c:4317"
    assert otlp_endpoint("http://mine:4317", {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) == (
        "http://mine:4317"
    )
    tracing = Tracing.start(service_name="staffel-server", endpoint=None)
    assert tracing.provider is None
    assert tracing.interceptors == []


def test_server_and_relay_export_a_span_per_call(tmp_path: Path) -> None:
    with SpanCollector() as collector, Sandbox(tmp_path) as sandbox:
        server = sandbox.start(
            "server",
            tool("staffel-server"),
            "--data-dir", str(tmp_path / "server"),
            "--keys-dir", str(sandbox.init_keys()),
            "--grpc-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--otlp-endpoint", collector.endpoint,
        )  # fmt: skip
        relay = sandbox.start(
            "relay",
            tool("staffel-relay"),
            "--upstream", server.http,
            "--upstream-grpc", server.grpc,
            "--cache-dir", str(tmp_path / "relay"),
            "--grpc-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--otlp-endpoint", collector.endpoint,
        )  # fmt: skip
        with grpc.insecure_channel(relay.grpc) as channel:
            # An unknown vehicle: refused, and traced all the same (relay and server).
            try:
                vehicle_pb2_grpc.VehicleServiceStub(channel).CheckIn(
                    vehicle_pb2.CheckInRequest(vin="WSF00000000000099"), timeout=30
                )
            except grpc.RpcError as error:
                assert error.code() != grpc.StatusCode.UNIMPLEMENTED
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Spans are batched: stopping each process flushes what it holds.
        relay.stop()
        server.stop()
        assert collector.wait_for("staffel-relay", CHECK_IN), collector.spans()
        assert collector.wait_for("staffel-server", CHECK_IN), collector.spans()
        # Health checks are probed all the time; they are not traced.
        assert not [s for s in collector.spans() if "Health" in s[1]]
