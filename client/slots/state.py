"""The A/B boot state and the boot-control seam that backends implement."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from client.images import Image

Slot = Literal["A", "B"]
SLOTS: tuple[Slot, Slot] = ("A", "B")


def other_slot(slot: Slot) -> Slot:
    """Return the slot that is not ``slot``."""
    return "B" if slot == "A" else "A"


@dataclass(frozen=True)
class BootState:
    """What the bootloader knows, as one immutable value.

    Attributes:
        committed: The active slot: the last one marked good, booted when nothing is tried.
        booted: The slot the vehicle runs from now.
        trying: The slot the bootloader tries on the next boots, or None.
        tries_left: How many boots of ``trying`` remain before the bootloader falls back.
        images: The image each slot holds, None when unknown.
    """

    committed: Slot = "A"
    booted: Slot = "A"
    trying: Slot | None = None
    tries_left: int = 0
    images: dict[Slot, Image | None] = field(default_factory=lambda: {"A": None, "B": None})

    def replace(self, **changes: Any) -> BootState:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def with_image(self, slot: Slot, image: Image | None) -> BootState:
        """Return a copy where ``slot`` holds ``image``."""
        return self.replace(images={**self.images, slot: image})

    @property
    def active_image(self) -> Image | None:
        """The image in the committed slot, None when unknown."""
        return self.images[self.committed]

    def to_json(self) -> dict[str, Any]:
        """Return the state as a JSON-ready dict."""
        return {
            "committed": self.committed,
            "booted": self.booted,
            "trying": self.trying,
            "tries_left": self.tries_left,
            "images": {
                slot: None if image is None else image.to_json()
                for slot, image in self.images.items()
            },
        }

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
        tries_left, images = data.get("tries_left"), data.get("images")
        if committed not in SLOTS or booted not in SLOTS or trying not in (*SLOTS, None):
            raise ValueError("'committed' and 'booted' must be A or B, 'trying' A, B or null")
        if not isinstance(tries_left, int) or tries_left < 0:
            raise ValueError("'tries_left' must be a non-negative integer")
        if not isinstance(images, dict) or set(images) != set(SLOTS):
            raise ValueError("'images' must name slots A and B")
        return cls(
            committed=committed,
            booted=booted,
            trying=trying,
            tries_left=tries_left,
            images={
                slot: None if images[slot] is None else Image.from_json(images[slot])
                for slot in SLOTS
            },
        )


class BootControl(Protocol):
    """How the client reads and changes the bootloader's A/B state.

    Every change is durable when the method returns.
    """

    def read_state(self) -> BootState:
        """Return the current boot state."""
        ...

    def slot_path(self, slot: Slot) -> str:
        """Return the path of the device or file that holds ``slot``."""
        ...

    def set_next(self, slot: Slot, tries: int, image: Image) -> None:
        """Record that ``slot`` holds ``image`` and try booting it ``tries`` times, atomically."""
        ...

    def mark_good(self) -> None:
        """Commit the slot being tried: it becomes the active slot."""
        ...

    def mark_bad(self, slot: Slot) -> None:
        """Stop trying ``slot`` and forget its image; the committed slot stays active."""
        ...


class Bootloader(Protocol):
    """Restarts the vehicle and reports the slot that came up."""

    def reboot(self) -> Slot:
        """Reboot once and return the booted slot."""
        ...
