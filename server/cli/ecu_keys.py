"""ECU key pairs made at provisioning, in the vehicle's folder, never in a git work tree.

``staffel fleet provision`` makes one Ed25519 key pair per ECU as ``OUT/ecu-keys/SERIAL.pem``
(the ECU's own PEM format, mode 0600, see ``client.uptane.manifest.EcuKey``) and registers
only the public key; the client config names each ECU's key file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from client.errors import StateError
from client.uptane.manifest import EcuKey

KEY_FOLDER: Final = "ecu-keys"


class KeyPlacementError(Exception):
    """ECU keys cannot be written where asked (e.g. inside a git work tree)."""


def ecu_key_path(out: Path, serial: str) -> Path:
    """Where the private key of ECU ``serial`` of the vehicle in ``out`` lives."""
    return out / KEY_FOLDER / f"{serial}.pem"


def ecu_public_keys(out: Path, serials: list[str]) -> dict[str, str]:
    """Makes (or reuses, on a repeated run) each ECU's key pair under ``out``.

    Returns:
        Each ECU's public key JSON by serial, as the fleet registry stores it.

    Raises:
        KeyPlacementError: ``out`` is inside a git work tree, or a key cannot be written
            or read.
    """
    resolved = out.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / ".git").exists():
            raise KeyPlacementError(
                f"{out} is inside the git work tree {folder}: ECU private keys never go into "
                f"git; give --out a folder outside it"
            )
    folder = out / KEY_FOLDER
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    public: dict[str, str] = {}
    for serial in serials:
        path = ecu_key_path(out, serial)
        try:
            key = EcuKey.load(path) if path.exists() else EcuKey.generate(path)
        except StateError as error:
            raise KeyPlacementError(str(error)) from error
        public[serial] = key.public_key_json()
    return public
