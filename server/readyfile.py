"""The ready file: how a process tells its parent which ports it bound."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ready_file(path: Path, *, grpc_address: str, http_url: str) -> None:
    """Writes ``{"grpc": ..., "http": ...}`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump({"grpc": grpc_address, "http": http_url}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def split_host_port(address: str) -> tuple[str, int]:
    """Splits ``HOST:PORT`` (port 0 picks a free port); ValueError when malformed."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
