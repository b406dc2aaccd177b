"""The Uptane Director: per-vehicle targets, snapshot and timestamp under one shared root.

Each vehicle is a small TUF repository of its own. Its three roles carry one version
counter (``DirectorVehicleState.version``) that grows by one at each re-signing. When
a vehicle's assignment has not changed and its metadata is still fresh, the stored
bytes are returned without a database write, so that polling costs no signatures.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    BindParameter,
    Connection,
    Insert,
    Label,
    bindparam,
    insert,
    update,
)
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel
from tuf.api.metadata import SPECIFICATION_VERSION, Metadata, Root

from keys.keyset import KeySet
from server.errors import InvalidArgumentError, RepositoryError
from server.repository.models import (
    DirectorVehicleState,
    RepoMetadata,
    latest_root_row,
    metadata_row,
)
from server.repository.roots import add_root, first_root
from server.repository.signing import (
    as_utc,
    check_root_keys,
    expires_after,
    parse,
    sign_payload,
    utc_now,
    validate_image_target,
)
from server.store import Database

REPO: Final = "director"
_STATES: Final = SQLModel.metadata.tables["repo_director_vehicle"]
_METADATA: Final = SQLModel.metadata.tables["repo_metadata"]
# What a vehicle's stored state is read as; a check-in selects these columns, outer-joined
# on the VIN, with its assignment (see ``stored_state``), to save a round trip.
STATE_TABLE: Final = _STATES
STATE_COLUMNS: Final[tuple[Label[Any], ...]] = (
    _STATES.c.version.label("director_version"),
    _STATES.c.targets_digest.label("director_digest"),
    _STATES.c.timestamp.label("director_timestamp"),
    _STATES.c.snapshot.label("director_snapshot"),
    _STATES.c.targets.label("director_targets"),
    _STATES.c.expires.label("director_expires"),
)
_READ_STATE: Final = sql_select(*STATE_COLUMNS).where(_STATES.c.vin == bindparam("vin"))
_NEWEST_ROOT: Final = (
    sql_select(_METADATA.c.version, _METADATA.c.data)
    .where(_METADATA.c.repo == REPO, _METADATA.c.filename.endswith(".root.json"))
    .order_by(_METADATA.c.version.desc())
    .limit(1)
)
# Compare-and-set: a re-signing replaces only the state it read (a concurrent one, or a
# new root clearing the digest, makes it read again instead of overwriting).
_REPLACE_STATE: Final = (
    update(_STATES)
    .where(
        _STATES.c.vin == bindparam("state_vin"),
        _STATES.c.version == bindparam("read_version"),
        _STATES.c.targets_digest == bindparam("read_digest"),
    )
    .values(
        version=bindparam("new_version"),
        targets_digest=bindparam("new_digest"),
        timestamp=bindparam("new_timestamp"),
        snapshot=bindparam("new_snapshot"),
        targets=bindparam("new_targets"),
        expires=bindparam("new_expires"),
    )
)
_NEW_STATE: Final[dict[str, BindParameter[Any]]] = {
    "vin": bindparam("state_vin"),
    "version": bindparam("new_version"),
    "targets_digest": bindparam("new_digest"),
    "timestamp": bindparam("new_timestamp"),
    "snapshot": bindparam("new_snapshot"),
    "targets": bindparam("new_targets"),
    "expires": bindparam("new_expires"),
}
# A first signing that loses the race to insert the row does nothing and reads it again.
# RETURNING tells whether the row was inserted: psycopg reports no rowcount for an INSERT.
_INSERT_STATE: Final[dict[str, Insert]] = {
    "postgresql": postgresql.insert(_STATES)
    .values(_NEW_STATE)
    .on_conflict_do_nothing()
    .returning(_STATES.c.version),
    "sqlite": sqlite.insert(_STATES)
    .values(_NEW_STATE)
    .on_conflict_do_nothing()
    .returning(_STATES.c.version),
}
_INSERT_STATE_PLAIN: Final = insert(_STATES).values(_NEW_STATE)  # other databases: may raise
# Rounds of read, sign, write before giving up; each lost round means another check-in
# of the same vehicle stored its metadata, which the next read normally reuses.
_ATTEMPTS: Final = 4
_SPEC_VERSION: Final = ".".join(SPECIFICATION_VERSION)
_EXPIRES_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
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


@dataclass(frozen=True)
class StoredState:
    """A vehicle's stored Director metadata with what decides whether it is reused."""

    digest: str
    expires: datetime
    metadata: SignedDirectorMetadata


def stored_state(row: Any) -> StoredState | None:
    """The state in a row that selected ``STATE_COLUMNS``; None when the vehicle has none
    (no row, or NULLs from an outer join)."""
    if row is None or row.director_version is None:
        return None
    return StoredState(
        digest=row.director_digest,
        expires=row.director_expires,
        metadata=SignedDirectorMetadata(
            timestamp=row.director_timestamp,
            snapshot=row.director_snapshot,
            targets=row.director_targets,
            version=row.director_version,
        ),
    )


