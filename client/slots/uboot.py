"""The ``uboot`` boot-control backend: the U-Boot environment, via libubootenv's tools.

The variables are the ones U-Boot's bootcount feature and a boot script read::

    boot_slot=B          the slot the boot script starts
    upgrade_available=1  U-Boot counts boots (bootcount) only while this is 1
    bootcount=1          boots of boot_slot since the switch
    bootlimit=3          past this many, U-Boot runs altbootcmd: back to the other slot
    staffel_booted=B     the slot the last boot started (the boot script sets it)

The environment is redundant (two copies with a flag byte, made by ``mkenvimage -r``):
``fw_setenv`` writes the inactive copy and then flips the flag, and every change is one
``fw_setenv -s`` of all its variables, so a power cut leaves the old state whole.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from client.slots.state import BootControl, BootState, Slot, other_slot, parse_slot
from client.slots.tools import integer, parse_variables, run_tool

ENV_SIZE = 0x4000  # bytes per copy of the environment

FACTORY_ENV = "boot_slot=A\nupgrade_available=0\nbootcount=0\nbootlimit=0\nstaffel_booted=A\n"


def provision_env(env_file: Path, config_file: Path, *, size: int = ENV_SIZE) -> None:
    """Create a redundant U-Boot environment in the factory state and its fw_env.config.

    The file holds both copies, one after the other, as two lines of the config name them.

    Args:
        env_file: The environment image to create (a stand-in for the flash partition).
        config_file: The libubootenv configuration to write.
        size: Bytes per copy.

    Raises:
        StateError: ``mkenvimage`` is missing or failed.
    """
    with tempfile.TemporaryDirectory() as work:
        text, image = Path(work) / "env.txt", Path(work) / "env.bin"
        text.write_text(FACTORY_ENV, encoding="ascii")
        run_tool("mkenvimage", "-r", "-s", str(size), "-o", str(image), str(text))
        copy = image.read_bytes()
    env_file.write_bytes(copy + copy)
    config_file.write_text(
        f"{env_file} 0x0 {size:#x}\n{env_file} {size:#x} {size:#x}\n", encoding="ascii"
    )


class UBootBootControl(BootControl):
    """Keeps the boot state in a U-Boot environment named by a ``fw_env.config``."""

    name = "uboot"

    def __init__(self, config_file: Path) -> None:
        """Use the environment that ``config_file`` (libubootenv's format) names."""
        self._config_file = config_file

    def _variables(self) -> dict[str, str]:
        return parse_variables(run_tool("fw_printenv", "-c", str(self._config_file)))

    def read_state(self) -> BootState:
        """Return the boot state the U-Boot variables describe.

        Raises:
            StateError: ``fw_printenv`` failed or a variable is invalid.
        """
        return self._decode(self._variables())

    def _decode(self, variables: dict[str, str]) -> BootState:
        source = f"U-Boot environment of {self._config_file}"
        boot_slot = parse_slot(variables.get("boot_slot", "A"), source=source)
        if variables.get("upgrade_available", "0") != "1":
            committed_slot, trying, tries = boot_slot, None, 0
        else:
            limit = integer(variables, "bootlimit", source=source)
            count = integer(variables, "bootcount", source=source)
            committed_slot, trying, tries = other_slot(boot_slot), boot_slot, max(0, limit - count)
        booted = parse_slot(variables.get("staffel_booted") or committed_slot, source=source)
        return BootState(committed=committed_slot, booted=booted, trying=trying, tries_left=tries)

    def write_state(self, state: BootState) -> None:
        """Write every variable of ``state`` in one ``fw_setenv -s``.

        A new try sets ``bootlimit`` to its tries and ``bootcount`` to 0; a spent try
        raises ``bootcount``.

        Raises:
            StateError: ``fw_setenv`` failed.
        """
        trying: Slot | None = state.trying
        if trying is None:
            variables = {"boot_slot": state.committed, "upgrade_available": "0", "bootcount": "0"}
        else:
            old = self._variables()
            current = self._decode(old)
            if current.trying == trying and state.tries_left <= current.tries_left:
                limit = integer(old, "bootlimit", source=str(self._config_file))
            else:
                limit = state.tries_left
            variables = {
                "boot_slot": trying,
                "upgrade_available": "1",
                "bootlimit": str(limit),
                "bootcount": str(limit - state.tries_left),
            }
        variables["staffel_booted"] = state.booted
        script = "".join(f"{name}={value}\n" for name, value in variables.items())
        with tempfile.NamedTemporaryFile("w", suffix=".env", encoding="ascii") as handle:
            handle.write(script)
            handle.flush()
            run_tool("fw_setenv", "-c", str(self._config_file), "-s", handle.name)
