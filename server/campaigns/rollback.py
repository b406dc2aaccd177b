"""Rollback campaigns: each affected vehicle gets its previous images back."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

from sqlalchemy import insert, update
from sqlmodel import Session, col, select

from server.auth import audit
from server.auth.roles import Principal
from server.campaigns.engine import campaign_public_id
from server.campaigns.gates import Gate
from server.campaigns.models import (
    FINAL_ASSIGNMENT_STATES,
    Assignment,
    AssignmentState,
    Campaign,
    CampaignKind,
    CampaignState,
)
from server.campaigns.plan import CampaignPlan
from server.fleet.models import Ecu
from server.releases.models import Image

# A rollback has one wave and never pauses itself: it restores what ran before.
ROLLBACK_PLAN = CampaignPlan(
    gate=Gate(success_percent=0.0, max_failure_percent=None, min_reports=0)
)
# Vehicles that took the update (or may be taking it) need their previous images back.
_AFFECTED = (AssignmentState.IN_PROGRESS, AssignmentState.COMMITTED)


def abort_assignments(session: Session, campaign_id: int, now: datetime, why: str) -> None:
    """Cancels every assignment of the campaign that has no outcome yet."""
    session.execute(
        update(Assignment)
        .where(col(Assignment.campaign_id) == campaign_id)
        .where(col(Assignment.state).not_in(FINAL_ASSIGNMENT_STATES))
        .values(state=AssignmentState.CANCELED, last_event=why[:1100], updated_at=now)
        .execution_options(synchronize_session=False)
    )


def _previous_targets(session: Session, affected: list[Assignment]) -> dict[str, dict[str, str]]:
    """Per VIN, ECU serial to the published image it ran before (when there is one)."""
    previous = {a.vin: json.loads(a.previous or "{}") for a in affected}
    shas = {sha for images in previous.values() for sha in images.values() if sha}
    images: dict[tuple[str, str], str] = {}
    for image in session.exec(select(Image).where(col(Image.sha256).in_(shas))).all():
        images[(image.sha256, image.hardware_id)] = image.target_name
    hardware: dict[str, str] = {}
    vins = list(previous)
    for start in range(0, len(vins), 5000):
        for ecu in session.exec(
            select(Ecu).where(col(Ecu.vin).in_(vins[start : start + 5000]))
        ).all():
            hardware[ecu.serial] = ecu.hardware_id
    targets: dict[str, dict[str, str]] = defaultdict(dict)
    for vin, ecus in previous.items():
        for serial, sha in ecus.items():
            name = images.get((sha, hardware.get(serial, "")))
            if name is not None:
                targets[vin][serial] = name
    return targets


def start_rollback(
    session: Session, source: Campaign, *, actor: Principal, now: datetime, reason: str
) -> Campaign:
    """Aborts ``source`` and starts a campaign giving its affected vehicles their old images.

    Vehicles whose previous images are not in the catalog (e.g. a factory image that was
    never published) are left out and counted in the audit entry.
    """
    assert source.id is not None  # noqa: S101 - persisted campaigns have ids
    source_id = campaign_public_id(source.id)
    affected = list(
        session.exec(
            select(Assignment)
            .where(Assignment.campaign_id == source.id)
            .where(col(Assignment.state).in_(_AFFECTED))
        ).all()
    )
    targets = _previous_targets(session, affected)
    abort_assignments(session, source.id, now, f"canceled: rolled back ({reason})")
    source.state = CampaignState.ABORTED
    source.pause_reason = f"rolled back: {reason}"
    source.completed_at = now
    session.add(source)
    rollback = Campaign(
        name=f"rollback-{source_id}"[:64],
        kind=CampaignKind.ROLLBACK,
        bundle_id=source.bundle_id,
        rollback_of=source.id,
        selector=source.selector,
        plan=ROLLBACK_PLAN.to_json(),
        state=CampaignState.RUNNING,
        current_wave=1,
        waves_opened=json.dumps([now.isoformat()]),
        author=actor.name,
        approved_by=f"{actor.name} (rollback of {source_id})",
        created_at=now,
        started_at=now,
    )
    session.add(rollback)
    session.flush()
    rows = [
        {
            "campaign_id": rollback.id,
            "vin": vin,
            "wave": 1,
            "state": AssignmentState.PENDING,
            "targets": json.dumps(ecus, sort_keys=True),
            "released_at": now,
            "updated_at": now,
            "last_event": f"rollback of {source_id}",
        }
        for vin, ecus in sorted(targets.items())
    ]
    for start in range(0, len(rows), 5000):
        session.execute(insert(Assignment), rows[start : start + 5000])
    assert rollback.id is not None  # noqa: S101 - set by the flush
    audit.record(
        session,
        actor,
        "campaign.rollback",
        source_id,
        lambda: now,
        rollback=campaign_public_id(rollback.id),
        vehicles=len(rows),
        without_previous_image=len(affected) - len(rows),
        reason=reason,
    )
    return rollback
