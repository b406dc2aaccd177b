"""Heartbeat check-ins at the manifest gate: each link of the signed chain passes once.

A manifest signed by the vehicle's real ECU key commits to a chain made by the client's
own code (``client.uptane.heartbeat``); the gate then takes the chain's links, in order,
from memory, and refuses what the design says it must: a replay, a wrong link, a skip
beyond the bound, ECUs that differ from the signed inventory, a chain it does not hold or
that is used up, both a manifest and a heartbeat, a vehicle without keys.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from pathlib import Path

import pytest

from client.uptane.heartbeat import HeartbeatChain, HeartbeatStore, chain_link
from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest
from server.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from server.fleet.registry import EcuSpec, provision_vehicle
from server.repository.manifest_gate import MAX_HEARTBEAT_STEPS, ManifestGate
from server.repository.manifests import verify_manifest
from server.store import Database

VIN = "WSF00000000000088"
SERIAL = "gw-88"
SHA = "ab" * 32
ECUS = [EcuSpec(SERIAL, "gw-x1", True, SHA)]


@pytest.fixture
def key(tmp_path: Path, database: Database) -> EcuKey:
    """The gateway's key, registered for the vehicle."""
    key = EcuKey.generate(tmp_path / "gw.key")
    provision_vehicle(
        database,
        vin=VIN,
        model="sedan",
        ecus=[EcuSpec(SERIAL, "gw-x1", True, "", key.public_key_json())],
    )
    return key


def _manifest(key: EcuKey, chain: HeartbeatChain | None) -> bytes:
    report = sign_report(ecu_version_report(SERIAL, "gw-fw-1.0", 10, SHA), key)
    heartbeat = chain.commitment() if chain is not None else None
    return vehicle_manifest(VIN, SERIAL, [report], key, heartbeat=heartbeat)


def _committed(gate: ManifestGate, key: EcuKey, length: int = 64) -> HeartbeatChain:
    """A chain the gate holds: committed to by a signed manifest it admitted and stored."""
    chain = HeartbeatChain.new({SERIAL: SHA}, length=length)
    admitted = asyncio.run(gate.admit(VIN, _manifest(key, chain), ECUS))
    assert admitted is not None and admitted.heartbeat is not None
    assert admitted.heartbeat.anchor == chain_link(chain.seed, length)
    assert not gate.holds_chain(VIN), "held only once the manifest is stored"
    gate.record(admitted)
    assert gate.holds_chain(VIN)
    return chain


def test_the_chain_state_is_kept_durably_and_privately(tmp_path: Path) -> None:
    store = HeartbeatStore(tmp_path)
    assert store.read() is None
    chain = HeartbeatChain.new({SERIAL: SHA}, length=8)
    assert not chain.usable_for({SERIAL: SHA}), "not before the server holds it"
    held = HeartbeatChain(chain.seed, 8, 0, {SERIAL: SHA}, held=True)
    advanced, link = held.advanced()
    assert link == chain_link(chain.seed, 7)
    assert chain_link(link, 1) == bytes.fromhex(str(chain.commitment()["anchor"]))
    store.write(advanced)
    assert stat.S_IMODE((tmp_path / "heartbeat.json").stat().st_mode) == 0o600
    assert store.read() == advanced
    assert advanced.usable_for({SERIAL: SHA})
    assert not advanced.usable_for({SERIAL: "cd" * 32}), "another image: a manifest"
    (tmp_path / "heartbeat.json").write_text("{not json")
    assert store.read() is None, "an unreadable chain is replaced by a new one"


def test_a_manifest_commits_to_its_chain_under_its_signature(key: EcuKey) -> None:
    chain = HeartbeatChain.new({SERIAL: SHA}, length=16)
    data = _manifest(key, chain)
    verified = verify_manifest(data, vin=VIN, ecu_keys={SERIAL: key.public_key})
    assert verified.heartbeat is not None and verified.heartbeat.length == 16
    # Another anchor in the signed part breaks the primary's signature.
    envelope = json.loads(data)
    envelope["signed"]["heartbeat"]["anchor"] = "00" * 32
    with pytest.raises(PermissionDeniedError, match="not signed"):
        verify_manifest(json.dumps(envelope).encode(), vin=VIN, ecu_keys={SERIAL: key.public_key})
    # Without the field (older clients) the manifest stays valid.
    plain = verify_manifest(_manifest(key, None), vin=VIN, ecu_keys={SERIAL: key.public_key})
    assert plain.heartbeat is None


def test_each_link_is_accepted_once_in_order(database: Database, key: EcuKey) -> None:
    gate = ManifestGate(database)
    chain = _committed(gate, key, length=64)
    first = chain_link(chain.seed, 63)
    accepted = gate.admit_heartbeat(VIN, b"", first, ECUS)
    assert accepted.remaining == 63

    with pytest.raises(PermissionDeniedError, match="replayed or forged heartbeat"):
        gate.admit_heartbeat(VIN, b"", first, ECUS)  # the same link again
    with pytest.raises(PermissionDeniedError, match="replayed or forged heartbeat"):
        gate.admit_heartbeat(VIN, b"", bytes(32), ECUS)  # a link of no chain

    # A few lost heartbeats may be skipped, up to the bound.
    ahead = chain_link(chain.seed, 63 - MAX_HEARTBEAT_STEPS)
    assert gate.admit_heartbeat(VIN, b"", ahead, ECUS).remaining == 63 - MAX_HEARTBEAT_STEPS
    beyond = chain_link(chain.seed, 63 - 2 * MAX_HEARTBEAT_STEPS - 1)
    with pytest.raises(PermissionDeniedError):
        gate.admit_heartbeat(VIN, b"", beyond, ECUS)
    # The refused link moved nothing: the next one still passes.
    following = chain_link(chain.seed, 62 - MAX_HEARTBEAT_STEPS)
    assert gate.admit_heartbeat(VIN, b"", following, ECUS).remaining == 62 - MAX_HEARTBEAT_STEPS


