"""Crash-safe file writes: a reader sees the old content or the new one, never a mix."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk.

    Args:
        directory: The directory whose entries changed.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a power cut leaves the old or the new file.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path`` and
    fsyncs the directory.

    Args:
        path: The file to replace (its directory must exist).
        data: The complete new content.

    Raises:
        OSError: The file could not be written.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        Path(temp_name).replace(path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_directory(directory)
