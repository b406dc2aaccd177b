"""Debian tools the benchmarks measure against or drive load with, installed when absent."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def debian_tool(binary: str, packages: Sequence[str]) -> str:
    """The path of ``binary``; installs the first of ``packages`` apt-get can when missing.

    Exits with a message naming the package when it cannot be installed (not root).
    """
    for candidate in (shutil.which(binary), f"/usr/sbin/{binary}", f"/usr/bin/{binary}"):
        if candidate and Path(candidate).exists():
            return candidate
    print(f"{binary} is absent: apt-get install -y {packages[0]}", flush=True)
    for package in packages:
        done = subprocess.run(
            ["apt-get", "install", "-y", package], capture_output=True, check=False
        )
        found = shutil.which(binary) or next(
            (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if Path(p).exists()), None
        )
        if done.returncode == 0 and found:
            return found
    sys.exit(f"cannot install {binary} (run as root, or apt-get install -y {packages[0]} first)")
