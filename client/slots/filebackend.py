"""The ``file`` boot-control backend: the boot state as one atomically replaced JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from client.atomicfile import write_atomically
from client.errors import StateError
from client.slots.state import BootControl, BootState

STATE_FILE = "bootstate.json"


class FileBootControl(BootControl):
    """Keeps the boot state in ``bootstate.json`` (a missing file is the factory state)."""

    name = "file"

    def __init__(self, directory: Path) -> None:
        """Open (and create if needed) the folder of the state file.

        Args:
            directory: Where ``bootstate.json`` lives.

        Raises:
            StateError: The directory cannot be created.
        """
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the slot directory {directory}: {exc}") from exc
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
        """Replace the boot state atomically.

        Raises:
            StateError: The state file cannot be written.
        """
        data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        try:
            write_atomically(self._state_path, data)
        except OSError as exc:
            raise StateError(f"cannot write the boot state {self._state_path}: {exc}") from exc
