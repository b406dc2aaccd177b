"""Quiet check-ins over gRPC: answered from memory without a statement, yet every one still
validated, and a vehicle with ECU keys never answered without its manifest."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from client.uptane.heartbeat import HeartbeatChain
from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest
from keys.keyset import init_keyset
from server.app import ServerConfig, StaffelServer
from server.fleet.registry import EcuSpec, provision_vehicle
from tests.server.campaigns.support import OLD_SHA, add_vehicle, vin

KEYLESS, SIGNED = 3, 4
POLL_SECONDS = 120


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[StaffelServer]:
    """A real server whose last-seen moments stay buffered while the test runs."""
    init_keyset(tmp_path / "keys")
    staffel = StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            database_url=database_url,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            engine_interval_seconds=0,
            presign_interval_seconds=0,
            presence_flush_seconds=3600,
            poll_seconds=POLL_SECONDS,
        )
    )
    await staffel.start()
    yield staffel
    await staffel.stop()


@pytest.fixture
async def stub(server: StaffelServer) -> AsyncIterator[vehicle_pb2_grpc.VehicleServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        yield vehicle_pb2_grpc.VehicleServiceStub(channel)


@pytest.fixture
def vehicle_statements(server: StaffelServer) -> Iterator[list[str]]:
    """Statements on the fleet's, the campaigns' and the repositories' tables (not the
    offer epoch's reads, which run on their own interval)."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if any(table in statement for table in ("fleet_", "campaign_assignment", "repo_")):
            seen.append(statement)

    server.database.listen("before_cursor_execute", note)
    yield seen
    server.database.remove_listener("before_cursor_execute", note)


def _request(
    number: int, *, installed: str = OLD_SHA, **fields: bytes
) -> vehicle_pb2.CheckInRequest:
    ecu = vehicle_pb2.EcuVersion(
        serial=f"gw-{number}", hardware_id="gw-x1", primary=True, installed_sha256=installed
    )
    request = vehicle_pb2.CheckInRequest(vin=vin(number), nonce=os.urandom(16), ecus=[ecu])
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def _nothing_to_do(server: StaffelServer) -> float:
    return float(server.metrics.checkins.labels("nothing_to_do")._value.get())


async def test_a_quiet_vehicle_without_keys_is_answered_from_memory_and_still_checked(
    server: StaffelServer,
    stub: vehicle_pb2_grpc.VehicleServiceStub,
    vehicle_statements: list[str],
) -> None:
    add_vehicle(server.database, KEYLESS)
    server.quiet.refresh(server.database)
    first = await stub.CheckIn(_request(KEYLESS))
    assert first.WhichOneof("outcome") == "nothing_to_do"
    assert vehicle_statements, "the first check-in reads the registry"
    server.presence.take()
    vehicle_statements.clear()
    counted = _nothing_to_do(server)

    quiet = await stub.CheckIn(_request(KEYLESS))
    assert quiet.WhichOneof("outcome") == "nothing_to_do"
    assert (quiet.next_poll_seconds, quiet.heartbeat_chain_held) == (POLL_SECONDS, False)
    assert vehicle_statements == []
    assert list(server.presence.take()) == [vin(KEYLESS)]
    assert _nothing_to_do(server) == counted + 1

    with pytest.raises(grpc.aio.AioRpcError) as short_nonce:
        await stub.CheckIn(_request(KEYLESS, nonce=b"8 bytes."))
    assert short_nonce.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nonce must be 16 to 64" in (short_nonce.value.details() or "")
    assert len(server.presence) == 0, "a refused check-in is not presence"

    changed = await stub.CheckIn(_request(KEYLESS, installed="ab" * 32))
    assert changed.WhichOneof("outcome") == "nothing_to_do"
    assert vehicle_statements, "a changed inventory goes to the database"
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await stub.CheckIn(_request(KEYLESS, installed="not a hash"))
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _signed(number: int, key: EcuKey, chain: HeartbeatChain | None = None) -> bytes:
    report = sign_report(ecu_version_report(f"gw-{number}", "", 0, ""), key)
    commitment = chain.commitment() if chain is not None else None
    return vehicle_manifest(vin(number), f"gw-{number}", [report], key, heartbeat=commitment)


