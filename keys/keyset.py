"""The key set: the signing keys of both repositories, indexed in one directory.

Layout of a key set directory::

    DIR/keyset.json          public keys, thresholds, key file names (no secrets)
    DIR/image.snapshot.key   PKCS#8 PEM private key, mode 0600, encrypted with a passphrase
    DIR/image.root.key       ...one file per online key

Keys marked ``offline`` in ``keyset.json`` (root, and optionally targets) have their
private key files elsewhere, on a machine that never runs the server; they sign through
the offline ceremony (``staffel keys sign``). ``keyset.json`` is written last, so a
directory without it holds no usable key set. A running server re-reads ``keyset.json``
when it changes, so a key added for a rotation is picked up without a restart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from keys.errors import KeySetInvalidError, KeySetNotFoundError, PassphraseError

REPOSITORIES: Final = ("image", "director")
ROLES: Final = ("root", "targets", "snapshot", "timestamp")
# Online role of the Image repository that signs the hashed bins (TAP 15 succinct roles).
BINS_ROLE: Final = "bins"
# Image repository roles delegated to suppliers are named ``supplier-NAME``.
SUPPLIER_PREFIX: Final = "supplier-"
ALGORITHMS: Final = ("ed25519", "ecdsa-p256")
INDEX_NAME: Final = "keyset.json"
PASSPHRASE_ENV: Final = "STAFFEL_KEY_PASSPHRASE"  # noqa: S105 (a variable name, no secret)
INDEX_FORMAT: Final = 1


def role_names() -> list[str]:
    """Every ``REPO.ROLE`` a complete key set holds keys for."""
    names = [f"{repo}.{role}" for repo in REPOSITORIES for role in ROLES]
    return [*names, f"image.{BINS_ROLE}"]


def key_file_name(repo: str, role: str, number: int = 1) -> str:
    """The file name of key ``number`` of ``role`` in ``repo`` (``image.root.key``)."""
    return f"{repo}.{role}.key" if number == 1 else f"{repo}.{role}.{number}.key"


def passphrase_from_env() -> bytes | None:
    """The passphrase in ``STAFFEL_KEY_PASSPHRASE``, or None when unset or empty."""
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


@dataclass(frozen=True)
class KeyEntry:
    """One key of a role: its public half and where its private half lives."""

    file: str
    public: SSlibKey
    offline: bool = False


@dataclass(frozen=True)
class RoleKeys:
    """The keys of one role and how many of them must sign.

    Attributes:
        threshold: How many of the keys must sign.
        keys: The role's keys.
        paths: For a supplier role, the glob patterns of the target names delegated to
            it (e.g. ``brake-ecu-*``); empty for every other role.
    """

    threshold: int
    keys: tuple[KeyEntry, ...]
    paths: tuple[str, ...] = ()


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKeyTypes:
    """Reads a PEM private key, decrypting it with ``passphrase`` when it is encrypted.

    Raises:
        KeySetNotFoundError: The file does not exist.
        PassphraseError: The key is encrypted and the passphrase is missing or wrong.
        KeySetInvalidError: The file is not a PEM private key.
    """
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise KeySetNotFoundError(
            f"private key {path} is missing: restore it from your backup"
        ) from None
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
    if encrypted and passphrase is None:
        raise PassphraseError(f"{path} is encrypted: set {PASSPHRASE_ENV} to its passphrase")
    try:
        return serialization.load_pem_private_key(pem, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as error:
        if encrypted:
            raise PassphraseError(f"cannot decrypt {path}: check {PASSPHRASE_ENV}") from error
        raise KeySetInvalidError(f"{path} is not a PEM private key: {error}") from error


class KeySet:
    """The public index of a key set plus lazy access to its online private keys.

    Private keys are read (and decrypted) only when a signer is first asked for,
    so a process that signs with a few roles never decrypts the others.
    """

    def __init__(
        self,
        directory: Path,
        roles: Mapping[str, RoleKeys],
        *,
        encrypted: bool,
        passphrase: bytes | None,
    ) -> None:
        self.directory = directory
        self.encrypted = encrypted
        self._roles = dict(roles)
        self._passphrase = passphrase
        self._signers: dict[str, Signer] = {}
        self._index_stamp = _stamp(directory / INDEX_NAME)

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
        roles, encrypted = read_index(directory)
        return cls(directory, roles, encrypted=encrypted, passphrase=passphrase)

    def roles(self) -> dict[str, RoleKeys]:
        """Every role's keys, by ``REPO.ROLE``, as the index says now."""
        self._reload_if_changed()
        return dict(self._roles)

    def signers(self, repo: str, role: str) -> list[Signer]:
        """Signers for the online keys of ``role`` of ``repo``, decrypting them on first use.

        Raises:
            KeySetNotFoundError: A private key file of an online key is missing.
            PassphraseError: The keys are encrypted and the passphrase is missing or wrong.
        """
        return [self._signer(entry) for entry in self._role(repo, role).keys if not entry.offline]

    def signer_for(self, keyid: str) -> Signer | None:
        """The signer of the online key ``keyid``, or None when the set holds no such key."""
        for role_keys in self.roles().values():
            for entry in role_keys.keys:
                if entry.public.keyid == keyid and not entry.offline:
                    return self._signer(entry)
        return None

    def public_keys(self, repo: str, role: str) -> list[Key]:
        """The public keys that may sign ``role`` of ``repo``."""
        return [entry.public for entry in self._role(repo, role).keys]

    def suppliers(self) -> dict[str, tuple[str, ...]]:
        """The Image repository's supplier roles (``supplier-NAME``) and their path patterns."""
        prefix = f"image.{SUPPLIER_PREFIX}"
        return {
            name.removeprefix("image."): keys.paths
            for name, keys in sorted(self.roles().items())
            if name.startswith(prefix)
        }

    def threshold(self, repo: str, role: str) -> int:
        """How many of the role's keys must sign."""
        return self._role(repo, role).threshold

    def _role(self, repo: str, role: str) -> RoleKeys:
        self._reload_if_changed()
        try:
            return self._roles[f"{repo}.{role}"]
        except KeyError:
            raise KeySetInvalidError(
                f"the key set in {self.directory} has no keys for {repo}.{role}: "
                f"create a complete key set with `staffel keys init`"
            ) from None

    def _reload_if_changed(self) -> None:
        stamp = _stamp(self.directory / INDEX_NAME)
        if stamp != self._index_stamp and stamp is not None:
            self._roles, self.encrypted = read_index(self.directory)
            self._index_stamp = stamp

    def _signer(self, entry: KeyEntry) -> Signer:
        cached = self._signers.get(entry.public.keyid)
        if cached is not None:
            return cached
        if self.encrypted and self._passphrase is None:
            raise PassphraseError(
                f"the keys in {self.directory} are encrypted: set {PASSPHRASE_ENV} "
                f"to their passphrase"
            )
        path = self.directory / entry.file
        private_key = load_private_key(path, self._passphrase)
        try:
            signer = CryptoSigner(private_key, entry.public)
        except ValueError as error:
            raise KeySetInvalidError(
                f"{path} does not match its public key in {INDEX_NAME}: restore the key set "
                f"from your backup"
            ) from error
        self._signers[entry.public.keyid] = signer
        return signer


