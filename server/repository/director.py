"""The Uptane Director: per-vehicle targets, snapshot and timestamp under one shared root.

Each vehicle is a small TUF repository of its own. Its three roles carry one version
counter (``DirectorVehicleState.version``) that grows by one at each re-signing. When
a vehicle's assignment has not changed and its metadata is still fresh, the stored
bytes are returned without a database write, so that polling costs no signatures.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import bindparam, update
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from keys.keyset import KeySet
from server.errors import InvalidArgumentError, RepositoryError
from server.repository.models import (
    DirectorVehicleState,
    RepoMetadata,
    latest_root_row,
    lock_vehicle_row,
    metadata_row,
)
from server.repository.roots import add_root, first_root, trusted_root
from server.repository.signing import (
    as_utc,
    check_root_keys,
    expires_after,
    parse,
    sign,
    utc_now,
    validate_image_target,
)
from server.store import Database

REPO: Final = "director"
_STATES: Final = SQLModel.metadata.tables["repo_director_vehicle"]
_METADATA: Final = SQLModel.metadata.tables["repo_metadata"]
_READ_STATE: Final = sql_select(
    _STATES.c.version,
    _STATES.c.targets_digest,
    _STATES.c.timestamp,
    _STATES.c.snapshot,
    _STATES.c.targets,
    _STATES.c.expires,
).where(_STATES.c.vin == bindparam("vin"))
_NEWEST_ROOT: Final = (
    sql_select(_METADATA.c.version, _METADATA.c.data)
    .where(_METADATA.c.repo == REPO, _METADATA.c.filename.endswith(".root.json"))
    .order_by(_METADATA.c.version.desc())
    .limit(1)
)
_VIN: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_ECU_FIELD: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True)
class DirectorTarget:
    """One image the Director tells one ECU of a vehicle to install."""

    target_name: str
    sha256: str
    length: int
    ecu_serial: str
    hardware_id: str


@dataclass(frozen=True)
class SignedDirectorMetadata:
    """A vehicle's signed Director metadata; all three roles carry ``version``."""

    timestamp: bytes
    snapshot: bytes
    targets: bytes
    version: int


