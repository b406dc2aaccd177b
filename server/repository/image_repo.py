"""The Uptane Image repository: a TUF repository of every image that may be installed.

Metadata is stored in ``RepoMetadata`` rows named as served (consistent snapshots):
``N.root.json``, ``N.targets.json``, ``N.snapshot.json`` and the latest ``timestamp.json``.
Each change follows the TUF order: new targets, then a snapshot naming it, then a
timestamp naming the snapshot, all in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from tuf.api.metadata import (
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from keys.keyset import KeySet
from server.errors import AlreadyExistsError, InvalidArgumentError, RepositoryError
from server.repository.models import (
    RepoMetadata,
    latest_root_row,
    lock_metadata_row,
    metadata_row,
)
from server.repository.signing import (
    SignedT,
    check_root_keys,
    expires_after,
    new_root,
    parse,
    sign,
    utc_now,
    validate_image_target,
)
from server.store import Database

REPO: Final = "image"
TIMESTAMP_FILE: Final = "timestamp.json"


@dataclass(frozen=True)
class ImageExpiry:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass
class _Head:
    """The repository's current timestamp (with its row), snapshot and targets."""

    timestamp_row: RepoMetadata
    timestamp: Timestamp
    snapshot: Snapshot
    targets: Targets


class ImageRepository:
    """Signs and stores the Image repository's metadata."""

    def __init__(
        self,
        database: Database,
        keys: KeySet,
        *,
        clock: Callable[[], datetime] = utc_now,
        expiry: ImageExpiry | None = None,
    ) -> None:
        self._database = database
        self._keys = keys
        self._clock = clock
        self._expiry = expiry or ImageExpiry()

    def initialize(self) -> None:
        """Creates root, targets, snapshot and timestamp version 1 unless they exist.

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
        root = new_root(self._keys, REPO, expires=expires_after(now, self._expiry.root))
        targets = Targets(version=1, expires=expires_after(now, self._expiry.targets))
        snapshot = Snapshot(version=1, expires=expires_after(now, self._expiry.snapshot))
        timestamp = Timestamp(version=1, expires=expires_after(now, self._expiry.timestamp))
        try:
            with self._database.session() as session:
                self._store(session, root)
                self._store(session, targets)
                self._store(session, snapshot)
                data = sign(timestamp, self._keys, REPO)
                session.add(RepoMetadata(repo=REPO, filename=TIMESTAMP_FILE, version=1, data=data))
        except IntegrityError:
            # Another server process initialized the repository at the same moment.
            with self._database.session() as session:
                if latest_root_row(session, REPO) is None:
                    raise

    def add_image(
        self, *, target_name: str, sha256: str, length: int, custom: Mapping[str, Any]
    ) -> None:
        """Publishes one image: a new targets, snapshot and timestamp, in one transaction.

        Args:
            target_name: ``NAME-VERSION``, unique in the repository.
            sha256: The image's SHA-256, lowercase hex.
            length: The image's size in bytes.
            custom: Uptane fields (name, version, hardware_ids, release_counter).

        Raises:
            InvalidArgumentError: A field is malformed or ``custom`` is not JSON.
            AlreadyExistsError: ``target_name`` is already published.
            RepositoryError: The repository is not initialized or cannot be signed.
        """
        validate_image_target(target_name, sha256, length)
        try:
            custom_fields = json.loads(json.dumps(dict(custom)))
        except (TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"the custom fields of {target_name} are not JSON: {error}"
            ) from error
        with self._database.session() as session:
            head = self._locked_head(session)
            if target_name in head.targets.targets:
                raise AlreadyExistsError(
                    f"image {target_name} is already published: give the new image a new "
                    f"version in its name"
                )
            now = self._clock()
            targets = head.targets
            targets.targets[target_name] = TargetFile(
                length=length,
                hashes={"sha256": sha256},
                path=target_name,
                unrecognized_fields={"custom": custom_fields},
            )
            targets.version += 1
            targets.expires = expires_after(now, self._expiry.targets)
            self._store(session, targets)
            head.snapshot.meta["targets.json"] = MetaFile(version=targets.version)
            self._publish_snapshot(session, head, now)

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

    def _expiring(self, head: _Head, within: timedelta) -> bool:
        now = self._clock()
        return min(head.snapshot.expires, head.timestamp.expires) - now <= within

    def _publish_snapshot(self, session: Session, head: _Head, now: datetime) -> None:
        snapshot = head.snapshot
        snapshot.version += 1
        snapshot.expires = expires_after(now, self._expiry.snapshot)
        self._store(session, snapshot)
        head.timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        self._publish_timestamp(session, head, now)

    def _publish_timestamp(self, session: Session, head: _Head, now: datetime) -> None:
        timestamp = head.timestamp
        timestamp.version += 1
        timestamp.expires = expires_after(now, self._expiry.timestamp)
        row = head.timestamp_row
        row.version = timestamp.version
        row.data = sign(timestamp, self._keys, REPO)
        session.add(row)

    def _store(self, session: Session, signed: SignedT) -> None:
        """Signs a versioned role and adds it as ``N.ROLE.json``."""
        data = sign(signed, self._keys, REPO)
        filename = f"{signed.version}.{signed.type}.json"
        session.add(RepoMetadata(repo=REPO, filename=filename, version=signed.version, data=data))

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
        targets_row = _required(session, f"{snapshot.meta['targets.json'].version}.targets.json")
        targets = parse(targets_row.data, Targets)
        return _Head(timestamp_row, timestamp, snapshot, targets)


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
