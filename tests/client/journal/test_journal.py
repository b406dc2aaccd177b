"""The update journal: atomic replacement, round trips, stable event ids."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from client.errors import StateError
from client.images import Image
from client.journal import EventKind, Journal, JournalState, Phase, UpdateRecord

IMAGE = Image(target="app-1.1", length=10, sha256="ab" * 32, release_counter=2)


def _record(phase: Phase = Phase.HEALTH) -> UpdateRecord:
    return UpdateRecord(
        assignment_id="7",
        attempt=str(uuid.uuid4()),
        phase=phase,
        image=IMAGE,
        slot="B",
        booted="B",
    )


def test_an_absent_journal_is_idle(tmp_path: Path) -> None:
    assert Journal(tmp_path / "journal.json").read() == JournalState()


def test_state_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "journal.json")
    state = JournalState(release_counter=5, update=_record())
    journal.write(state)
    journal.write(state)

    assert Journal(tmp_path / "state" / "journal.json").read() == state
    assert [path.name for path in (tmp_path / "state").iterdir()] == ["journal.json"]


def test_event_ids_are_stable_per_attempt_and_kind() -> None:
    record = _record()
    again = record.advance(Phase.COMMIT)

    assert record.event_id(EventKind.HEALTHY) == again.event_id(EventKind.HEALTHY)
    assert record.event_id(EventKind.HEALTHY) != record.event_id(EventKind.COMMITTED)
    assert uuid.UUID(record.event_id(EventKind.HEALTHY)).version == 5
    other_attempt = UpdateRecord(assignment_id="7", attempt=str(uuid.uuid4()), phase=Phase.VERIFY)
    assert other_attempt.event_id(EventKind.CHECKED_IN) != record.event_id(EventKind.CHECKED_IN)


@pytest.mark.parametrize("content", ["{", '{"format": 1, "release_counter": -1}', "[]"])
def test_an_invalid_journal_says_what_to_do(tmp_path: Path, content: str) -> None:
    (tmp_path / "journal.json").write_text(content)
    with pytest.raises(StateError, match="move it aside"):
        Journal(tmp_path / "journal.json").read()
