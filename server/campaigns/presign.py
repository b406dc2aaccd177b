"""Pre-signing: the Director metadata of released assignments, signed before vehicles ask.

A vehicle's first offer of an assignment needs Director metadata naming its new targets:
three signatures that would otherwise be made inside the check-in. When the engine
releases a wave, the server process that runs the engine signs them in the background,
in batches, so that a first offer finds its metadata stored and answers like a repeat
offer.

The targets are those the check-in computes (:func:`server.campaigns.offer_targets.offer_targets`
over the vehicle's registered ECUs) and the metadata is stored through the Director's
compare-and-set write, so a check-in or another signer racing for the same vehicle never
gets a wrong answer: the loser just signed once for nothing. Whatever the pre-signer
missed or what changed since (the vehicle's ECUs, a new Director root, an expiry getting
close) the check-in still signs on the spot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import bindparam
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel
from tuf.api.metadata import Root

from server.campaigns.checkin import ecu_of
from server.campaigns.models import AssignmentState, CampaignState
from server.campaigns.offer_targets import offer_targets
from server.campaigns.offers import read_epoch
from server.errors import InvalidArgumentError
from server.fleet.registry import EcuSpec
from server.metrics import ServerMetrics
from server.repository.director import (
    STATE_COLUMNS,
    STATE_TABLE,
    Director,
    DirectorTarget,
    SignedState,
    StoredState,
    stored_state,
)
from server.store import Database

log = logging.getLogger(__name__)

BATCH_SIZE: Final = 200  # vehicles signed per write transaction
SCAN_PAGE: Final = 5_000  # assignments read per scanning statement
# A scan is skipped while neither the offer epoch nor the Director root moved since the
# last round that left nothing waiting, except this often (metadata ages towards renewal).
RESCAN_SECONDS: Final = 60.0

_ASSIGNMENTS = SQLModel.metadata.tables["campaign_assignment"]
_CAMPAIGNS = SQLModel.metadata.tables["campaign"]
_ECUS = SQLModel.metadata.tables["fleet_ecu"]
_FROM = _ASSIGNMENTS.join(_CAMPAIGNS, _CAMPAIGNS.c.id == _ASSIGNMENTS.c.campaign_id).outerjoin(
    STATE_TABLE, STATE_TABLE.c.vin == _ASSIGNMENTS.c.vin
)
_WAITING = (
    _ASSIGNMENTS.c.state == AssignmentState.PENDING,
    _CAMPAIGNS.c.state == CampaignState.RUNNING,
)
_SCAN = (
    sql_select(_ASSIGNMENTS.c.id, _ASSIGNMENTS.c.vin, *STATE_COLUMNS)
    .select_from(_FROM)
    .where(*_WAITING, _ASSIGNMENTS.c.id > bindparam("after"))
    .order_by(_ASSIGNMENTS.c.id)
    .limit(bindparam("page"))
)
_BATCH = (
    sql_select(
        _ASSIGNMENTS.c.id,
        _ASSIGNMENTS.c.vin,
        _ASSIGNMENTS.c.targets,
        _CAMPAIGNS.c.bundle_id,
        *STATE_COLUMNS,
    )
    .select_from(_FROM)
    .where(*_WAITING, _ASSIGNMENTS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_ASSIGNMENTS.c.id)
)
_BATCH_ECUS = (
    sql_select(
        _ECUS.c.vin,
        _ECUS.c.serial,
        _ECUS.c.hardware_id,
        _ECUS.c.primary,
        _ECUS.c.installed_sha256,
    )
    .where(_ECUS.c.vin.in_(bindparam("vins", expanding=True)))
    .order_by(_ECUS.c.vin, _ECUS.c.serial)
)


@dataclass
class PresignCounts:
    """What pre-signing did to the assignments it looked at."""

    signed: int = 0  # metadata signed and stored
    reused: int = 0  # the stored metadata already named the targets
    lost: int = 0  # a check-in (or another signer) stored the vehicle's metadata first
    skipped: int = 0  # no longer pending, no ECU matches the bundle, or malformed

    def add(self, other: PresignCounts) -> None:
        """Adds ``other``'s counts to these."""
        self.signed += other.signed
        self.reused += other.reused
        self.lost += other.lost
        self.skipped += other.skipped


@dataclass
class PresignRound:
    """One round: a scan of the waiting assignments and the batches signed for them."""

    scanned: int = 0  # pending assignments of running campaigns looked at
    candidates: int = 0  # of those, without known matching, fresh metadata
    counts: PresignCounts = field(default_factory=PresignCounts)
    waiting: int = 0  # candidates left unsigned (the round stopped early)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Wanted:
    assignment_id: int
    vin: str
    targets: list[DirectorTarget]
    stored: StoredState | None


