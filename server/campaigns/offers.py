"""The offer epoch: a counter that grows whenever a vehicle may have gained something to do.

A quiet check-in ("nothing to do") should cost no database round trip. Each server process
remembers the vehicles that had no open assignment (:class:`QuietVehicles`), tagged with
the offer epoch it had read before it looked. Triggers in the database advance the epoch,
in the transaction that makes the change, whenever

- a campaign becomes running or paused (started, resumed, a rollback created);
- an assignment becomes offerable (inserted or moved to pending or in progress from a state
  that was not offerable: released by the engine, retried);
- an ECU of the fleet registry is added, removed, or changes what it reports
  (serial, vehicle, hardware id, installed image, primary flag) or its public key (the
  manifest gate trusts a vehicle without keys to have none while the epoch stands still).

Every process reads the epoch once a second (one primary-key read), so a campaign started
through one replica reaches vehicles that check in on another within a second, far below
any poll interval. A write made by the process itself that moved the epoch (a campaign
started through this replica, an engine step) stops its quiet answers at once, until the
next read, so a vehicle checking in right after it is asked of the database.

Triggers, not calls in the code, so that no writer can forget them. On PostgreSQL they
fire once per statement and bump at most once per transaction, so the engine's release of
50,000 assignments or an import of 100,000 vehicles advances the epoch once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import BigInteger, Column, event, text
from sqlmodel import Field, SQLModel

from server.fleet.registry import ReportedEcu
from server.store import Database

# An epoch read longer ago than this is not trusted: quiet answers stop (the DB decides).
MAX_EPOCH_AGE_SECONDS: Final = 5.0  # seconds
MAX_QUIET_VEHICLES: Final = 2_000_000  # entries (~150 bytes each); cleared when full

_OFFERABLE: Final = "('PENDING', 'IN_PROGRESS')"
_ACTIVE: Final = "('RUNNING', 'PAUSED')"
_BUMP: Final = "UPDATE campaign_offer_epoch SET value = value + 1 WHERE id = 1"
# PostgreSQL: once per transaction. Updating one row many times in one transaction leaves
# a chain of row versions that every later update walks (a 100k-row import took minutes).
_PG_BUMP: Final = (
    "IF current_setting('staffel.offer_epoch_bumped', true) IS DISTINCT FROM 'yes' THEN "
    f"{_BUMP}; PERFORM set_config('staffel.offer_epoch_bumped', 'yes', true); END IF;"
)
_ECU_CHANGED: Final = (
    "NEW.serial IS DISTINCT FROM OLD.serial OR NEW.vin IS DISTINCT FROM OLD.vin "
    "OR NEW.hardware_id IS DISTINCT FROM OLD.hardware_id "
    "OR NEW.installed_sha256 IS DISTINCT FROM OLD.installed_sha256 "
    'OR NEW."primary" IS DISTINCT FROM OLD."primary" '
    "OR NEW.public_key IS DISTINCT FROM OLD.public_key"
)

_ECU_CHANGED_SQLITE: Final = _ECU_CHANGED.replace("IS DISTINCT FROM", "IS NOT")


class OfferEpoch(SQLModel, table=True):
    """The single row holding the offer epoch (id 1)."""

    __tablename__ = "campaign_offer_epoch"

    id: int = Field(primary_key=True)
    value: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


def _sqlite_trigger(name: str, when_event: str, condition: str) -> str:
    return (
        f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {when_event} "
        f"{'WHEN ' + condition if condition else ''} BEGIN {_BUMP}; END"
    )


_SQLITE: Final = [
    "INSERT OR IGNORE INTO campaign_offer_epoch (id, value) VALUES (1, 0)",
    _sqlite_trigger("offer_epoch_campaign_insert", "INSERT ON campaign", f"NEW.state IN {_ACTIVE}"),
    _sqlite_trigger(
        "offer_epoch_campaign_update",
        "UPDATE OF state ON campaign",
        f"NEW.state IS NOT OLD.state AND NEW.state IN {_ACTIVE}",
    ),
    _sqlite_trigger(
        "offer_epoch_assignment_insert",
        "INSERT ON campaign_assignment",
        f"NEW.state IN {_OFFERABLE}",
    ),
    _sqlite_trigger(
        "offer_epoch_assignment_update",
        "UPDATE OF state ON campaign_assignment",
        f"NEW.state IN {_OFFERABLE} AND OLD.state NOT IN {_OFFERABLE}",
    ),
    _sqlite_trigger("offer_epoch_ecu_insert", "INSERT ON fleet_ecu", ""),
    _sqlite_trigger("offer_epoch_ecu_delete", "DELETE ON fleet_ecu", ""),
    _sqlite_trigger("offer_epoch_ecu_update", "UPDATE ON fleet_ecu", _ECU_CHANGED_SQLITE),
]

_PG_FUNCTION: Final = (
    "CREATE OR REPLACE FUNCTION staffel_offer_epoch_{name}() RETURNS trigger AS $$ "
    "BEGIN {body} RETURN NULL; END $$ LANGUAGE plpgsql"
)
_PG_TRIGGER: Final = (
    "CREATE OR REPLACE TRIGGER offer_epoch_{name} AFTER {when_event} {clause} "
    "EXECUTE FUNCTION staffel_offer_epoch_{function}()"
)
_POSTGRES: Final = [
    # Serializes the DDL of replicas that create their tables at the same moment.
    "SELECT pg_advisory_xact_lock(hashtext('staffel_offer_epoch_ddl'))",
    "INSERT INTO campaign_offer_epoch (id, value) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    _PG_FUNCTION.format(name="bump", body=_PG_BUMP),
    _PG_FUNCTION.format(
        name="assignment_insert",
        body=f"IF EXISTS (SELECT 1 FROM offer_new WHERE state IN {_OFFERABLE}) "  # noqa: S608 - constants
        f"THEN {_PG_BUMP} END IF;",
    ),
    _PG_FUNCTION.format(
        name="assignment_update",
        body="IF EXISTS (SELECT 1 FROM offer_new n JOIN offer_old o ON o.id = n.id "  # noqa: S608 - constants
        f"WHERE n.state IN {_OFFERABLE} AND o.state NOT IN {_OFFERABLE}) THEN {_PG_BUMP} END IF;",
    ),
    _PG_TRIGGER.format(
        name="campaign_insert",
        when_event="INSERT ON campaign",
        clause=f"FOR EACH ROW WHEN (NEW.state IN {_ACTIVE})",
        function="bump",
    ),
    _PG_TRIGGER.format(
        name="campaign_update",
        when_event="UPDATE OF state ON campaign",
        clause=f"FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state "
        f"AND NEW.state IN {_ACTIVE})",
        function="bump",
    ),
    _PG_TRIGGER.format(
        name="assignment_insert",
        when_event="INSERT ON campaign_assignment",
        clause="REFERENCING NEW TABLE AS offer_new FOR EACH STATEMENT",
        function="assignment_insert",
    ),
    _PG_TRIGGER.format(
        name="assignment_update",
        when_event="UPDATE ON campaign_assignment",
        clause="REFERENCING OLD TABLE AS offer_old NEW TABLE AS offer_new FOR EACH STATEMENT",
        function="assignment_update",
    ),
    _PG_TRIGGER.format(
        name="ecu_insert_delete",
        when_event="INSERT OR DELETE ON fleet_ecu",
        clause="FOR EACH STATEMENT",
        function="bump",
    ),
    _PG_TRIGGER.format(
        name="ecu_update",
        when_event="UPDATE ON fleet_ecu",
        clause=f"FOR EACH ROW WHEN ({_ECU_CHANGED})",
        function="bump",
    ),
]


_PG_TRIGGERS: Final = tuple(
    f"offer_epoch_{name}"
    for name in (
        "campaign_insert",
        "campaign_update",
        "assignment_insert",
        "assignment_update",
        "ecu_insert_delete",
        "ecu_update",
    )
)


def _pg_triggers_present(connection: Any) -> bool:
    found = connection.exec_driver_sql(
        "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(%(names)s)",
        {"names": list(_PG_TRIGGERS)},
    ).scalar_one()
    return int(found) == len(_PG_TRIGGERS)


def _install(_target: Any, connection: Any, **_: Any) -> None:
    names = set(SQLModel.metadata.tables)
    if not {"campaign", "campaign_assignment", "fleet_ecu", "campaign_offer_epoch"} <= names:
        return
    if connection.dialect.name == "sqlite":
        statements = _SQLITE
    elif _pg_triggers_present(connection):
        # Replacing a trigger locks its table against writers: a process opening the
        # database (a replica starting, a CLI command) would queue behind running
        # servers' transactions, or deadlock with them. A later change of these
        # definitions belongs in a migration.
        return
    else:
        statements = _POSTGRES
    for statement in statements:
        connection.exec_driver_sql(statement)


# After every table exists (the triggers name three of them); every create_all runs it,
# so an older database gets the epoch at its next start.
event.listen(SQLModel.metadata, "after_create", _install)


_WRITE_PREFIXES: Final = ("INSERT", "UPDATE", "DELETE", "insert", "update", "delete")
# A write whose SQL carries this comment cannot move the epoch, so no read of the epoch
# follows it (a check-in taking its assignment: pending to in progress, both offerable).
EPOCH_UNCHANGED: Final = "/* offer epoch unchanged */"
_WROTE: Final = "staffel_offer_wrote"
_EPOCH_AT_COMMIT: Final = "staffel_offer_epoch_at_commit"


def watch_local_writes(database: Database, quiet: QuietVehicles) -> None:
    """Calls ``quiet.moved_locally()`` after each local write that moved the epoch.

    After each committed write transaction of ``database``, the epoch is read inside the
    committing transaction (so it sees its own trigger's bump) with one primary-key read;
    if it differs from the epoch ``quiet`` knows, quiet answers stop until the next read.
    """

    def after_execute(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith(_WRITE_PREFIXES) and EPOCH_UNCHANGED not in statement:
            conn.info[_WROTE] = True

    def on_commit(conn: Any) -> None:
        if not conn.info.pop(_WROTE, False):
            return
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute("SELECT value FROM campaign_offer_epoch WHERE id = 1")
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is not None:
            conn.info[_EPOCH_AT_COMMIT] = int(row[0])

    def on_rollback(conn: Any) -> None:
        conn.info.pop(_WROTE, None)
        conn.info.pop(_EPOCH_AT_COMMIT, None)

    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        # Back in the pool: the commit is done, so a read from now on sees it.
        seen = record.info.pop(_EPOCH_AT_COMMIT, None)
        record.info.pop(_WROTE, None)
        if seen is not None and seen != quiet.known_epoch:
            quiet.moved_locally()

    database.listen("after_cursor_execute", after_execute)
    database.listen("commit", on_commit)
    database.listen("rollback", on_rollback)
    database.listen("checkin", on_checkin)


def read_epoch(database: Database) -> int:
    """The offer epoch now (one primary-key read)."""
    with database.engine.connect() as connection:
        value = connection.execute(
            text("SELECT value FROM campaign_offer_epoch WHERE id = 1")
        ).scalar_one()
    return int(value)


def fingerprint(ecus: Sequence[ReportedEcu]) -> tuple[tuple[str, str, str], ...]:
    """What a check-in reports, in a form that compares equal when nothing changed."""
    if len(ecus) == 1:  # most vehicles report one gateway: no sort
        ecu = ecus[0]
        return ((ecu.serial, ecu.hardware_id, ecu.installed_sha256),)
    return tuple(sorted((e.serial, e.hardware_id, e.installed_sha256) for e in ecus))


@dataclass(frozen=True)
class _Quiet:
    inventory: tuple[tuple[str, str, str], ...]
    epoch: int


class QuietVehicles:
    """This process's memory of vehicles that had nothing to do, and at which epoch.

    A vehicle is quiet when it reports exactly the inventory remembered for it and the
    epoch has not moved since; then its check-in is answered without the database.
    """

    def __init__(
        self,
        *,
        max_entries: int = MAX_QUIET_VEHICLES,
        max_epoch_age: float = MAX_EPOCH_AGE_SECONDS,
    ) -> None:
        self._entries: dict[str, _Quiet] = {}
        self._max_entries = max_entries
        self._max_epoch_age = max_epoch_age
        self._epoch: int | None = None
        self._read_at = 0.0  # time.monotonic() of the last epoch read
        # Local writes that moved the epoch, and how many of them the last read covers.
        self._moved = 0
        self._covered = 0

    @property
    def epoch(self) -> int | None:
        """The epoch to tag a new entry with; None while it is unknown or too old."""
        if (
            self._epoch is None
            or self._moved != self._covered
            or time.monotonic() - self._read_at > self._max_epoch_age
        ):
            return None
        return self._epoch

    def set_epoch(self, value: int, *, covers: int | None = None) -> None:
        """Records an epoch just read; ``covers``: the local moves counted before the read."""
        if self._epoch is not None and value != self._epoch:
            self._entries.clear()  # every entry is stale; free the memory at once
        self._epoch = value
        self._covered = self._moved if covers is None else covers
        self._read_at = time.monotonic()

    def refresh(self, database: Database) -> None:
        """Reads the epoch from the database (blocking)."""
        covers = self._moved
        self.set_epoch(read_epoch(database), covers=covers)

    def moved_locally(self) -> None:
        """Notes a committed local write that moved the epoch: no quiet answers until the next read.

        Called from database threads; two racing increments may count as one, which still
        differs from the count the last read covered, so no suspension is lost.
        """
        self._moved += 1

    def watch_local_writes(self, database: Database) -> None:
        """Suspends quiet answers after local writes that moved the epoch."""
        watch_local_writes(database, self)

    @property
    def known_epoch(self) -> int | None:
        """The epoch last read, however old."""
        return self._epoch

    def is_quiet(self, vin: str, ecus: Sequence[ReportedEcu]) -> bool:
        """True when the vehicle had nothing to do at the current epoch and reports the same.

        Only a check-in that passed validation is remembered, so a VIN and an inventory
        found quiet here are valid ones.
        """
        entry = self._entries.get(vin)
        if entry is None:
            return False
        epoch = self.epoch
        return epoch is not None and entry.epoch == epoch and entry.inventory == fingerprint(ecus)

    def remember(self, vin: str, ecus: Sequence[ReportedEcu], epoch: int) -> None:
        """Notes that at ``epoch`` (read before the database was asked) the vehicle was quiet."""
        if epoch != self._epoch:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[vin] = _Quiet(fingerprint(ecus), epoch)

    def forget(self, vin: str) -> None:
        """Drops what is remembered of one vehicle."""
        self._entries.pop(vin, None)

    def __len__(self) -> int:
        return len(self._entries)
