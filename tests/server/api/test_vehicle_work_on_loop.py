"""Vehicles' database work runs on the event loop. On SQLite it moves to the vehicles'
thread only when another connection holds the write lock, so a long write elsewhere (an
engine step, a fleet import) never stalls the server's other calls; on PostgreSQL each
statement awaits the server's answer on the loop, so a row lock held elsewhere stalls only
the call that waits for it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from sqlalchemy.util.concurrency import in_greenlet
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc

from keys.keyset import init_keyset
from server.api.database_work import DatabaseWork
from server.app import ServerConfig, StaffelServer
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.plan import CampaignPlan
from server.fleet.selectors import FleetSelector
from server.store import Database
from tests.server.campaigns.support import ALICE, BOB, OLD_SHA, add_vehicle, publish, vin

OFFERED, UNSEEN = 3, 4


async def _server(tmp_path: Path, database_url: str, *, on_loop: bool) -> StaffelServer:
    init_keyset(tmp_path / "keys")
    staffel = StaffelServer(
        ServerConfig(
            data_dir=tmp_path / "data",
            keys_dir=tmp_path / "keys",
            database_url=database_url,
            grpc_listen="127.0.0.1:0",
            http_listen="127.0.0.1:0",
            engine_interval_seconds=0,
            presign_interval_seconds=0,
            offer_epoch_seconds=0.2,
            vehicle_work_on_loop=on_loop,
        )
    )
    await staffel.start()
    return staffel


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[StaffelServer]:
    """A real server on either database, defaults as shipped."""
    staffel = await _server(tmp_path, database_url, on_loop=True)
    yield staffel
    await staffel.stop()


@pytest.fixture
async def sqlite_server(tmp_path: Path) -> AsyncIterator[StaffelServer]:
    """A real server on a SQLite file."""
    staffel = await _server(tmp_path, f"sqlite:///{tmp_path / 'staffel.db'}", on_loop=True)
    yield staffel
    await staffel.stop()


@pytest.fixture
def write_lock(tmp_path: Path, sqlite_server: StaffelServer) -> Iterator[sqlite3.Connection]:
    """A connection of its own that takes the SQLite file's write lock when told."""
    holder = sqlite3.connect(tmp_path / "staffel.db", isolation_level=None, check_same_thread=False)
    yield holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def _request(number: int) -> vehicle_pb2.CheckInRequest:
    return vehicle_pb2.CheckInRequest(
        vin=vin(number),
        nonce=os.urandom(16),
        ecus=[
            vehicle_pb2.EcuVersion(
                serial=f"gw-{number}", hardware_id="gw-x1", primary=True, installed_sha256=OLD_SHA
            )
        ],
    )


def _offer_campaign(server: StaffelServer) -> None:
    """Vehicle OFFERED in a started campaign; vehicle UNSEEN registered after its step."""
    add_vehicle(server.database, OFFERED)
    bundle = publish(server.database)
    actions = CampaignActions(server.database)
    created = actions.create(
        ALICE, name="gw-2", bundle_id=bundle, selector=FleetSelector("sedan"), plan=CampaignPlan()
    )
    actions.approve(BOB, created.campaign_id)
    actions.start(ALICE, created.campaign_id)
    server.engine.step()
    add_vehicle(server.database, UNSEEN)  # after the step: in no wave
    server.quiet.refresh(server.database)


def _moved(server: StaffelServer) -> float:
    return server.metrics.vehicle_work_moved._value.get()


def _threads_of_check_ins(server: StaffelServer, awaiting: list[bool] | None = None) -> list[int]:
    """The threads that run the check-ins' statements on the open assignment (and, in
    ``awaiting``, whether each ran where it can await the driver: in a greenlet)."""
    seen: list[int] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "campaign_assignment" in statement:
            seen.append(threading.get_ident())
            if awaiting is not None:
                awaiting.append(in_greenlet())

    server.database.listen("before_cursor_execute", note)
    return seen


async def test_check_ins_run_on_the_loop(server: StaffelServer) -> None:
    _offer_campaign(server)
    awaiting: list[bool] = []
    threads = _threads_of_check_ins(server, awaiting)
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        answer = await vehicle_pb2_grpc.VehicleServiceStub(channel).CheckIn(_request(OFFERED))
    assert answer.WhichOneof("outcome") == "update"
    assert threads, "the check-in read the assignment"
    assert {t == threading.get_ident() for t in threads} == {True}
    # SQLite answers in place; PostgreSQL's statements await on the loop.
    assert set(awaiting) == {server.database.engine.dialect.name != "sqlite"}


