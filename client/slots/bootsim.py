"""A simulated bootloader (the logic U-Boot's bootcount or GRUB's boot-once implement).

At each boot: when a slot is being tried and tries remain, spend one try and boot it; when
the tries ran out, fall back to the committed slot and clear the try; otherwise boot the
committed slot.
"""

from __future__ import annotations

from client.slots.filebackend import FileBootControl
from client.slots.state import BootState, Slot


def next_boot(state: BootState) -> BootState:
    """Return the boot state after one (simulated) boot.

    Args:
        state: The boot state before the boot.

    Returns:
        The state the bootloader leaves behind; its ``booted`` is the slot that came up.
    """
    if state.trying is not None and state.tries_left > 0:
        return state.replace(booted=state.trying, tries_left=state.tries_left - 1)
    if state.trying is not None:
        return state.replace(booted=state.committed, trying=None, tries_left=0)
    return state.replace(booted=state.committed)


class SimulatedBootloader:
    """Reboots a vehicle whose slots are kept by the ``file`` backend."""

    def __init__(self, boot_control: FileBootControl) -> None:
        """Create a bootloader over the backend's state file.

        Args:
            boot_control: The ``file`` backend whose state the bootloader reads and writes.
        """
        self._boot_control = boot_control

    def reboot(self) -> Slot:
        """Boot once, as the bootloader would after a restart.

        Returns:
            The slot that came up.
        """
        state = next_boot(self._boot_control.read_state())
        self._boot_control.write_state(state)
        return state.booted
