"""--reuse-port: server processes share the ports when asked; a busy port is an error otherwise."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer
from server.errors import StaffelError


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
