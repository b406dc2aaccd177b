"""The key set: one signing key per (repository, role), kept as PEM files in one directory.

Layout of a key set directory::

    DIR/keyset.json          public keys and thresholds (no secrets)
    DIR/image.root.key       PKCS#8 PEM private key, mode 0600, encrypted with a passphrase
    DIR/image.targets.key    ...one file per repository and role
    DIR/director.timestamp.key

``keyset.json`` is written last, so a directory without it holds no usable key set.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import (
    CryptoSigner,
    Key,
    Signer,
    SSlibKey,
)

from keys.errors import (
    KeySetExistsError,
    KeySetInvalidError,
    KeySetNotFoundError,
    KeyToolError,
    PassphraseError,
)

REPOSITORIES: Final = ("image", "director")
ROLES: Final = ("root", "targets", "snapshot", "timestamp")
ALGORITHMS: Final = ("ed25519", "ecdsa-p256")
INDEX_NAME: Final = "keyset.json"
PASSPHRASE_ENV: Final = "STAFFEL_KEY_PASSPHRASE"  # noqa: S105 (a variable name, no secret)
_INDEX_FORMAT: Final = 1


def key_file_name(repo: str, role: str) -> str:
    """The file name of the private key of ``role`` in repository ``repo``."""
    return f"{repo}.{role}.key"


def passphrase_from_env() -> bytes | None:
    """The passphrase in ``STAFFEL_KEY_PASSPHRASE``, or None when unset or empty."""
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


@dataclass(frozen=True)
class _KeyEntry:
    file: str
    public: SSlibKey


@dataclass(frozen=True)
class _RoleKeys:
    threshold: int
    keys: tuple[_KeyEntry, ...]


class KeySet:
    """The public index of a key set plus lazy access to its private keys.

    Private keys are read (and decrypted) only when a signer is first asked for,
    so a process that signs with a few roles never decrypts the others.
    """

    def __init__(
        self,
        directory: Path,
        roles: Mapping[str, _RoleKeys],
        *,
        encrypted: bool,
        passphrase: bytes | None,
    ) -> None:
        self.directory = directory
        self.encrypted = encrypted
        self._roles = dict(roles)
        self._passphrase = passphrase
        self._signers: dict[str, list[Signer]] = {}

    @classmethod
    def load(cls, directory: Path, passphrase: bytes | None = None) -> KeySet:
        """Reads the key set index in ``directory``.

        Args:
            directory: The key set directory made by ``init_keyset``.
            passphrase: The passphrase of encrypted keys; ignored for plain keys.

        Raises:
            KeySetNotFoundError: There is no ``keyset.json`` in ``directory``.
            KeySetInvalidError: ``keyset.json`` is malformed.
        """
        index_path = directory / INDEX_NAME
        try:
            raw = index_path.read_bytes()
        except FileNotFoundError:
            raise KeySetNotFoundError(
                f"no key set in {directory}: run `staffel keys init --dir {directory}`"
            ) from None
        try:
            index = json.loads(raw)
            index_format = index["format"]
            roles = {name: _parse_role(entry) for name, entry in index["roles"].items()}
            encrypted = bool(index["encrypted"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KeySetInvalidError(
                f"{index_path} is malformed ({error!r}): restore it from your backup"
            ) from error
        if index_format != _INDEX_FORMAT:
            raise KeySetInvalidError(
                f"{index_path} has format {index_format!r}, this Staffel reads format "
                f"{_INDEX_FORMAT}: upgrade Staffel"
            )
        return cls(directory, roles, encrypted=encrypted, passphrase=passphrase)

    def signers(self, repo: str, role: str) -> list[Signer]:
        """Signers for ``role`` of ``repo``, decrypting the private keys on first use.

        Raises:
            KeySetNotFoundError: A private key file of the role is missing.
            PassphraseError: The keys are encrypted and the passphrase is missing or wrong.
        """
        name = f"{repo}.{role}"
        cached = self._signers.get(name)
        if cached is None:
            cached = [self._load_signer(entry) for entry in self._role(repo, role).keys]
            self._signers[name] = cached
        return list(cached)

    def public_keys(self, repo: str, role: str) -> list[Key]:
        """The public keys that may sign ``role`` of ``repo``."""
        return [entry.public for entry in self._role(repo, role).keys]

    def threshold(self, repo: str, role: str) -> int:
        """How many of the role's keys must sign."""
        return self._role(repo, role).threshold

    def _role(self, repo: str, role: str) -> _RoleKeys:
        try:
            return self._roles[f"{repo}.{role}"]
        except KeyError:
            raise KeySetInvalidError(
                f"the key set in {self.directory} has no keys for {repo}.{role}: "
                f"create a complete key set with `staffel keys init`"
            ) from None

    def _load_signer(self, entry: _KeyEntry) -> Signer:
        path = self.directory / entry.file
        if self.encrypted and self._passphrase is None:
            raise PassphraseError(
                f"the keys in {self.directory} are encrypted: set {PASSPHRASE_ENV} "
                f"to their passphrase"
            )
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise KeySetNotFoundError(
                f"private key {path} is missing: restore it from your backup"
            ) from None
        try:
            private_key = serialization.load_pem_private_key(
                pem, password=self._passphrase if self.encrypted else None
            )
        except ValueError as error:
            if self.encrypted:
                raise PassphraseError(f"cannot decrypt {path}: check {PASSPHRASE_ENV}") from error
            raise KeySetInvalidError(f"{path} is not a PEM private key: {error}") from error
        try:
            return CryptoSigner(private_key, entry.public)
        except ValueError as error:
            raise KeySetInvalidError(
                f"{path} does not match its public key in {INDEX_NAME}: restore the key set "
                f"from your backup"
            ) from error


