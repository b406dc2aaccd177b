"""Server process options: --reuse-port shares the ports when asked; vehicle threads."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer, vehicle_threads
from server.errors import StaffelError
from server.store import Database


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server(
    tmp_path: Path, name: str, grpc_port: int, http_port: int, *, reuse: bool
) -> StaffelServer:
    return StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            grpc_listen=f"127.0.0.1:{grpc_port}",
            http_listen=f"127.0.0.1:{http_port}",
            engine_interval_seconds=0,
            reuse_port=reuse,
        )
    )


async def test_two_servers_share_the_ports_only_with_reuse_port(tmp_path: Path) -> None:
    init_keyset(tmp_path / "keys")
    grpc_port, http_port = _free_port(), _free_port()
    first = _server(tmp_path, "first", grpc_port, http_port, reuse=True)
    second = _server(tmp_path, "second", grpc_port, http_port, reuse=True)
    lone = _server(tmp_path, "lone", grpc_port, http_port, reuse=False)
    await first.start()
    try:
        await second.start()
        try:
            assert first.grpc_address == second.grpc_address
            with pytest.raises(StaffelError, match="cannot listen for gRPC"):
                await lone.start()
        finally:
            await second.stop()
    finally:
        await first.stop()


def test_vehicle_threads_follow_the_database_unless_set(tmp_path: Path, database_url: str) -> None:
    database = Database.from_url(database_url)
    config = ServerConfig(data_dir=tmp_path / "data", keys_dir=tmp_path / "keys")
    # SQLite's work runs on the loop, PostgreSQL's awaits there: one thread each.
    assert vehicle_threads(config, database) == 1
    in_threads = ServerConfig(tmp_path, tmp_path, vehicle_work_on_loop=False)
    expected = 1 if database_url.startswith("sqlite") else 8
    assert vehicle_threads(in_threads, database) == expected
    assert vehicle_threads(ServerConfig(tmp_path, tmp_path, vehicle_threads=3), database) == 3
    database.engine.dispose()
