"""The relay as a real process: `staffel-relay --ready-file` starts, serves, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

if TYPE_CHECKING:
    from tests.server.relay.conftest import UpstreamGRPC, UpstreamHTTP

RELAY = Path(sys.executable).parent / "staffel-relay"


def _read_ready_file(path: Path) -> dict[str, str] | None:
    try:
        ready: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return ready


async def _wait_for_ready_file(path: Path, process: asyncio.subprocess.Process) -> dict[str, str]:
    for _ in range(300):
        ready = _read_ready_file(path)
        if ready is not None:
            return ready
        assert process.returncode is None, "the relay exited before it was ready"
        await asyncio.sleep(0.05)
    raise AssertionError("the relay wrote no ready file within 15 s")


async def test_relay_process_serves_and_stops_on_sigterm(
    upstream_http: UpstreamHTTP, upstream_grpc: UpstreamGRPC, tmp_path: Path
) -> None:
    data = b"infotainment image" * 4096
    filename = upstream_http.add_blob(data, "ecu-head-unit-5.2.0.img")
    ready_file = tmp_path / "ready.json"
    process = await asyncio.create_subprocess_exec(
        str(RELAY),
        "--upstream", upstream_http.url,
        "--upstream-grpc", upstream_grpc.address,
        "--cache-dir", str(tmp_path / "cache"),
        "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--ready-file", str(ready_file),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        ready = await _wait_for_ready_file(ready_file, process)
        assert ready["grpc"].startswith("127.0.0.1:")
        assert ready["http"].startswith("http://127.0.0.1:")

        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(f"{ready['http']}/image/targets/{filename}") as response:
                    assert response.status == 200
                    assert await response.read() == data
            async with session.get(f"{ready['http']}/healthz") as response:
                assert response.status == 200

        async with grpc.aio.insecure_channel(ready["grpc"]) as channel:
            answer = await vehicle_pb2_grpc.VehicleServiceStub(channel).CheckIn(
                vehicle_pb2.CheckInRequest(vin="WVWZZZ1JZXW000001", nonce=b"n" * 16), timeout=5
            )
            assert answer.next_poll_seconds == 300
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()
    log = stderr.decode()
    assert f"fetched {filename} from upstream: {len(data)} bytes in" in log
    assert "relay stopping" in log
    assert upstream_http.requests[f"/image/targets/{filename}"] == 1
    assert (tmp_path / "cache" / "blobs" / filename).read_bytes() == data


async def test_relay_process_refuses_a_bad_command_line(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(RELAY),
        "--upstream", "not-a-url",
        "--upstream-grpc", "127.0.0.1:1",
        "--cache-dir", str(tmp_path / "cache"),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode == 2
    assert b"--upstream must be an http(s) URL" in stderr


async def test_relay_process_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            str(RELAY),
            "--upstream", "http://127.0.0.1:1",
            "--upstream-grpc", "127.0.0.1:1",
            "--cache-dir", str(tmp_path / "cache"),
            "--http-listen", f"127.0.0.1:{port}",
            "--grpc-listen", "127.0.0.1:0",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in stderr.decode()
