"""The check-in's gate for vehicle version manifests: verified before any answer, cheaply.

Every check-in passes :meth:`ManifestGate.admit` before the server decides anything. It
verifies the manifest against the ECU keys registered at provisioning and refuses a replay,
from memory: each process keeps, per vehicle, the ECUs' public keys and the freshness of
the last manifest it accepted (one database read at the vehicle's first check-in), so a
check-in costs the signature checks and no I/O.

A check-in that goes to the database (anything but a quiet "nothing to do") stores the
manifest first with :meth:`ManifestGate.record`, which checks freshness again against the
stored inventory, in the same transaction that writes it: this is the check that holds
across server processes and restarts, before the Director signs anything. A quiet check-in
keeps its manifest in memory only (its inventory is the stored one, unchanged), so it skips
the one signature the manifest's own signature covers (the primary's report, same key);
:meth:`ManifestGate.record` checks that one before anything is stored.

A vehicle registered without ECU keys (an import that had none) checks in without a
manifest, as before manifests existed; one with keys must send one. "No keys" is trusted
while the offer epoch stands still (registering an ECU or changing its key moves it, on
every server process within a second); without an epoch source, for
``KEYLESS_RECHECK_SECONDS``.

Heartbeats (:meth:`ManifestGate.admit_heartbeat`): a manifest may commit to a hash chain
(``HeartbeatCommitment``: anchor h_N, length N, h_(i+1) = SHA-256(h_i), h_0 secret on the
vehicle). Such a manifest is always stored (:meth:`ManifestGate.record`, with the
freshness check that holds across processes); then the gate remembers, per vehicle, the
last link it accepted (the anchor at first), how many links remain, and the manifest's
verified inventory. While the inventory stays the same, a check-in may carry the next link
instead of a manifest: one to a few SHA-256 and no parsing. Each link is accepted once
(compare-and-set under the gate's lock), so a captured heartbeat replayed is refused, and
no one who saw every heartbeat can make the next one. Chains live in this process's memory
only: a heartbeat reaching a process that does not hold the vehicle's chain (another
process sharing the port, a restart) is answered FAILED_PRECONDITION, and the vehicle signs
a manifest (a new chain). A heartbeat that goes to the database (an offer may be waiting)
is first confirmed to continue the vehicle's latest stored manifest
(:meth:`ManifestGate.confirm_heartbeat`), so a link the vehicle revealed to another process
cannot make this one store an inventory older than what that process stored since.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, NamedTuple

from securesystemslib.signer import Key
from sqlalchemy import bindparam
from sqlalchemy import select as sql_select
from sqlmodel import SQLModel

from server.clock import Clock, system_clock
from server.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from server.fleet import models as _fleet_models  # noqa: F401 - its tables, named below
from server.fleet.registry import EcuSpec, ReportedEcu, ecu_public_key
from server.repository import models as _repository_models  # noqa: F401 - likewise
from server.repository.manifests import (
    HEARTBEAT_LINK_BYTES,
    Freshness,
    VerifiedManifest,
    check_fresh,
    check_primary_report,
    manifest_required,
    record_manifest,
    stored_freshness,
    verify_manifest,
)
from server.store import Database

MAX_CACHED_VEHICLES: Final = 200_000  # entries (~1 KiB each); cleared when full
# A vehicle found without keys is asked of the database again after this long, so one
# provisioned meanwhile (elsewhere) is held to its manifest.
KEYLESS_RECHECK_SECONDS: Final = 10.0  # seconds
# A heartbeat may skip this many links less one (heartbeats lost on the way, e.g. answered
# by a relay from its cache while its uplink was down): hashing it 1 to this many times
# must give the last accepted link.
MAX_HEARTBEAT_STEPS: Final = 16


_ECUS: Final = SQLModel.metadata.tables["fleet_ecu"]
_INVENTORIES: Final = SQLModel.metadata.tables["repo_vehicle_inventory"]
_KEYS: Final = sql_select(_ECUS.c.serial, _ECUS.c.public_key).where(
    _ECUS.c.vin == bindparam("vin"), _ECUS.c.public_key != ""
)
_FRESHNESS: Final = sql_select(_INVENTORIES.c.latest_time, _INVENTORIES.c.nonces).where(
    _INVENTORIES.c.vin == bindparam("vin")
)


@dataclass(slots=True)
class _Chain:
    """The heartbeat chain of a vehicle's last admitted manifest, as far as it was used
    (advanced in place, under the gate's lock)."""

    link: bytes  # the last accepted link (the manifest's anchor at first)
    remaining: int  # links not revealed yet
    inventory: Mapping[str, str]  # the manifest's verified reports: ECU serial -> sha256
    nonce: str  # the manifest's last report nonce: the stored inventory's last one


@dataclass(frozen=True)
class _Known:
    """What the gate holds of one vehicle."""

    keys: Mapping[str, Key]
    freshness: Freshness | None
    loaded_at: float  # time.monotonic() of the database read
    epoch: int | None  # the offer epoch read before the database read (None: unknown)
    chain: _Chain | None = None  # the last admitted manifest's heartbeat chain


class AcceptedHeartbeat(NamedTuple):
    """A heartbeat the gate accepted: the vehicle's inventory is the verified one.

    A named tuple: one is made for every heartbeat, and a tuple is the cheapest to make."""

    vin: str
    remaining: int  # links of the chain still unrevealed (0: the next check-in signs)
    nonce: str  # the committing manifest's last report nonce


class ManifestGate:
    """Verifies each check-in's vehicle version manifest; safe to use from several threads."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = system_clock,
        max_vehicles: int = MAX_CACHED_VEHICLES,
        offer_epoch: Callable[[], int | None] | None = None,
    ) -> None:
        """A gate over the fleet registry and inventories of ``database``.

        ``offer_epoch`` returns the current offer epoch, or None while it is unknown or
        stale (``QuietVehicles.epoch``); a vehicle found without keys is trusted to have
        none while it stands still. Without it, for ``KEYLESS_RECHECK_SECONDS``.
        """
        self._database = database
        self._clock = clock
        self._offer_epoch = offer_epoch
        self._max_vehicles = max_vehicles
        self._lock = threading.Lock()
        self._vehicles: dict[str, _Known] = {}

    async def admit(
        self, vin: str, data: bytes, ecus: Sequence[EcuSpec], *, quiet: bool = False
    ) -> VerifiedManifest | None:
        """Verifies the manifest a check-in carries and refuses a replay.

        Args:
            vin: The vehicle checking in.
            data: ``CheckInRequest.manifest`` as received.
            ecus: What the request's ``ecus`` say each ECU runs; each report must agree.
            quiet: The answer will likely be "nothing to do" from memory: skip the
                primary's report signature, which the manifest's covers (``record``
                checks it if the manifest is stored after all).

        Returns:
            The verified manifest, or None for a vehicle registered without ECU keys (or
            not registered: the check-in then refuses it).

        Raises:
            PermissionDeniedError: No manifest from a vehicle with keys, a bad signature,
                an unknown ECU, or a replay (a nonce seen before, an older report).
            InvalidArgumentError: A malformed manifest, or one that disagrees with ``ecus``.
        """
        known = self._current(vin)
        if known is None:
            known = await asyncio.to_thread(self._load, vin)
        return self._admit(vin, known, data, ecus, quiet=quiet)

    def admit_blocking(
        self, vin: str, data: bytes, ecus: Sequence[EcuSpec], *, quiet: bool = False
    ) -> VerifiedManifest | None:
        """:meth:`admit` for a worker thread: reads the database itself when it must.

        A check-in of a vehicle the gate does not hold yet (see :meth:`needs_read`) admits
        it here, in the same worker-thread hop as the check-in's transaction.
        """
        known = self._current(vin) or self._load(vin)
        return self._admit(vin, known, data, ecus, quiet=quiet)

    def needs_read(self, vin: str) -> bool:
        """Whether admitting ``vin`` now would read the database."""
        return self._current(vin) is None

    def keyless_to_confirm(self, vin: str) -> bool:
        """Whether ``vin`` may be taken to have no ECU keys on the strength of its
        check-in's own registry read (``check_in(keyless=True)``, then
        :meth:`confirm_keyless`), instead of the gate reading the database first: a vehicle
        new to this process, or one found without keys that is no longer trusted to have
        none (the offer epoch moved). Only for a check-in that carries no manifest."""
        known = self._vehicles.get(vin)
        return known is None or (not known.keys and not self._still_keyless(known))

    def keyless_now(self, vin: str) -> bool:
        """Whether ``vin`` is known to have no ECU keys and still trusted to have none, so
        that a check-in without a manifest is admitted as it stands (no I/O)."""
        known = self._vehicles.get(vin)
        return known is not None and not known.keys and self._still_keyless(known)

    def epoch_now(self) -> int | None:
        """The offer epoch to pass to :meth:`confirm_keyless`: read before the registry is."""
        return self._offer_epoch() if self._offer_epoch is not None else None

    def confirm_keyless(self, vin: str, epoch: int | None) -> None:
        """Records that ``vin`` had no ECU keys in a read made after ``epoch`` was read
        (:meth:`epoch_now`): "no keys" is trusted again while that epoch stands."""
        with self._lock:
            known = self._vehicles.get(vin)
            if known is None:
                if len(self._vehicles) >= self._max_vehicles:
                    self._vehicles.clear()
                self._vehicles[vin] = _Known(
                    keys={}, freshness=None, loaded_at=time.monotonic(), epoch=epoch
                )
            elif not known.keys:
                self._vehicles[vin] = replace(known, epoch=epoch, loaded_at=time.monotonic())

    def _current(self, vin: str) -> _Known | None:
        known = self._vehicles.get(vin)
        if known is None or (not known.keys and not self._still_keyless(known)):
            return None
        return known

    def _admit(
        self, vin: str, known: _Known, data: bytes, ecus: Sequence[EcuSpec], *, quiet: bool
    ) -> VerifiedManifest | None:
        if not known.keys:
            return None
        if not data:
            raise manifest_required(vin)
        manifest = verify_manifest(data, vin=vin, ecu_keys=known.keys, primary_report_covered=quiet)
        _check_agrees(manifest, ecus)
        with self._lock:
            current = self._vehicles.get(vin, known)
            fresh = check_fresh(manifest, current.freshness)
            # A newer manifest ends the chain of the one before; its own (if it commits to
            # one) is held once it is stored (``record``).
            self._vehicles[vin] = replace(current, freshness=fresh, chain=None)
        return manifest

    def admit_heartbeat(
        self, vin: str, manifest: bytes, heartbeat: bytes, ecus: Sequence[ReportedEcu]
    ) -> AcceptedHeartbeat:
        """Accepts the next link of the vehicle's heartbeat chain, once; from memory only.

        Args:
            vin: The vehicle checking in.
            manifest: ``CheckInRequest.manifest``: must be empty.
            heartbeat: ``CheckInRequest.heartbeat``: the link revealed.
            ecus: What the request's ``ecus`` say; must be the chain's verified inventory.

        Returns:
            The accepted heartbeat; the link is used up.

        Raises:
            InvalidArgumentError: A manifest came too, the link is not 32 bytes, the
                vehicle has no ECU keys (so no chain), or ``ecus`` differ from the
                inventory of the manifest that committed to the chain.
            FailedPreconditionError: This process holds no chain of the vehicle (another
                process or a restart; or its chain is used up): sign a manifest.
            PermissionDeniedError: The link is not the next one (replayed, or wrong).
        """
        if manifest:
            raise InvalidArgumentError(
                f"vehicle {vin}: the check-in carries both a version manifest and a heartbeat; "
                f"send one of them"
            )
        if len(heartbeat) != HEARTBEAT_LINK_BYTES:
            raise InvalidArgumentError(
                f"vehicle {vin}: a heartbeat is one {HEARTBEAT_LINK_BYTES}-byte link of the "
                f"chain its last manifest committed to, not {len(heartbeat)} bytes"
            )
        with self._lock:  # the check and the advance are one step: each link passes once
            known = self._vehicles.get(vin)
            if known is not None and not known.keys:
                raise InvalidArgumentError(
                    f"vehicle {vin} is registered without ECU keys, so no signed manifest "
                    f"committed to a heartbeat chain: send no heartbeat"
                )
            chain = known.chain if known is not None else None
            if known is None or chain is None:
                raise FailedPreconditionError(
                    f"vehicle {vin}: this server process holds no heartbeat chain of the "
                    f"vehicle (it restarted, or another process admitted the manifest); send "
                    f"a signed version manifest"
                )
            if chain.remaining == 0:
                raise FailedPreconditionError(
                    f"vehicle {vin} used up its heartbeat chain; send a signed version "
                    f"manifest with a new one"
                )
            _check_inventory(vin, chain.inventory, ecus)
            steps = _steps_to(heartbeat, chain.link, min(MAX_HEARTBEAT_STEPS, chain.remaining))
            if steps == 0:
                raise PermissionDeniedError(
                    f"vehicle {vin}: the heartbeat is not one of the next "
                    f"{MAX_HEARTBEAT_STEPS} links of its chain (a replayed or forged "
                    f"heartbeat): refused; the vehicle signs a version manifest"
                )
            remaining = chain.remaining - steps
            chain.link, chain.remaining = heartbeat, remaining
        return AcceptedHeartbeat(vin=vin, remaining=remaining, nonce=chain.nonce)

    def confirm_heartbeat(self, heartbeat: AcceptedHeartbeat) -> None:
        """Checks that the chain continues the vehicle's latest stored manifest (blocking).

        For a heartbeat whose check-in goes to the database: another process may have
        stored a newer manifest since (the vehicle fell back there), and the link may have
        been revealed there first. (A manifest stored between this read and the check-in's
        transaction is not seen: a window of one database round trip.)

        Raises:
            FailedPreconditionError: A newer manifest was stored; this process drops the
                chain, and the vehicle signs a manifest.
        """
        with self._database.engine.connect() as connection:
            row = connection.execute(_FRESHNESS, {"vin": heartbeat.vin}).first()
        stored = stored_freshness(row)
        if stored is not None and stored.nonces and stored.nonces[-1] == heartbeat.nonce:
            return
        with self._lock:
            current = self._vehicles.get(heartbeat.vin)
            if current is not None:
                self._vehicles[heartbeat.vin] = replace(current, chain=None)
        raise FailedPreconditionError(
            f"vehicle {heartbeat.vin}: a newer version manifest was stored (through another "
            f"server process) since the one whose heartbeat chain this continues; send a "
            f"signed version manifest"
        )

    def record(self, manifest: VerifiedManifest | None) -> None:
        """Stores a verified manifest as the vehicle's inventory (blocking; database).

        A manifest committing to a heartbeat chain: the gate holds the chain once stored,
        unless a newer manifest of the vehicle was admitted meanwhile.

        Raises:
            PermissionDeniedError: The stored inventory shows the manifest is a replay.
        """
        if manifest is None:
            return
        if not manifest.primary_report_checked:
            known = self._vehicles.get(manifest.vin) or self._load(manifest.vin)
            manifest = check_primary_report(manifest, known.keys)
        with self._database.session() as session:
            record_manifest(session, manifest, now=self._clock())
        commitment = manifest.heartbeat
        if commitment is None:
            return
        nonce = manifest.reports[-1].nonce
        inventory = {report.ecu_serial: report.sha256 for report in manifest.reports}
        chain = _Chain(commitment.anchor, commitment.length, inventory, nonce)
        with self._lock:
            current = self._vehicles.get(manifest.vin)
            fresh = current.freshness if current is not None else None
            if current is not None and fresh is not None and fresh.nonces[-1:] == (nonce,):
                self._vehicles[manifest.vin] = replace(current, chain=chain)

    def holds_chain(self, vin: str) -> bool:
        """Whether the gate holds a heartbeat chain of ``vin`` with links left."""
        known = self._vehicles.get(vin)
        return known is not None and known.chain is not None and known.chain.remaining > 0

    def forget(self, vin: str) -> None:
        """Drops what the gate holds of ``vin`` (read again at its next check-in)."""
        with self._lock:
            self._vehicles.pop(vin, None)

    def _still_keyless(self, known: _Known) -> bool:
        """Whether a vehicle found without keys may still be taken to have none."""
        if known.epoch is not None and self._offer_epoch is not None:
            return self._offer_epoch() == known.epoch
        return time.monotonic() - known.loaded_at <= KEYLESS_RECHECK_SECONDS

    def _load(self, vin: str) -> _Known:
        # Read before the keys: a key added later moves it.
        epoch = self._offer_epoch() if self._offer_epoch is not None else None
        # Prebuilt Core reads: a vehicle's first check-in per process comes here.
        with self._database.engine.connect() as connection:
            rows = connection.execute(_KEYS, {"vin": vin}).all()
            inventory = connection.execute(_FRESHNESS, {"vin": vin}).first()
        freshness = stored_freshness(inventory)
        keys = {serial: ecu_public_key(serial, text) for serial, text in rows}
        known = _Known(keys=keys, freshness=freshness, loaded_at=time.monotonic(), epoch=epoch)
        with self._lock:
            if len(self._vehicles) >= self._max_vehicles:
                self._vehicles.clear()
            current = self._vehicles.get(vin)
            if current is not None and current.freshness is not None:
                # A check-in admitted meanwhile is fresher than what the database held.
                known = replace(known, freshness=current.freshness, chain=current.chain)
            self._vehicles[vin] = known
        return known


def _check_agrees(manifest: VerifiedManifest, ecus: Sequence[EcuSpec]) -> None:
    """Each signed report must name the image the request's (unsigned) ECU list names."""
    installed = {ecu.serial: ecu.installed_sha256 for ecu in ecus}
    for report in manifest.reports:
        if installed.get(report.ecu_serial, report.sha256) != report.sha256:
            raise InvalidArgumentError(
                f"ECU {report.ecu_serial}: the signed version report names image "
                f"{report.sha256 or '(none)'}, the check-in names "
                f"{installed[report.ecu_serial] or '(none)'}; refused"
            )


def _check_inventory(vin: str, inventory: Mapping[str, str], ecus: Sequence[ReportedEcu]) -> None:
    """A heartbeat's (unsigned) ECU list must be exactly the chain's verified inventory."""
    if len(ecus) == 1 == len(inventory):  # most vehicles: one gateway, no dictionary built
        ecu = ecus[0]
        if inventory.get(ecu.serial) == ecu.installed_sha256:
            return
    reported = {ecu.serial: ecu.installed_sha256 for ecu in ecus}
    if len(reported) != len(ecus) or reported != inventory:
        raise InvalidArgumentError(
            f"vehicle {vin}: the heartbeat's ECUs {sorted(reported.items())} differ from the "
            f"inventory its last signed manifest reported {sorted(inventory.items())}; a "
            f"changed inventory is reported in a signed version manifest"
        )


def _steps_to(link: bytes, last: bytes, bound: int) -> int:
    """How many SHA-256 turn ``link`` into ``last`` (1 to ``bound``); 0 when none does."""
    current = link
    for steps in range(1, bound + 1):
        current = hashlib.sha256(current).digest()
        if hmac.compare_digest(current, last):
            return steps
    return 0
