"""The staging gate: may a wave open at a site? (pure decision, one small query each side)."""

from __future__ import annotations

from collections.abc import Set
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

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
