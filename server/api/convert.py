"""Conversions between domain records and protobuf messages."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from staffel.v1 import campaign_pb2, fleet_pb2, release_pb2

from server.campaigns.eligibility import MaintenanceWindow, Pacing
from server.campaigns.gates import Gate, WaveCounts
from server.campaigns.models import AssignmentState, CampaignState
from server.campaigns.plan import CampaignPlan, WaveSpec
from server.campaigns.views import CampaignView
from server.fleet.registry import VehicleRecord
from server.fleet.selectors import FleetSelector
from server.releases.catalog import BundleRecord
from server.releases.models import Image


def timestamp(moment: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp; naive datetimes (SQLite) are taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    message = Timestamp()
    message.FromDatetime(moment)
    return message


def image_message(image: Image) -> release_pb2.Image:
    """The protobuf form of a published image."""
    return release_pb2.Image(
        target_name=image.target_name,
        name=image.name,
        version=image.version,
        hardware_id=image.hardware_id,
        release_counter=image.release_counter,
        ecu_type=image.ecu_type,
        sha256=image.sha256,
        length=image.length,
        uploaded_at=timestamp(image.uploaded_at),
        uploaded_by=image.uploaded_by,
        uploader_role=image.uploader_role,
        signed_role=image.signed_role,
        signed_version=image.signed_version,
        signed_keyids=[k for k in image.signed_keyids.split(",") if k],
        signed_at=timestamp(image.signed_at),
    )


def bundle_message(bundle: BundleRecord) -> release_pb2.Bundle:
    """The protobuf form of a bundle."""
    return release_pb2.Bundle(
        bundle_id=bundle.bundle_id,
        name=bundle.name,
        vehicle_model=bundle.vehicle_model,
        images=[image_message(i) for i in bundle.images],
        created_at=timestamp(bundle.created_at),
        version=bundle.version,
    )


def vehicle_message(vehicle: VehicleRecord) -> fleet_pb2.Vehicle:
    """The protobuf form of a vehicle."""
    return fleet_pb2.Vehicle(
        vin=vehicle.vin,
        model=vehicle.model,
        ecus=[
            fleet_pb2.Ecu(
                serial=e.serial,
                hardware_id=e.hardware_id,
                primary=e.primary,
                installed_sha256=e.installed_sha256,
                public_key=e.public_key,
            )
            for e in vehicle.ecus
        ],
        last_seen=timestamp(vehicle.last_seen),
        region=vehicle.region,
        site=vehicle.site,
        tags=list(vehicle.tags),
        variant=vehicle.variant,
    )


_CAMPAIGN_STATES = {
    CampaignState.DRAFT: campaign_pb2.CAMPAIGN_STATE_DRAFT,
    CampaignState.AWAITING_APPROVAL: campaign_pb2.CAMPAIGN_STATE_AWAITING_APPROVAL,
    CampaignState.APPROVED: campaign_pb2.CAMPAIGN_STATE_APPROVED,
    CampaignState.RUNNING: campaign_pb2.CAMPAIGN_STATE_RUNNING,
    CampaignState.PAUSED: campaign_pb2.CAMPAIGN_STATE_PAUSED,
    CampaignState.COMPLETED: campaign_pb2.CAMPAIGN_STATE_COMPLETED,
    CampaignState.ABORTED: campaign_pb2.CAMPAIGN_STATE_ABORTED,
}
_ASSIGNMENT_STATES = {
    AssignmentState.QUEUED: campaign_pb2.ASSIGNMENT_STATE_QUEUED,
    AssignmentState.PENDING: campaign_pb2.ASSIGNMENT_STATE_PENDING,
    AssignmentState.IN_PROGRESS: campaign_pb2.ASSIGNMENT_STATE_IN_PROGRESS,
    AssignmentState.COMMITTED: campaign_pb2.ASSIGNMENT_STATE_COMMITTED,
    AssignmentState.FAILED: campaign_pb2.ASSIGNMENT_STATE_FAILED,
    AssignmentState.ROLLED_BACK: campaign_pb2.ASSIGNMENT_STATE_ROLLED_BACK,
    AssignmentState.CANCELED: campaign_pb2.ASSIGNMENT_STATE_CANCELED,
}


def selector_message(selector: FleetSelector) -> campaign_pb2.FleetSelector:
    """The protobuf form of a fleet selector."""
    return campaign_pb2.FleetSelector(
        vehicle_model=selector.vehicle_model,
        vins=list(selector.vins),
        regions=list(selector.regions),
        sites=list(selector.sites),
        tags=list(selector.tags),
        installed_images=list(selector.installed_images),
    )


def selector_from(message: campaign_pb2.FleetSelector) -> FleetSelector:
    """The domain form of a fleet selector."""
    return FleetSelector(
        vehicle_model=message.vehicle_model,
        vins=tuple(message.vins),
        regions=tuple(message.regions),
        sites=tuple(message.sites),
        tags=tuple(message.tags),
        installed_images=tuple(message.installed_images),
    )


def plan_from(request: campaign_pb2.CreateCampaignRequest) -> CampaignPlan:
    """The campaign plan a create request describes (defaults where it says nothing)."""
    waves = tuple(
        WaveSpec(percent=w.percent)
        if w.WhichOneof("reach") == "percent"
        else WaveSpec(count=w.count)
        for w in request.waves
    ) or (WaveSpec(percent=100.0),)
    gate = Gate()
    if request.HasField("gate"):
        message = request.gate
        gate = Gate(
            success_percent=message.success_percent,
            max_failure_percent=(
                message.max_failure_percent if message.HasField("max_failure_percent") else None
            ),
            max_failure_count=(
                message.max_failure_count if message.HasField("max_failure_count") else None
            ),
            min_reports=message.min_reports,
            soak=timedelta(seconds=message.soak_seconds),
        )
    return CampaignPlan(
        waves=waves,
        gate=gate,
        pacing=Pacing(request.max_per_minute),
        windows=tuple(
            MaintenanceWindow(site=w.site, timezone=w.timezone, start=w.start, end=w.end)
            for w in request.maintenance_windows
        ),
        rollback_on_failure=request.rollback_on_failure,
    )


def _counts(counts: Counter[AssignmentState] | WaveCounts) -> campaign_pb2.CampaignCounts:
    get = (
        (lambda state: counts[state])
        if isinstance(counts, Counter)
        else (lambda state: getattr(counts, state.value))
    )
    return campaign_pb2.CampaignCounts(
        total=sum(get(s) for s in AssignmentState),
        queued=get(AssignmentState.QUEUED),
        pending=get(AssignmentState.PENDING),
        in_progress=get(AssignmentState.IN_PROGRESS),
        committed=get(AssignmentState.COMMITTED),
        failed=get(AssignmentState.FAILED),
        rolled_back=get(AssignmentState.ROLLED_BACK),
        canceled=get(AssignmentState.CANCELED),
    )


def campaign_message(view: CampaignView) -> campaign_pb2.Campaign:
    """The protobuf form of a campaign with its counts, waves and assignments."""
    gate = view.plan.gate
    return campaign_pb2.Campaign(
        campaign_id=view.campaign_id,
        name=view.name,
        bundle_id=view.bundle_id,
        selector=selector_message(view.selector),
        state=_CAMPAIGN_STATES[view.state],
        counts=_counts(view.counts),
        assignments=[
            campaign_pb2.AssignmentStatus(
                assignment_id=a.assignment_id,
                vin=a.vin,
                state=_ASSIGNMENT_STATES[a.state],
                last_event=a.last_event,
                updated_at=timestamp(a.updated_at),
                wave=a.wave,
                failure_type=a.failure_type,
                attempt=a.attempt,
            )
            for a in view.assignments
        ],
        created_at=timestamp(view.created_at),
        kind=view.kind.value,
        rollback_of=view.rollback_of,
        current_wave=view.current_wave,
        waves=[
            campaign_pb2.WaveProgress(
                wave=w.wave,
                reach=w.reach,
                counts=_counts(w.counts),
                status=w.status,
                opened_at=timestamp(w.opened_at),
                success_percent=w.counts.success_percent,
                failure_percent=w.counts.failure_percent,
                gate=w.gate,
            )
            for w in view.waves
        ],
        author=view.author,
        approved_by=view.approved_by,
        pause_reason=view.pause_reason,
        gate=campaign_pb2.Gate(
            success_percent=gate.success_percent,
            max_failure_percent=gate.max_failure_percent,
            max_failure_count=gate.max_failure_count,
            min_reports=gate.min_reports,
            soak_seconds=int(gate.soak.total_seconds()),
        ),
        max_per_minute=view.plan.pacing.max_per_minute,
        maintenance_windows=[
            campaign_pb2.MaintenanceWindow(
                site=w.site, timezone=w.timezone, start=w.start, end=w.end
            )
            for w in view.plan.windows
        ],
        rollback_on_failure=view.plan.rollback_on_failure,
        assignments_omitted=view.assignments_omitted,
        started_at=timestamp(view.started_at),
        completed_at=timestamp(view.completed_at),
    )
