"""The enough-space check, made before a byte of an image is fetched."""

from __future__ import annotations

import shutil
from pathlib import Path

from client.errors import InstallError
from client.images import format_size


def check_space(path: Path, length: int) -> None:
    """Refuse an image larger than the slot can take.

    Args:
        path: The slot: a block device, or a file (which may not exist yet).
        length: The image's signed length in bytes.

    Raises:
        InstallError: The slot cannot be sized or is too small.
    """
    try:
        if path.is_block_device():
            with path.open("rb") as device:
                room = device.seek(0, 2)
        else:
            held = path.stat().st_size if path.exists() else 0
            room = shutil.disk_usage(path.parent).free + held
    except OSError as exc:
        raise InstallError(f"cannot size slot {path}: {exc}") from exc
    if room < length:
        raise InstallError(
            f"slot {path} has room for {format_size(room)} but the image needs "
            f"{format_size(length)}; free space or resize the slot"
        )
