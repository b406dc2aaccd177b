"""Concurrent callers' statements coalesced on PostgreSQL: what callers ask within one
gather window goes in one statement, answers come back to each caller in order, a full
batch goes at once, a failing batch fails only its own callers, and a caller that gave up
is left out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from server.store import Database
from server.store.coalesce import CoalescedCalls


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[Database]:
    opened = Database.from_url(postgres_url)
    yield opened
    await opened.close_loop_engine()
    opened.dispose()


class Squares:
    """A batch function that asks PostgreSQL for the squares of its items, in one
    statement, and remembers every batch it got."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        with self.database.engine.connect() as connection:
            if -1 in items:
                connection.execute(text("SELECT * FROM no_such_table"))
            rows = connection.execute(
                text("SELECT n * n FROM unnest(CAST(:items AS integer[])) AS n"),
                {"items": items},
            )
            return [int(square) for (square,) in rows]


async def _ask(database: Database, calls: CoalescedCalls[int, int], item: int) -> int:
    """One caller: blocking code on the loop that asks for ``item``."""
    return await database.run_on_loop(partial(calls.call, item))


async def test_callers_within_one_window_share_one_statement(database: Database) -> None:
    squares = Squares(database)
    calls = CoalescedCalls(database, squares, gather_seconds=0.05)
    statements: list[str] = []
    database.listen("before_cursor_execute", lambda *args: statements.append(args[2]))
    answers = await asyncio.gather(*(_ask(database, calls, n) for n in range(1, 21)))
    assert answers == [n * n for n in range(1, 21)]
    assert squares.batches == [list(range(1, 21))], "in the order asked"
    assert len([s for s in statements if "unnest" in s]) == 1
    assert calls.batches == 1


async def test_a_lone_caller_gets_a_batch_of_its_own(database: Database) -> None:
    squares = Squares(database)
    calls = CoalescedCalls(database, squares, gather_seconds=0.001)
    assert await _ask(database, calls, 7) == 49
    assert await _ask(database, calls, 8) == 64
    assert squares.batches == [[7], [8]]


async def test_a_full_batch_goes_at_once_and_the_rest_follow(database: Database) -> None:
    squares = Squares(database)
    sizes: list[int] = []
    calls = CoalescedCalls(
        database, squares, max_batch=5, gather_seconds=0.05, observe=sizes.append
    )
    answers = await asyncio.gather(*(_ask(database, calls, n) for n in range(12)))
    assert answers == [n * n for n in range(12)]
    assert sizes == [5, 5, 2]
    assert [n for batch in squares.batches for n in batch] == list(range(12))


async def test_a_failing_batch_fails_its_callers_only(database: Database) -> None:
    squares = Squares(database)
    calls = CoalescedCalls(database, squares, max_batch=3, gather_seconds=0.05)
    results = await asyncio.gather(
        *(_ask(database, calls, n) for n in (2, -1, 3, 4, 5)), return_exceptions=True
    )
    # The first batch held the bad item: each of its three callers got the error.
    assert [type(r) for r in results[:3]] == [ProgrammingError] * 3
    assert "no_such_table" in str(results[0])
    assert results[3:] == [16, 25]
    assert await _ask(database, calls, 6) == 36, "the connection serves again"


async def test_a_caller_that_gave_up_is_left_out(database: Database) -> None:
    squares = Squares(database)
    calls = CoalescedCalls(database, squares, gather_seconds=0.2)
    staying = asyncio.ensure_future(_ask(database, calls, 3))
    leaving = asyncio.ensure_future(_ask(database, calls, 4))
    await asyncio.sleep(0.05)  # both are waiting for the batch
    leaving.cancel()
    assert await staying == 9
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert squares.batches == [[3]]


async def test_a_batch_that_answers_too_few_results_is_an_error(database: Database) -> None:
    calls: CoalescedCalls[int, int] = CoalescedCalls(database, lambda items: [], gather_seconds=0)
    with pytest.raises(RuntimeError, match="a batch of 1 items returned 0 results"):
        await _ask(database, calls, 1)


def test_a_batch_must_hold_at_least_one_item(database: Database) -> None:
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        CoalescedCalls(database, lambda items: items, max_batch=0)
