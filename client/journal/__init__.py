"""Durable vehicle state: the update journal and the event outbox."""

from __future__ import annotations

from client.journal.events import EventKind, FailureType, VehicleEvent, failure_type_of
from client.journal.journal import Journal, JournalState, Phase, UpdateRecord
from client.journal.outbox import Outbox

__all__ = [
    "EventKind",
    "FailureType",
    "Journal",
    "JournalState",
    "Outbox",
    "Phase",
    "UpdateRecord",
    "VehicleEvent",
    "failure_type_of",
]
