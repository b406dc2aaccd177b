"""On SIGTERM, server and relay turn NOT_SERVING first, then let calls in flight finish."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from staffel.v1 import release_pb2, release_pb2_grpc, vehicle_pb2, vehicle_pb2_grpc

from server.sandbox import Sandbox, Service, tool

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# How long the server keeps listening while it answers NOT_SERVING: far longer than the
# test needs to see it (milliseconds on loopback).
SHUTDOWN_DELAY_SECONDS = 10
WAIT_SECONDS = 60


class HealthWatch:
    """Follows one process's overall health over a Health.Watch stream."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=WAIT_SECONDS
        )

    def next_status(self) -> int:
        """The next status the process announces."""
        status: int = next(self._stream).status
        return status

    def close(self) -> None:
        """Ends the stream."""
        self._stream.cancel()


def test_server_drains_an_upload_in_flight_after_not_serving(tmp_path: Path) -> None:
    image = os.urandom(512 * 1024)
    more = threading.Event()
    sent_first = threading.Event()

    def chunks() -> Iterator[release_pb2.UploadImageChunk]:
        yield release_pb2.UploadImageChunk(
            header=release_pb2.ImageHeader(
                name="gw", version="1.0", hardware_id="gw-x1", release_counter=1
            )
        )
        yield release_pb2.UploadImageChunk(data=image[:1024])
        sent_first.set()
        more.wait(WAIT_SECONDS)
        yield release_pb2.UploadImageChunk(data=image[1024:])

    with Sandbox(tmp_path) as sandbox:
        server = sandbox.start(
            "server",
            tool("staffel-server"),
            "--data-dir", str(tmp_path / "server"),
            "--keys-dir", str(sandbox.init_keys()),
            "--grpc-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--shutdown-delay", str(SHUTDOWN_DELAY_SECONDS),
        )  # fmt: skip
        sandbox.make_people(server)
        token = sandbox.tokens["release-manager"]
        with grpc.insecure_channel(server.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            upload = release_pb2_grpc.ReleaseServiceStub(channel).UploadImage.future(
                chunks(), metadata=[("authorization", f"Bearer {token}")], timeout=WAIT_SECONDS
            )
            assert sent_first.wait(WAIT_SECONDS)

            server.process.terminate()
            # New calls find NOT_SERVING (readiness probes take the replica out) while the
            # upload goes on. (The server's Health.Watch stream is not usable: its error
            # interceptor wraps server-streaming handlers that write with context.write.)
            statuses = [health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_SECONDS)]
            while statuses[-1].status == SERVING and len(statuses) < 10_000:
                statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=5))
            assert statuses[-1].status == NOT_SERVING

            more.set()
            published = upload.result(timeout=WAIT_SECONDS)
            assert published.sha256 == hashlib.sha256(image).hexdigest()
            assert published.length == len(image)
        assert server.process.wait(WAIT_SECONDS) == 0


class HeldUpstream(vehicle_pb2_grpc.VehicleServiceServicer):
    """An upstream whose CheckIn answers only once the test lets it."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

    def CheckIn(  # noqa: N802 - the method name is fixed by the contract
        self, request: vehicle_pb2.CheckInRequest, context: grpc.ServicerContext
    ) -> vehicle_pb2.CheckInResponse:
        self.arrived.set()
        self.release.wait(WAIT_SECONDS)
        return vehicle_pb2.CheckInResponse(next_poll_seconds=123)


def start_relay(sandbox: Sandbox, tmp_path: Path, upstream_grpc: str) -> Service:
    return sandbox.start(
        "relay",
        tool("staffel-relay"),
        "--upstream", "http://127.0.0.1:9",  # never asked: nothing is fetched in this test
        "--upstream-grpc", upstream_grpc,
        "--cache-dir", str(tmp_path / "relay"),
        "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
    )  # fmt: skip


def test_relay_finishes_a_forwarded_call_in_flight_after_not_serving(tmp_path: Path) -> None:
    upstream = HeldUpstream()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(upstream, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Sandbox(tmp_path) as sandbox:
            relay = start_relay(sandbox, tmp_path, f"127.0.0.1:{port}")
            with grpc.insecure_channel(relay.grpc) as channel:
                watch = HealthWatch(channel)
                assert watch.next_status() == SERVING
                check_in = vehicle_pb2_grpc.VehicleServiceStub(channel).CheckIn.future(
                    vehicle_pb2.CheckInRequest(vin="WSF00000000000077"), timeout=WAIT_SECONDS
                )
                assert upstream.arrived.wait(WAIT_SECONDS)

                relay.process.terminate()
                assert watch.next_status() == NOT_SERVING
                watch.close()

                upstream.release.set()
                assert check_in.result(timeout=WAIT_SECONDS).next_poll_seconds == 123
            assert relay.process.wait(WAIT_SECONDS) == 0
    finally:
        server.stop(None)
