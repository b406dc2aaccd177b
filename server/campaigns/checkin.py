"""A vehicle's check-in: record what it runs; hand it the Director metadata of its assignment."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from server.campaigns.checkin_batches import CheckInBatches
from server.campaigns.checkin_statements import (
    FAIL_UNMATCHED,
    LOAD_VEHICLE,
    OPEN_ASSIGNMENT,
    READ_CHECK_IN,
    SET_CHANGED,
    SET_INSTALLED,
    SET_LAST_SEEN,
    TAKE,
    TAKE_IF_STILL_PENDING,
)
from server.campaigns.models import AssignmentState
from server.campaigns.offer_targets import offer_targets
from server.campaigns.offers import QuietVehicles
from server.campaigns.plan import CampaignPlan
from server.campaigns.presence import LastSeenBuffer
from server.clock import Clock, as_utc, system_clock
from server.errors import InvalidArgumentError, NotFoundError
from server.fleet.registry import EcuSpec, ReportedEcu
from server.repository.director import (
    Director,
    DirectorTarget,
    SignedDirectorMetadata,
    StoredState,
    stored_state,
)
from server.repository.manifests import manifest_required
from server.store import Database
from server.store.direct import pipelines, rows_together
from server.validation import check_sha256, check_vin

MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64
# last_seen is written at most this often per vehicle, so a quiet check-in writes nothing.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class CheckInResult:
    """The answer to a check-in: nothing to do, or an assignment with its Director metadata."""

    next_poll_seconds: int
    assignment_id: str = ""
    director: SignedDirectorMetadata | None = None
    # The site's maintenance window (opens, closes) in UTC, when the campaign has one.
    install_window: tuple[datetime, datetime] | None = None


def _check_nonce(nonce: bytes) -> None:
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise InvalidArgumentError(
            f"nonce must be {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} fresh random bytes"
        )


def _check_request(vin: str, ecus: Sequence[EcuSpec], nonce: bytes) -> None:
    check_vin(vin)
    _check_nonce(nonce)
    for ecu in ecus:
        check_sha256(ecu.installed_sha256, "installed image hash")


@dataclass(frozen=True)
class _Registered:
    """What the registry holds of a checking-in vehicle."""

    site: str
    last_seen: datetime | None
    ecus: tuple[EcuSpec, ...]
    has_keys: bool = False  # an ECU has a registered public key (manifests required)


@dataclass(frozen=True)
class _Open:
    """The open assignment of a vehicle, with what the offer needs of its campaign."""

    assignment_id: int
    state: AssignmentState
    targets: str
    bundle_id: int
    plan: str
    director: StoredState | None


def _load_registered(connection: Connection, vin: str, rows: list[Any] | None) -> _Registered:
    if rows is None:
        rows = LOAD_VEHICLE.rows(connection, {"vin": vin})
    return _registered_of(vin, rows)


def _registered_of(vin: str, rows: list[Any]) -> _Registered:
    """The registry's view of ``vin`` from its rows (one per ECU, or one without)."""
    if not rows:
        raise NotFoundError(f"vehicle {vin} is not registered: provision it first")
    ecus = tuple(ecu_of(row) for row in rows if row.serial is not None)
    has_keys = any(row.has_key for row in rows if row.serial is not None)
    return _Registered(site=rows[0].site, last_seen=rows[0].last_seen, ecus=ecus, has_keys=has_keys)


def ecu_of(row: Any) -> EcuSpec:
    """A registered ECU from a row with ``fleet_ecu``'s serial, hardware_id, primary and
    installed_sha256 columns."""
    return EcuSpec(row.serial, row.hardware_id, bool(row.primary), row.installed_sha256)


