"""Boot-control fixtures: one backend per parameter, each over its real tool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from client.slots import BootControl, FileBootControl, GrubBootControl, UBootBootControl
from client.slots.uboot import provision_env

INSTALL_SCRIPT = Path(__file__).parents[3] / "scripts" / "install-boot-tools.sh"


def ensure_boot_tools() -> None:
    """Install the Debian bootloader tools when one is missing (the Makefile does it too)."""
    if all(shutil.which(tool) for tool in ("grub-editenv", "fw_setenv", "mkenvimage")):
        return
    subprocess.run(["/bin/sh", str(INSTALL_SCRIPT)], check=True, timeout=600)


def make_boot_control(backend: str, directory: Path) -> BootControl:
    """A backend in the factory state under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if backend == "file":
        return FileBootControl(directory)
    ensure_boot_tools()
    if backend == "grub":
        return GrubBootControl(directory / "grubenv")
    provision_env(directory / "uboot.env", directory / "fw_env.config")
    return UBootBootControl(directory / "fw_env.config")


@pytest.fixture(params=["file", "grub", "uboot"])
def boot_control(request: pytest.FixtureRequest, tmp_path: Path) -> BootControl:
    """Each boot-control backend in turn, in the factory state."""
    backend: str = request.param
    return make_boot_control(backend, tmp_path / backend)
