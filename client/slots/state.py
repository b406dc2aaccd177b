"""The A/B boot state, its pure transitions, and the boot-control seam backends implement.

A backend only encodes and decodes :class:`BootState` in its bootloader's variables
(:meth:`BootControl.read_state` and :meth:`BootControl.write_state`, each one atomic
write); the transitions the client asks for (try a slot, commit it, drop it) are the pure
functions of this module, shared by every backend through :class:`BootControl`.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from client.errors import StateError

Slot = Literal["A", "B"]
SLOTS: tuple[Slot, Slot] = ("A", "B")


def other_slot(slot: Slot) -> Slot:
    """Return the slot that is not ``slot``."""
    return "B" if slot == "A" else "A"


def parse_slot(value: str, *, source: str) -> Slot:
    """Return ``value`` as a slot.

    Raises:
        StateError: ``value`` is not A or B; ``source`` names where it was read.
    """
    if value == "A":
        return "A"
    if value == "B":
        return "B"
    raise StateError(f"{source} names slot {value!r}; expected A or B")


@dataclass(frozen=True)
class BootState:
    """What the bootloader knows, as one immutable value.

    Attributes:
        committed: The active slot: the last one marked good, booted when nothing is tried.
        booted: The slot the vehicle runs from now.
        trying: The slot the bootloader tries on the next boots, or None.
        tries_left: How many boots of ``trying`` remain before the bootloader falls back.
    """

    committed: Slot = "A"
    booted: Slot = "A"
    trying: Slot | None = None
    tries_left: int = 0

    def replace(self, **changes: Any) -> BootState:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Return the state as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> BootState:
        """Read a state back from :meth:`to_json` output.

        Raises:
            ValueError: A field is missing or invalid.
            TypeError: The data is not a boot state object.
        """
        if not isinstance(data, dict):
            raise TypeError("the boot state must be a JSON object")
        committed, booted, trying = data.get("committed"), data.get("booted"), data.get("trying")
        tries_left = data.get("tries_left")
        if committed not in SLOTS or booted not in SLOTS or trying not in (*SLOTS, None):
            raise ValueError("'committed' and 'booted' must be A or B, 'trying' A, B or null")
        if not isinstance(tries_left, int) or tries_left < 0:
            raise ValueError("'tries_left' must be a non-negative integer")
        return cls(committed=committed, booted=booted, trying=trying, tries_left=tries_left)


def tried(state: BootState, slot: Slot, tries: int) -> BootState:
    """Return ``state`` with ``slot`` to be tried ``tries`` times.

    Raises:
        StateError: ``slot`` is the committed slot, or ``tries`` is not positive.
    """
    if slot == state.committed:
        raise StateError(f"slot {slot} is the active slot; only the other slot can be tried")
    if tries < 1:
        raise StateError(f"a slot must be tried at least once, not {tries} times")
    return state.replace(trying=slot, tries_left=tries)


def committed(state: BootState) -> BootState:
    """Return ``state`` with the slot being tried committed (unchanged when none is tried).

    Raises:
        StateError: The vehicle did not boot the slot being tried.
    """
    if state.trying is None:
        return state
    if state.booted != state.trying:
        raise StateError(
            f"slot {state.trying} is being tried but slot {state.booted} is booted; "
            "a slot is committed only after it booted"
        )
    return state.replace(committed=state.trying, trying=None, tries_left=0)


def dropped(state: BootState, slot: Slot) -> BootState:
    """Return ``state`` where ``slot`` is no longer tried.

    Raises:
        StateError: ``slot`` is the committed slot.
    """
    if slot == state.committed:
        raise StateError(f"slot {slot} is the active slot and cannot be marked bad")
    if state.trying != slot:
        return state
    return state.replace(trying=None, tries_left=0)


def next_boot(state: BootState) -> BootState:
    """Return the boot state after one boot, as the bootloader's logic leaves it.

    When a slot is being tried and tries remain, one try is spent and that slot boots;
    when the tries ran out, the bootloader falls back to the committed slot and clears the
    try; otherwise the committed slot boots.
    """
    if state.trying is not None and state.tries_left > 0:
        return state.replace(booted=state.trying, tries_left=state.tries_left - 1)
    if state.trying is not None:
        return state.replace(booted=state.committed, trying=None, tries_left=0)
    return state.replace(booted=state.committed)


class BootControl(abc.ABC):
    """How the client reads and changes the bootloader's A/B state.

    Subclasses implement :meth:`read_state` and :meth:`write_state`; every change the
    client makes is one :meth:`write_state`, durable and atomic when it returns, so that a
    power cut leaves the old state or the new one, never a mix.
    """

    name: str = ""

    @abc.abstractmethod
    def read_state(self) -> BootState:
        """Return the current boot state (the factory state when none was written).

        Raises:
            StateError: The bootloader's variables cannot be read or are invalid.
        """

    @abc.abstractmethod
    def write_state(self, state: BootState) -> None:
        """Replace the boot state in one atomic, durable write.

        Raises:
            StateError: The bootloader's variables cannot be written.
        """

    def set_next(self, slot: Slot, tries: int) -> None:
        """Try booting ``slot`` on the next ``tries`` boots.

        Raises:
            StateError: ``slot`` is active, or the state cannot be read or written.
        """
        self.write_state(tried(self.read_state(), slot, tries))

    def mark_good(self) -> None:
        """Commit the slot being tried; does nothing when no slot is tried.

        Raises:
            StateError: The vehicle did not boot the slot being tried.
        """
        state = self.read_state()
        new = committed(state)
        if new != state:
            self.write_state(new)

    def mark_bad(self, slot: Slot) -> None:
        """Stop trying ``slot``; the committed slot stays active.

        Raises:
            StateError: ``slot`` is the committed slot, or the state cannot be written.
        """
        state = self.read_state()
        new = dropped(state, slot)
        if new != state:
            self.write_state(new)


class Bootloader(Protocol):
    """Restarts the vehicle and reports the slot that came up."""

    def reboot(self) -> Slot:
        """Reboot once and return the booted slot."""
        ...

    def boot_id(self) -> str:
        """Return an id that changes at every boot (``/proc/sys/kernel/random/boot_id``)."""
        ...
