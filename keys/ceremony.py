"""The offline key ceremony, on metadata files: build the next root, sign it, check it.

The flow (see the README's "Key ceremony")::

    online machine                      offline machine
    staffel keys root export  ──file──▶ staffel keys sign --key image.root.key FILE
                                        staffel keys sign --key image.root.2.key FILE
    staffel keys root import  ◀──file──

A new root must carry a threshold of signatures of the old root's keys and of its own
keys: that is what lets vehicles provisioned with an old root walk the chain.
Nothing here touches the network or a database.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from keys.errors import CeremonyError
from keys.keyset import ROLES, KeySet, load_private_key

ROOT_LIFETIME = timedelta(days=365)
_SERIALIZER = JSONSerializer(compact=False)


def build_root(
    keys: KeySet, repo: str, *, version: int = 1, expires: datetime | None = None
) -> Root:
    """A root of ``repo`` that trusts the key set's keys and thresholds for every role."""
    if expires is None:
        expires = datetime.now(UTC) + ROOT_LIFETIME
    root = Root(version=version, expires=expires.replace(microsecond=0), consistent_snapshot=True)
    for role in ROLES:
        for key in keys.public_keys(repo, role):
            root.add_key(key, role)
        root.roles[role].threshold = keys.threshold(repo, role)
    return root


def next_root(current: Root, keys: KeySet, repo: str, *, expires: datetime | None = None) -> Root:
    """The unsigned successor of ``current``: the key set's keys, version + 1."""
    return build_root(keys, repo, version=current.version + 1, expires=expires)


def to_bytes(metadata: Metadata[Root] | Metadata[Targets]) -> bytes:
    """Metadata as written for the ceremony (indented JSON)."""
    return bytes(metadata.to_bytes(_SERIALIZER))


def read_metadata(path: Path) -> Metadata[Root] | Metadata[Targets]:
    """Reads root or targets metadata from a ceremony file.

    Raises:
        CeremonyError: The file is missing or not root or targets metadata.
    """
    try:
        metadata = Metadata[Root].from_bytes(path.read_bytes())
    except (OSError, DeserializationError) as error:
        raise CeremonyError(f"cannot read metadata from {path}: {error}") from error
    if not isinstance(metadata.signed, Root | Targets):
        raise CeremonyError(
            f"{path} holds {metadata.signed.type} metadata: the ceremony signs root and targets"
        )
    return metadata


def signer_from_key_file(path: Path, passphrase: bytes | None) -> Signer:
    """A signer for a PEM private key file (decrypted with ``passphrase`` if encrypted).

    Raises:
        KeyToolError: The key cannot be read or decrypted.
    """
    return CryptoSigner(load_private_key(path, passphrase))


def sign_file(path: Path, signer: Signer) -> str:
    """Adds ``signer``'s signature to the metadata in ``path``; returns the key id.

    Raises:
        CeremonyError: The file cannot be read or written.
    """
    metadata = read_metadata(path)
    metadata.sign(signer, append=True)
    try:
        path.write_bytes(to_bytes(metadata))
    except OSError as error:
        raise CeremonyError(f"cannot write {path}: {error}") from error
    return signer.public_key.keyid


def check_root_update(trusted: Metadata[Root], new: Metadata[Root]) -> None:
    """Fails unless ``new`` may follow ``trusted`` in the root chain.

    Raises:
        CeremonyError: The version is not the next one, or a threshold of the old or of
            the new root's keys has not signed; the message says whose signatures lack.
    """
    if new.signed.version != trusted.signed.version + 1:
        raise CeremonyError(
            f"the new root has version {new.signed.version}, the trusted root "
            f"{trusted.signed.version}: export a fresh root and sign that"
        )
    for label, signer_root in (("current", trusted), ("new", new)):
        try:
            signer_root.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
        except UnsignedMetadataError as error:
            needed = signer_root.signed.roles[Root.type].threshold
            raise CeremonyError(
                f"the new root needs {needed} signatures of the {label} root keys: {error}; "
                f"sign it with more of those keys (`staffel keys sign`)"
            ) from error
