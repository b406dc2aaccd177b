"""Pure checks: artifact names and relay configuration bounds (no sockets)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from server.relay import artifacts
from server.relay.artifacts import ArtifactKind, Repository
from server.relay.config import ListenAddress, RelayConfig
from server.relay.errors import InvalidPathError, RelayConfigError

SHA = "0123456789abcdef" * 4


def test_blob_name_maps_to_the_blob_store() -> None:
    blob = artifacts.blob(f"{SHA}.ecu-brake_2.1.0.img")
    assert blob.kind is ArtifactKind.BLOB
    assert blob.url_path == f"/image/targets/{SHA}.ecu-brake_2.1.0.img"
    assert blob.cache_path == f"blobs/{SHA}.ecu-brake_2.1.0.img"
    assert blob.sha256 == SHA
    assert blob.immutable


@pytest.mark.parametrize(
    "filename",
    ["", "..", f"{SHA}", f"{SHA}.", f"{SHA}.a/b", f"{SHA}.a\\b", f"{SHA}.ü", f"{SHA[:-2]}.x"],
)
def test_bad_blob_names_are_refused(filename: str) -> None:
    with pytest.raises(InvalidPathError):
        artifacts.blob(filename)


def test_metadata_names_per_repository() -> None:
    timestamp = artifacts.metadata(Repository.IMAGE, "timestamp.json")
    assert timestamp.kind is ArtifactKind.TIMESTAMP
    assert not timestamp.immutable
    assert timestamp.cache_path == "metadata/image/timestamp.json"
    snapshot = artifacts.metadata(Repository.IMAGE, "12.snapshot.json")
    assert snapshot.kind is ArtifactKind.METADATA
    assert snapshot.url_path == "/image/metadata/12.snapshot.json"
    root = artifacts.metadata(Repository.DIRECTOR, "3.root.json")
    assert root.cache_path == "metadata/director/3.root.json"
    for repository, filename in (
        (Repository.DIRECTOR, "3.targets.json"),
        (Repository.DIRECTOR, "timestamp.json"),
        (Repository.IMAGE, "01.root.json"),
        (Repository.IMAGE, "1.root.json.gz"),
        (Repository.IMAGE, "1./root.json"),
    ):
        with pytest.raises(InvalidPathError):
            artifacts.metadata(repository, filename)


def test_listen_addresses_parse_and_report_connectable_hosts() -> None:
    assert ListenAddress.parse("127.0.0.1:0", option="--x") == ListenAddress("127.0.0.1", 0)
    ipv6 = ListenAddress.parse("[::1]:7001", option="--x")
    assert ipv6 == ListenAddress("::1", 7001)
    assert str(ipv6) == "[::1]:7001"
    wildcard = ListenAddress("0.0.0.0", 0)  # noqa: S104 (parsed here, never bound)
    assert wildcard.connectable(4242) == "127.0.0.1:4242"
    assert ListenAddress("::", 0).connectable(4242) == "[::1]:4242"
    for text in ("7001", "host:", ":7001", "host:70000", "host:port"):
        with pytest.raises(RelayConfigError, match="HOST:PORT"):
            ListenAddress.parse(text, option="--grpc-listen")


def test_config_refuses_out_of_bounds_values(tmp_path: Path) -> None:
    good = RelayConfig(
        upstream_url="http://central:8080/", upstream_grpc="central:50051", cache_dir=tmp_path
    )
    assert good.upstream_base == "http://central:8080"
    with pytest.raises(RelayConfigError, match="--upstream"):
        replace(good, upstream_url="central:8080")
    with pytest.raises(RelayConfigError, match="--upstream-grpc"):
        replace(good, upstream_grpc="central")
    with pytest.raises(RelayConfigError, match="timestamp_timeout"):
        replace(good, timestamp_timeout=0)
    with pytest.raises(RelayConfigError, match="blob_max_bytes"):
        replace(good, blob_max_bytes=-1)