def _record_inventory(
    connection: Connection,
    vin: str,
    reported: Sequence[EcuSpec],
    now: datetime,
    *,
    write_last_seen: bool,
    keyless: bool = False,
    rows: list[Any] | None = None,
) -> tuple[_Registered, bool]:
    """Checks the reported ECUs against the registry and stores what changed.

    Returns the registry's view (with the reported images) and whether an image changed.
    With ``keyless`` (the check-in carries no manifest because the vehicle was known to
    have no ECU keys), refuses a vehicle that has keys now, before anything is written.
    ``rows``: the registry's rows of the vehicle, when the caller read them already.
    """
    registered = _load_registered(connection, vin, rows)
    changed = _inventory_changes(registered, vin, reported, keyless=keyless)
    if changed:
        SET_INSTALLED.execute(connection, changed)
        # Installed images are a selector: the vehicle may now join a campaign.
        SET_CHANGED.execute(connection, {"vehicle_vin": vin, "changed_at": now})
        installed = {c["ecu_serial"]: c["sha256"] for c in changed}
        registered = _Registered(
            site=registered.site,
            last_seen=registered.last_seen,
            ecus=tuple(
                replace(e, installed_sha256=installed.get(e.serial, e.installed_sha256))
                for e in registered.ecus
            ),
        )
    if write_last_seen and _last_seen_due(registered, now):
        SET_LAST_SEEN.execute(connection, {"vehicle_vin": vin, "seen": now})
    return registered, bool(changed)


def _inventory_changes(
    registered: _Registered, vin: str, reported: Sequence[EcuSpec], *, keyless: bool
) -> list[dict[str, str]]:
    """The ECUs whose reported image differs from the registry's, as statement parameters.

    Raises:
        PermissionDeniedError: ``keyless``, and the vehicle has ECU keys now.
        InvalidArgumentError: the reported ECUs or hardware ids differ from the registry.
    """
    if keyless and registered.has_keys:
        raise manifest_required(vin)
    by_serial = {ecu.serial: ecu for ecu in registered.ecus}
    reported_serials = {ecu.serial for ecu in reported}
    if reported_serials != set(by_serial) or len(reported_serials) != len(reported):
        raise InvalidArgumentError(
            f"vehicle {vin} reported ECUs {sorted(reported_serials)}, "
            f"registered are {sorted(by_serial)}"
        )
    changed = []
    for ecu in reported:
        known = by_serial[ecu.serial]
        if ecu.hardware_id != known.hardware_id:
            raise InvalidArgumentError(
                f"ECU {ecu.serial} reported hardware id {ecu.hardware_id!r}, "
                f"registered is {known.hardware_id!r}"
            )
        if ecu.installed_sha256 != known.installed_sha256:
            changed.append({"ecu_serial": ecu.serial, "sha256": ecu.installed_sha256})
    return changed


def _last_seen_due(registered: _Registered, now: datetime) -> bool:
    last_seen = registered.last_seen
    return last_seen is None or now - as_utc(last_seen) >= LAST_SEEN_RESOLUTION


def _open_assignment(connection: Connection, vin: str, rows: list[Any] | None) -> _Open | None:
    """The assignment to offer: released in a running campaign, or taken in a paused one
    (``rows``: the caller's read of it, else read here)."""
    if rows is None:
        rows = OPEN_ASSIGNMENT.rows(connection, {"vin": vin})
    return _open_of(rows)


def _open_of(rows: list[Any]) -> _Open | None:
    if not rows or rows[0].id is None:  # the second: a vehicle's row without an assignment
        return None
    row = rows[0]
    return _Open(
        assignment_id=row.id,
        state=AssignmentState(row.state),
        targets=row.targets,
        bundle_id=row.bundle_id,
        plan=row.plan,
        director=stored_state(row),
    )


def _targets(
    engine: Engine, connect: Callable[[], Connection], found: _Open, ecus: Sequence[EcuSpec]
) -> list[DirectorTarget]:
    return offer_targets(
        connect, engine=engine, targets=found.targets, bundle_id=found.bundle_id, ecus=ecus
    )


@functools.lru_cache(maxsize=256)
def _plan(text: str) -> CampaignPlan:
    """A stored plan, parsed once per process and text (plans are immutable values)."""
    return CampaignPlan.from_json(text)


