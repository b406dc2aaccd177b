"""Running the bootloader environment tools (grub-editenv, fw_printenv, fw_setenv)."""

from __future__ import annotations

import subprocess

from client.errors import StateError

TOOL_TIMEOUT_SECONDS = 30.0

PACKAGES = {
    "grub-editenv": "grub-common",
    "fw_printenv": "libubootenv-tool",
    "fw_setenv": "libubootenv-tool",
    "mkenvimage": "u-boot-tools",
}


def run_tool(*command: str, stdin: bytes | None = None) -> str:
    """Run one environment tool and return its standard output.

    Args:
        command: The tool and its arguments.
        stdin: Bytes to feed it, if any.

    Raises:
        StateError: The tool is missing, timed out or failed; the message says which
            Debian package provides it or what the tool printed.
    """
    try:
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        package = PACKAGES.get(command[0], "the bootloader tools")
        raise StateError(
            f"{command[0]} is not installed; install the Debian package {package}"
        ) from None
    except subprocess.TimeoutExpired:
        raise StateError(f"{command[0]} did not finish within {TOOL_TIMEOUT_SECONDS:g} s") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise StateError(f"{' '.join(command)} failed: {message}")
    return result.stdout.decode(errors="replace")


def parse_variables(listing: str) -> dict[str, str]:
    """Parse ``name=value`` lines (the output of ``grub-editenv list`` and ``fw_printenv``)."""
    variables: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, value = line.partition("=")
        if sep and name and not name.startswith("#"):
            variables[name] = value
    return variables


def integer(variables: dict[str, str], name: str, *, source: str, default: int = 0) -> int:
    """Return variable ``name`` as a non-negative integer (``default`` when unset or empty).

    Raises:
        StateError: The value is not a non-negative integer.
    """
    value = variables.get(name, "")
    if value == "":
        return default
    if not value.isdigit():
        raise StateError(f"{source}: {name}={value!r} is not a non-negative integer")
    return int(value)
