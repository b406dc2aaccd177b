"""A simulated bootloader: the logic U-Boot's bootcount or a GRUB script implement.

It works over any boot-control backend, so the same simulation drives the ``file``,
``grub`` and ``uboot`` variables. Each boot also writes a fresh boot id (what
``/proc/sys/kernel/random/boot_id`` is on Linux), so that the client can tell after a
restart whether a boot happened since it asked for one.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from client.atomicfile import write_atomically
from client.errors import StateError
from client.slots.state import BootControl, Slot, next_boot

BOOT_ID_FILE = "boot_id"


class SimulatedBootloader:
    """Reboots a simulated vehicle: one step of the bootloader's logic, then a new boot id."""

    def __init__(self, boot_control: BootControl, directory: Path) -> None:
        """Create a bootloader over a backend.

        Args:
            boot_control: The backend whose variables the bootloader reads and writes.
            directory: Where the boot id of the simulated machine is kept.
        """
        self._boot_control = boot_control
        self._boot_id_path = directory / BOOT_ID_FILE

    def reboot(self) -> Slot:
        """Boot once, as the bootloader would after a restart.

        Returns:
            The slot that came up.

        Raises:
            StateError: The boot state or the boot id cannot be read or written.
        """
        state = next_boot(self._boot_control.read_state())
        self._boot_control.write_state(state)
        try:
            write_atomically(self._boot_id_path, str(uuid.uuid4()).encode())
        except OSError as exc:
            raise StateError(f"cannot write the boot id {self._boot_id_path}: {exc}") from exc
        return state.booted

    def boot_id(self) -> str:
        """Return the id of the current boot ("" before the first simulated boot).

        Raises:
            StateError: The boot id cannot be read.
        """
        try:
            return self._boot_id_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise StateError(f"cannot read the boot id {self._boot_id_path}: {exc}") from exc
