"""The Uptane Image repository: a TUF repository of every image that may be installed.

Metadata is stored in ``RepoMetadata`` rows named as served (consistent snapshots):
``N.root.json``, ``N.targets.json``, ``N.bins.json``, ``N.bin-NNN.json``,
``N.snapshot.json`` and the latest ``timestamp.json``. Images live in hashed bins
(``server.repository.image_layout``), or in a supplier's role (``N.supplier-NAME.json``)
when the name matches that supplier's paths. Each change follows the TUF order: new bins (or
targets), then a snapshot naming them, then a timestamp naming the snapshot, all in one
transaction that holds the lock on ``timestamp.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from keys.ceremony import to_bytes
from keys.keyset import KeySet
from server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    RepositoryError,
)
from server.observability.signing import timed_signing
from server.repository.image_layout import (
    DEFAULT_BIN_BITS,
    ImageTarget,
    Signing,
    bins_delegation,
    bins_role,
    succinct_roles,
    supplier_for,
    supplier_roles,
    top_level_targets,
    with_suppliers,
)
from server.repository.models import (
    RepoMetadata,
    latest_root_row,
    lock_metadata_row,
    metadata_row,
)
from server.repository.roots import add_root, first_root, trusted_root
from server.repository.signing import (
    check_root_keys,
    expires_after,
    parse,
    serialize,
    sign,
    sign_with,
    utc_now,
    validate_image_target,
)
from server.store import Database

REPO: Final = "image"
TIMESTAMP_FILE: Final = "timestamp.json"
BINS_FILE: Final = "bins.json"
TARGETS_FILE: Final = "targets.json"


@dataclass(frozen=True)
class ImageExpiry:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass
class _Head:
    """The repository's current timestamp (with its row) and snapshot, and its root."""

    timestamp_row: RepoMetadata
    timestamp: Timestamp
    snapshot: Snapshot
    root: Root


