"""Concurrent check-ins' statements on PostgreSQL, one statement a batch.

Most check-ins of a busy server are answered by one read of the vehicle, its ECUs and its
open assignment, and a first offer whose Director metadata was signed ahead by one
conditional take of the assignment more (``server/campaigns/checkin.py``). On PostgreSQL,
the round trip costs more than the read or the write: what concurrent check-ins ask while
one batch is in flight goes together in the next (:class:`server.store.coalesce.
CoalescedCalls`), reads with reads and takes with takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Histogram

from server.campaigns.checkin_statements import (
    READ_CHECK_IN,
    READ_CHECK_INS,
    TAKE_ALL_STILL_PENDING,
    TAKE_ONE_NOT_LOCKED,
)
from server.store import Database
from server.store.coalesce import DEFAULT_GATHER_SECONDS, DEFAULT_MAX_BATCH, CoalescedCalls


class CheckInBatches:
    """The reads and takes of one server process's check-ins, coalesced (PostgreSQL, with
    the vehicles' work awaiting on the event loop)."""

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        gather_seconds: float = DEFAULT_GATHER_SECONDS,
        read_batch_sizes: Histogram | None = None,
    ) -> None:
        """A batch goes ``gather_seconds`` after its first check-in asked, or when it holds
        ``max_batch``; ``read_batch_sizes`` observes how many check-ins each read served."""
        self._database = database
        self._reads: CoalescedCalls[str, list[Any]] = CoalescedCalls(
            database,
            self._read,
            max_batch=max_batch,
            gather_seconds=gather_seconds,
            observe=read_batch_sizes.observe if read_batch_sizes is not None else None,
        )
        self._takes: CoalescedCalls[Mapping[str, Any], bool] = CoalescedCalls(
            database, self._take, max_batch=max_batch, gather_seconds=gather_seconds
        )

    @property
    def statements(self) -> tuple[int, int]:
        """Read statements and take statements sent so far."""
        return self._reads.batches, self._takes.batches

    def applies(self, database: Database) -> bool:
        """Whether :meth:`rows` and :meth:`take` can serve a check-in now: on ``database``,
        inside its work on the event loop."""
        return database is self._database and database.in_work_on_loop

    def rows(self, vin: str) -> list[Any]:
        """The rows ``READ_CHECK_IN`` reads of ``vin`` (each with its ``vehicle_vin``), read
        in the next batch; blocking code inside :meth:`Database.run_on_loop`."""
        return self._reads.call(vin)

    def take(self, parameters: Mapping[str, Any]) -> bool:
        """Takes an assignment as ``TAKE_IF_STILL_PENDING`` does with ``parameters``, in the
        next batch, unless another transaction holds its row (the batch never waits for a
        lock); whether it was taken. Blocking code inside :meth:`Database.run_on_loop`."""
        return self._takes.call(parameters)

    def _read(self, vins: list[str]) -> list[list[Any]]:
        distinct = list(set(vins))
        with self._database.autocommit() as connection:
            if len(distinct) == 1:
                # The statement of a lone check-in: PostgreSQL plans it once, where the
                # array's would be planned again at every execution (and its array costs
                # psycopg more to send).
                return [READ_CHECK_IN.rows(connection, {"vin": distinct[0]})] * len(vins)
            rows = READ_CHECK_INS.rows(connection, {"vins": distinct})
        by_vin: dict[str, list[Any]] = {}
        for row in rows:
            by_vin.setdefault(row.vehicle_vin, []).append(row)
        return [by_vin.get(vin, []) for vin in vins]

    def _take(self, takes: list[Mapping[str, Any]]) -> list[bool]:
        # An assignment asked twice in one batch (one vehicle's concurrent check-ins) is
        # taken by the first; the second finds it taken, as it would one after the other.
        first: dict[int, Mapping[str, Any]] = {}
        for take in takes:
            first.setdefault(take["assignment_id"], take)
        with self._database.autocommit() as connection:
            if len(first) == 1:  # as for a lone read
                (take,) = first.values()
                done = TAKE_ONE_NOT_LOCKED.execute(connection, take) == 1
                return [done and each is take for each in takes]
            taken = TAKE_ALL_STILL_PENDING.rows(
                connection,
                {
                    "assignment_ids": list(first),
                    "nows": [take["now"] for take in first.values()],
                    "previous_images": [take["previous_images"] for take in first.values()],
                },
            )
        ids = {row.id for row in taken}
        return [
            take["assignment_id"] in ids and first[take["assignment_id"]] is take for take in takes
        ]