def test_heartbeat_ecus_must_be_the_signed_inventory(database: Database, key: EcuKey) -> None:
    gate = ManifestGate(database)
    chain = _committed(gate, key)
    link = chain_link(chain.seed, chain.length - 1)
    changed = [EcuSpec(SERIAL, "gw-x1", True, "cd" * 32)]
    with pytest.raises(InvalidArgumentError, match="differ from the inventory"):
        gate.admit_heartbeat(VIN, b"", link, changed)
    extra = [*ECUS, EcuSpec("tcu-1", "tcu", False, "")]
    with pytest.raises(InvalidArgumentError, match="differ from the inventory"):
        gate.admit_heartbeat(VIN, b"", link, extra)
    assert gate.admit_heartbeat(VIN, b"", link, ECUS).remaining == chain.length - 1


def test_a_gate_without_the_chain_asks_for_a_manifest(database: Database, key: EcuKey) -> None:
    holder = ManifestGate(database)
    chain = _committed(holder, key)
    link = chain_link(chain.seed, chain.length - 1)
    other = ManifestGate(database)  # another process, or this one after a restart
    with pytest.raises(FailedPreconditionError, match="send a signed version manifest"):
        other.admit_heartbeat(VIN, b"", link, ECUS)
    asyncio.run(other.admit(VIN, _manifest(key, None), ECUS))  # held, but without a chain
    with pytest.raises(FailedPreconditionError, match="no heartbeat chain"):
        other.admit_heartbeat(VIN, b"", link, ECUS)
    holder.forget(VIN)
    with pytest.raises(FailedPreconditionError):
        holder.admit_heartbeat(VIN, b"", link, ECUS)


def test_a_heartbeat_to_the_database_must_continue_the_latest_stored_manifest(
    database: Database, key: EcuKey
) -> None:
    here, there = ManifestGate(database), ManifestGate(database)  # two server processes
    chain = _committed(here, key)
    accepted = here.admit_heartbeat(VIN, b"", chain_link(chain.seed, chain.length - 1), ECUS)
    here.confirm_heartbeat(accepted)  # the stored manifest is the chain's
    # The vehicle fell back to a new manifest at the other process, which stored it.
    _committed(there, key)
    revealed_there = chain_link(chain.seed, chain.length - 2)  # refused there, seen on the way
    replayed = here.admit_heartbeat(VIN, b"", revealed_there, ECUS)  # memory cannot tell
    with pytest.raises(FailedPreconditionError, match="newer version manifest was stored"):
        here.confirm_heartbeat(replayed)
    assert not here.holds_chain(VIN), "the stale chain is dropped"


def test_a_new_manifest_ends_the_chain_before(database: Database, key: EcuKey) -> None:
    gate = ManifestGate(database)
    old = _committed(gate, key)
    new = _committed(gate, key)
    with pytest.raises(PermissionDeniedError):
        gate.admit_heartbeat(VIN, b"", chain_link(old.seed, old.length - 1), ECUS)
    assert gate.admit_heartbeat(VIN, b"", chain_link(new.seed, new.length - 1), ECUS)


def test_a_used_up_chain_asks_for_a_manifest(database: Database, key: EcuKey) -> None:
    gate = ManifestGate(database)
    chain = _committed(gate, key, length=3)
    remaining = [gate.admit_heartbeat(VIN, b"", chain_link(chain.seed, i), ECUS) for i in (2, 1)]
    assert [r.remaining for r in remaining] == [2, 1]
    assert gate.admit_heartbeat(VIN, b"", chain_link(chain.seed, 0), ECUS).remaining == 0
    with pytest.raises(FailedPreconditionError, match="used up its heartbeat chain"):
        gate.admit_heartbeat(VIN, b"", chain_link(chain.seed, 0), ECUS)


def test_malformed_heartbeats_and_keyless_vehicles_are_refused(
    database: Database, key: EcuKey
) -> None:
    gate = ManifestGate(database)
    chain = _committed(gate, key)
    link = chain_link(chain.seed, chain.length - 1)
    with pytest.raises(InvalidArgumentError, match="both a version manifest and a heartbeat"):
        gate.admit_heartbeat(VIN, _manifest(key, None), link, ECUS)
    with pytest.raises(InvalidArgumentError, match="32-byte link"):
        gate.admit_heartbeat(VIN, b"", link[:16], ECUS)

    keyless = "WSF00000000000089"
    provision_vehicle(database, vin=keyless, model="sedan", ecus=[EcuSpec("gw-89", "gw-x1", True)])
    assert asyncio.run(gate.admit(keyless, b"", [EcuSpec("gw-89", "gw-x1", True)])) is None
    with pytest.raises(InvalidArgumentError, match="without ECU keys"):
        gate.admit_heartbeat(keyless, b"", link, [EcuSpec("gw-89", "gw-x1", True)])


def _use(gate: ManifestGate, link: bytes, start: threading.Barrier, outcomes: list[str]) -> None:
    start.wait()
    try:
        gate.admit_heartbeat(VIN, b"", link, ECUS)
    except PermissionDeniedError:
        outcomes.append("refused")
    else:
        outcomes.append("accepted")


def test_one_link_used_from_two_threads_passes_once(database: Database, key: EcuKey) -> None:
    gate = ManifestGate(database)
    for _ in range(20):  # many rounds, each one link raced by two threads
        chain = _committed(gate, key, length=4)
        link = chain_link(chain.seed, 3)
        start = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_use, args=(gate, link, start, outcomes)) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["accepted", "refused"]
