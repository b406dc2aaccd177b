"""The staging gate: may a wave open at a site? (pure decision, one small query each side).

``may_open_wave`` decides for one site; ``held_sites`` is the campaign engine's hook: which
(wave, site) pairs of a campaign still wait for their relay, so that the engine releases
their queued assignments only once the site's relay holds the bundle (or the wait is over).
"""

from __future__ import annotations

from collections.abc import Set
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from server.campaigns.models import Assignment, AssignmentState
from server.fleet.models import Vehicle
from server.releases.models import BundleImage, Image
from server.staging.models import RelayReadiness, StagingWait

DEFAULT_WAIT = timedelta(hours=2)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def may_open_wave(
    session: Session,
    *,
    campaign_id: int,
    wave: int,
    site: str,
    needed_sha256: Set[str],
    now: datetime,
    wait: timedelta = DEFAULT_WAIT,
) -> bool:
    """Whether wave ``wave`` of a campaign may open for the vehicles of ``site``.

    It may when the site has no relay, when one of its relays reported holding every blob
    the wave needs, or when ``wait`` has passed since the engine first asked (so that a
    dead relay delays a wave, but never blocks a campaign). The first refusal is recorded.

    Args:
        session: The caller's session; a refusal adds a ``StagingWait`` row to it.
        campaign_id: The campaign.
        wave: The wave about to open (1-based).
        site: The site of the vehicles concerned.
        needed_sha256: SHA-256 of every blob of the campaign's bundle.
        now: The engine's clock.
        wait: How long a relay that is not ready may delay the wave.
    """
    relays = session.exec(select(RelayReadiness).where(RelayReadiness.site == site)).all()
    if not relays:
        return True
    if any(needed_sha256 <= set(relay.cached_sha256.split()) for relay in relays):
        return True
    waiting = session.get(StagingWait, (campaign_id, wave, site))
    if waiting is None:
        session.add(StagingWait(campaign_id=campaign_id, wave=wave, site=site, first_asked_at=now))
        return wait <= timedelta(0)
    return now - _aware(waiting.first_asked_at) >= wait


def held_sites(
    session: Session,
    *,
    campaign_id: int,
    bundle_id: int,
    up_to_wave: int,
    now: datetime,
    wait: timedelta = DEFAULT_WAIT,
) -> list[tuple[int, str]]:
    """The (wave, site) pairs of a campaign whose queued assignments wait for staging.

    Only sites with a relay are looked at (one cheap query when no relay ever reported),
    and only waves up to ``up_to_wave`` (the open ones).

    Args:
        session: The engine step's session (refusals are recorded in it).
        campaign_id: The campaign.
        bundle_id: Its bundle: every blob of it must be staged.
        up_to_wave: The campaign's current wave.
        now: The engine's clock.
        wait: How long a relay that is not ready may delay a wave at its site.
    """
    if session.exec(select(RelayReadiness.relay_id).limit(1)).first() is None:
        return []
    relay_sites = select(RelayReadiness.site)
    waiting = session.exec(
        select(Assignment.wave, Vehicle.site)
        .distinct()
        .join(Vehicle, col(Vehicle.vin) == col(Assignment.vin))
        .where(Assignment.campaign_id == campaign_id)
        .where(Assignment.state == AssignmentState.QUEUED)
        .where(col(Assignment.wave) <= up_to_wave)
        .where(col(Vehicle.site).in_(relay_sites.scalar_subquery()))
    ).all()
    if not waiting:
        return []
    needed = set(
        session.exec(
            select(Image.sha256)
            .join(BundleImage, col(BundleImage.target_name) == col(Image.target_name))
            .where(BundleImage.bundle_id == bundle_id)
        ).all()
    )
    return [
        (wave, site)
        for wave, site in sorted(waiting)
        if not may_open_wave(
            session,
            campaign_id=campaign_id,
            wave=wave,
            site=site,
            needed_sha256=needed,
            now=now,
            wait=wait,
        )
    ]