def answered_from_memory(
    quiet: QuietVehicles,
    presence: LastSeenBuffer,
    *,
    vin: str,
    ecus: Sequence[ReportedEcu],
    nonce: bytes,
    clock: Clock = system_clock,
) -> bool:
    """Whether a vehicle known to have nothing to do, reporting the same, is answered from
    memory ("nothing to do", poll as usual); its presence is noted then. No I/O.

    False when the database must decide (unknown vehicle, changed inventory, or the offer
    epoch moved since the vehicle was last seen quiet).

    Raises:
        InvalidArgumentError: malformed request.
    """
    if not quiet.is_quiet(vin, ecus):
        return False
    # The VIN and the inventory were validated when the vehicle was remembered, and it
    # reports the same: only the nonce is new.
    _check_nonce(nonce)
    presence.mark(vin, clock())
    return True


def check_in(
    database: Database,
    director: Director,
    *,
    vin: str,
    ecus: Sequence[EcuSpec],
    nonce: bytes,
    poll_seconds: int,
    clock: Clock = system_clock,
    presence: LastSeenBuffer | None = None,
    quiet: QuietVehicles | None = None,
    keyless: bool = False,
    batches: CheckInBatches | None = None,
) -> CheckInResult:
    """Handles one check-in.

    Args:
        database: The store.
        director: Signs the vehicle's Director metadata for an offer.
        vin: The vehicle.
        ecus: What each of its ECUs reports.
        nonce: Fresh random bytes.
        poll_seconds: When the vehicle should check in next.
        clock: The server's clock.
        presence: Buffers last-seen moments (the server's); None writes them in the
            check-in's own transaction at most once per ``LAST_SEEN_RESOLUTION``.
        quiet: Remembers vehicles with nothing to do, for :func:`answered_from_memory`.
        keyless: The check-in carries no manifest on the strength of the vehicle having
            had no ECU keys; confirmed in the same read as the registry, so a key
            registered since refuses the check-in before anything is stored.
        batches: The server's coalesced statements (PostgreSQL, work on the event loop):
            the check-in's read (and take) goes in the next batch of concurrent check-ins'.

    Raises:
        InvalidArgumentError: malformed request, or ECUs that differ from the registry.
        NotFoundError: the vehicle is not registered.
        PermissionDeniedError: ``keyless``, and the vehicle has ECU keys now.
    """
    _check_request(vin, ecus, nonce)
    now = clock()
    # Read before the database is asked: a change committed later advances the epoch.
    epoch = quiet.epoch if quiet is not None else None
    # On PostgreSQL most check-ins are answered by reads without a transaction.
    write_last_seen = presence is None
    answer = _answer_from_reads(
        database, director, vin, ecus, now,
        write_last_seen=write_last_seen, keyless=keyless, batches=batches,
    )  # fmt: skip
    if answer is None:
        once = functools.partial(
            _check_in_once, database, director, vin, ecus, now,
            write_last_seen=write_last_seen, keyless=keyless,
        )  # fmt: skip
        try:
            answer = once()
        except IntegrityError:
            # Only on databases without INSERT ... ON CONFLICT: two first check-ins of one
            # vehicle raced to insert its Director row; it exists now.
            answer = once()
    registered, changed, found, signed = answer
    if presence is not None:
        presence.mark(vin, now)
    if changed and quiet is not None:
        quiet.forget(vin)
    if found is None or signed is None:
        if found is None and quiet is not None and epoch is not None and not changed:
            quiet.remember(vin, ecus, epoch)
        return CheckInResult(next_poll_seconds=poll_seconds)
    window = _plan(found.plan).window_for(registered.site)
    return CheckInResult(
        next_poll_seconds=poll_seconds,
        assignment_id=str(found.assignment_id),
        director=signed,
        install_window=window.occurrence(now) if window is not None else None,
    )


_Answer = tuple[_Registered, bool, "_Open | None", "SignedDirectorMetadata | None"]