async def test_a_quiet_vehicle_with_keys_is_never_answered_without_its_manifest(
    server: StaffelServer, stub: vehicle_pb2_grpc.VehicleServiceStub, tmp_path: Path
) -> None:
    key = EcuKey.generate(tmp_path / "gw.key")
    gateway = EcuSpec(f"gw-{SIGNED}", "gw-x1", True, "", key.public_key_json())
    provision_vehicle(server.database, vin=vin(SIGNED), model="sedan", ecus=[gateway])
    add_vehicle(server.database, KEYLESS)
    server.quiet.refresh(server.database)
    for _ in range(2):
        answer = await stub.CheckIn(_request(SIGNED, installed="", manifest=_signed(SIGNED, key)))
        assert answer.WhichOneof("outcome") == "nothing_to_do"
    assert server.quiet.is_quiet(vin(SIGNED), [gateway]), "remembered as quiet"

    with pytest.raises(grpc.aio.AioRpcError) as unsigned:
        await stub.CheckIn(_request(SIGNED, installed=""))
    assert unsigned.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "must carry a version manifest" in (unsigned.value.details() or "")

    chain = HeartbeatChain.new({f"gw-{SIGNED}": ""}, length=4)
    committed = await stub.CheckIn(
        _request(SIGNED, installed="", manifest=_signed(SIGNED, key, chain))
    )
    assert committed.heartbeat_chain_held
    chain, link = chain.advanced()
    beat = await stub.CheckIn(_request(SIGNED, installed="", heartbeat=link))
    assert beat.WhichOneof("outcome") == "nothing_to_do"
    assert beat.heartbeat_chain_held
    with pytest.raises(grpc.aio.AioRpcError) as replayed:
        await stub.CheckIn(_request(SIGNED, installed="", heartbeat=link))
    assert replayed.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The answers are shared between calls: the keyless vehicle's says no chain is held.
    for _ in range(2):
        keyless = await stub.CheckIn(_request(KEYLESS))
        assert keyless.WhichOneof("outcome") == "nothing_to_do"
        assert not keyless.heartbeat_chain_held


def _heartbeats(server: StaffelServer, outcome: str) -> float:
    return float(server.metrics.heartbeats.labels(outcome)._value.get())


async def test_heartbeats_are_counted_by_outcome_from_memory_and_from_the_database(
    server: StaffelServer, stub: vehicle_pb2_grpc.VehicleServiceStub, tmp_path: Path
) -> None:
    key = EcuKey.generate(tmp_path / "gw.key")
    gateway = EcuSpec(f"gw-{SIGNED}", "gw-x1", True, "", key.public_key_json())
    provision_vehicle(server.database, vin=vin(SIGNED), model="sedan", ecus=[gateway])
    server.quiet.refresh(server.database)
    chain = HeartbeatChain.new({f"gw-{SIGNED}": ""}, length=8)

    chain, early = chain.advanced()
    with pytest.raises(grpc.aio.AioRpcError) as no_chain:
        await stub.CheckIn(_request(SIGNED, installed="", heartbeat=early))
    assert no_chain.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _heartbeats(server, "fell_back") == 1

    for _ in range(2):  # the second is remembered quiet
        committed = await stub.CheckIn(
            _request(SIGNED, installed="", manifest=_signed(SIGNED, key, chain))
        )
        assert committed.heartbeat_chain_held
    nothing_to_do = _nothing_to_do(server)
    chain, link = chain.advanced()
    beat = await stub.CheckIn(_request(SIGNED, installed="", heartbeat=link))
    assert (beat.WhichOneof("outcome"), beat.heartbeat_chain_held) == ("nothing_to_do", True)
    assert (_heartbeats(server, "accepted"), _nothing_to_do(server)) == (1, nothing_to_do + 1)

    with pytest.raises(grpc.aio.AioRpcError) as replayed:
        await stub.CheckIn(_request(SIGNED, installed="", heartbeat=link))
    assert replayed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    chain, link = chain.advanced()
    with pytest.raises(grpc.aio.AioRpcError) as short_nonce:
        await stub.CheckIn(_request(SIGNED, installed="", heartbeat=link, nonce=b"8 bytes."))
    assert short_nonce.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _heartbeats(server, "refused") == 2

    # Not remembered quiet (as after a campaign started): the database answers.
    server.quiet.forget(vin(SIGNED))
    chain, link = chain.advanced()
    beat = await stub.CheckIn(_request(SIGNED, installed="", heartbeat=link))
    assert (beat.WhichOneof("outcome"), beat.heartbeat_chain_held) == ("nothing_to_do", True)
    assert _heartbeats(server, "accepted") == 2
    assert _nothing_to_do(server) == nothing_to_do + 2