def init_keyset(
    directory: Path, *, algorithm: str = "ed25519", passphrase: bytes | None = None
) -> KeySet:
    """Creates a key set: one private key per repository and role plus ``keyset.json``.

    Args:
        directory: Where to write; created if missing. Must not hold a key set yet.
        algorithm: ``"ed25519"`` (default) or ``"ecdsa-p256"``.
        passphrase: When given, each private key is encrypted with it.

    Returns:
        The new key set, ready to sign.

    Raises:
        KeySetExistsError: ``directory`` already holds a key set or key files.
        KeyToolError: ``algorithm`` is not supported.
    """
    if algorithm not in ALGORITHMS:
        raise KeyToolError(
            f"unknown key algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}"
        )
    names = [INDEX_NAME] + [key_file_name(r, o) for r in REPOSITORIES for o in ROLES]
    existing = [name for name in names if (directory / name).exists()]
    if existing:
        raise KeySetExistsError(
            f"{directory} already holds keys ({', '.join(existing)}): keys are never "
            f"overwritten; choose another --dir or move the old keys away first"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    roles: dict[str, _RoleKeys] = {}
    for repo in REPOSITORIES:
        for role in ROLES:
            private_key = _generate(algorithm)
            file = key_file_name(repo, role)
            pem = private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
            write_atomically(directory / file, pem, mode=0o600)
            public = SSlibKey.from_crypto(private_key.public_key())
            roles[f"{repo}.{role}"] = _RoleKeys(threshold=1, keys=(_KeyEntry(file, public),))
    index = {
        "format": _INDEX_FORMAT,
        "algorithm": algorithm,
        "encrypted": bool(passphrase),
        "roles": {name: _role_to_dict(keys) for name, keys in roles.items()},
    }
    data = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
    write_atomically(directory / INDEX_NAME, data, mode=0o644)
    return KeySet(directory, roles, encrypted=bool(passphrase), passphrase=passphrase)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the whole new one.

    A temporary file in the same directory is written, fsynced and renamed over
    ``path``; the directory is fsynced so that the rename survives a power cut.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _generate(algorithm: str) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _role_to_dict(keys: _RoleKeys) -> dict[str, Any]:
    return {
        "threshold": keys.threshold,
        "keys": [
            {"keyid": entry.public.keyid, "file": entry.file, "public": entry.public.to_dict()}
            for entry in keys.keys
        ],
    }


def _parse_role(entry: dict[str, Any]) -> _RoleKeys:
    threshold = int(entry["threshold"])
    keys: list[_KeyEntry] = []
    for key in entry["keys"]:
        public = SSlibKey.from_dict(str(key["keyid"]), dict(key["public"]))
        file = str(key["file"])
        if Path(file).name != file:
            raise ValueError(f"key file {file!r} is not a plain file name")
        keys.append(_KeyEntry(file, public))
    if not keys or not 1 <= threshold <= len(keys):
        raise ValueError(f"threshold {threshold} does not fit {len(keys)} keys")
    return _RoleKeys(threshold=threshold, keys=tuple(keys))
