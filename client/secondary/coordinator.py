"""The primary's side of secondary ECUs: hand each its image, commit all or roll back all.

The agent calls it at its own steps, whose phase its journal keeps:

- offer verified: :meth:`Secondaries.prepare` runs full verification of each secondary's
  image (the primary's verifier, the same as for its own) and journals the images and the
  Director targets (``secondaries.json``);
- download: :meth:`download` stages each image on the gateway (resumable, hash-checked);
- health: after the primary's own check, :meth:`try_all` streams each secondary its image
  with the Director targets; the secondary verifies them itself (partial verification),
  installs, boots on trial and answers with its health (phase one);
- commit / rollback (the decision, journaled by the agent first): :meth:`commit_all` or
  :meth:`roll_back_all` (phase two). Every call is safe to repeat after a power cut; a
  secondary that cannot be reached keeps the agent at its step until the next cycle.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
from staffel.v1 import secondary_pb2, secondary_pb2_grpc

from client.atomicfile import write_atomically
from client.config import ClientConfig, EcuConfig
from client.errors import ServerError, StateError
from client.health import HealthResult
from client.images import Image
from client.install import SlotWriter
from client.link import EcuReport
from client.transfer import ImageDownloader
from client.uptane import DirectorMetadata, UptaneVerifier
from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest

logger = logging.getLogger(__name__)

STATE_FILE = "secondaries.json"
STAGING = "secondary-images"
KEY_FILE = "ecu-key.pem"
CHUNK_BYTES = 256 * 1024
CALL_SECONDS = 600  # an install streams, writes, boots and runs health checks


class SecondaryUnreachableError(ServerError):
    """A secondary ECU did not answer; the step is retried at the next cycle."""


class Secondaries:
    """The secondary ECUs of one vehicle, seen from its primary."""

    def __init__(self, config: ClientConfig) -> None:
        """Prepare channels to the secondaries the config names (opened lazily)."""
        self._config = config
        self._state_path = config.state_dir / STATE_FILE
        self._staging = config.state_dir / STAGING
        self._channels: dict[str, grpc.Channel] = {}
        # What :meth:`ecu_reports` collected last, for :meth:`sign_manifest`.
        self._primary_image: Image | None = None
        self._secondary_reports: list[dict[str, Any]] = []
        # Every ECU sent its signed report at the last :meth:`ecu_reports`.
        self.complete = False

    def close(self) -> None:
        """Close the channels."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _stub(self, ecu: EcuConfig) -> secondary_pb2_grpc.SecondaryServiceStub:
        if ecu.serial not in self._channels:
            self._channels[ecu.serial] = grpc.insecure_channel(ecu.address)
        return secondary_pb2_grpc.SecondaryServiceStub(self._channels[ecu.serial])

    def _state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self._state_path}: {exc}; move it aside") from exc
        return data

    def _images(self, assignment_id: str) -> dict[str, Image]:
        state = self._state()
        if state.get("assignment_id") != assignment_id:
            return {}
        return {serial: Image.from_json(raw) for serial, raw in state["images"].items()}

    def prepare(
        self,
        assignment_id: str,
        director: DirectorMetadata,
        verifier: UptaneVerifier,
    ) -> None:
        """Verify each secondary's image (full verification) and journal the images.

        Args:
            assignment_id: The update.
            director: The Director metadata of the offer.
            verifier: The primary's full verification, run for each secondary's image.

        Raises:
            VerificationError: A secondary's image was refused.
        """
        named = _serials_named(director.targets)
        images = {
            ecu.serial: verifier.verify(
                director, vin=self._config.vin, ecu=ecu, release_counter_floor=0
            ).to_json()
            for ecu in self._config.secondary_ecus
            if ecu.serial in named
        }
        state = {
            "assignment_id": assignment_id,
            "director_targets": base64.b64encode(director.targets).decode(),
            "images": images,
            "downloaded": [],
        }
        write_atomically(self._state_path, json.dumps(state, sort_keys=True).encode())

    def download(self, assignment_id: str, downloader: ImageDownloader) -> None:
        """Stage each secondary's image on the gateway (resumes after a cut).

        Raises:
            TransferInterruptedError: The download broke off; the next cycle resumes it.
            DownloadError, InstallError: The bytes are not the verified image.
        """
        state = self._state()
        self._staging.mkdir(parents=True, exist_ok=True)
        for serial, image in self._images(assignment_id).items():
            if serial in state["downloaded"]:
                continue
            path = self._staging / f"{serial}.img"
            progress = self._staging / f"{serial}.progress"
            with SlotWriter(path, image, progress_path=progress) as writer:
                try:
                    downloader.download(image, writer)
                finally:
                    writer.checkpoint()
                writer.finish()
            state["downloaded"].append(serial)
            write_atomically(self._state_path, json.dumps(state, sort_keys=True).encode())

    def try_all(self, assignment_id: str) -> HealthResult:
        """Phase one on every secondary of the update: install, boot on trial, health.

        Returns:
            Healthy only when every secondary is; otherwise which ones failed and why.

        Raises:
            SecondaryUnreachableError: A secondary did not answer.
        """
        targets = base64.b64decode(self._state().get("director_targets", ""))
        failures = []
        for ecu in self._involved(assignment_id):
            try:
                reply = self._stub(ecu).Install(
                    self._chunks(assignment_id, targets, ecu.serial), timeout=CALL_SECONDS
                )
            except grpc.RpcError as exc:
                if _code(exc) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise SecondaryUnreachableError(
                        f"secondary {ecu.serial} at {ecu.address}: {_details(exc)}"
                    ) from exc
                failures.append(f"secondary {ecu.serial} refused the update: {_details(exc)}")
                continue
            if not reply.healthy:
                failures.append(f"secondary {ecu.serial} failed its health check: {reply.detail}")
            else:
                logger.info("secondary %s is healthy on slot %s", ecu.serial, reply.slot)
        if failures:
            return HealthResult(healthy=False, reason="; ".join(failures))
        return HealthResult(healthy=True)

    def _chunks(
        self, assignment_id: str, targets: bytes, serial: str
    ) -> Iterator[secondary_pb2.InstallChunk]:
        yield secondary_pb2.InstallChunk(assignment_id=assignment_id, director_targets=targets)
        with (self._staging / f"{serial}.img").open("rb") as image:
            while chunk := image.read(CHUNK_BYTES):
                yield secondary_pb2.InstallChunk(data=chunk)

    def _involved(self, assignment_id: str) -> list[EcuConfig]:
        images = self._images(assignment_id)
        return [ecu for ecu in self._config.secondary_ecus if ecu.serial in images]

    def commit_all(self, assignment_id: str) -> None:
        """Phase two: every secondary of the update keeps its new slot.

        Raises:
            SecondaryUnreachableError: A secondary did not answer or refused.
        """
        self._decide(assignment_id, "Commit")

    def roll_back_all(self, assignment_id: str) -> None:
        """Phase two: every secondary of the update returns to its committed slot.

        Raises:
            SecondaryUnreachableError: A secondary did not answer or refused.
        """
        self._decide(assignment_id, "RollBack")

    def _decide(self, assignment_id: str, method: str) -> None:
        for ecu in self._involved(assignment_id):
            call = getattr(self._stub(ecu), method)
            try:
                call(secondary_pb2.Decision(assignment_id=assignment_id), timeout=CALL_SECONDS)
            except grpc.RpcError as exc:
                raise SecondaryUnreachableError(
                    f"secondary {ecu.serial} at {ecu.address}: {method} failed: "
                    f"{_details(exc)}; retried at the next cycle"
                ) from exc
            logger.info("secondary %s: %s done", ecu.serial, method)

    def finish(self) -> None:
        """Forget the update: drop the journal and the staged images."""
        self._state_path.unlink(missing_ok=True)
        if self._staging.is_dir():
            for path in self._staging.iterdir():
                path.unlink()

    def ecu_reports(self, primary_image: Image | None) -> list[EcuReport]:
        """What each ECU runs, for the check-in (asks each secondary for its signed report).

        A secondary that does not answer reports nothing installed (and :attr:`complete`
        is then False). :meth:`sign_manifest` signs the vehicle version manifest of what
        this collected.
        """
        primary = self._config.primary_ecu
        reports = [
            EcuReport(primary.serial, primary.hardware_id, _sha(primary_image), primary=True)
        ]
        signed: list[dict[str, Any]] = []
        for ecu in self._config.secondary_ecus:
            installed = ""
            try:
                answer = self._stub(ecu).GetVersionReport(
                    secondary_pb2.VersionReportRequest(), timeout=10
                )
                installed = answer.installed_sha256
                signed.append(json.loads(answer.signed_report))
            except grpc.RpcError as exc:
                logger.warning("secondary %s sends no version report: %s", ecu.serial, exc)
            reports.append(EcuReport(ecu.serial, ecu.hardware_id, installed, primary=False))
        self._primary_image = primary_image
        self._secondary_reports = signed
        self.complete = len(signed) == len(self._config.secondary_ecus)
        return reports

    def sign_manifest(self, *, heartbeat: dict[str, Any] | None = None) -> bytes:
        """The vehicle version manifest of the last :meth:`ecu_reports`, signed now.

        It holds every ECU's signed version report: the primary's, signed with its key
        now (a fresh nonce), and each secondary's, as the secondary signed it; and the
        ``heartbeat`` commitment when given. Also written to ``manifest.json`` in the
        state folder.
        """
        primary = self._config.primary_ecu
        signed = [self._primary_report(self._primary_image), *self._secondary_reports]
        manifest = vehicle_manifest(
            self._config.vin, primary.serial, signed, self._key(), heartbeat=heartbeat
        )
        write_atomically(self._config.state_dir / "manifest.json", manifest)
        return manifest

    def _key(self) -> EcuKey:
        provisioned = self._config.primary_ecu.key_file
        if provisioned is not None:
            # Made at provisioning; the server holds its public key.
            return EcuKey.load(provisioned)
        path = self._config.state_dir / KEY_FILE
        if not path.exists():
            # Made aside and renamed, so that a power cut never leaves half a key.
            fresh = path.with_suffix(".new")
            fresh.unlink(missing_ok=True)
            EcuKey.generate(fresh)
            fresh.replace(path)
        return EcuKey.load(path)

    def _primary_report(self, image: Image | None) -> dict[str, Any]:
        report = ecu_version_report(
            self._config.primary_ecu.serial,
            image.target if image else "",
            image.length if image else 0,
            _sha(image),
        )
        return sign_report(report, self._key())


def _sha(image: Image | None) -> str:
    return image.sha256 if image is not None else ""


def _serials_named(targets: bytes) -> set[str]:
    """The ECU serials the (not yet verified) Director targets name; verification follows."""
    try:
        entries = json.loads(targets)["signed"]["targets"].values()
        return {serial for entry in entries for serial in entry.get("custom", {}).get("ecus", {})}
    except (ValueError, KeyError, TypeError, AttributeError):
        return set()


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _details(exc: grpc.RpcError) -> str:
    details, code = getattr(exc, "details", None), _code(exc)
    if callable(details) and code is not None:
        return f"{code.name}: {details()}"
    return str(exc)
