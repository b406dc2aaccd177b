"""What the vehicle knows about one image: the facts both repositories signed for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Image:
    """An image that passed Uptane verification (or that a slot holds).

    Attributes:
        target: The image's target name in both repositories, e.g. ``app-1.1``.
        length: Its size in bytes.
        sha256: Its SHA-256, lowercase hex.
        release_counter: The Image repository's anti-rollback counter.
    """

    target: str
    length: int
    sha256: str
    release_counter: int

    def to_json(self) -> dict[str, Any]:
        """Return the image as a JSON-ready dict."""
        return {
            "target": self.target,
            "length": self.length,
            "sha256": self.sha256,
            "release_counter": self.release_counter,
        }

    @classmethod
    def from_json(cls, data: Any) -> Image:
        """Read an image back from :meth:`to_json` output.

        Raises:
            TypeError: A field is missing or has the wrong type.
        """
        if not isinstance(data, dict):
            raise TypeError("an image record must be a JSON object")
        target, length = data.get("target"), data.get("length")
        sha256, counter = data.get("sha256"), data.get("release_counter")
        if not isinstance(target, str) or not isinstance(sha256, str):
            raise TypeError("an image record needs string 'target' and 'sha256'")
        if not isinstance(length, int) or not isinstance(counter, int):
            raise TypeError("an image record needs integer 'length' and 'release_counter'")
        return cls(target=target, length=length, sha256=sha256, release_counter=counter)


def format_size(length: int) -> str:
    """Return a byte count for people, e.g. ``1.0 MiB``."""
    if length < 1024:
        return f"{length} B"
    size = length / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