class Presigner:
    """Finds assignments waiting for their first offer and signs their Director metadata.

    Remembers, per assignment, the stored state it found matching, so a later scan signs
    only what changed; the memory is pruned to the assignments each scan sees.
    """

    def __init__(self, database: Database, director: Director) -> None:
        self._database = database
        self._director = director
        # Assignment id -> the vehicle's stored (version, digest) known to match it.
        self._checked: dict[int, tuple[int, str]] = {}
        self._clean: tuple[int, int] | None = None  # (epoch, root version) of a clean round
        self._scanning: tuple[int, int] | None = None  # the same, read by the last scan
        self._clean_at = 0.0

    def scan(self, *, force: bool = False) -> tuple[list[int], int] | None:
        """The ids of pending assignments (in running campaigns) whose vehicle may lack
        matching, fresh Director metadata, and how many pending assignments were read;
        None when nothing moved since the last round that left nothing waiting.
        """
        epoch = read_epoch(self._database)
        with self._database.engine.connect() as connection:
            root = self._director.trusted_root(connection).version
        moment = (epoch, root)
        if (
            not force
            and self._clean == moment
            and time.monotonic() - self._clean_at < RESCAN_SECONDS
        ):
            return None
        self._scanning = moment
        seen: dict[int, tuple[int, str]] = {}
        wanted: list[int] = []
        vins: set[str] = set()
        after = 0
        while True:
            with self._database.engine.connect() as connection:
                rows = connection.execute(_SCAN, {"after": after, "page": SCAN_PAGE}).all()
            for row in rows:
                stored = stored_state(row)
                key = (0, "") if stored is None else (stored.metadata.version, stored.digest)
                known = self._checked.get(row.id)
                if known == key and (stored is None or self._director.fresh(stored.expires)):
                    seen[row.id] = known
                elif row.vin not in vins:  # one vehicle, one open assignment: sign once
                    vins.add(row.vin)
                    wanted.append(row.id)
            if len(rows) < SCAN_PAGE:
                break
            after = rows[-1].id
        scanned = len(seen) + len(wanted)
        self._checked = seen | {i: self._checked[i] for i in wanted if i in self._checked}
        return wanted, scanned

    def mark_clean(self) -> None:
        """Records that the round of the last :meth:`scan` left nothing waiting."""
        self._clean = self._scanning
        self._clean_at = time.monotonic()

    def sign_batch(self, assignment_ids: Sequence[int]) -> PresignCounts:
        """Signs and stores the Director metadata of these assignments' vehicles.

        Reads in one short transaction, signs outside any, and writes in another, so no
        lock is held while signing; the write compares each vehicle's state with the one
        read, so anything stored in between wins.
        """
        counts = PresignCounts()
        wanted, root = self._read(assignment_ids)
        counts.skipped = len(assignment_ids) - len(wanted)
        signed: list[tuple[int, SignedState]] = []
        for item in wanted:
            try:
                state = self._director.sign_ahead(item.vin, item.targets, item.stored, root)
            except InvalidArgumentError:
                counts.skipped += 1  # the check-in reports it to the vehicle
                continue
            if state is None:
                assert item.stored is not None  # noqa: S101 - only stored state is reused
                self._checked[item.assignment_id] = (
                    item.stored.metadata.version,
                    item.stored.digest,
                )
                counts.reused += 1
            else:
                signed.append((item.assignment_id, state))
        if not signed:
            return counts
        try:
            with self._database.engine.begin() as connection:
                written = [
                    (assignment_id, state)
                    for assignment_id, state in sorted(signed, key=lambda pair: pair[1].vin)
                    if self._director.store_signed(connection, state)
                ]
        except IntegrityError:
            # Only on databases without INSERT ... ON CONFLICT: a first check-in of one of
            # these vehicles inserted its row first; the next round signs the rest.
            written = []
        for assignment_id, state in written:
            self._checked[assignment_id] = (state.metadata.version, state.digest)
        counts.signed = len(written)
        counts.lost = len(signed) - len(written)
        return counts

    def _read(self, assignment_ids: Sequence[int]) -> tuple[list[_Wanted], Root]:
        """The targets of the still-waiting assignments, with the vehicle's stored state,
        and the Director root read after them."""
        wanted = []
        with self._database.engine.connect() as connection:
            rows = connection.execute(_BATCH, {"ids": list(assignment_ids)}).all()
            ecus: dict[str, list[EcuSpec]] = {}
            for ecu in connection.execute(_BATCH_ECUS, {"vins": sorted({r.vin for r in rows})}):
                ecus.setdefault(ecu.vin, []).append(ecu_of(ecu))
            for row in rows:
                try:
                    targets = offer_targets(
                        lambda: connection,
                        engine=connection.engine,
                        targets=row.targets,
                        bundle_id=row.bundle_id,
                        ecus=ecus.get(row.vin, []),
                    )
                except (KeyError, ValueError):
                    continue  # malformed assignment targets: the check-in decides
                if not targets:
                    # The check-in fails the assignment: no ECU matches the bundle.
                    stored = stored_state(row)
                    self._checked[row.id] = (
                        (0, "") if stored is None else (stored.metadata.version, stored.digest)
                    )
                    continue
                wanted.append(_Wanted(row.id, row.vin, targets, stored_state(row)))
            # Read after the states: see Director.sign_ahead.
            root = self._director.trusted_root(connection)
        return wanted, root

    def run_round(self, *, force: bool = True, batch_size: int = BATCH_SIZE) -> PresignRound:
        """One full round in the calling thread: scan, then sign every candidate."""
        started = time.monotonic()
        result = PresignRound()
        found = self.scan(force=force)
        if found is None:
            return result
        ids, result.scanned = found
        result.candidates = len(ids)
        for start in range(0, len(ids), batch_size):
            result.counts.add(self.sign_batch(ids[start : start + batch_size]))
        self.mark_clean()
        result.seconds = time.monotonic() - started
        return result