async def test_with_work_on_loop_off_check_ins_run_in_the_thread(
    tmp_path: Path, database_url: str
) -> None:
    staffel = await _server(tmp_path, database_url, on_loop=False)
    try:
        _offer_campaign(staffel)
        threads = _threads_of_check_ins(staffel)
        async with grpc.aio.insecure_channel(staffel.grpc_address) as channel:
            stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
            assert (await stub.CheckIn(_request(OFFERED))).WhichOneof("outcome") == "update"
        assert threads
        assert threading.get_ident() not in threads
    finally:
        await staffel.stop()


async def test_a_held_write_lock_moves_the_offer_to_the_thread_and_stalls_nothing_else(
    sqlite_server: StaffelServer, write_lock: sqlite3.Connection
) -> None:
    server = sqlite_server
    _offer_campaign(server)
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
        write_lock.execute("BEGIN IMMEDIATE")  # a long write elsewhere, say an engine step
        offer = asyncio.ensure_future(stub.CheckIn(_request(OFFERED)))
        while _moved(server) < 1:
            assert not offer.done(), "the first offer must wait for the lock"
            await asyncio.sleep(0.01)
        # The first offer waits in the thread; the loop still answers, from the
        # database too (a vehicle new to this process; reads do not wait for the lock).
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        unseen = await stub.CheckIn(_request(UNSEEN))
        assert unseen.WhichOneof("outcome") == "nothing_to_do"
        assert not offer.done(), "the offer still waits for the write lock"
        write_lock.execute("COMMIT")
        answer = await offer
    assert answer.WhichOneof("outcome") == "update"
    assert _moved(server) == 1
    with server.database.engine.connect() as connection:
        state = connection.execute(text("SELECT state FROM campaign_assignment")).scalar_one()
    assert state.lower() == "in_progress", "the offer's write landed once, from the thread"


async def test_steps_done_on_the_loop_are_not_run_again_in_the_thread(tmp_path: Path) -> None:
    database = Database.from_url(f"sqlite:///{tmp_path / 'work.db'}")
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER)"))
    holder = sqlite3.connect(tmp_path / "work.db", isolation_level=None, check_same_thread=False)
    done: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def note(step: str) -> None:
        done.append((step, threading.get_ident() == loop_thread))

    def write() -> None:
        with database.engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))
        note("write")

    with ThreadPoolExecutor(max_workers=1) as executor:
        work = DatabaseWork(database, executor, on_loop=True)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        result = await work.run(lambda: note("read"), write, then=lambda: "answered")
        release.join()
    assert result == "answered"
    assert done == [("read", True), ("write", False)]
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    holder.close()
    database.dispose()


async def test_a_held_row_lock_stalls_only_the_offer_waiting_for_it_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    server = await _server(tmp_path, postgres_url, on_loop=True)
    holder = create_engine(postgres_url)
    try:
        _offer_campaign(server)
        async with grpc.aio.insecure_channel(server.grpc_address) as channel:
            stub = vehicle_pb2_grpc.VehicleServiceStub(channel)
            with holder.begin() as connection:
                # A transaction elsewhere holds the vehicle's assignment row.
                connection.execute(text("SELECT id FROM campaign_assignment FOR UPDATE"))
                offer = asyncio.ensure_future(stub.CheckIn(_request(OFFERED)))
                await asyncio.sleep(0.3)
                assert not offer.done(), "the offer waits for the row lock"
                # Meanwhile the loop answers, from the database too (a vehicle new to
                # this process; it needs no lock).
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest()
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                unseen = await stub.CheckIn(_request(UNSEEN))
                assert unseen.WhichOneof("outcome") == "nothing_to_do"
                assert not offer.done(), "the offer still waits for the row lock"
            answer = await offer
        assert answer.WhichOneof("outcome") == "update"
        assert _moved(server) == 0, "nothing moved to a thread"
        with server.database.engine.connect() as connection:
            state = connection.execute(text("SELECT state FROM campaign_assignment")).scalar_one()
        assert state.lower() == "in_progress"
    finally:
        holder.dispose()
        await server.stop()
