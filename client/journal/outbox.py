"""The event outbox: one fsynced JSON file per event, delivered in the order queued.

Files are named ``SEQUENCE-EVENTID.json``; the sequence continues after the highest one
queued, so listing the folder in name order gives the order of the events. An event is
removed only after the server acknowledged it.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from client.atomicfile import fsync_directory, write_atomically
from client.errors import StateError
from client.journal.events import VehicleEvent

logger = logging.getLogger(__name__)

_QUEUED = re.compile(r"(\d{12})-([0-9a-f-]{36})\.json")


class Outbox:
    """A durable, ordered queue of vehicle events in one directory."""

    def __init__(self, directory: Path) -> None:
        """Open (and create if needed) the outbox directory.

        Raises:
            StateError: The directory cannot be created.
        """
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the event outbox {directory}: {exc}") from exc
        self._directory = directory

    def _queued_files(self) -> list[tuple[int, str, Path]]:
        entries = []
        for path in self._directory.iterdir():
            match = _QUEUED.fullmatch(path.name)
            if match:
                entries.append((int(match.group(1)), match.group(2), path))
        return sorted(entries)

    def enqueue(self, event: VehicleEvent) -> bool:
        """Queue ``event`` durably after every event queued before.

        Args:
            event: The event; one with an id already queued is not queued twice.

        Returns:
            False when an event with the same id is already queued.

        Raises:
            StateError: The event cannot be written.
        """
        try:
            queued = self._queued_files()
            if any(event_id == event.event_id for _, event_id, _ in queued):
                return False
            sequence = queued[-1][0] + 1 if queued else 1
            path = self._directory / f"{sequence:012d}-{event.event_id}.json"
            write_atomically(path, json.dumps(event.to_json(), sort_keys=True).encode())
        except OSError as exc:
            raise StateError(f"cannot queue an event in {self._directory}: {exc}") from exc
        return True

    def pending(self, limit: int | None = None) -> list[VehicleEvent]:
        """Return queued events, oldest first.

        A file that cannot be parsed is renamed to ``*.corrupt`` so that it does not block
        delivery of the others.

        Args:
            limit: At most this many events.

        Raises:
            StateError: The outbox cannot be read.
        """
        events: list[VehicleEvent] = []
        try:
            for _, _, path in self._queued_files():
                if limit is not None and len(events) >= limit:
                    break
                try:
                    events.append(VehicleEvent.from_json(json.loads(path.read_bytes())))
                except (ValueError, TypeError) as exc:
                    # The reason is enough for the technician; a traceback would add nothing.
                    logger.error("event file %s is unreadable (%s); set aside", path, exc)  # noqa: TRY400
                    path.replace(path.with_name(path.name + ".corrupt"))
        except OSError as exc:
            raise StateError(f"cannot read the event outbox {self._directory}: {exc}") from exc
        return events

    def remove(self, events: list[VehicleEvent]) -> None:
        """Delete acknowledged events.

        Raises:
            StateError: An event file cannot be removed.
        """
        acknowledged = {event.event_id for event in events}
        try:
            for _, event_id, path in self._queued_files():
                if event_id in acknowledged:
                    path.unlink()
            fsync_directory(self._directory)
        except OSError as exc:
            raise StateError(f"cannot remove events from {self._directory}: {exc}") from exc

    def __len__(self) -> int:
        """Return how many events are queued."""
        return len(self._queued_files())