def read_index(directory: Path) -> tuple[dict[str, RoleKeys], bool]:
    """The roles and the encryption flag of the key set index in ``directory``.

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
    if index_format != INDEX_FORMAT:
        raise KeySetInvalidError(
            f"{index_path} has format {index_format!r}, this Staffel reads format "
            f"{INDEX_FORMAT}: upgrade Staffel"
        )
    return roles, encrypted


def index_bytes(roles: Mapping[str, RoleKeys], *, algorithm: str, encrypted: bool) -> bytes:
    """``keyset.json`` for ``roles``."""
    index = {
        "format": INDEX_FORMAT,
        "algorithm": algorithm,
        "encrypted": encrypted,
        "roles": {name: _role_to_dict(keys) for name, keys in sorted(roles.items())},
    }
    return json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def _role_to_dict(keys: RoleKeys) -> dict[str, Any]:
    paths: dict[str, Any] = {"paths": list(keys.paths)} if keys.paths else {}
    return {
        **paths,
        "threshold": keys.threshold,
        "keys": [
            {
                "keyid": entry.public.keyid,
                "file": entry.file,
                "offline": entry.offline,
                "public": entry.public.to_dict(),
            }
            for entry in keys.keys
        ],
    }


def _parse_role(entry: dict[str, Any]) -> RoleKeys:
    threshold = int(entry["threshold"])
    keys: list[KeyEntry] = []
    for key in entry["keys"]:
        public = SSlibKey.from_dict(str(key["keyid"]), dict(key["public"]))
        file = str(key["file"])
        if Path(file).name != file:
            raise ValueError(f"key file {file!r} is not a plain file name")
        keys.append(KeyEntry(file, public, offline=bool(key.get("offline", False))))
    if not keys or not 1 <= threshold <= len(keys):
        raise ValueError(f"threshold {threshold} does not fit {len(keys)} keys")
    paths = tuple(str(path) for path in entry.get("paths", ()))
    return RoleKeys(threshold=threshold, keys=tuple(keys), paths=paths)


def init_keyset(
    directory: Path,
    *,
    algorithm: str = "ed25519",
    passphrase: bytes | None = None,
    root_keys: int = 1,
    root_threshold: int = 1,
    offline_dir: Path | None = None,
    offline_targets: bool = False,
) -> KeySet:
    """Creates a key set: keys for every repository and role plus ``keyset.json``.

    Args:
        directory: Where to write; created if missing. Must not hold a key set yet.
        algorithm: ``"ed25519"`` (default) or ``"ecdsa-p256"``.
        passphrase: When given, each private key is encrypted with it.
        root_keys: How many root keys each repository gets (e.g. 3).
        root_threshold: How many of them must sign a new root (e.g. 2).
        offline_dir: When given, the root private keys (and the Image repository's
            targets key with ``offline_targets``) are written there instead of
            ``directory``: carry that folder to an offline machine.
        offline_targets: Keep the Image repository's targets key offline too.

    Returns:
        The new key set, ready to sign with its online keys.

    Raises:
        KeySetExistsError: ``directory`` already holds a key set or key files.
        KeyToolError: ``algorithm`` or the root threshold is not valid.
    """
    from keys.manage import create_keyset  # noqa: PLC0415 - manage builds on this module

    return create_keyset(
        directory,
        algorithm=algorithm,
        passphrase=passphrase,
        root_keys=root_keys,
        root_threshold=root_threshold,
        offline_dir=offline_dir,
        offline_targets=offline_targets,
    )
