"""The pure policies: wave membership, gates, windows, pacing (no store, no sockets)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from server.campaigns.eligibility import MaintenanceWindow, Pacing
from server.campaigns.gates import Gate, WaveCounts
from server.campaigns.plan import CampaignPlan, WaveSpec
from server.campaigns.waves import plan_waves
from server.errors import InvalidArgumentError

WAVES = tuple(WaveSpec.parse(t) for t in ("1%", "10%", "50%", "100%"))


def fleet(size: int) -> list[tuple[str, str]]:
    variants = ["gw-x1"] * 90 + ["gw-x2"] * 9 + ["gw-x3"]
    return [(f"WSF{n:014d}", variants[n % 100]) for n in range(size)]


def test_waves_are_deterministic_stratified_and_sized() -> None:
    vehicles = fleet(10_000)
    waves = plan_waves(7, vehicles, WAVES)
    assert waves == plan_waves(7, list(reversed(vehicles)), WAVES)
    assert waves != plan_waves(8, vehicles, WAVES)
    sizes = Counter(waves.values())
    assert [sizes[w] for w in (1, 2, 3, 4)] == [100, 900, 4000, 5000]
    variant = dict(vehicles)
    for wave in (1, 2, 3, 4):
        members = Counter(variant[vin] for vin, w in waves.items() if w == wave)
        assert set(members) == {"gw-x1", "gw-x2", "gw-x3"}


def test_every_variant_is_in_the_first_wave_even_when_it_is_tiny() -> None:
    vehicles = [(f"V{n}", "common") for n in range(500)] + [("RARE1", "rare")]
    waves = plan_waves(1, vehicles, WAVES)
    assert waves["RARE1"] == 1
    # 1% of 501 is 6; the rare variant makes the canary one larger.
    assert sum(1 for w in waves.values() if w == 1) == 7


def test_gate_arithmetic_leaves_offline_vehicles_out() -> None:
    gate = Gate(success_percent=90.0, max_failure_percent=10.0, min_reports=10)
    offline_heavy = WaveCounts(pending=1000, committed=19, failed=1)
    assert offline_heavy.success_percent == 95.0
    assert gate.failure_tripped(offline_heavy) is None
    assert gate.success_holds(offline_heavy)
    assert gate.failure_tripped(WaveCounts(committed=8, failed=2)) is not None
    assert gate.failure_tripped(WaveCounts(committed=1, failed=1)) is None  # too few reports
    assert "more than 0 allowed" in (
        Gate(max_failure_count=0).failure_tripped(WaveCounts(rolled_back=1)) or ""
    )
    assert not gate.success_holds(WaveCounts(queued=1, committed=20))
    met = datetime(2026, 1, 1, tzinfo=UTC)
    soaking = Gate(soak=timedelta(minutes=5))
    assert not soaking.soaked(met, met + timedelta(minutes=4))
    assert soaking.soaked(met, met + timedelta(minutes=5))


def test_maintenance_window_over_midnight_in_local_time() -> None:
    window = MaintenanceWindow("plant-a", "Europe/Berlin", "22:00", "05:00")
    window.validate()
    summer_noon = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)  # 12:00 in Berlin
    opens, closes = window.occurrence(summer_noon)
    assert (opens, closes) == (
        datetime(2026, 7, 1, 20, 0, tzinfo=UTC),
        datetime(2026, 7, 2, 3, 0, tzinfo=UTC),
    )
    assert not window.contains(summer_noon)
    assert window.contains(datetime(2026, 7, 2, 2, 59, tzinfo=UTC))
    assert window.occurrence(datetime(2026, 7, 2, 1, 0, tzinfo=UTC))[0] == opens
    with pytest.raises(InvalidArgumentError, match="IANA"):
        MaintenanceWindow("a", "Mars/Base", "01:00", "02:00").validate()


def test_pacing_budget() -> None:
    assert Pacing(0).budget(10**6) is None
    assert Pacing(100).budget(30) == 70
    assert Pacing(100).budget(130) == 0


def test_plans_are_checked_and_round_trip() -> None:
    plan = CampaignPlan(
        waves=WAVES,
        gate=Gate(max_failure_count=3, soak=timedelta(hours=1)),
        pacing=Pacing(500),
        windows=(MaintenanceWindow("plant-a", "Europe/Berlin", "22:00", "05:00"),),
        rollback_on_failure=True,
    )
    plan.validate()
    assert CampaignPlan.from_json(plan.to_json()) == plan
    with pytest.raises(InvalidArgumentError, match="end with 100%"):
        CampaignPlan(waves=(WaveSpec(percent=10.0),)).validate()
    with pytest.raises(InvalidArgumentError, match="cumulative"):
        CampaignPlan(waves=(WaveSpec(percent=50.0), WaveSpec(percent=10.0),
                            WaveSpec(percent=100.0))).validate()  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="share like 10%"):
        WaveSpec.parse("ten")