class ImageRepository:
    """Signs and stores the Image repository's metadata."""

    def __init__(
        self,
        database: Database,
        keys: KeySet,
        *,
        clock: Callable[[], datetime] = utc_now,
        expiry: ImageExpiry | None = None,
        bin_bits: int = DEFAULT_BIN_BITS,
    ) -> None:
        self._database = database
        self._keys = keys
        self._clock = clock
        self._expiry = expiry or ImageExpiry()
        self._bin_bits = bin_bits

    def initialize(self) -> None:
        """Creates root, targets, bins, snapshot and timestamp version 1 unless they exist.

        Raises:
            RepositoryError: The repository exists but the key set does not hold its keys,
                or the keys cannot be loaded.
        """
        with self._database.session() as session:
            existing = latest_root_row(session, REPO)
            if existing is not None:
                check_root_keys(parse(existing.data, Root), self._keys, REPO)
                return
        now = self._clock()
        root_data = first_root(self._keys, REPO, expires=expires_after(now, self._expiry.root))
        root = parse(root_data, Root)
        expires = expires_after(now, self._expiry.targets)
        targets = top_level_targets(self._keys, version=1, expires=expires)
        bins = bins_role(self._keys, bit_length=self._bin_bits, version=1, expires=expires)
        snapshot = Snapshot(version=1, expires=expires_after(now, self._expiry.snapshot))
        timestamp = Timestamp(version=1, expires=expires_after(now, self._expiry.timestamp))
        try:
            with self._database.session() as session:
                session.add(
                    RepoMetadata(repo=REPO, filename="1.root.json", version=1, data=root_data)
                )
                self._store(session, TARGETS_FILE, targets, sign(targets, self._keys, REPO, root))
                self._store_delegated(session, BINS_FILE, bins, targets)
                snapshot.meta[BINS_FILE] = MetaFile(version=1)
                self._add_supplier_roles(session, snapshot, targets, expires)
                for name in succinct_roles(bins).get_roles():
                    empty = Targets(version=1, expires=expires)
                    self._store_delegated(session, f"{name}.json", empty, bins)
                    snapshot.meta[f"{name}.json"] = MetaFile(version=1)
                self._store(
                    session, "snapshot.json", snapshot, sign(snapshot, self._keys, REPO, root)
                )
                data = sign(timestamp, self._keys, REPO, root)
                session.add(RepoMetadata(repo=REPO, filename=TIMESTAMP_FILE, version=1, data=data))
        except IntegrityError:
            # Another server process initialized the repository at the same moment.
            with self._database.session() as session:
                if latest_root_row(session, REPO) is None:
                    raise

    def add_image(
        self, *, target_name: str, sha256: str, length: int, custom: Mapping[str, Any]
    ) -> Signing:
        """Publishes one image: see :meth:`add_images`.

        Returns:
            Who signed the metadata version that added it, and when.
        """
        image = ImageTarget(target_name=target_name, sha256=sha256, length=length, custom=custom)
        return self.add_images([image])[target_name]

    def add_images(self, images: Sequence[ImageTarget]) -> dict[str, Signing]:
        """Publishes images: new bins, snapshot and timestamp, in one transaction.

        Returns:
            For each target name, who signed the metadata version that added it, and when.

        Raises:
            InvalidArgumentError: A field is malformed, ``custom`` is not JSON, or a name
                appears twice.
            AlreadyExistsError: A target name is already published.
            RepositoryError: The repository is not initialized or cannot be signed.
        """
        checked = [_checked(image) for image in images]
        names = [image.target_name for image in checked]
        if len(set(names)) != len(names):
            raise InvalidArgumentError("each image may appear once in a publication")
        with self._database.session() as session:
            head = self._locked_head(session)
            now = self._clock()
            targets = self._sync_suppliers(session, head, now)
            bins = self._load(session, head.snapshot, BINS_FILE)
            roles = succinct_roles(bins)
            by_bin: dict[str, list[ImageTarget]] = {}
            for image in checked:
                role = supplier_for(targets, image.target_name)
                role = role or roles.get_role_for_target(image.target_name)
                by_bin.setdefault(role, []).append(image)
            signings: dict[str, Signing] = {}
            for bin_name, members in sorted(by_bin.items()):
                filename = f"{bin_name}.json"
                delegator = targets if supplier_for(targets, members[0].target_name) else bins
                bin_targets = self._load(session, head.snapshot, filename)
                for image in members:
                    if image.target_name in bin_targets.targets:
                        raise AlreadyExistsError(
                            f"image {image.target_name} is already published: give the new "
                            f"image a new version in its name"
                        )
                    bin_targets.targets[image.target_name] = image.target_file()
                bin_targets.version += 1
                bin_targets.expires = expires_after(now, self._expiry.targets)
                keyids = self._store_delegated(session, filename, bin_targets, delegator)
                head.snapshot.meta[filename] = MetaFile(version=bin_targets.version)
                signing = Signing(bin_name, bin_targets.version, keyids, now.replace(microsecond=0))
                signings.update((image.target_name, signing) for image in members)
            self._publish_snapshot(session, head, now)
        return signings

    def refresh_expiring(self, within: timedelta) -> bool:
        """Re-signs snapshot and timestamp (as new versions) that expire within ``within``.

        Returns:
            True when something was re-signed.
        """
        with self._database.session() as session:
            head = self._head(session)
        if not self._expiring(head, within):
            return False
        with self._database.session() as session:
            head = self._locked_head(session)
            if not self._expiring(head, within):
                return False
            now = self._clock()
            if head.snapshot.expires - now <= within:
                self._publish_snapshot(session, head, now)
            else:
                self._publish_timestamp(session, head, now)
        return True

    def metadata(self, filename: str) -> bytes | None:
        """The stored metadata file served as ``filename``, or None."""
        with self._database.session() as session:
            row = metadata_row(session, REPO, filename)
            return None if row is None else row.data

    def root(self) -> bytes:
        """The newest root metadata.

        Raises:
            RepositoryError: The repository is not initialized.
        """
        with self._database.session() as session:
            row = latest_root_row(session, REPO)
        if row is None:
            raise _not_initialized()
        return row.data

    def export_next_targets(self) -> bytes:
        """The unsigned next top-level targets (delegating to the key set's bins keys)."""
        with self._database.session() as session:
            head = self._head(session)
            current = self._load(session, head.snapshot, TARGETS_FILE)
        next_targets = top_level_targets(
            self._keys,
            version=current.version + 1,
            expires=expires_after(self._clock(), self._expiry.targets),
        )
        return to_bytes(Metadata(next_targets))

    def import_metadata(self, *, root: bytes | None = None, targets: bytes | None = None) -> None:
        """Adds a new root and/or top-level targets signed in the offline ceremony.

        The snapshot and timestamp are re-signed under the (new) root right away, with
        the online keys it trusts; when the new targets rotate the bins keys, the bins
        are re-signed with the new ones.

        Raises:
            FailedPreconditionError: The metadata is not validly signed, not the next
                version, or leaves the targets unsigned under the new root.
            RepositoryError: The online keys of the new root are not in the key set.
        """
        with self._database.session() as session:
            head = self._locked_head(session)
            if root is not None:
                head.root = add_root(session, REPO, root).signed
            current = self._load(session, head.snapshot, TARGETS_FILE)
            if targets is not None:
                current = self._import_targets(session, head, current, targets)
            else:
                self._check_targets_trusted(session, head)
            self._add_supplier_roles(session, head.snapshot, current, current.expires)
            old_bins = self._load(session, head.snapshot, BINS_FILE)
            if set(bins_delegation(current).keyids) != set(_signature_keyids(session, old_bins)):
                self._resign_bins(session, head, current)
            self._publish_snapshot(session, head, self._clock())

    def _import_targets(
        self, session: Session, head: _Head, current: Targets, data: bytes
    ) -> Targets:
        try:
            new = Metadata[Targets].from_bytes(data)
            head.root.verify_delegate(Targets.type, new.signed_bytes, new.signatures)
        except (ValueError, DeserializationError, tuf_errors.RepositoryError) as error:
            raise FailedPreconditionError(f"new Image targets refused: {error}") from error
        if not isinstance(new.signed, Targets):
            raise FailedPreconditionError(
                f"new Image targets refused: the file holds {new.signed.type} metadata"
            )
        if new.signed.version <= current.version:
            raise FailedPreconditionError(
                f"new Image targets refused: version {new.signed.version} is not above the "
                f"current {current.version}; export fresh targets and sign those"
            )
        bins_delegation(new.signed)
        self._store(session, TARGETS_FILE, new.signed, data)
        head.snapshot.meta[TARGETS_FILE] = MetaFile(version=new.signed.version)
        return new.signed

    def _check_targets_trusted(self, session: Session, head: _Head) -> None:
        filename = f"{head.snapshot.meta[TARGETS_FILE].version}.targets.json"
        stored = Metadata[Targets].from_bytes(_required(session, filename).data)
        if _verifies(head.root, stored):
            return
        targets = stored.signed
        targets.version += 1
        try:
            data = sign(targets, self._keys, REPO, head.root)
        except RepositoryError as error:
            raise FailedPreconditionError(
                f"the new root trusts other targets keys and {error}: import the new root "
                f"together with targets signed by the new key (`--targets`)"
            ) from error
        self._store(session, TARGETS_FILE, targets, data)
        head.snapshot.meta[TARGETS_FILE] = MetaFile(version=targets.version)

    def _sync_suppliers(self, session: Session, head: _Head, now: datetime) -> Targets:
        """The top-level targets, re-signed first when the key set's suppliers changed.

        Only when the server holds the targets key; with an offline targets key the
        suppliers reach the targets through the ceremony (``staffel keys targets``).

        Returns:
            The top-level targets now in force.
        """
        current = self._load(session, head.snapshot, TARGETS_FILE)
        wanted = with_suppliers(current, self._keys)
        if wanted is None:
            return current
        wanted.expires = expires_after(now, self._expiry.targets)
        try:
            data = sign(wanted, self._keys, REPO, head.root)
        except RepositoryError:
            return current
        self._store(session, TARGETS_FILE, wanted, data)
        head.snapshot.meta[TARGETS_FILE] = MetaFile(version=wanted.version)
        self._add_supplier_roles(session, head.snapshot, wanted, wanted.expires)
        return wanted

    def _add_supplier_roles(
        self, session: Session, snapshot: Snapshot, targets: Targets, expires: datetime
    ) -> None:
        """Stores an empty first version of each supplier role the snapshot lacks."""
        for role in supplier_roles(targets):
            filename = f"{role.name}.json"
            if filename in snapshot.meta:
                continue
            version = 1
            while metadata_row(session, REPO, f"{version}.{filename}") is not None:
                version += 1  # the supplier was delegated before, then dropped
            empty = Targets(version=version, expires=expires)
            self._store_delegated(session, filename, empty, targets)
            snapshot.meta[filename] = MetaFile(version=version)

    def _resign_bins(self, session: Session, head: _Head, targets: Targets) -> None:
        """Re-signs the bins role and every bin with the bins keys ``targets`` names."""
        now = self._clock()
        old = self._load(session, head.snapshot, BINS_FILE)
        bins = bins_role(
            self._keys,
            bit_length=succinct_roles(old).bit_length,
            version=old.version + 1,
            expires=expires_after(now, self._expiry.targets),
        )
        self._store_delegated(session, BINS_FILE, bins, targets)
        head.snapshot.meta[BINS_FILE] = MetaFile(version=bins.version)
        for name in succinct_roles(bins).get_roles():
            bin_targets = self._load(session, head.snapshot, f"{name}.json")
            bin_targets.version += 1
            self._store_delegated(session, f"{name}.json", bin_targets, bins)
            head.snapshot.meta[f"{name}.json"] = MetaFile(version=bin_targets.version)

    def _expiring(self, head: _Head, within: timedelta) -> bool:
        now = self._clock()
        return min(head.snapshot.expires, head.timestamp.expires) - now <= within

    def _publish_snapshot(self, session: Session, head: _Head, now: datetime) -> None:
        snapshot = head.snapshot
        snapshot.version += 1
        snapshot.expires = expires_after(now, self._expiry.snapshot)
        self._store(session, "snapshot.json", snapshot, sign(snapshot, self._keys, REPO, head.root))
        head.timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        self._publish_timestamp(session, head, now)

    def _publish_timestamp(self, session: Session, head: _Head, now: datetime) -> None:
        timestamp = head.timestamp
        timestamp.version += 1
        timestamp.expires = expires_after(now, self._expiry.timestamp)
        row = head.timestamp_row
        row.version = timestamp.version
        row.data = sign(timestamp, self._keys, REPO, head.root)
        session.add(row)

    def _store(self, session: Session, filename: str, signed: Any, data: bytes) -> None:
        """Adds signed metadata as ``N.FILENAME``."""
        name = f"{signed.version}.{filename}"
        session.add(RepoMetadata(repo=REPO, filename=name, version=signed.version, data=data))

    def _store_delegated(
        self, session: Session, filename: str, signed: Targets, delegator: Targets
    ) -> tuple[str, ...]:
        """Signs a delegated role with the online keys ``delegator`` trusts and stores it.

        Returns:
            The key ids that signed it.
        """
        role_name = filename.removesuffix(".json")
        role = delegator.get_delegated_role(role_name)
        # Bins are targets metadata: their signing counts as the repository's targets.
        with timed_signing(REPO, signed.type):
            data = sign_with(
                signed,
                self._keys,
                keyids=role.keyids,
                threshold=role.threshold,
                label=f"image {role_name}",
            )
        self._store(session, filename, signed, data)
        return tuple(sorted(Metadata[Targets].from_bytes(data).signatures))

    def _load(self, session: Session, snapshot: Snapshot, filename: str) -> Targets:
        meta = snapshot.meta.get(filename)
        if meta is None:
            raise RepositoryError(
                f"the Image repository's snapshot names no {filename}: the store is corrupt; "
                f"restore the database from a backup"
            )
        return parse(_required(session, f"{meta.version}.{filename}").data, Targets)

    def _locked_head(self, session: Session) -> _Head:
        if not lock_metadata_row(session, REPO, TIMESTAMP_FILE):
            raise _not_initialized()
        return self._head(session)

    def _head(self, session: Session) -> _Head:
        timestamp_row = metadata_row(session, REPO, TIMESTAMP_FILE)
        if timestamp_row is None:
            raise _not_initialized()
        timestamp = parse(timestamp_row.data, Timestamp)
        snapshot_row = _required(session, f"{timestamp.snapshot_meta.version}.snapshot.json")
        snapshot = parse(snapshot_row.data, Snapshot)
        root = trusted_root(session, REPO).signed
        return _Head(timestamp_row, timestamp, snapshot, root)