def _answer_from_reads(
    database: Database,
    director: Director,
    vin: str,
    ecus: Sequence[EcuSpec],
    now: datetime,
    *,
    write_last_seen: bool,
    keyless: bool,
    batches: CheckInBatches | None = None,
) -> _Answer | None:
    """The answer of a check-in without a transaction (PostgreSQL): one read of the vehicle
    with its open assignment, and for a first offer whose Director metadata was signed
    ahead, one statement that takes the assignment if it is still pending in a running
    campaign.

    Answers nothing to do, repeat offers of stored fresh metadata and such first offers.
    None when the check-in must do more (metadata to sign, a changed inventory, an
    assignment to fail, one taken meanwhile) or the database is not PostgreSQL: the caller
    then runs the transaction of :func:`_check_in_once`. Without its row lock, the answer is
    the one a check-in a moment earlier would have had; a change committed since reaches
    the vehicle at its next check-in, as it would have then.
    """
    if database.engine.dialect.name != "postgresql":  # no LATERAL join on SQLite
        return None
    with ExitStack() as opened:
        autocommit: list[Connection] = []

        def connection() -> Connection:
            # Taken on first use: an answer from a coalesced read may need none.
            if not autocommit:
                autocommit.append(opened.enter_context(database.autocommit()))
            return autocommit[0]

        batched = batches if batches is not None and batches.applies(database) else None
        if batched is not None:
            rows = batched.rows(vin)
        else:
            rows = READ_CHECK_IN.rows(connection(), {"vin": vin})
        registered = _registered_of(vin, rows)
        if _inventory_changes(registered, vin, ecus, keyless=keyless) or (
            write_last_seen and _last_seen_due(registered, now)
        ):
            return None
        found = _open_of(rows)
        if found is None:
            return registered, False, None, None
        targets = _targets(database.engine, connection, found, registered.ecus)
        signed = director.stored_offer(vin, targets, found.director) if targets else None
        take = None
        if signed is not None and found.state == AssignmentState.PENDING:
            take = _take_parameters(found, registered, now)
            if batched is None:
                taken = TAKE_IF_STILL_PENDING.execute(connection(), take) == 1
                signed = signed if taken else None
    if take is not None and batched is not None:
        # After the connection went back to the pool: the batch needs one, and check-ins
        # holding every connection while waiting for it would wait for each other.
        signed = signed if batched.take(take) else None
    return None if signed is None else (registered, False, found, signed)


def _take_parameters(found: _Open, registered: _Registered, now: datetime) -> dict[str, Any]:
    """Parameters of taking ``found``: the images its ECUs run now are the rollback's."""
    previous = {e.serial: e.installed_sha256 for e in registered.ecus}
    return {
        "assignment_id": found.assignment_id,
        "now": now,
        "previous_images": json.dumps(previous, sort_keys=True),
    }


def _check_in_once(
    database: Database,
    director: Director,
    vin: str,
    ecus: Sequence[EcuSpec],
    now: datetime,
    *,
    write_last_seen: bool,
    keyless: bool = False,
) -> _Answer:
    """One transaction: inventory, the open assignment (locked), its Director metadata.

    The metadata is read (or signed and stored) while the assignment row is locked, so
    the offer is consistent with the assignment when the transaction commits.
    """
    with database.engine.begin() as connection:
        vehicle_rows = assignment_rows = None
        if pipelines(connection):
            # One round trip for BEGIN and both reads. The assignment is locked before the
            # inventory is written then, in every check-in alike.
            vehicle_rows, assignment_rows = rows_together(
                connection, (LOAD_VEHICLE, {"vin": vin}), (OPEN_ASSIGNMENT, {"vin": vin})
            )
        registered, changed = _record_inventory(
            connection,
            vin,
            ecus,
            now,
            write_last_seen=write_last_seen,
            keyless=keyless,
            rows=vehicle_rows,
        )
        found = _open_assignment(connection, vin, assignment_rows)
        if found is None:
            return registered, changed, None, None
        targets = _targets(connection.engine, lambda: connection, found, registered.ecus)
        if not targets:
            FAIL_UNMATCHED.execute(connection, {"assignment_id": found.assignment_id, "now": now})
            return registered, changed, found, None
        if found.state == AssignmentState.PENDING:
            TAKE.execute(connection, _take_parameters(found, registered, now))
        signed = director.offer(connection, vin, targets, stored=found.director)
        return registered, changed, found, signed
