"""The update state machine of the vehicle: one cycle of check-in, update and reports.

Each step reads the journal, does its work, queues its events and writes the journal at
the next step, so a restart resumes at the step the journal names. Steps are safe to
repeat: a repeated step queues events with the same ids, which the outbox and the server
drop. Steps before the boot switch never touch the boot state or the active slot.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from client.config import ClientConfig
from client.errors import (
    ClientError,
    HeartbeatRefusedError,
    InstallError,
    ServerError,
    StateError,
    TransferInterruptedError,
    UpdateError,
)
from client.health import HealthResult, check_services, run_health_check
from client.images import Image, format_size
from client.install import SlotWriter
from client.install.space import check_space
from client.journal import (
    EventKind,
    FailureType,
    Journal,
    JournalState,
    Outbox,
    Phase,
    UpdateRecord,
    VehicleEvent,
    failure_type_of,
)
from client.link import CheckInAnswer, EcuReport, UpdateOffer, VehicleLink
from client.secondary.coordinator import Secondaries
from client.slots import (
    BootControl,
    Bootloader,
    BootState,
    SimulatedBootloader,
    Slot,
    SlotInventory,
    open_boot_control,
    other_slot,
)
from client.tls import grpc_credentials, ssl_context
from client.transfer import ImageDownloader
from client.uplink import Uplink
from client.uptane import UptaneVerifier
from client.uptane.heartbeat import HeartbeatChain, HeartbeatStore

logger = logging.getLogger(__name__)

REPORT_BATCH = 100  # events per ReportEvents call
PROGRESS_FILE = "download.json"  # the slot writer's checkpoint, in the state directory


@dataclass(frozen=True)
class CycleResult:
    """How one cycle ended.

    Attributes:
        completed: The check-in (or the resumed update) and its steps ran to their end.
        delivered: No event is left in the outbox.
        next_poll_seconds: When to check in next.
    """

    completed: bool
    delivered: bool
    next_poll_seconds: int

    @property
    def ok(self) -> bool:
        """The cycle completed and every event was delivered."""
        return self.completed and self.delivered


class Agent:
    """Runs update cycles for one vehicle (its primary ECU)."""

    def __init__(
        self,
        *,
        config: ClientConfig,
        link: Uplink,
        verifier: UptaneVerifier,
        downloader: ImageDownloader,
        boot_control: BootControl,
        bootloader: Bootloader,
        inventory: SlotInventory,
        journal: Journal,
        outbox: Outbox,
        say: Callable[[str], None],
        secondaries: Secondaries,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        heartbeats: HeartbeatStore | None = None,
    ) -> None:
        """Assemble an agent from its parts (see :meth:`from_config`).

        Args:
            config: The vehicle's configuration.
            link: The gRPC link to the relay or server.
            verifier: Uptane full verification.
            downloader: Fetches image blobs.
            boot_control: Reads and changes the A/B boot state.
            bootloader: Reboots the vehicle.
            inventory: Which image each slot holds.
            journal: Where the update in progress stands.
            outbox: Queued events.
            say: Prints one human line (without the VIN prefix).
            secondaries: The vehicle's secondary ECUs, seen from the primary.
            clock: The current UTC time, for event timestamps.
            heartbeats: Where the heartbeat chain is kept (default: the state folder).
        """
        self._config = config
        self._link = link
        self._verifier = verifier
        self._downloader = downloader
        self._boot_control = boot_control
        self._bootloader = bootloader
        self._inventory = inventory
        self._journal = journal
        self._outbox = outbox
        self._say = say
        self._secondaries = secondaries
        self._clock = clock
        self._heartbeats = heartbeats or HeartbeatStore(config.state_dir)

    @classmethod
    def from_config(
        cls,
        config: ClientConfig,
        *,
        say: Callable[[str], None],
        link: Uplink | None = None,
        repo_url: str | None = None,
    ) -> Agent:
        """Build an agent with the real parts the config names.

        Args:
            config: The vehicle's configuration.
            say: Prints one human line.
            link: Where check-ins go instead of the configured relay (offline installs).
            repo_url: Where metadata and images come from instead of the configured ones.

        Raises:
            StateError: The state or slot directory cannot be created.
            ConfigError: The boot-control backend is misconfigured, or the TLS files do
                not load.
        """
        boot_control = open_boot_control(
            config.slots.backend, directory=config.slots.directory, env=config.slots.env
        )
        tls = config.tls
        context = ssl_context(tls) if tls is not None else None
        return cls(
            config=config,
            link=link
            or VehicleLink(
                config.grpc_target,
                timeout_seconds=config.network_timeout_seconds,
                credentials=grpc_credentials(tls) if tls is not None else None,
            ),
            verifier=UptaneVerifier(
                state_dir=config.state_dir,
                repo_url=repo_url or config.repo_url,
                image_root=config.image_root,
                director_root=config.director_root,
                timeout_seconds=config.network_timeout_seconds,
                ssl_context=context,
            ),
            downloader=ImageDownloader(
                [repo_url] if repo_url else config.repo_urls,
                timeout_seconds=config.network_timeout_seconds,
                ssl_context=context,
            ),
            boot_control=boot_control,
            bootloader=SimulatedBootloader(boot_control, config.slots.directory),
            inventory=SlotInventory(config.slots.directory),
            journal=Journal(config.state_dir / "journal.json"),
            outbox=Outbox(config.state_dir / "outbox"),
            say=say,
            secondaries=Secondaries(config),
        )

    def close(self) -> None:
        """Close the network connections."""
        self._link.close()
        self._secondaries.close()
        self._downloader.close()

    def run_cycle(self) -> CycleResult:
        """Run one cycle: deliver old events, check in or resume, update, deliver events.

        Returns:
            How the cycle ended; errors are reported as lines and logged, not raised.
        """
        next_poll = self._config.poll_interval_seconds
        completed = False
        try:
            self._deliver()
            update = self._journal.read().update
            if update is None or update.phase is Phase.VERIFY or self._held(update):
                next_poll = self._check_in() or next_poll
            else:
                self._say(f"resuming assignment {update.assignment_id} at step {update.phase}")
            self._advance()
            update = self._journal.read().update
            if update is not None and update.install_not_before is not None and self._held(update):
                opens = (update.install_not_before - self._clock()).total_seconds()
                next_poll = max(1, min(next_poll, int(opens) + 1)) if opens > 0 else next_poll
            completed = True
        except ServerError as exc:
            self._say(f"cannot reach the server: {exc}")
        except ClientError as exc:
            logger.exception("update cycle stopped")
            self._say(f"cycle stopped: {exc}")
        try:
            delivered = self._deliver()
        except ClientError as exc:
            self._say(f"cannot report events: {exc}")
            delivered = False
        return CycleResult(completed=completed, delivered=delivered, next_poll_seconds=next_poll)

    def _held(self, record: UpdateRecord) -> bool:
        return record.phase is Phase.INSTALL and not record.in_window(self._clock())

    def _check_in(self) -> int:
        state = self._journal.read()
        active_image = self._inventory.read()[self._boot_control.read_state().committed]
        ecus = self._secondaries.ecu_reports(active_image)
        answer = self._send_check_in(ecus)
        if answer.offer is None:
            if state.update is not None:
                logger.info("assignment %s was withdrawn", state.update.assignment_id)
                self._journal.write(dataclasses.replace(state, update=None))
            self._say(
                "checked in, nothing to do (next check-in in "
                f"{answer.next_poll_seconds or self._config.poll_interval_seconds} s)"
            )
        else:
            self._take_offer(state, answer.offer)
        return answer.next_poll_seconds

    def _send_check_in(self, ecus: list[EcuReport]) -> CheckInAnswer:
        """One check-in: a heartbeat while the inventory is the one of the last manifest the
        server holds a chain of, else (or when the server refuses the heartbeat) a freshly
        signed manifest committing to a new chain."""
        inventory = {ecu.serial: ecu.installed_sha256 for ecu in ecus}
        chain = self._heartbeats.read()
        if chain is not None and chain.usable_for(inventory):
            chain, link = chain.advanced()
            self._heartbeats.write(chain)  # before sending: a link is never revealed twice
            try:
                answer = self._link.check_in(self._config.vin, ecus, heartbeat=link)
            except HeartbeatRefusedError as exc:
                logger.info("%s; checking in with a signed manifest", exc)
            else:
                if not answer.heartbeat_chain_held:
                    self._heartbeats.drop()  # used up: the next check-in signs
                return answer
        return self._signed_check_in(ecus, inventory)

    def _signed_check_in(self, ecus: list[EcuReport], inventory: dict[str, str]) -> CheckInAnswer:
        """A check-in with a manifest signed anew (every ECU's report has a fresh nonce)."""
        if not self._secondaries.complete:
            # A secondary sent no signed report: heartbeats could not stand for its inventory.
            self._heartbeats.drop()
            return self._link.check_in(
                self._config.vin, ecus, manifest=self._secondaries.sign_manifest()
            )
        chain = HeartbeatChain.new(inventory)
        manifest = self._secondaries.sign_manifest(heartbeat=chain.commitment())
        answer = self._link.check_in(self._config.vin, ecus, manifest=manifest)
        # Kept only once the server holds it: no link of it was revealed before.
        if answer.heartbeat_chain_held:
            self._heartbeats.write(dataclasses.replace(chain, held=True))
        else:
            self._heartbeats.drop()  # an older server, or a vehicle without keys
        return answer

    def _take_offer(self, state: JournalState, offer: UpdateOffer) -> None:
        record = state.update
        if record is not None and record.assignment_id == offer.assignment_id:
            if record.phase is not Phase.VERIFY:
                # Downloaded and held for its window: the server may have moved the window.
                self._save(
                    dataclasses.replace(
                        record,
                        install_not_before=offer.install_not_before,
                        install_not_after=offer.install_not_after,
                    )
                )
                return
        else:
            record = UpdateRecord(
                assignment_id=offer.assignment_id,
                attempt=str(uuid.uuid4()),
                phase=Phase.VERIFY,
                install_not_before=offer.install_not_before,
                install_not_after=offer.install_not_after,
            )
            self._journal.write(dataclasses.replace(state, update=record))
        self._emit(record, EventKind.CHECKED_IN)
        self._say(f"checked in, update offered (assignment {offer.assignment_id})")
        try:
            image = self._verifier.verify(
                offer.director,
                vin=self._config.vin,
                ecu=self._config.primary_ecu,
                release_counter_floor=state.release_counter,
            )
            self._secondaries.prepare(record.assignment_id, offer.director, self._verifier)
        except TransferInterruptedError:
            raise  # the assignment stays at this step; the next check-in verifies again
        except UpdateError as exc:
            self._fail(record, exc)
            return
        slot = other_slot(self._boot_control.read_state().committed)
        self._save(record.advance(Phase.DOWNLOAD, image=image, slot=slot))

    def _advance(self) -> None:
        steps: dict[Phase, Callable[[UpdateRecord, Slot], None]] = {
            Phase.DOWNLOAD: self._download,
            Phase.INSTALL: self._install,
            Phase.REBOOT: self._reboot,
            Phase.HEALTH: self._check_health,
            Phase.COMMIT: self._commit,
            Phase.ROLLBACK: self._roll_back,
        }
        while (record := self._journal.read().update) is not None and record.slot is not None:
            if self._held(record):
                self._say(
                    f"holding the install of {_image_of(record).target} until the "
                    f"maintenance window ({record.window_text()})"
                )
                return
            steps[record.phase](record, record.slot)

    def _slot_path(self, slot: Slot) -> Path:
        return self._config.slots.directory / f"{slot}.img"

    def _download(self, record: UpdateRecord, slot: Slot) -> None:
        image = _image_of(record)
        state = self._boot_control.read_state()
        try:
            if state.trying is not None or slot == state.committed:
                raise InstallError(
                    f"slot {slot} cannot take an image: slot {state.committed} is active and "
                    f"slot {state.trying or '-'} is being tried; finish that update first"
                )
            # The slot's content is untrusted from the first byte written until finish().
            self._inventory.record(slot, None)
            path = self._slot_path(slot)
            check_space(path, image.length)
            progress = self._config.state_dir / PROGRESS_FILE
            with SlotWriter(path, image, progress_path=progress) as writer:
                try:
                    self._downloader.download(image, writer)
                finally:
                    writer.checkpoint()
                    logger.info(
                        "fetched %d bytes in %d requests",
                        self._downloader.bytes_fetched,
                        self._downloader.requests,
                    )
                writer.finish()
            self._secondaries.download(record.assignment_id, self._downloader)
        except TransferInterruptedError:
            raise  # the journal stays at this step; the next cycle resumes the download
        except UpdateError as exc:
            self._fail(record, exc)
            return
        self._inventory.record(slot, image)
        self._emit(record, EventKind.DOWNLOADED, slot=slot)
        self._say(f"downloaded {image.target} ({format_size(image.length)})")
        self._emit(record, EventKind.VERIFIED, slot=slot)
        self._say(f"verified {image.target} (Director and Image repository agree)")
        self._save(record.advance(Phase.INSTALL))

    def _install(self, record: UpdateRecord, slot: Slot) -> None:
        if self._inventory.read()[slot] != _image_of(record):
            raise StateError(
                f"slot {slot} does not hold the verified {_image_of(record).target}; "
                "move the journal aside to drop this update"
            )
        boot_id = self._bootloader.boot_id()
        self._boot_control.set_next(slot, self._config.slots.max_tries)
        self._emit(record, EventKind.INSTALLED, slot=slot)
        self._say(f"installed into slot {slot}")
        self._save(record.advance(Phase.REBOOT, boot_id=boot_id))

    def _reboot(self, record: UpdateRecord, slot: Slot) -> None:
        if self._bootloader.boot_id() != record.boot_id:
            booted = self._boot_control.read_state().booted  # it booted since we asked
        else:
            booted = self._bootloader.reboot()
        self._emit(record, EventKind.REBOOTED, slot=booted)
        self._say(f"rebooted into slot {booted}")
        self._save(record.advance(Phase.HEALTH, booted=booted))

    def _fell_back(self, record: UpdateRecord, slot: Slot, state: BootState) -> bool:
        """Report a fallback when the bootloader no longer runs ``slot`` on trial."""
        if state.committed == slot or (state.trying == slot and state.booted == slot):
            return False
        # The bootloader ran out of tries and already fell back: never commit.
        self._secondaries.roll_back_all(record.assignment_id)
        self._boot_control.mark_bad(slot)
        self._inventory.record(slot, None)
        self._emit(
            record,
            EventKind.ROLLED_BACK,
            slot=state.booted,
            failure_type=FailureType.ROLLED_BACK,
            detail=f"slot {slot} did not boot; the bootloader fell back to slot {state.booted}",
        )
        self._say(f"rolled back to slot {state.booted}")
        self._finish()
        return True

    def _check_health(self, record: UpdateRecord, slot: Slot) -> None:
        state = self._boot_control.read_state()
        if self._fell_back(record, slot, state):
            return
        if state.committed == slot:  # committed before a power cut
            self._save(record.advance(Phase.COMMIT))
            return
        result = self._health(record, slot)
        if result.healthy:
            self._emit(record, EventKind.HEALTHY, slot=slot)
            self._say("healthy")
            self._save(record.advance(Phase.COMMIT))
            return
        self._emit(
            record,
            EventKind.HEALTH_FAILED,
            slot=slot,
            failure_type=FailureType.HEALTH,
            detail=result.detail,
        )
        self._say(f"health failed: {result.reason}")
        self._save(record.advance(Phase.ROLLBACK))

    def _health(self, record: UpdateRecord, slot: Slot) -> HealthResult:
        if self._inventory.read()[slot] != _image_of(record):
            return HealthResult(healthy=False, reason=f"slot {slot} lost its image record")
        health = self._config.health
        result = check_services(health.services)
        for command in health.all_commands:
            if not result.healthy:
                break
            result = run_health_check(command, health.timeout_seconds)
        # Phase one on the secondaries, once the primary itself is healthy.
        return self._secondaries.try_all(record.assignment_id) if result.healthy else result

    def _commit(self, record: UpdateRecord, slot: Slot) -> None:
        state = self._boot_control.read_state()
        if self._fell_back(record, slot, state):
            return
        self._secondaries.commit_all(record.assignment_id)
        self._boot_control.mark_good()
        self._emit(record, EventKind.COMMITTED, slot=slot)
        self._say(f"committed slot {slot}")
        self._finish(release_counter=_image_of(record).release_counter)

    def _roll_back(self, record: UpdateRecord, slot: Slot) -> None:
        self._secondaries.roll_back_all(record.assignment_id)
        self._boot_control.mark_bad(slot)
        self._inventory.record(slot, None)
        booted = self._boot_control.read_state().booted
        if booted == slot:
            booted = self._bootloader.reboot()
        self._emit(
            record,
            EventKind.ROLLED_BACK,
            slot=booted,
            failure_type=FailureType.HEALTH,
            detail=f"slot {slot} failed its health check; back on slot {booted}",
        )
        self._say(f"rolled back to slot {booted}")
        self._finish()

    def _fail(self, record: UpdateRecord, error: UpdateError) -> None:
        failure_type = failure_type_of(error)
        self._emit(record, EventKind.FAILED, failure_type=failure_type, detail=str(error))
        self._say(f"update failed ({failure_type.value.lower()}): {error}")
        self._finish()

    def _save(self, record: UpdateRecord) -> None:
        self._journal.write(dataclasses.replace(self._journal.read(), update=record))

    def _finish(self, *, release_counter: int = 0) -> None:
        state = self._journal.read()
        counter = max(state.release_counter, release_counter)
        self._journal.write(JournalState(release_counter=counter, update=None))
        self._secondaries.finish()

    def _emit(
        self,
        record: UpdateRecord,
        kind: EventKind,
        *,
        slot: str = "",
        failure_type: FailureType = FailureType.UNSPECIFIED,
        detail: str = "",
    ) -> None:
        self._outbox.enqueue(
            VehicleEvent(
                event_id=record.event_id(kind),
                assignment_id=record.assignment_id,
                kind=kind,
                failure_type=failure_type,
                detail=detail,
                slot=slot,
                occurred_at=self._clock(),
            )
        )

    def _deliver(self) -> bool:
        delivered = 0
        try:
            while events := self._outbox.pending(limit=REPORT_BATCH):
                self._link.report_events(self._config.vin, events)
                self._outbox.remove(events)
                delivered += len(events)
        except ServerError as exc:
            logger.warning("events stay queued: %s", exc)
            return False
        finally:
            if delivered:
                self._say(f"reported {delivered} event{'s' if delivered != 1 else ''}")
        return True


def _image_of(record: UpdateRecord) -> Image:
    if record.image is None:
        raise StateError(
            f"the journal's update record for assignment {record.assignment_id} names no "
            "image; move the journal aside to drop it"
        )
    return record.image
