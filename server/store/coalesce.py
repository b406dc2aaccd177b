"""Concurrent callers' statements, coalesced into one statement a round trip.

Thousands of check-ins a second each read one vehicle. On PostgreSQL, every statement costs
a round trip: psycopg's work, the event loop's wake-ups, and a PostgreSQL backend's on the
same machine, each far more than reading one more vehicle in the same statement. A
:class:`CoalescedCalls` takes what concurrent callers ask while a batch is in flight and
sends it as the next batch, one statement for all of them (group commit, for reads): a
lone caller is answered by a statement of its own, as before, and a busy server sends
fewer, larger ones. At most one batch is in flight, so a batch must never wait for a lock
(a write skips rows locked elsewhere, and leaves those callers to wait on their own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

from sqlalchemy.util import await_

from server.store.db import Database

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

DEFAULT_MAX_BATCH = 256
# How long a batch waits for more callers after the first: at a thousand calls a second, a
# few join it, each saving a round trip's work; a vehicle polling every few minutes over
# a cellular link does not notice.
DEFAULT_GATHER_SECONDS = 0.002


class CoalescedCalls(Generic[_Item, _Result]):
    """One blocking batch function, called with what concurrent callers on one event loop
    asked, through :meth:`Database.run_on_loop`.

    ``run_batch`` gets the items of one batch (in the order asked, at most ``max_batch``)
    and returns their results in the same order; it is blocking database code, whose
    statements await on the loop. It must take no lock: one batch is in flight at a time.
    An exception it raises is raised to every caller of that batch. A batch is sent
    ``gather_seconds`` after its first item was asked, or as soon as it is full.
    ``observe`` is given the size of every batch sent (a metric's).
    """

    def __init__(
        self,
        database: Database,
        run_batch: Callable[[list[_Item]], Sequence[_Result]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        gather_seconds: float = DEFAULT_GATHER_SECONDS,
        observe: Callable[[int], object] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._database = database
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._gather_seconds = gather_seconds
        self._observe = observe
        self._waiting: list[tuple[_Item, asyncio.Future[_Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # batches sent so far (for tests and metrics)

    async def submit(self, item: _Item) -> _Result:
        """The result of ``item``, from the next batch sent."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[_Result] = loop.create_future()
        self._waiting.append((item, answer))
        if self._flusher is None or self._flusher.done():
            # Started on the loop's next turn: callers arriving in this one join its batch.
            self._flusher = loop.create_task(self._flush())
        return await answer

    def call(self, item: _Item) -> _Result:
        """:meth:`submit`, from blocking code running in :meth:`Database.run_on_loop`."""
        return await_(self.submit(item))

    async def _flush(self) -> None:
        while self._waiting:
            if len(self._waiting) < self._max_batch and self._gather_seconds > 0:
                await asyncio.sleep(self._gather_seconds)
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            # A caller cancelled while waiting (its deadline passed) is left out.
            batch = [(item, answer) for item, answer in batch if not answer.done()]
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[tuple[_Item, asyncio.Future[_Result]]]) -> None:
        items = [item for item, _ in batch]
        if self._observe is not None:
            self._observe(len(items))
        self.batches += 1
        try:
            results = await self._database.run_on_loop(partial(self._run_batch, items))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items returned {len(results)} results")
        except asyncio.CancelledError:
            # The loop is closing: nobody will send the rest either.
            for _, answer in [*batch, *self._waiting]:
                answer.cancel()
            self._waiting.clear()
            raise
        except Exception as error:  # every caller of the batch gets it
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        for (_, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)
