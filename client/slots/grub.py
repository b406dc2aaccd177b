"""The ``grub`` boot-control backend: the GRUB environment block, via ``grub-editenv``.

The variables are the ones a GRUB script reads to pick the slot (RAUC's layout)::

    ORDER="B A"      slots in boot order: the slot being tried first, else the committed
    A_OK=1  B_OK=0   1 for the committed (known good) slot
    A_TRIES=0        boots left for the slot being tried; the script spends one
    B_TRIES=3        (``save_env``) before booting a slot whose OK is 0
    STAFFEL_BOOTED=B the slot the last boot started (the script sets it)

A GRUB script reaching a slot with OK=0 and no tries left moves on to the next in ORDER,
which is the fallback. The block is 1 KiB; ``grub-editenv set`` rewrites it with every
variable of one change in a single call.
"""

from __future__ import annotations

from pathlib import Path

from client.errors import StateError
from client.slots.state import SLOTS, BootControl, BootState, Slot, other_slot, parse_slot
from client.slots.tools import integer, parse_variables, run_tool


class GrubBootControl(BootControl):
    """Keeps the boot state in a GRUB environment block file (``grubenv``)."""

    name = "grub"

    def __init__(self, env_file: Path) -> None:
        """Use the environment block at ``env_file``, creating it when absent.

        Raises:
            StateError: ``grub-editenv`` is missing or cannot create the block.
        """
        self._env_file = env_file
        if not env_file.exists():
            run_tool("grub-editenv", str(env_file), "create")

    def read_state(self) -> BootState:
        """Return the boot state the GRUB variables describe (factory state when unset).

        Raises:
            StateError: The block cannot be read or its variables contradict each other.
        """
        source = f"GRUB environment {self._env_file}"
        variables = parse_variables(run_tool("grub-editenv", str(self._env_file), "list"))
        if "ORDER" not in variables:
            return BootState()
        order = [parse_slot(part, source=source) for part in variables["ORDER"].split()]
        good = [slot for slot in SLOTS if variables.get(f"{slot}_OK") == "1"]
        if sorted(order) != list(SLOTS) or len(good) != 1:
            raise StateError(
                f"{source}: ORDER={variables['ORDER']!r} with OK slots {good} is not a valid "
                "A/B state; reprovision the boot environment"
            )
        committed_slot = good[0]
        trying: Slot | None = order[0] if order[0] != committed_slot else None
        tries = 0 if trying is None else integer(variables, f"{trying}_TRIES", source=source)
        booted = variables.get("STAFFEL_BOOTED") or committed_slot
        return BootState(
            committed=committed_slot,
            booted=parse_slot(booted, source=source),
            trying=trying,
            tries_left=tries,
        )

    def write_state(self, state: BootState) -> None:
        """Write every variable of ``state`` in one ``grub-editenv set`` call.

        Raises:
            StateError: ``grub-editenv`` failed.
        """
        first = state.trying or state.committed
        assignments = {
            "ORDER": f"{first} {other_slot(first)}",
            "STAFFEL_BOOTED": state.booted,
        }
        for slot in SLOTS:
            assignments[f"{slot}_OK"] = "1" if slot == state.committed else "0"
            assignments[f"{slot}_TRIES"] = str(state.tries_left if slot == state.trying else 0)
        run_tool(
            "grub-editenv",
            str(self._env_file),
            "set",
            *(f"{name}={value}" for name, value in assignments.items()),
        )
