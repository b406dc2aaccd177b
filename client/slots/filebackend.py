"""The ``file`` boot-control backend: slots ``A.img``/``B.img`` and ``bootstate.json``."""

from __future__ import annotations

import json
from pathlib import Path

from client.atomicfile import write_atomically
from client.errors import StateError
from client.images import Image
from client.slots.state import BootState, Slot

STATE_FILE = "bootstate.json"


class FileBootControl:
    """Keeps the A/B slots as files in one directory, the boot state as atomic JSON.

    A missing state file means the factory state: slot A active and booted, nothing tried,
    both slot images unknown.
    """

    def __init__(self, directory: Path) -> None:
        """Open (and create if needed) the slot directory.

        Args:
            directory: Where ``A.img``, ``B.img`` and ``bootstate.json`` live.

        Raises:
            StateError: The directory cannot be created.
        """
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the slot directory {directory}: {exc}") from exc
        self._directory = directory
        self._state_path = directory / STATE_FILE

    def read_state(self) -> BootState:
        """Return the current boot state (the factory state when none was written).

        Raises:
            StateError: The state file is unreadable or invalid.
        """
        try:
            raw = self._state_path.read_bytes()
        except FileNotFoundError:
            return BootState()
        except OSError as exc:
            raise StateError(f"cannot read the boot state {self._state_path}: {exc}") from exc
        try:
            return BootState.from_json(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise StateError(
                f"the boot state {self._state_path} is invalid ({exc}); restore it from the "
                "bootloader environment or reprovision the vehicle"
            ) from exc

    def write_state(self, state: BootState) -> None:
        """Replace the boot state atomically (what the bootloader does when it boots).

        Raises:
            StateError: The state file cannot be written.
        """
        data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        try:
            write_atomically(self._state_path, data)
        except OSError as exc:
            raise StateError(f"cannot write the boot state {self._state_path}: {exc}") from exc

    def slot_path(self, slot: Slot) -> str:
        """Return the file that holds ``slot``."""
        return str(self._directory / f"{slot}.img")

    def set_next(self, slot: Slot, tries: int, image: Image) -> None:
        """Record ``image`` in ``slot`` and try booting it ``tries`` times, in one write.

        Raises:
            StateError: ``slot`` is the committed slot, or the state cannot be written.
        """
        state = self.read_state()
        if slot == state.committed:
            raise StateError(f"slot {slot} is the active slot; only the other slot can be tried")
        self.write_state(state.with_image(slot, image).replace(trying=slot, tries_left=tries))

    def mark_good(self) -> None:
        """Commit the slot being tried; does nothing when no slot is tried.

        Raises:
            StateError: The vehicle did not boot the slot being tried.
        """
        state = self.read_state()
        if state.trying is None:
            return
        if state.booted != state.trying:
            raise StateError(
                f"slot {state.trying} is being tried but slot {state.booted} is booted; "
                "a slot is committed only after it booted"
            )
        self.write_state(state.replace(committed=state.trying, trying=None, tries_left=0))

    def mark_bad(self, slot: Slot) -> None:
        """Stop trying ``slot`` and forget its image.

        Raises:
            StateError: ``slot`` is the committed slot, or the state cannot be written.
        """
        state = self.read_state()
        if slot == state.committed:
            raise StateError(f"slot {slot} is the active slot and cannot be marked bad")
        trying = None if state.trying == slot else state.trying
        tries_left = 0 if trying is None else state.tries_left
        self.write_state(state.with_image(slot, None).replace(trying=trying, tries_left=tries_left))
