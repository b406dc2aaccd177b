"""Every attack of the malicious-relay scenarios, carried on a USB stick instead.

Each attack test of ``tests/scenarios/test_attack_*.py`` runs unchanged, but its cycles go
through ``staffel-client install --offline DIR``: DIR holds what the malicious relay would
serve (every repository file, tampered exactly as the relay would tamper it) and the offer
the (possibly compromised) Director made. The events the offline install queued are then
delivered to the Director service over gRPC, as they would be once the vehicle is online,
so each test's own assertions judge the offline path: nothing installed, boot state and
active slot unchanged, and a FAILED event naming the attack.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from client.config import load_config
from client.journal import Outbox
from client.link import VehicleLink
from client.main import main
from tests.scenarios import (
    malicious_relay,
    test_attack_arbitrary_software,
    test_attack_endless_data,
    test_attack_freeze,
    test_attack_mix_and_match,
    test_attack_repositories_disagree,
    test_attack_revoked_key,
    test_attack_rollback,
    test_attack_under_threshold,
    test_attack_wrong_hardware_id,
)

ATTACK_MODULES: tuple[ModuleType, ...] = (
    test_attack_arbitrary_software,
    test_attack_endless_data,
    test_attack_freeze,
    test_attack_mix_and_match,
    test_attack_repositories_disagree,
    test_attack_revoked_key,
    test_attack_rollback,
    test_attack_under_threshold,
    test_attack_wrong_hardware_id,
)
ATTACKS: list[tuple[ModuleType, Callable[[Path], None]]] = [
    (module, function)
    for module in ATTACK_MODULES
    for name, function in sorted(vars(module).items())
    if name.startswith("test_") and callable(function)
]


@dataclasses.dataclass
class OfflineAttackBench(malicious_relay.AttackBench):
    """The attack bench whose cycles are offline installs from a folder."""

    runs: int = 0

    def run_cycle(self) -> int:
        """``install --offline`` from what the relay and Director serve now; then report."""
        self.runs += 1
        folder = self._folder(self.vehicle.config_path.parent / f"usb-{self.runs}")
        code = main(["--config", str(self.vehicle.config_path), "install", "--offline", folder])
        self._deliver_queued_events()
        return code

    def _folder(self, folder: Path) -> str:
        served = self.repositories.image.metadata_dir.parents[1]
        tamper = self.relay.tamper
        for source in sorted(served.rglob("*")):
            if not source.is_file():
                continue
            relative = source.relative_to(served)
            body = source.read_bytes()
            if tamper is not None:
                body = tamper(f"/{relative.as_posix()}", body)
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(body)
        response = self.director.response
        assert response.WhichOneof("outcome") == "update", "the Director offers nothing"
        offer = folder / "director" / "offer"
        offer.mkdir(parents=True)
        director = response.update.director
        (offer / "timestamp.json").write_bytes(director.timestamp)
        (offer / "snapshot.json").write_bytes(director.snapshot)
        (offer / "targets.json").write_bytes(director.targets)
        (offer / "assignment").write_text(response.update.assignment_id)
        return str(folder)

    def _deliver_queued_events(self) -> None:
        config = load_config(self.vehicle.config_path)
        outbox = Outbox(config.state_dir / "outbox")
        link = VehicleLink(config.grpc_target, timeout_seconds=10)
        try:
            while events := outbox.pending(limit=100):
                link.report_events(config.vin, events)
                outbox.remove(events)
        finally:
            link.close()


@contextmanager
def offline_attack_bench(tmp_path: Path) -> Iterator[OfflineAttackBench]:
    """The malicious-relay bench, its cycles turned into offline installs."""
    with malicious_relay.attack_bench(tmp_path) as bench:
        fields = {field.name: getattr(bench, field.name) for field in dataclasses.fields(bench)}
        offline = OfflineAttackBench(**fields)
        try:
            yield offline
        finally:
            for usb in bench.vehicle.config_path.parent.glob("usb-*"):
                shutil.rmtree(usb)


@pytest.mark.parametrize(
    ("module", "attack"),
    ATTACKS,
    ids=[f"{module.__name__.rsplit('.', 1)[-1]}::{attack.__name__}" for module, attack in ATTACKS],
)
def test_the_attack_is_refused_over_the_offline_path(
    module: ModuleType,
    attack: Callable[[Path], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The attack test builds its bench through its module's ``attack_bench``: hand it the
    # offline one, so the same attack and the same assertions run over the folder.
    monkeypatch.setattr(module, "attack_bench", offline_attack_bench)
    attack(tmp_path)


def test_every_attack_scenario_runs_offline_too() -> None:
    assert len(ATTACKS) == 12
