"""``python -m client.secondary --config FILE``: a secondary ECU's ``SecondaryService``.

It stands in for an ECU on the vehicle bus: the primary reaches it over gRPC on the
configured address. Errors of the ECU become gRPC statuses in one place
(:func:`_status_of`), with the ECU's own message as the details.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
from staffel.v1 import secondary_pb2, secondary_pb2_grpc

from client.atomicfile import write_atomically
from client.errors import ClientError, InstallError, VerificationError
from client.logs import configure_logging
from client.secondary.config import load_secondary_config
from client.secondary.ecu import SecondaryEcu


def _status_of(error: ClientError) -> grpc.StatusCode:
    if isinstance(error, VerificationError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(error, InstallError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class SecondaryServicer(secondary_pb2_grpc.SecondaryServiceServicer):
    """Answers the primary; one request at a time (an ECU installs one image at a time)."""

    def __init__(self, ecu: SecondaryEcu) -> None:
        """Serve ``ecu``."""
        self._ecu = ecu
        self._lock = threading.Lock()

    def _report(self) -> secondary_pb2.VersionReport:
        sha256, signed = self._ecu.version_report()
        identity = self._ecu.config.identity
        return secondary_pb2.VersionReport(
            serial=identity.serial,
            hardware_id=identity.hardware_id,
            installed_sha256=sha256,
            signed_report=json.dumps(signed, sort_keys=True).encode(),
        )

    def GetVersionReport(  # noqa: N802 - gRPC method name
        self, request: secondary_pb2.VersionReportRequest, context: grpc.ServicerContext
    ) -> secondary_pb2.VersionReport:
        """The signed version report of the committed image."""
        with self._lock:
            try:
                return self._report()
            except ClientError as exc:
                context.abort(_status_of(exc), str(exc))

    def Install(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[secondary_pb2.InstallChunk], context: grpc.ServicerContext
    ) -> secondary_pb2.InstallReply:
        """Phase one: verify, write, boot on trial, check health."""
        first = next(request_iterator, None)
        if first is None or not first.assignment_id or not first.director_targets:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message must name the assignment and carry the Director targets",
            )
        chunks = (chunk.data for chunk in request_iterator)
        with self._lock:
            try:
                outcome = self._ecu.install(first.assignment_id, first.director_targets, chunks)
            except ClientError as exc:
                context.abort(_status_of(exc), str(exc))
        return secondary_pb2.InstallReply(
            healthy=outcome.healthy, detail=outcome.detail, slot=outcome.slot
        )

    def Commit(  # noqa: N802 - gRPC method name
        self, request: secondary_pb2.Decision, context: grpc.ServicerContext
    ) -> secondary_pb2.VersionReport:
        """Phase two: keep the new slot."""
        with self._lock:
            try:
                self._ecu.commit(request.assignment_id)
                return self._report()
            except ClientError as exc:
                context.abort(_status_of(exc), str(exc))

    def RollBack(  # noqa: N802 - gRPC method name
        self, request: secondary_pb2.Decision, context: grpc.ServicerContext
    ) -> secondary_pb2.VersionReport:
        """Phase two: back to the committed slot."""
        with self._lock:
            try:
                self._ecu.roll_back(request.assignment_id)
                return self._report()
            except ClientError as exc:
                context.abort(_status_of(exc), str(exc))


def main(argv: list[str] | None = None) -> int:
    """Run a secondary ECU until SIGTERM.

    Returns:
        0 after SIGTERM, 1 on a config or state error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m client.secondary", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, type=Path, help="the secondary's TOML config")
    parser.add_argument("--ready-file", type=Path, help="written with the bound address")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, "INFO")
    try:
        config = load_secondary_config(args.config)
        ecu = SecondaryEcu(config)
    except ClientError as exc:
        print(f"staffel secondary: {exc}", file=sys.stderr)
        return 1
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    secondary_pb2_grpc.add_SecondaryServiceServicer_to_server(SecondaryServicer(ecu), server)
    port = server.add_insecure_port(config.listen)
    server.start()
    host = config.listen.rsplit(":", 1)[0]
    if args.ready_file is not None:
        address = {"grpc": f"{host}:{port}", "http": ""}
        write_atomically(args.ready_file, json.dumps(address).encode())
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop.wait(0.5):
        pass
    server.stop(grace=5).wait()
    return 0