@dataclass(frozen=True)
class SignedState:
    """A vehicle's metadata signed but not yet stored (see :meth:`Director.store_signed`)."""

    vin: str
    read: tuple[int, str] | None  # (version, digest) it replaces; None: the first one
    digest: str
    expires: datetime
    metadata: SignedDirectorMetadata


class Unread(enum.Enum):
    """Marks a stored state that the caller did not read."""

    UNREAD = enum.auto()


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
        """The vehicle's Director metadata naming exactly ``targets``, in its own transaction.

        See :meth:`offer`.

        Raises:
            InvalidArgumentError: A field is malformed, an ECU appears twice, or one
                target name is given two different contents.
            RepositoryError: The Director keys cannot be loaded.
        """
        try:
            with self._database.engine.begin() as connection:
                return self.offer(connection, vin, targets)
        except IntegrityError:
            # Only on databases without INSERT ... ON CONFLICT: two first check-ins of
            # one vehicle raced to insert its row; it exists now.
            with self._database.engine.begin() as connection:
                return self.offer(connection, vin, targets)

    def offer(
        self,
        connection: Connection,
        vin: str,
        targets: Sequence[DirectorTarget],
        *,
        stored: StoredState | Unread | None = Unread.UNREAD,
    ) -> SignedDirectorMetadata:
        """The vehicle's Director metadata naming exactly ``targets``, inside ``connection``'s
        transaction (a check-in's, so that polling costs one read and no transaction).

        Returns the stored metadata unchanged when the assignment is the same and it is
        not about to expire; otherwise signs the next version and stores it, unless a
        concurrent signing for the vehicle stored one first (then that one is read).

        Args:
            connection: A connection inside a transaction, which the caller commits.
            vin: The vehicle.
            targets: One entry per ECU to update (empty: nothing to install).
            stored: The vehicle's state as the caller read it in this transaction
                (``stored_state``); read here when not given. A stale one costs a
                signature, never a wrong answer: the write compares what was read.

        Raises:
            InvalidArgumentError: A field is malformed, an ECU appears twice, or one
                target name is given two different contents.
            RepositoryError: The Director keys cannot be loaded, the Director is not
                initialized, or concurrent signings kept replacing the vehicle's metadata.
        """
        if _VIN.fullmatch(vin) is None:
            raise InvalidArgumentError(f"invalid VIN {vin!r}: use [A-Za-z0-9_-], 1 to 32 chars")
        digest = _digest(vin, targets)
        assignment: dict[str, Any] | None = None
        for _ in range(_ATTEMPTS):
            if stored is Unread.UNREAD:
                stored = stored_state(connection.execute(_READ_STATE, {"vin": vin}).first())
            if stored is not None and self._reusable(stored, digest):
                # Stored metadata names these very targets, so they were checked when signed.
                return stored.metadata
            if assignment is None:
                assignment = _assignment(targets)
            read = None if stored is None else (stored.metadata.version, stored.digest)
            # Read after the state: a root imported since clears the digest that the
            # write compares, so metadata signed under an older root is not stored.
            root = self.trusted_root(connection)
            state = self._sign_state(vin, read, assignment, digest, root)
            if self.store_signed(connection, state):
                return state.metadata
            stored = Unread.UNREAD
        raise RepositoryError(
            f"the Director metadata of {vin} was re-signed concurrently {_ATTEMPTS} times: "
            f"let the vehicle check in again"
        )

    def stored_offer(
        self, vin: str, targets: Sequence[DirectorTarget], stored: StoredState | None
    ) -> SignedDirectorMetadata | None:
        """The stored metadata when :meth:`offer` would answer with it unchanged (it names
        exactly ``targets`` and is not about to expire); None when it would sign."""
        if stored is None or not self._reusable(stored, _digest(vin, targets)):
            return None
        return stored.metadata

    def _reusable(self, stored: StoredState, digest: str) -> bool:
        return stored.digest == digest and self.fresh(stored.expires)

    def fresh(self, expires: datetime) -> bool:
        """True while metadata expiring at ``expires`` is reused rather than re-signed."""
        return as_utc(expires) - self._clock() > self._renew_margin

    def sign_ahead(
        self,
        vin: str,
        targets: Sequence[DirectorTarget],
        stored: StoredState | None,
        root: Root,
    ) -> SignedState | None:
        """Signs what :meth:`offer` would sign for ``targets`` after reading ``stored``,
        without storing it; None when :meth:`offer` would return ``stored`` unchanged.

        ``root`` comes from :meth:`trusted_root`, read after ``stored`` so that a root
        imported in between makes :meth:`store_signed` refuse the result.

        Raises:
            InvalidArgumentError: A field is malformed, an ECU appears twice, or one
                target name is given two different contents.
            RepositoryError: The Director keys cannot be loaded.
        """
        if _VIN.fullmatch(vin) is None:
            raise InvalidArgumentError(f"invalid VIN {vin!r}: use [A-Za-z0-9_-], 1 to 32 chars")
        digest = _digest(vin, targets)
        if stored is not None and stored.digest == digest and self.fresh(stored.expires):
            return None
        read = None if stored is None else (stored.metadata.version, stored.digest)
        return self._sign_state(vin, read, _assignment(targets), digest, root)

    def trusted_root(self, connection: Connection) -> Root:
        """The newest Director root, parsed once per version (a root never changes).

        Raises:
            RepositoryError: The Director is not initialized.
        """
        row = connection.execute(_NEWEST_ROOT).first()
        if row is None:
            raise RepositoryError(
                f"the {REPO} repository is not initialized: start the server once (it creates "
                f"the repository)"
            )
        cached = self._root_cache
        if cached is None or cached[0] != row.version:
            cached = (row.version, Metadata[Root].from_bytes(row.data).signed)
            self._root_cache = cached
        return cached[1]

    def store_signed(self, connection: Connection, state: SignedState) -> bool:
        """Stores ``state`` inside ``connection``'s transaction if the vehicle's stored
        state is still the one it was signed after (compare-and-set); False otherwise.

        Raises:
            IntegrityError: Only on databases without INSERT ... ON CONFLICT, when another
                first signing of the vehicle inserted its row first.
        """
        values = {
            "state_vin": state.vin,
            "new_version": state.metadata.version,
            "new_digest": state.digest,
            "new_timestamp": state.metadata.timestamp,
            "new_snapshot": state.metadata.snapshot,
            "new_targets": state.metadata.targets,
            "new_expires": state.expires,
        }
        if state.read is None:
            upsert = _INSERT_STATE.get(connection.dialect.name)
            if upsert is None:
                written = connection.execute(_INSERT_STATE_PLAIN, values).rowcount
            else:
                written = int(connection.execute(upsert, values).first() is not None)
        else:
            values |= {"read_version": state.read[0], "read_digest": state.read[1]}
            written = connection.execute(_REPLACE_STATE, values).rowcount
        return bool(written == 1)

    def _sign_state(
        self,
        vin: str,
        read: tuple[int, str] | None,
        assignment: dict[str, Any],
        digest: str,
        root: Root,
    ) -> SignedState:
        """Signs the version after ``read`` (version, digest)."""
        version = 1 if read is None else read[0] + 1
        expires = expires_after(self._clock(), self._expiry)
        signed = self._sign(vin, assignment, version, expires, root)
        return SignedState(vin=vin, read=read, digest=digest, expires=expires, metadata=signed)

    def _sign(
        self,
        vin: str,
        assignment: dict[str, Any],
        version: int,
        expires: datetime,
        root: Root,
    ) -> SignedDirectorMetadata:
        # The dict forms python-tuf's Targets, Snapshot and Timestamp serialize to, built
        # directly: the objects cost more than the three signatures.
        common = {
            "spec_version": _SPEC_VERSION,
            "version": version,
            "expires": expires.strftime(_EXPIRES_FORMAT),
        }
        targets = {"_type": "targets", **common, "targets": assignment, "custom": {"vin": vin}}
        snapshot = {"_type": "snapshot", **common, "meta": {"targets.json": {"version": version}}}
        timestamp = {
            "_type": "timestamp",
            **common,
            "meta": {"snapshot.json": {"version": version}},
        }
        return SignedDirectorMetadata(
            timestamp=sign_payload(timestamp, self._keys, REPO, root),
            snapshot=sign_payload(snapshot, self._keys, REPO, root),
            targets=sign_payload(targets, self._keys, REPO, root),
            version=version,
        )


