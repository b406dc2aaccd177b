"""A secondary ECU: verify, install into its own A/B pair, boot on trial, commit or roll back.

Its journal (``secondary.json`` in its state folder, written atomically) names the update it
holds on trial and how the last one ended, so that every request of the primary is safe to
repeat after a power cut on either side: an ``Install`` of the update already on trial only
checks the health again, a ``Commit`` or ``RollBack`` already done is answered again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from client.atomicfile import write_atomically
from client.errors import InstallError, StateError
from client.health import HealthResult, check_services, run_health_check
from client.images import Image
from client.install import SlotWriter
from client.secondary.config import SecondaryConfig
from client.secondary.partial import verify_director_targets
from client.slots import SimulatedBootloader, SlotInventory, open_boot_control, other_slot
from client.uptane.manifest import EcuKey, ecu_version_report, sign_report

logger = logging.getLogger(__name__)

JOURNAL_FILE = "secondary.json"
KEY_FILE = "ecu-key.pem"


@dataclass(frozen=True)
class TrialOutcome:
    """How the new slot came up.

    Attributes:
        healthy: It booted and passed its health check.
        detail: Why not, when not.
        slot: The slot that booted.
    """

    healthy: bool
    detail: str
    slot: str


class SecondaryEcu:
    """The update logic of one secondary ECU over its slots, journal and key."""

    def __init__(self, config: SecondaryConfig) -> None:
        """Open the ECU's slots and key (a key is made at the first start).

        Raises:
            StateError: The state folder or the key cannot be used.
            ConfigError: The boot-control backend is misconfigured.
        """
        self.config = config
        self._boot = open_boot_control(
            config.slots.backend, directory=config.slots.directory, env=config.slots.env
        )
        self._bootloader = SimulatedBootloader(self._boot, config.slots.directory)
        self._inventory = SlotInventory(config.slots.directory)
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state folder {config.state_dir}: {exc}") from exc
        self._journal = config.state_dir / JOURNAL_FILE
        key_path = config.state_dir / KEY_FILE
        self._key = EcuKey.load(key_path) if key_path.exists() else EcuKey.generate(key_path)

    def version_report(self) -> tuple[str, dict[str, Any]]:
        """The SHA-256 of the committed image and the signed version report."""
        committed = self._inventory.read()[self._boot.read_state().committed]
        report = ecu_version_report(
            self.config.identity.serial,
            committed.target if committed else "",
            committed.length if committed else 0,
            committed.sha256 if committed else "",
        )
        return (committed.sha256 if committed else ""), sign_report(report, self._key)

    def install(
        self, assignment_id: str, director_targets: bytes, chunks: Iterable[bytes]
    ) -> TrialOutcome:
        """Phase one: verify, write the inactive slot, boot it on trial, check its health.

        Raises:
            VerificationError: Partial verification refused the Director's targets.
            InstallError: The bytes are not the image the Director names, or another
                update is on trial.
            StateError: The slots or the journal cannot be used.
        """
        journal = self._read()
        pending = journal.get("pending")
        if pending is not None and pending["assignment_id"] == assignment_id:
            logger.info("assignment %s is on trial already; checking health again", assignment_id)
            return self._trial(Image.from_json(pending["image"]), pending["slot"])
        accepted = verify_director_targets(
            self.config.director_root.read_bytes(),
            director_targets,
            ecu=self.config.identity,
            version_floor=int(journal.get("targets_version", 0)),
            now=datetime.now(UTC),
        )
        state = self._boot.read_state()
        if state.trying is not None:
            raise InstallError(
                f"slot {state.trying} is on trial for another update; roll it back first"
            )
        slot = other_slot(state.committed)
        self._inventory.record(slot, None)
        path = self.config.slots.directory / f"{slot}.img"
        with SlotWriter(path, accepted.image, progress_path=None) as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish()  # checks the length and the hash, then fsyncs
        self._inventory.record(slot, accepted.image)
        journal.update(
            targets_version=accepted.version,
            pending={
                "assignment_id": assignment_id,
                "image": accepted.image.to_json(),
                "slot": slot,
            },
        )
        self._write(journal)
        self._boot.set_next(slot, self.config.slots.max_tries)
        self._bootloader.reboot()
        return self._trial(accepted.image, slot)

    def _trial(self, image: Image, slot: str) -> TrialOutcome:
        state = self._boot.read_state()
        if state.booted != slot:
            return TrialOutcome(False, f"slot {slot} did not boot; slot {state.booted} runs", slot)
        if slot not in (state.trying, state.committed):
            return TrialOutcome(False, f"slot {slot} is no longer on trial", state.booted)
        if self._inventory.read()[slot] != image:
            return TrialOutcome(False, f"slot {slot} lost its image record", slot)
        result = self._health()
        return TrialOutcome(result.healthy, "" if result.healthy else result.detail, slot)

    def _health(self) -> HealthResult:
        health = self.config.health
        result = check_services(health.services)
        for command in health.all_commands:
            if not result.healthy:
                break
            result = run_health_check(command, health.timeout_seconds)
        return result

    def commit(self, assignment_id: str) -> None:
        """Phase two: keep the slot on trial.

        Raises:
            InstallError: This assignment was rolled back, or is not on trial.
        """
        journal = self._read()
        pending = journal.get("pending")
        if pending is None or pending["assignment_id"] != assignment_id:
            self._check_last(journal, assignment_id, "committed")
            return
        state = self._boot.read_state()
        if state.committed != pending["slot"]:
            if state.trying != pending["slot"] or state.booted != pending["slot"]:
                raise InstallError(
                    f"assignment {assignment_id}: slot {pending['slot']} is not running on "
                    "trial; it cannot be committed (roll it back)"
                )
            self._boot.mark_good()
        self._end(journal, assignment_id, "committed")

    def roll_back(self, assignment_id: str) -> None:
        """Phase two: drop the slot on trial and boot the committed one.

        Raises:
            InstallError: This assignment was committed already.
        """
        journal = self._read()
        pending = journal.get("pending")
        if pending is None or pending["assignment_id"] != assignment_id:
            if journal.get("last", {}).get("assignment_id") == assignment_id:
                self._check_last(journal, assignment_id, "rolled back")
            return  # never installed here: nothing to undo
        slot = pending["slot"]
        state = self._boot.read_state()
        if state.committed != slot:
            self._boot.mark_bad(slot)
            self._inventory.record(slot, None)
            if self._boot.read_state().booted == slot:
                self._bootloader.reboot()
        else:
            raise InstallError(f"assignment {assignment_id} is committed; it cannot roll back")
        self._end(journal, assignment_id, "rolled back")

    def _check_last(self, journal: dict[str, Any], assignment_id: str, outcome: str) -> None:
        last = journal.get("last") or {}
        if last.get("assignment_id") != assignment_id or last.get("outcome") != outcome:
            raise InstallError(
                f"assignment {assignment_id} is not on trial on ECU "
                f"{self.config.identity.serial} (last: {last or 'none'}); it cannot be {outcome}"
            )

    def _end(self, journal: dict[str, Any], assignment_id: str, outcome: str) -> None:
        journal["pending"] = None
        journal["last"] = {"assignment_id": assignment_id, "outcome": outcome}
        self._write(journal)

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._journal.read_bytes())
        except FileNotFoundError:
            return {"targets_version": 0, "pending": None, "last": None}
        except (OSError, ValueError) as exc:
            raise StateError(
                f"cannot read the journal {self._journal}: {exc}; move it aside to start over"
            ) from exc
        return data

    def _write(self, journal: dict[str, Any]) -> None:
        try:
            write_atomically(self._journal, json.dumps(journal, sort_keys=True).encode())
        except OSError as exc:
            raise StateError(f"cannot write the journal {self._journal}: {exc}") from exc
