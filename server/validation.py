"""Checks on names and identifiers that every API shares."""

from __future__ import annotations

import re

from server.errors import InvalidArgumentError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# ISO 3779: 17 characters, digits and capitals without I, O and Q.
_VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_name(value: str, what: str) -> str:
    """Returns ``value`` if it is a valid name (``[A-Za-z0-9._-]``, 1-64, no leading dot)."""
    if not _NAME.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r} is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return value


def check_vin(value: str) -> str:
    """Returns ``value`` if it is a 17-character VIN (ISO 3779 alphabet)."""
    if not _VIN.fullmatch(value):
        raise InvalidArgumentError(
            f"VIN {value!r} is not valid: 17 characters of 0-9 and A-Z without I, O and Q"
        )
    return value


def check_sha256(value: str, what: str) -> str:
    """Returns ``value`` if it is empty or a lowercase hex SHA-256 digest."""
    if value and not _SHA256.fullmatch(value):
        raise InvalidArgumentError(f"{what} {value!r} is not a lowercase hex SHA-256 digest")
    return value
