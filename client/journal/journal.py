"""The update journal: where the update in progress stands, written before each step.

A restart (or a power cut at any instant) resumes at the step the journal names; every
step is safe to repeat. Event ids derive from the attempt and the event kind, so a
repeated step queues the same event again and the outbox and server drop the copy.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from client.atomicfile import write_atomically
from client.errors import StateError
from client.images import Image
from client.journal.events import EventKind
from client.slots.state import SLOTS, Slot

FORMAT_VERSION = 1


class Phase(StrEnum):
    """The next step of the update in progress."""

    VERIFY = "verify"
    DOWNLOAD = "download"
    INSTALL = "install"
    REBOOT = "reboot"
    HEALTH = "health"
    COMMIT = "commit"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class UpdateRecord:
    """The update in progress.

    Attributes:
        assignment_id: The assignment the server offered.
        attempt: A UUID made when the vehicle took the offer up; event ids derive from it.
        phase: The next step to run.
        image: The verified image (from the download step on).
        slot: The slot the image goes into (from the download step on).
        booted: The slot that came up after the reboot (from the health step on).
        boot_id: The boot id when the reboot was asked for: a different one after a
            restart means the vehicle already booted since.
        install_not_before: The maintenance window opens (None: no window).
        install_not_after: The maintenance window closes (None: no window).
    """

    assignment_id: str
    attempt: str
    phase: Phase
    image: Image | None = None
    slot: Slot | None = None
    booted: Slot | None = None
    boot_id: str = ""
    install_not_before: datetime | None = None
    install_not_after: datetime | None = None

    def in_window(self, now: datetime) -> bool:
        """Whether the install may run at ``now`` (always, without a window)."""
        if self.install_not_before is not None and now < self.install_not_before:
            return False
        return self.install_not_after is None or now <= self.install_not_after

    def window_text(self) -> str:
        """The maintenance window for people, e.g. ``2026-01-05 22:00 to 04:00 UTC``."""
        start, end = self.install_not_before, self.install_not_after
        opens = "any time" if start is None else f"{start:%Y-%m-%d %H:%M}"
        closes = "open end" if end is None else f"{end:%Y-%m-%d %H:%M}"
        return f"{opens} to {closes} UTC"

    def advance(self, phase: Phase, **changes: Any) -> UpdateRecord:
        """Return the record at ``phase``, with ``changes`` applied."""
        return dataclasses.replace(self, phase=phase, **changes)

    def event_id(self, kind: EventKind) -> str:
        """Return the id of this attempt's event of ``kind`` (the same on every repeat)."""
        return str(uuid.uuid5(uuid.UUID(self.attempt), kind.value))

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dict."""
        return {
            "assignment_id": self.assignment_id,
            "attempt": self.attempt,
            "phase": self.phase.value,
            "image": None if self.image is None else self.image.to_json(),
            "slot": self.slot,
            "booted": self.booted,
            "boot_id": self.boot_id,
            "install_not_before": _time_json(self.install_not_before),
            "install_not_after": _time_json(self.install_not_after),
        }

    @classmethod
    def from_json(cls, data: Any) -> UpdateRecord:
        """Read a record back from :meth:`to_json` output.

        Raises:
            ValueError: A field is missing or invalid.
            TypeError: The data is not an update record object.
        """
        if not isinstance(data, dict):
            raise TypeError("the update record must be a JSON object")
        slot, booted = data.get("slot"), data.get("booted")
        if slot not in (*SLOTS, None) or booted not in (*SLOTS, None):
            raise ValueError("'slot' and 'booted' must be A, B or null")
        try:
            return cls(
                assignment_id=str(data["assignment_id"]),
                attempt=str(uuid.UUID(data["attempt"])),
                phase=Phase(data["phase"]),
                image=None if data.get("image") is None else Image.from_json(data["image"]),
                slot=slot,
                booted=booted,
                boot_id=str(data.get("boot_id", "")),
                install_not_before=_time(data.get("install_not_before")),
                install_not_after=_time(data.get("install_not_after")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"an update record field is missing or invalid: {exc}") from exc


def _time_json(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("a time must be an ISO 8601 string")
    return datetime.fromisoformat(value)


@dataclass(frozen=True)
class JournalState:
    """Everything the journal holds.

    Attributes:
        release_counter: The release counter of the last committed image; the vehicle
            refuses any image with a lower one (anti-rollback).
        update: The update in progress, None when idle.
    """

    release_counter: int = 0
    update: UpdateRecord | None = None


class Journal:
    """The journal file ``journal.json`` in the state directory, replaced atomically."""

    def __init__(self, path: Path) -> None:
        """Open the journal at ``path`` (it need not exist yet)."""
        self._path = path

    def read(self) -> JournalState:
        """Return the journal's state (the idle state when no journal was written).

        Raises:
            StateError: The journal is unreadable or invalid.
        """
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return JournalState()
        except OSError as exc:
            raise StateError(f"cannot read the journal {self._path}: {exc}") from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
                raise ValueError(f"expected a JSON object with format {FORMAT_VERSION}")
            counter = data.get("release_counter")
            if not isinstance(counter, int) or counter < 0:
                raise ValueError("'release_counter' must be a non-negative integer")
            update = data.get("update")
            return JournalState(
                release_counter=counter,
                update=None if update is None else UpdateRecord.from_json(update),
            )
        except (ValueError, TypeError) as exc:
            raise StateError(
                f"the journal {self._path} is invalid ({exc}); move it aside to drop the "
                "update in progress (the anti-rollback counter restarts at 0)"
            ) from exc

    def write(self, state: JournalState) -> None:
        """Replace the journal atomically and durably.

        Raises:
            StateError: The journal cannot be written.
        """
        data = {
            "format": FORMAT_VERSION,
            "release_counter": state.release_counter,
            "update": None if state.update is None else state.update.to_json(),
        }
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, json.dumps(data, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise StateError(f"cannot write the journal {self._path}: {exc}") from exc