def _assignment(targets: Sequence[DirectorTarget]) -> dict[str, Any]:
    """The Director targets of one vehicle (``Targets.targets`` in dict form): one entry
    per image, naming its ECUs.

    Raises:
        InvalidArgumentError: A field is malformed, an ECU appears twice, or one target
            name is given two different contents.
    """
    files: dict[str, Any] = {}
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
            existing = {
                "length": target.length,
                "hashes": {"sha256": target.sha256},
                "custom": {"ecus": {}},
            }
            files[target.target_name] = existing
        elif existing["length"] != target.length or existing["hashes"]["sha256"] != target.sha256:
            raise InvalidArgumentError(
                f"target {target.target_name} is given two different contents: one name "
                f"must always mean the same image"
            )
        existing["custom"]["ecus"][target.ecu_serial] = {"hardware_id": target.hardware_id}
    return files


def _digest(vin: str, targets: Sequence[DirectorTarget]) -> str:
    """SHA-256 of the assignment, independent of the order of ``targets``."""
    # The JSON of dataclasses.asdict(target) for each, built directly (it is much slower).
    entries = [
        {
            "target_name": t.target_name,
            "sha256": t.sha256,
            "length": t.length,
            "ecu_serial": t.ecu_serial,
            "hardware_id": t.hardware_id,
        }
        for t in sorted(targets, key=lambda t: t.ecu_serial)
    ]
    canonical = json.dumps({"vin": vin, "targets": entries}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
