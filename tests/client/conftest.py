"""Fixtures for the vehicle client: both repositories served over HTTP on 127.0.0.1, a
recording ``VehicleService`` on a real gRPC server, and a provisioned vehicle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from staffel.v1 import vehicle_pb2_grpc

from tests.client.support import (
    DirectorRepository,
    ImageRepository,
    QuietHandler,
    RecordingVehicleService,
    Repositories,
    Vehicle,
    VehicleServer,
    write_vehicle,
)


@pytest.fixture
def repositories(tmp_path: Path) -> Iterator[Repositories]:
    """An Image repository and a Director served by one HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    repos = Repositories(url="", image=ImageRepository(served), director=DirectorRepository(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    repos.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield repos
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def vehicle_server() -> Iterator[VehicleServer]:
    """The recording ``VehicleService`` on an in-process gRPC server on 127.0.0.1."""
    service = RecordingVehicleService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield VehicleServer(target=f"127.0.0.1:{port}", service=service)
    server.stop(grace=None).wait()


@pytest.fixture
def vehicle(tmp_path: Path, repositories: Repositories, vehicle_server: VehicleServer) -> Vehicle:
    """A vehicle provisioned against ``repositories``, talking to ``vehicle_server``.

    Slot A holds the factory image; the health check passes.
    """
    return write_vehicle(tmp_path / "vehicle", repositories, vehicle_server.target)
