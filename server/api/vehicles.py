"""VehicleService: check-ins and event reports."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import grpc
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from server.api.convert import timestamp
from server.api.database_work import DatabaseWork
from server.campaigns.checkin import CheckInResult, answered_from_memory, check_in
from server.campaigns.checkin_batches import CheckInBatches
from server.campaigns.events import EventKind, FailureType, ReportedEvent, record_events
from server.campaigns.offers import QuietVehicles
from server.campaigns.presence import LastSeenBuffer
from server.clock import Clock, system_clock
from server.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    StaffelError,
)
from server.fleet.registry import EcuSpec
from server.metrics import ServerMetrics
from server.repository.director import Director
from server.repository.manifest_gate import AcceptedHeartbeat, ManifestGate
from server.repository.manifests import VerifiedManifest
from server.store import Database


def _event_kind(value: int) -> EventKind:
    if value == vehicle_pb2.EVENT_KIND_UNSPECIFIED or value not in vehicle_pb2.EventKind.values():
        raise InvalidArgumentError(f"event kind {value} is not valid")
    return EventKind(vehicle_pb2.EventKind.Name(value).removeprefix("EVENT_KIND_").lower())  # type: ignore[arg-type]


def _failure_type(value: int) -> FailureType:
    if value not in vehicle_pb2.FailureType.values():
        raise InvalidArgumentError(f"failure type {value} is not valid")
    if value == vehicle_pb2.FAILURE_TYPE_UNSPECIFIED:
        return FailureType.NONE
    return FailureType(vehicle_pb2.FailureType.Name(value).removeprefix("FAILURE_TYPE_").lower())  # type: ignore[arg-type]


def reported_event(message: vehicle_pb2.VehicleEvent) -> ReportedEvent:
    """The domain form of an event message."""
    occurred_at = (
        message.occurred_at.ToDatetime(tzinfo=UTC)
        if message.HasField("occurred_at")
        else datetime.now(UTC)
    )
    return ReportedEvent(
        event_id=message.event_id,
        assignment_id=message.assignment_id,
        kind=_event_kind(message.kind),
        failure_type=_failure_type(message.failure_type),
        detail=message.detail,
        slot=message.slot,
        occurred_at=occurred_at,
    )


def _ecus_of(request: vehicle_pb2.CheckInRequest) -> list[EcuSpec]:
    return [EcuSpec(e.serial, e.hardware_id, e.primary, e.installed_sha256) for e in request.ecus]


class VehicleServicer(vehicle_pb2_grpc.VehicleServiceServicer):
    """Answers vehicles (directly or through a relay)."""

    def __init__(
        self,
        *,
        database: Database,
        director: Director,
        metrics: ServerMetrics,
        poll_seconds: int,
        clock: Clock = system_clock,
        presence: LastSeenBuffer | None = None,
        quiet: QuietVehicles | None = None,
        manifests: ManifestGate | None = None,
        executor: Executor | None = None,
        work_on_loop: bool = False,
    ) -> None:
        """Answers vehicles; their database work runs on the event loop when
        ``work_on_loop`` and the database answers without I/O waits (SQLite), else (and
        whenever that would wait for a lock) in ``executor`` (default: asyncio's)."""
        self._work = DatabaseWork(
            database, executor, on_loop=work_on_loop, moved=metrics.vehicle_work_moved
        )
        self._manifests = manifests or ManifestGate(
            database,
            clock=clock,
            offer_epoch=(lambda: quiet.epoch) if quiet is not None else None,
        )
        # PostgreSQL with the work awaiting on the loop: concurrent check-ins' statements
        # coalesce.
        self._batches = (
            CheckInBatches(database, read_batch_sizes=metrics.checkin_read_batch)
            if work_on_loop and database.awaits_on_loop
            else None
        )
        self._clock = clock
        self._presence = presence
        self._quiet = quiet
        self._database = database
        self._director = director
        self._metrics = metrics
        # Labelled children looked up once: every check-in counts itself.
        self._checkins_nothing_to_do = metrics.checkins.labels("nothing_to_do")
        self._checkins_update = metrics.checkins.labels("update")
        self._heartbeats_accepted = metrics.heartbeats.labels("accepted")
        self._heartbeats_fell_back = metrics.heartbeats.labels("fell_back")
        self._heartbeats_refused = metrics.heartbeats.labels("refused")
        self._poll_seconds = poll_seconds
        # Every "nothing to do" answer is one of these two (is the heartbeat chain held?):
        # built once, serialized by gRPC for each call, never changed.
        self._quiet_result = CheckInResult(next_poll_seconds=poll_seconds)  # never changed
        self._nothing_to_do = {
            held: vehicle_pb2.CheckInResponse(
                nothing_to_do=vehicle_pb2.NothingToDo(),
                next_poll_seconds=poll_seconds,
                heartbeat_chain_held=held,
            )
            for held in (False, True)
        }

    async def CheckIn(
        self, request: vehicle_pb2.CheckInRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vehicle_pb2.CheckInResponse:
        if request.heartbeat:
            admitted = self._heartbeat_from_memory(request)
            if isinstance(admitted, AcceptedHeartbeat):
                return await self._heartbeat_check_in(request, admitted)
            return admitted
        if not request.manifest and self._answers_keyless_quietly(request):
            return self._nothing_to_do[False]
        ecus = _ecus_of(request)
        likely_quiet = self._quiet is not None and self._quiet.is_quiet(request.vin, ecus)
        if not likely_quiet and self._manifests.needs_read(request.vin):
            if not request.manifest and self._manifests.keyless_to_confirm(request.vin):
                # New to this process, or known without keys before the epoch moved (a
                # campaign started, say), and no manifest: the check-in's own registry
                # read confirms "no keys", no read of the gate's.
                result = await self._work.run(then=partial(self._check_in_keyless, request, ecus))
                return self._answer(result, chain_held=False)
            # A vehicle new to this process with a manifest: the gate's read, the manifest
            # stored and the check-in, in one piece of database work.
            result = await self._admit_and_check_in(request, ecus)
            return self._answer(result, chain_held=self._manifests.holds_chain(request.vin))
        # Before any answer: each ECU's signature, known ECUs, a fresh nonce (from memory).
        manifest = await self._manifests.admit(
            request.vin, request.manifest, ecus, quiet=likely_quiet
        )
        # A manifest committing to a heartbeat chain is stored (the chain is held then).
        quiet = likely_quiet and (manifest is None or manifest.heartbeat is None)
        result = await self._check_in_admitted(request, ecus, manifest, quiet=quiet)
        return self._answer(result, chain_held=self._manifests.holds_chain(request.vin))

    def _answers_keyless_quietly(self, request: vehicle_pb2.CheckInRequest) -> bool:
        """Most check-ins: a vehicle without ECU keys (and no manifest sent) that had nothing
        to do and reports the same. True when it is answered "nothing to do" from memory
        (its presence noted); False when the usual path must decide."""
        if not self._manifests.keyless_now(request.vin) or not self._from_memory(request):
            return False
        self._checkins_nothing_to_do.inc()
        return True

    def _from_memory(self, request: vehicle_pb2.CheckInRequest) -> bool:
        """:func:`answered_from_memory` for the request as it came (no ECU conversion)."""
        if self._quiet is None or self._presence is None:
            return False
        return answered_from_memory(
            self._quiet,
            self._presence,
            vin=request.vin,
            ecus=request.ecus,
            nonce=request.nonce,
            clock=self._clock,
        )

    def _heartbeat_from_memory(
        self, request: vehicle_pb2.CheckInRequest
    ) -> vehicle_pb2.CheckInResponse | AcceptedHeartbeat:
        """Admits a check-in's heartbeat (the inventory is the signed one, nothing to store).
        Most heartbeats: the answer, from memory, without a coroutine; else the accepted
        heartbeat, for :meth:`_heartbeat_check_in`."""
        try:
            accepted = self._manifests.admit_heartbeat(
                request.vin, request.manifest, request.heartbeat, request.ecus
            )
            if not self._from_memory(request):
                return accepted
        except StaffelError as error:
            self._count_refused_heartbeat(error)
            raise
        self._heartbeats_accepted.inc()
        self._checkins_nothing_to_do.inc()
        return self._nothing_to_do[accepted.remaining > 0]

    async def _heartbeat_check_in(
        self, request: vehicle_pb2.CheckInRequest, accepted: AcceptedHeartbeat
    ) -> vehicle_pb2.CheckInResponse:
        """The check-in of an accepted heartbeat the database must answer."""
        try:
            result = await self._record_and_check_in(request, _ecus_of(request), None, accepted)
        except StaffelError as error:
            self._count_refused_heartbeat(error)
            raise
        self._heartbeats_accepted.inc()
        return self._answer(result, chain_held=accepted.remaining > 0)

    def _count_refused_heartbeat(self, error: StaffelError) -> None:
        if isinstance(error, FailedPreconditionError):
            self._heartbeats_fell_back.inc()  # the vehicle signs a manifest instead
        else:
            self._heartbeats_refused.inc()

    async def _check_in_admitted(
        self,
        request: vehicle_pb2.CheckInRequest,
        ecus: list[EcuSpec],
        manifest: VerifiedManifest | None,
        *,
        quiet: bool,
    ) -> CheckInResult:
        """The check-in of an admitted request: from memory when quiet, else the database."""
        # Quiet: answered from memory on the event loop, no thread, no SQL.
        if quiet and self._from_memory(request):
            return self._quiet_result
        # The manifest is stored before the Director is asked.
        return await self._record_and_check_in(request, ecus, manifest)

    def _check_in_keyless(
        self, request: vehicle_pb2.CheckInRequest, ecus: list[EcuSpec]
    ) -> CheckInResult:
        """Checks in a vehicle taken to have no ECU keys, confirming it in the check-in's own
        read (refused before anything is stored if it has keys now): blocking."""
        epoch = self._manifests.epoch_now()
        try:
            result = self._check_in_database(request, ecus, keyless=True)
        except PermissionDeniedError:
            self._manifests.forget(request.vin)  # its keys are read at the next check-in
            raise
        self._manifests.confirm_keyless(request.vin, epoch)
        return result

    async def _admit_and_check_in(
        self, request: vehicle_pb2.CheckInRequest, ecus: list[EcuSpec]
    ) -> CheckInResult:
        """Admits the manifest (reading the gate's database rows), stores it, checks in."""
        admitted: list[VerifiedManifest | None] = []  # the first step's result, for the next
        return await self._work.run(
            lambda: admitted.append(
                self._manifests.admit_blocking(request.vin, request.manifest, ecus)
            ),
            lambda: self._manifests.record(admitted[0]),
            then=partial(self._check_in_database, request, ecus),
        )

    async def _record_and_check_in(
        self,
        request: vehicle_pb2.CheckInRequest,
        ecus: list[EcuSpec],
        manifest: VerifiedManifest | None,
        heartbeat: AcceptedHeartbeat | None = None,
    ) -> CheckInResult:
        """Stores the admitted manifest (or confirms the heartbeat's chain is the latest
        stored one), then checks in."""
        steps: list[Callable[[], object]] = []
        if heartbeat is not None:
            steps.append(partial(self._manifests.confirm_heartbeat, heartbeat))
        if manifest is not None:
            steps.append(partial(self._manifests.record, manifest))
        return await self._work.run(*steps, then=partial(self._check_in_database, request, ecus))

    def _check_in_database(
        self, request: vehicle_pb2.CheckInRequest, ecus: list[EcuSpec], *, keyless: bool = False
    ) -> CheckInResult:
        """:func:`check_in` for a request whose manifest (if any) is admitted and stored."""
        return check_in(
            self._database,
            self._director,
            vin=request.vin,
            ecus=ecus,
            nonce=request.nonce,
            poll_seconds=self._poll_seconds,
            clock=self._clock,
            presence=self._presence,
            quiet=self._quiet,
            keyless=keyless,
            batches=self._batches,
        )

    def _answer(self, result: CheckInResult, *, chain_held: bool) -> vehicle_pb2.CheckInResponse:
        if result.director is None:
            self._checkins_nothing_to_do.inc()
            if result.next_poll_seconds == self._poll_seconds:
                return self._nothing_to_do[chain_held]
            return vehicle_pb2.CheckInResponse(
                nothing_to_do=vehicle_pb2.NothingToDo(),
                next_poll_seconds=result.next_poll_seconds,
                heartbeat_chain_held=chain_held,
            )
        self._checkins_update.inc()
        window = result.install_window
        return vehicle_pb2.CheckInResponse(
            update=vehicle_pb2.UpdateOffer(
                assignment_id=result.assignment_id,
                director=vehicle_pb2.DirectorMetadata(
                    timestamp=result.director.timestamp,
                    snapshot=result.director.snapshot,
                    targets=result.director.targets,
                ),
                install_not_before=timestamp(window[0] if window else None),
                install_not_after=timestamp(window[1] if window else None),
            ),
            next_poll_seconds=result.next_poll_seconds,
            heartbeat_chain_held=chain_held,
        )

    async def ReportEvents(
        self, request: vehicle_pb2.ReportEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> vehicle_pb2.ReportEventsResponse:
        events = [reported_event(e) for e in request.events]
        outcome = await self._work.run(
            then=partial(record_events, self._database, request.vin, events, clock=self._clock)
        )
        for kind in outcome.new_kinds:
            self._metrics.vehicle_events.labels(kind.value).inc()
        return vehicle_pb2.ReportEventsResponse(
            accepted=outcome.accepted, duplicates=outcome.duplicates
        )
