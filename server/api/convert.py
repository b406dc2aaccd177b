"""Conversions between domain records and protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from staffel.v1 import campaign_pb2, fleet_pb2, release_pb2

from server.campaigns.engine import CampaignView
from server.campaigns.models import AssignmentState, CampaignState
from server.fleet.registry import VehicleRecord
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
        sha256=image.sha256,
        length=image.length,
        uploaded_at=timestamp(image.uploaded_at),
    )


def bundle_message(bundle: BundleRecord) -> release_pb2.Bundle:
    """The protobuf form of a bundle."""
    return release_pb2.Bundle(
        bundle_id=bundle.bundle_id,
        name=bundle.name,
        vehicle_model=bundle.vehicle_model,
        images=[image_message(i) for i in bundle.images],
        created_at=timestamp(bundle.created_at),
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
            )
            for e in vehicle.ecus
        ],
        last_seen=timestamp(vehicle.last_seen),
    )


_CAMPAIGN_STATES = {
    CampaignState.DRAFT: campaign_pb2.CAMPAIGN_STATE_DRAFT,
    CampaignState.RUNNING: campaign_pb2.CAMPAIGN_STATE_RUNNING,
    CampaignState.COMPLETED: campaign_pb2.CAMPAIGN_STATE_COMPLETED,
}
_ASSIGNMENT_STATES = {
    AssignmentState.PENDING: campaign_pb2.ASSIGNMENT_STATE_PENDING,
    AssignmentState.IN_PROGRESS: campaign_pb2.ASSIGNMENT_STATE_IN_PROGRESS,
    AssignmentState.COMMITTED: campaign_pb2.ASSIGNMENT_STATE_COMMITTED,
    AssignmentState.FAILED: campaign_pb2.ASSIGNMENT_STATE_FAILED,
    AssignmentState.ROLLED_BACK: campaign_pb2.ASSIGNMENT_STATE_ROLLED_BACK,
}


def campaign_message(view: CampaignView) -> campaign_pb2.Campaign:
    """The protobuf form of a campaign with its counts and assignments."""
    counts = view.counts
    return campaign_pb2.Campaign(
        campaign_id=view.campaign_id,
        name=view.name,
        bundle_id=view.bundle_id,
        selector=campaign_pb2.FleetSelector(
            vehicle_model=view.selector.vehicle_model, vins=list(view.selector.vins)
        ),
        state=_CAMPAIGN_STATES[view.state],
        counts=campaign_pb2.CampaignCounts(
            total=sum(counts.values()),
            pending=counts[AssignmentState.PENDING],
            in_progress=counts[AssignmentState.IN_PROGRESS],
            committed=counts[AssignmentState.COMMITTED],
            failed=counts[AssignmentState.FAILED],
            rolled_back=counts[AssignmentState.ROLLED_BACK],
        ),
        assignments=[
            campaign_pb2.AssignmentStatus(
                assignment_id=a.assignment_id,
                vin=a.vin,
                state=_ASSIGNMENT_STATES[a.state],
                last_event=a.last_event,
                updated_at=timestamp(a.updated_at),
            )
            for a in view.assignments
        ],
        created_at=timestamp(view.created_at),
    )
