"""Deterministic, stratified wave membership: pure, no I/O.

Each vehicle's rank inside its hardware variant is the SHA-256 of ``campaign id:VIN``, so
membership never depends on insertion order, and re-planning gives the same answer. Each
variant gets its share of every wave (largest remainders), and at least one vehicle in
wave 1: a canary holds every hardware variant of the selection.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from server.campaigns.plan import WaveSpec


def membership_key(campaign_id: int, vin: str) -> bytes:
    """The vehicle's rank key in this campaign."""
    return hashlib.sha256(f"{campaign_id}:{vin}".encode()).digest()


def _apportion(sizes: dict[str, int], total: int, reach: int) -> dict[str, int]:
    """Splits ``reach`` among variants in proportion to their sizes (largest remainders)."""
    exact = {v: size * reach / total for v, size in sizes.items()}
    quota = {v: int(x) for v, x in exact.items()}
    left = reach - sum(quota.values())
    by_remainder = sorted(sizes, key=lambda v: (-(exact[v] - quota[v]), v))
    for variant in by_remainder[:left]:
        quota[variant] += 1
    return quota


def plan_waves(
    campaign_id: int, vehicles: Sequence[tuple[str, str]], waves: Sequence[WaveSpec]
) -> dict[str, int]:
    """The wave (1-based) of each vehicle.

    Args:
        campaign_id: The campaign's row id (part of the hash).
        vehicles: ``(vin, hardware variant)`` of every selected vehicle.
        waves: The campaign's cumulative waves; the last reaches everyone.

    Returns:
        VIN to wave number. Wave 1 holds at least one vehicle of each variant, even when
        that makes it larger than its share.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for vin, variant in vehicles:
        groups[variant].append(vin)
    for vins in groups.values():
        vins.sort(key=lambda vin: membership_key(campaign_id, vin))
    sizes = {variant: len(vins) for variant, vins in groups.items()}
    total = sum(sizes.values())
    if total == 0:
        return {}
    quotas: list[dict[str, int]] = []
    for index, wave in enumerate(waves):
        reach = total if index == len(waves) - 1 else wave.reach(total)
        quota = _apportion(sizes, total, reach)
        if index == 0:
            quota = {v: max(q, 1) for v, q in quota.items()}
        if quotas:
            quota = {v: max(q, quotas[-1][v]) for v, q in quota.items()}
        quotas.append(quota)
    result: dict[str, int] = {}
    for variant, vins in groups.items():
        wave_number = 0
        for rank, vin in enumerate(vins):
            while rank >= quotas[wave_number][variant]:
                wave_number += 1
            result[vin] = wave_number + 1
    return result
