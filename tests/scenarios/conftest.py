"""Fixtures of the scenario tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.sandbox import Sandbox
from tests.scenarios.installation import (
    HARDWARE_ID,
    IMAGE_NAME,
    IMAGE_SIZE,
    IMAGE_VERSION,
    MODEL,
    Installation,
)


@pytest.fixture
def installation(tmp_path: Path, database_url: str) -> Iterator[Installation]:
    """Server (on SQLite and on PostgreSQL) and relay as real processes, one image published."""
    image = os.urandom(IMAGE_SIZE)
    image_path = tmp_path / "image.bin"
    image_path.write_bytes(image)
    with Sandbox(tmp_path / "sandbox", database_url=database_url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        relay = sandbox.start_relay(server)
        sandbox.staffel(
            server, "image", "upload", str(image_path), "--name", IMAGE_NAME,
            "--version", IMAGE_VERSION, "--hardware-id", HARDWARE_ID, "--release-counter", "2",
        )  # fmt: skip
        bundle = json.loads(
            sandbox.staffel(
                server, "--json", "bundle", "create", "--name", "scenario", "--model", MODEL,
                f"{IMAGE_NAME}-{IMAGE_VERSION}",
            )
        )  # fmt: skip
        yield Installation(
            sandbox=sandbox,
            server=server,
            relay=relay,
            database_url=database_url,
            image=image,
            target_name=f"{IMAGE_NAME}-{IMAGE_VERSION}",
            bundle_id=bundle["bundleId"],
        )
    for log in (tmp_path / "sandbox").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name} logged an unexpected error:\n{text[-3000:]}"
