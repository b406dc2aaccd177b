"""TUF helpers shared by the Image repository and the Director: roots, signing, names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from keys.ceremony import build_root
from keys.errors import KeyToolError
from keys.keyset import KeySet
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
    return build_root(keys, repo, version=1, expires=expires)


def check_root_keys(root: Root, keys: KeySet, repo: str) -> None:
    """Fails when the key set holds none of the online keys that ``root`` trusts.

    Root and targets keys may be offline or mid-rotation, so only the online roles
    (snapshot and timestamp) must share a key with the key set.

    Raises:
        RepositoryError: The key set belongs to another repository.
    """
    for role in ("snapshot", "timestamp"):
        trusted = set(root.roles[role].keyids)
        held = {key.keyid for key in keys.public_keys(repo, role)}
        if not held & trusted:
            raise RepositoryError(
                f"the {repo} repository's root does not trust the {repo}.{role} keys in "
                f"{keys.directory}: start the server with the key set the repository "
                f"was created with"
            )


def sign_with(
    signed: Root | Targets | Snapshot | Timestamp,
    keys: KeySet,
    *,
    keyids: Iterable[str],
    threshold: int,
    label: str,
) -> bytes:
    """Signs ``signed`` with every online key of ``keyids`` in the key set; serializes it.

    Args:
        signed: The metadata to sign.
        keys: The key set holding the online private keys.
        keyids: The keys the delegating role trusts for it.
        threshold: How many of them must sign.
        label: Names the role in error messages, e.g. ``image snapshot``.

    Raises:
        RepositoryError: Fewer than ``threshold`` of the trusted keys are online, or a
            private key cannot be loaded.
    """
    metadata: Metadata[Any] = Metadata(signed)
    for signer in _online_signers(keys, keyids, threshold, label):
        metadata.sign(signer, append=True)
    return metadata.to_bytes(_SERIALIZER)


def _online_signers(
    keys: KeySet, keyids: Iterable[str], threshold: int, label: str
) -> list[Signer]:
    try:
        signers = [s for keyid in keyids if (s := keys.signer_for(keyid)) is not None]
    except KeyToolError as error:
        raise RepositoryError(f"cannot sign {label}: {error}") from error
    if len(signers) < threshold:
        raise RepositoryError(
            f"cannot sign {label}: it needs {threshold} signatures and the key set in "
            f"{keys.directory} holds {len(signers)} of its trusted keys online; sign it in "
            f"the offline ceremony (`staffel keys targets export`) or add the keys"
        )
    return signers


def sign_payload(signed: dict[str, Any], keys: KeySet, repo: str, root: Root) -> bytes:
    """Signs the dict form of a top-level role (``Signed.to_dict()``) and serializes it.

    The bytes are those ``sign`` makes of the same role: the signatures cover its
    canonical JSON and the file is compact JSON with sorted keys. For callers that sign
    often and can build the dict more cheaply than python-tuf's objects.

    Raises:
        RepositoryError: Too few of the role's keys are online or loadable.
    """
    role = str(signed["_type"])
    trusted = root.roles[role]
    label = f"{repo} {role}"
    with timed_signing(repo, role):
        signers = _online_signers(keys, trusted.keyids, trusted.threshold, label)
        canonical = encode_canonical(signed)
        if canonical is None:  # only with an output function, which is not given
            raise RepositoryError(f"cannot sign {label}: canonical JSON failed")
        payload = canonical.encode()
        signatures = [signer.sign(payload).to_dict() for signer in signers]
        envelope = {"signatures": signatures, "signed": signed}
        return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


def sign(signed: SignedT, keys: KeySet, repo: str, root: Root | None = None) -> bytes:
    """Signs a top-level role with the keys ``root`` trusts for it and serializes it.

    Without ``root`` (when signing root version 1 itself) the key set's keys of the
    role are used.

    Raises:
        RepositoryError: Too few of the role's keys are online or loadable.
    """
    if root is None:
        keyids = [key.keyid for key in keys.public_keys(repo, signed.type)]
        threshold = keys.threshold(repo, signed.type)
    else:
        keyids = list(root.roles[signed.type].keyids)
        threshold = root.roles[signed.type].threshold
    with timed_signing(repo, signed.type):
        return sign_with(
            signed, keys, keyids=keyids, threshold=threshold, label=f"{repo} {signed.type}"
        )


def serialize(metadata: Metadata[Any]) -> bytes:
    """Metadata as stored and served (compact JSON)."""
    return bytes(metadata.to_bytes(_SERIALIZER))


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
