"""TUF helpers shared by the Image repository and the Director: roots, signing, names."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from tuf.api.metadata import (
    TOP_LEVEL_ROLE_NAMES,
    Metadata,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from keys.errors import KeyToolError
from keys.keyset import ROLES, KeySet
from server.errors import InvalidArgumentError, RepositoryError
from server.observability.signing import timed_signing
from server.repository.blobs import is_sha256_hex

_TARGET_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_SERIALIZER: Final = JSONSerializer(compact=True)

SignedT = TypeVar("SignedT", Root, Targets, Snapshot, Timestamp)


def utc_now() -> datetime:
    """The default clock: now, in UTC."""
    return datetime.now(UTC)


def expires_after(now: datetime, lifetime: timedelta) -> datetime:
    """``now + lifetime`` as TUF wants it: UTC, whole seconds."""
    return (now + lifetime).astimezone(UTC).replace(microsecond=0)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite returns naive datetimes)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def validate_image_target(target_name: str, sha256: str, length: int) -> None:
    """Checks the fields every image target carries.

    Raises:
        InvalidArgumentError: A field can never be valid.
    """
    if _TARGET_NAME.fullmatch(target_name) is None:
        raise InvalidArgumentError(
            f"invalid target name {target_name!r}: use NAME-VERSION made of "
            f"[A-Za-z0-9._-], at most 128 characters, not starting with a dot"
        )
    if not is_sha256_hex(sha256):
        raise InvalidArgumentError(
            f"invalid SHA-256 {sha256!r} for {target_name}: give 64 lowercase hex digits"
        )
    if length < 0:
        raise InvalidArgumentError(f"invalid length {length} for {target_name}: must be >= 0")


def new_root(keys: KeySet, repo: str, *, expires: datetime) -> Root:
    """Root version 1 of ``repo`` trusting the key set's keys for every top-level role."""
    root = Root(version=1, expires=expires, consistent_snapshot=True)
    for role in ROLES:
        for key in keys.public_keys(repo, role):
            root.add_key(key, role)
        root.roles[role].threshold = keys.threshold(repo, role)
    return root


def check_root_keys(root: Root, keys: KeySet, repo: str) -> None:
    """Fails when the key set does not hold the keys that ``root`` trusts.

    Raises:
        RepositoryError: The key set belongs to another repository.
    """
    for role in TOP_LEVEL_ROLE_NAMES:
        trusted = set(root.roles[role].keyids)
        held = {key.keyid for key in keys.public_keys(repo, role)}
        if not held <= trusted or len(held) < root.roles[role].threshold:
            raise RepositoryError(
                f"the {repo} repository's root does not trust the {repo}.{role} keys in "
                f"{keys.directory}: start the server with the key set the repository "
                f"was created with"
            )


def sign(signed: SignedT, keys: KeySet, repo: str) -> bytes:
    """Signs ``signed`` with every key of its role in ``repo`` and serializes it.

    Raises:
        RepositoryError: The role's private keys cannot be loaded.
    """
    metadata = Metadata(signed)
    try:
        signers = keys.signers(repo, signed.type)
    except KeyToolError as error:
        raise RepositoryError(f"cannot sign {repo} {signed.type}: {error}") from error
    with timed_signing(repo, signed.type):
        for signer in signers:
            metadata.sign(signer, append=True)
    return metadata.to_bytes(_SERIALIZER)


def parse(data: bytes, signed_type: type[SignedT]) -> SignedT:
    """The signed part of stored metadata, checked to be of ``signed_type``.

    Raises:
        RepositoryError: The stored bytes are not metadata of that type.
    """
    signed = Metadata.from_bytes(data).signed
    if not isinstance(signed, signed_type):
        raise RepositoryError(
            f"stored metadata is {signed.type}, expected {signed_type.type}: the store is "
            f"corrupt; restore it from a backup"
        )
    return signed
