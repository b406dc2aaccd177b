"""A/B boot control: the boot state, its backends and the simulated bootloader."""

from __future__ import annotations

from pathlib import Path

from client.errors import ConfigError
from client.slots.bootsim import SimulatedBootloader
from client.slots.filebackend import FileBootControl
from client.slots.grub import GrubBootControl
from client.slots.inventory import SlotInventory
from client.slots.state import (
    SLOTS,
    BootControl,
    Bootloader,
    BootState,
    Slot,
    next_boot,
    other_slot,
)
from client.slots.uboot import UBootBootControl

BACKENDS = ("file", "grub", "uboot")


def open_boot_control(backend: str, *, directory: Path, env: Path | None) -> BootControl:
    """Open the boot-control backend a config names.

    Args:
        backend: ``file``, ``grub`` or ``uboot``.
        directory: The slot directory (the ``file`` backend keeps its state there).
        env: The GRUB environment block (``grub``) or the fw_env.config (``uboot``).

    Raises:
        ConfigError: The backend is unknown or lacks its environment path.
        StateError: The backend cannot be opened.
    """
    if backend == "file":
        return FileBootControl(directory)
    if env is None:
        raise ConfigError(f"the {backend} boot-control backend needs 'slots.env'")
    if backend == "grub":
        return GrubBootControl(env)
    if backend == "uboot":
        return UBootBootControl(env)
    raise ConfigError(f"unknown boot-control backend {backend!r}; use one of {BACKENDS}")


__all__ = [
    "BACKENDS",
    "SLOTS",
    "BootControl",
    "BootState",
    "Bootloader",
    "FileBootControl",
    "GrubBootControl",
    "SimulatedBootloader",
    "Slot",
    "SlotInventory",
    "UBootBootControl",
    "next_boot",
    "open_boot_control",
    "other_slot",
]