class Director:
    """Signs the Director repository's root and each vehicle's metadata."""

    def __init__(
        self,
        database: Database,
        keys: KeySet,
        *,
        clock: Callable[[], datetime] = utc_now,
        expiry: timedelta = timedelta(days=1),
        root_expiry: timedelta = timedelta(days=365),
    ) -> None:
        self._database = database
        self._keys = keys
        self._clock = clock
        self._expiry = expiry
        self._root_expiry = root_expiry
        # Stored metadata is reused while it stays valid for longer than this.
        self._renew_margin = expiry / 4
        self._root_cache: tuple[int, Root] | None = None  # (version, parsed root)

    def initialize(self) -> None:
        """Creates the Director root version 1 unless a root exists.

        Raises:
            RepositoryError: The root exists but the key set does not hold its keys,
                or the root key cannot be loaded.
        """
        with self._database.session() as session:
            existing = latest_root_row(session, REPO)
            if existing is not None:
                check_root_keys(parse(existing.data, Root), self._keys, REPO)
                return
        data = first_root(self._keys, REPO, expires=expires_after(self._clock(), self._root_expiry))
        try:
            with self._database.session() as session:
                session.add(RepoMetadata(repo=REPO, filename="1.root.json", version=1, data=data))
        except IntegrityError:
            # Another server process initialized the Director at the same moment.
            with self._database.session() as session:
                if latest_root_row(session, REPO) is None:
                    raise

    def root(self) -> bytes:
        """The newest Director root, as provisioned into vehicles.

        Raises:
            RepositoryError: The Director is not initialized.
        """
        with self._database.session() as session:
            row = latest_root_row(session, REPO)
        if row is None:
            raise RepositoryError(
                "the Director is not initialized: start the server once (it creates the "
                "Director root) or call Director.initialize()"
            )
        return row.data

    def import_root(self, data: bytes) -> int:
        """Adds a new Director root signed in the offline ceremony; returns its version.

        Every vehicle's metadata is re-signed under the new root at its next check-in.

        Raises:
            FailedPreconditionError: The root is not validly signed or not the next version.
        """
        with self._database.session() as session:
            new = add_root(session, REPO, data)
            session.exec(update(DirectorVehicleState).values(targets_digest=""))
        return new.signed.version

    def root_metadata(self, version: int) -> bytes | None:
        """Director root ``version`` (``N.root.json``), or None when there is none."""
        with self._database.session() as session:
            row = metadata_row(session, REPO, f"{version}.root.json")
            return None if row is None else row.data

    def sign_for_vehicle(
        self, vin: str, targets: Sequence[DirectorTarget]
    ) -> SignedDirectorMetadata:
        """The vehicle's Director metadata naming exactly ``targets``.

        Returns the stored metadata unchanged when the assignment is the same and it is
        not about to expire; otherwise signs the next version in one transaction.

        Args:
            vin: The vehicle.
            targets: One entry per ECU to update (empty: nothing to install).

        Raises:
            InvalidArgumentError: A field is malformed, an ECU appears twice, or one
                target name is given two different contents.
            RepositoryError: The Director keys cannot be loaded.
        """
        if _VIN.fullmatch(vin) is None:
            raise InvalidArgumentError(f"invalid VIN {vin!r}: use [A-Za-z0-9_-], 1 to 32 chars")
        assignment = _assignment(targets)
        digest = _digest(vin, targets)
        # Polling vehicles come here at every check-in: one prebuilt read, no ORM.
        with self._database.engine.connect() as connection:
            row = connection.execute(_READ_STATE, {"vin": vin}).first()
        if row is not None and row.targets_digest == digest and self._fresh(row.expires):
            return SignedDirectorMetadata(
                timestamp=row.timestamp,
                snapshot=row.snapshot,
                targets=row.targets,
                version=row.version,
            )
        try:
            return self._resign(vin, assignment, digest)
        except IntegrityError:
            # Two first check-ins of one vehicle raced to insert its row; the row
            # exists now, so the retry locks it.
            return self._resign(vin, assignment, digest)

    def _fresh(self, expires: datetime) -> bool:
        return as_utc(expires) - self._clock() > self._renew_margin

    def _reusable(self, state: DirectorVehicleState, digest: str) -> bool:
        return state.targets_digest == digest and self._fresh(state.expires)

    def _trusted_root(self, session: Session) -> Root:
        """The newest Director root, parsed once per version (a root never changes)."""
        row = session.connection().execute(_NEWEST_ROOT).first()
        if row is None:
            return trusted_root(session, REPO).signed  # raises: not initialized
        cached = self._root_cache
        if cached is None or cached[0] != row.version:
            cached = (row.version, Metadata[Root].from_bytes(row.data).signed)
            self._root_cache = cached
        return cached[1]

    def _resign(
        self, vin: str, assignment: dict[str, TargetFile], digest: str
    ) -> SignedDirectorMetadata:
        with self._database.session() as session:
            lock_vehicle_row(session, vin)
            state = session.get(DirectorVehicleState, vin)
            if state is not None and self._reusable(state, digest):
                return _signed(state)
            version = 1 if state is None else state.version + 1
            expires = expires_after(self._clock(), self._expiry)
            root = self._trusted_root(session)
            signed = self._sign(vin, assignment, version, expires, root)
            session.merge(
                DirectorVehicleState(
                    vin=vin,
                    version=version,
                    targets_digest=digest,
                    timestamp=signed.timestamp,
                    snapshot=signed.snapshot,
                    targets=signed.targets,
                    expires=expires,
                )
            )
            return signed

    def _sign(
        self,
        vin: str,
        assignment: dict[str, TargetFile],
        version: int,
        expires: datetime,
        root: Root,
    ) -> SignedDirectorMetadata:
        targets = Targets(
            version=version,
            expires=expires,
            targets=assignment,
            unrecognized_fields={"custom": {"vin": vin}},
        )
        snapshot = Snapshot(
            version=version, expires=expires, meta={"targets.json": MetaFile(version=version)}
        )
        timestamp = Timestamp(
            version=version, expires=expires, snapshot_meta=MetaFile(version=version)
        )
        return SignedDirectorMetadata(
            timestamp=sign(timestamp, self._keys, REPO, root),
            snapshot=sign(snapshot, self._keys, REPO, root),
            targets=sign(targets, self._keys, REPO, root),
            version=version,
        )


def _assignment(targets: Sequence[DirectorTarget]) -> dict[str, TargetFile]:
    """The Director targets of one vehicle: one entry per image, naming its ECUs."""
    files: dict[str, TargetFile] = {}
    seen_ecus: set[str] = set()
    for target in targets:
        validate_image_target(target.target_name, target.sha256, target.length)
        for label, value in (
            ("ECU serial", target.ecu_serial),
            ("hardware id", target.hardware_id),
        ):
            if _ECU_FIELD.fullmatch(value) is None:
                raise InvalidArgumentError(
                    f"invalid {label} {value!r} for {target.target_name}: use "
                    f"[A-Za-z0-9._:-], 1 to 64 chars"
                )
        if target.ecu_serial in seen_ecus:
            raise InvalidArgumentError(
                f"ECU {target.ecu_serial} is given two images: assign one image per ECU"
            )
        seen_ecus.add(target.ecu_serial)
        existing = files.get(target.target_name)
        if existing is None:
            existing = TargetFile(
                length=target.length,
                hashes={"sha256": target.sha256},
                path=target.target_name,
                unrecognized_fields={"custom": {"ecus": {}}},
            )
            files[target.target_name] = existing
        elif existing.length != target.length or existing.hashes["sha256"] != target.sha256:
            raise InvalidArgumentError(
                f"target {target.target_name} is given two different contents: one name "
                f"must always mean the same image"
            )
        existing.custom["ecus"][target.ecu_serial] = {"hardware_id": target.hardware_id}
    return files


def _digest(vin: str, targets: Sequence[DirectorTarget]) -> str:
    """SHA-256 of the assignment, independent of the order of ``targets``."""
    entries = sorted((asdict(target) for target in targets), key=lambda e: e["ecu_serial"])
    canonical = json.dumps({"vin": vin, "targets": entries}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _signed(state: DirectorVehicleState) -> SignedDirectorMetadata:
    return SignedDirectorMetadata(
        timestamp=state.timestamp,
        snapshot=state.snapshot,
        targets=state.targets,
        version=state.version,
    )
