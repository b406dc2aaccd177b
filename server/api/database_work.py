"""Where vehicles' database work runs: on the event loop for SQLite, in threads otherwise.

A SQLite statement on a local file takes microseconds, and the driver releases the
interpreter lock around each one. From a worker thread, every statement then hands the
lock to the busy event loop and waits to get it back: measured over gRPC, such hand-offs
made a first offer cost ~1.5 ms of server CPU, against ~1.0 ms run on the loop
(``docs/performance.md``). On the loop, a statement must never wait for another
connection's write lock (the presigner's, an engine step's, a fleet import's), or every
call would stall behind it: the loop runs without waiting, and the first step that finds
the lock taken moves, with the steps after it, to the vehicles' thread, where waiting
holds up only that thread.

PostgreSQL (through psycopg) answers over the network. Its work runs on the loop too, but
differently: each statement awaits the server's answer there (``Database.run_on_loop``),
so the loop serves other calls during every round trip, a statement that waits for a row
lock waits without blocking anything, and no thread hands the interpreter lock back and
forth. On its own that changed little in server CPU (the asyncio driver's round trip costs
more than the blocking one's); what it buys is that a call waiting on PostgreSQL, for a
row lock or a slow network, holds no thread (``docs/performance.md``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import TypeVar

from prometheus_client import Counter

from server.store import Database
from server.store.db import LockBusyError

_T = TypeVar("_T")


class DatabaseWork:
    """Runs the blocking database steps of one call, on the loop or in ``executor``."""

    def __init__(
        self,
        database: Database,
        executor: Executor | None,
        *,
        on_loop: bool,
        moved: Counter | None = None,
    ) -> None:
        """``on_loop``: run the steps on the event loop: first try where the database
        answers without I/O waits (:attr:`Database.answers_without_io_wait`), awaiting
        each statement where it can (:attr:`Database.awaits_on_loop`); ``moved`` counts
        the calls whose steps found the lock taken on the loop."""
        self._database = database
        self._executor = executor
        self._on_loop = on_loop and database.answers_without_io_wait
        self._awaiting = on_loop and database.awaits_on_loop
        self._moved = moved

    async def run(self, *steps: Callable[[], object], then: Callable[[], _T]) -> _T:
        """Runs ``steps`` and then ``then`` in order; returns what ``then`` returns.

        Each step must be one transaction, or reads, whose effects (in the database and in
        memory) come only after its last statement succeeded: a step that finds the lock
        taken on the loop is run again from its start in the thread.
        """
        if self._awaiting:
            return await self._database.run_on_loop(partial(_in_order, steps, then))
        remaining: list[Callable[[], object]] = [*steps, then]
        if self._on_loop:
            try:
                with self._database.without_waiting():
                    while len(remaining) > 1:
                        remaining[0]()
                        remaining.pop(0)
                    return then()
            except LockBusyError:
                if self._moved is not None:
                    self._moved.inc()

        in_thread = partial(_in_order, remaining[:-1], then)
        return await asyncio.get_running_loop().run_in_executor(self._executor, in_thread)


def _in_order(steps: Sequence[Callable[[], object]], then: Callable[[], _T]) -> _T:
    for step in steps:
        step()
    return then()
