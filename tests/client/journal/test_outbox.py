"""The event outbox: durable, ordered, deduplicated by event id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from client.journal import EventKind, FailureType, Outbox, VehicleEvent

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _event(kind: EventKind, detail: str = "") -> VehicleEvent:
    return VehicleEvent(
        event_id=str(uuid.uuid4()),
        assignment_id="7",
        kind=kind,
        occurred_at=NOW,
        detail=detail,
    )


def test_events_come_back_in_the_order_queued(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    kinds = [EventKind.CHECKED_IN, EventKind.DOWNLOADED, EventKind.VERIFIED] * 4
    events = [_event(kind) for kind in kinds]
    for event in events:
        assert outbox.enqueue(event)

    assert Outbox(tmp_path / "outbox").pending() == events
    assert outbox.pending(limit=2) == events[:2]


def test_an_event_is_queued_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    event = _event(EventKind.CHECKED_IN)

    assert outbox.enqueue(event)
    assert not outbox.enqueue(event)
    assert len(outbox) == 1


def test_removal_keeps_the_order_of_the_rest_and_sequences_continue(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    first, second, third = (_event(EventKind.FAILED, str(n)) for n in range(3))
    for event in (first, second, third):
        outbox.enqueue(event)

    outbox.remove([first, second])
    fourth = _event(EventKind.CHECKED_IN)
    outbox.enqueue(fourth)

    assert outbox.pending() == [third, fourth]


def test_fields_survive_the_disk(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    event = VehicleEvent(
        event_id=str(uuid.uuid4()),
        assignment_id="a-1",
        kind=EventKind.HEALTH_FAILED,
        occurred_at=NOW,
        failure_type=FailureType.HEALTH,
        detail="x" * 5000,
        slot="B",
    )
    outbox.enqueue(event)

    (stored,) = outbox.pending()
    assert stored == event
    assert len(stored.detail) == 1024


def test_leftover_temporary_and_corrupt_files_do_not_block_delivery(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    good = _event(EventKind.CHECKED_IN)
    outbox.enqueue(good)
    (tmp_path / ".000000000009-x.json.abc.tmp").write_text("half")
    corrupt = tmp_path / f"000000000002-{uuid.uuid4()}.json"
    corrupt.write_text("{not json")

    assert outbox.pending() == [good]
    assert corrupt.with_name(corrupt.name + ".corrupt").exists()
