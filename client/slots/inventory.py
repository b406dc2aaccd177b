"""Which verified image each slot holds: the client's record beside the boot state.

The bootloader's variables only say which slot to boot; this small atomic JSON file
(``slots.json``) says what is in each slot. A slot's entry is cleared before anything is
written into it and set only after the image was written, verified and flushed.
"""

from __future__ import annotations

import json
from pathlib import Path

from client.atomicfile import write_atomically
from client.errors import StateError
from client.images import Image
from client.slots.state import SLOTS, Slot

INVENTORY_FILE = "slots.json"


class SlotInventory:
    """The image recorded for each slot (None: unknown, or being written)."""

    def __init__(self, directory: Path) -> None:
        """Use ``directory/slots.json`` (it need not exist yet)."""
        self._path = directory / INVENTORY_FILE

    def read(self) -> dict[Slot, Image | None]:
        """Return the image of each slot.

        Raises:
            StateError: The file is unreadable or invalid.
        """
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return {"A": None, "B": None}
        except (OSError, ValueError) as exc:
            raise StateError(
                f"cannot read the slot inventory {self._path}: {exc}; move it aside (the "
                "client then reports the installed image as unknown)"
            ) from exc
        try:
            return {
                slot: None if data.get(slot) is None else Image.from_json(data[slot])
                for slot in SLOTS
            }
        except (TypeError, AttributeError) as exc:
            raise StateError(f"the slot inventory {self._path} is invalid: {exc}") from exc

    def record(self, slot: Slot, image: Image | None) -> None:
        """Record that ``slot`` holds ``image`` (None: its content must not be trusted).

        Raises:
            StateError: The file cannot be written.
        """
        images = {**self.read(), slot: image}
        data = {name: None if value is None else value.to_json() for name, value in images.items()}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, json.dumps(data, indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise StateError(f"cannot write the slot inventory {self._path}: {exc}") from exc