def presign(
    database: Database, director: Director, *, batch_size: int = BATCH_SIZE
) -> PresignRound:
    """Signs the Director metadata of every pending assignment of a running campaign whose
    vehicle has none naming the targets its check-in would be offered; see
    :class:`Presigner`.

    Raises:
        RepositoryError: The Director is not initialized or its keys cannot be loaded.
    """
    return Presigner(database, director).run_round(batch_size=batch_size)


class PresignLoop:
    """Runs :class:`Presigner` rounds in the background of the process that leads the
    campaign engine: after a step that released assignments (:meth:`wake`), and otherwise
    every ``interval`` seconds.

    Each batch runs in ``executor``; between batches the loop sleeps in proportion to the
    batch's time, so that signing takes at most ``share`` of one thread and check-ins keep
    priority.
    """

    def __init__(
        self,
        presigner: Presigner,
        *,
        leading: Callable[[], bool],
        executor: Executor,
        metrics: ServerMetrics | None = None,
        interval: float = 2.0,
        share: float = 0.5,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if not 0 < share <= 1:
            raise InvalidArgumentError("the pre-signing share must be in (0, 1]")
        self._presigner = presigner
        self._leading = leading
        self._executor = executor
        self._metrics = metrics
        self._interval = interval
        self._pause_per_second = (1 - share) / share
        self._batch_size = batch_size
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Starts a round now (call on the event loop's thread)."""
        self._wake.set()

    async def run(self) -> None:
        """Rounds until cancelled."""
        while True:
            try:
                if self._leading():
                    await self.round()
            except Exception:
                # Logged and retried: check-ins sign on the spot meanwhile.
                log.exception("pre-signing Director metadata failed; retrying later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()

    async def round(self) -> PresignRound | None:
        """One round; None when a scan was not needed."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        found = await loop.run_in_executor(self._executor, self._presigner.scan)
        if found is None:
            return None
        ids, scanned = found
        result = PresignRound(scanned=scanned, candidates=len(ids), waiting=len(ids))
        self._set_waiting(result.waiting)
        for start in range(0, len(ids), self._batch_size):
            if not self._leading():
                break
            batch = ids[start : start + self._batch_size]
            began = time.monotonic()
            counts = await loop.run_in_executor(self._executor, self._presigner.sign_batch, batch)
            result.counts.add(counts)
            result.waiting -= len(batch)
            self._set_waiting(result.waiting)
            if self._metrics is not None:
                self._metrics.director_presigned.inc(counts.signed)
            await asyncio.sleep((time.monotonic() - began) * self._pause_per_second)
        if result.waiting == 0:
            self._presigner.mark_clean()
        result.seconds = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.director_presign_rounds.inc()
        if result.candidates:
            log.info(
                "pre-signed Director metadata: scanned=%d candidates=%d signed=%d reused=%d "
                "lost=%d skipped=%d waiting=%d seconds=%.2f",
                result.scanned,
                result.candidates,
                result.counts.signed,
                result.counts.reused,
                result.counts.lost,
                result.counts.skipped,
                result.waiting,
                result.seconds,
            )
        return result

    def _set_waiting(self, waiting: int) -> None:
        if self._metrics is not None:
            self._metrics.director_presign_waiting.set(waiting)