def _checked(image: ImageTarget) -> ImageTarget:
    validate_image_target(image.target_name, image.sha256, image.length)
    try:
        custom = json.loads(json.dumps(dict(image.custom)))
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(
            f"the custom fields of {image.target_name} are not JSON: {error}"
        ) from error
    return ImageTarget(image.target_name, image.sha256, image.length, custom)


def _verifies(root: Root, metadata: Metadata[Targets]) -> bool:
    try:
        root.verify_delegate(Targets.type, metadata.signed_bytes, metadata.signatures)
    except tuf_errors.UnsignedMetadataError:
        return False
    return True


def _signature_keyids(session: Session, signed: Targets) -> list[str]:
    """The key ids that signed the stored ``bins.json`` of this version."""
    row = _required(session, f"{signed.version}.{BINS_FILE}")
    return list(Metadata[Targets].from_bytes(row.data).signatures)


def _required(session: Session, filename: str) -> RepoMetadata:
    row = metadata_row(session, REPO, filename)
    if row is None:
        raise RepositoryError(
            f"the Image repository's {filename} is missing from the store: restore the "
            f"database from a backup"
        )
    return row


def _not_initialized() -> RepositoryError:
    return RepositoryError(
        "the Image repository is not initialized: start the server once (it creates the "
        "repository) or call ImageRepository.initialize()"
    )


__all__ = ["ImageExpiry", "ImageRepository", "ImageTarget", "Signing", "serialize"]
