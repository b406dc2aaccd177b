"""Campaign scale: 100,000 vehicles through a 4-wave campaign, on SQLite and on PostgreSQL.

    python bench/campaign_scale.py [--small] [--vehicles N] [--postgres-admin URL] [--sign]
                                    [--backend both|sqlite|postgresql]

For each database (SQLite in a temporary folder; a scratch PostgreSQL database created on
``--postgres-admin`` and dropped afterwards, skipped when PostgreSQL is not reachable):
imports the fleet (CSV import, three hardware variants), starts a campaign of waves
1 %, 10 %, 50 %, 100 % with a success gate of 90 % and no soak, then drives it with
virtual vehicles to completion. Each vehicle of an open wave checks in (it is offered its
assignment) and reports DOWNLOADED, INSTALLED, REBOOTED, HEALTHY, COMMITTED; the campaign
engine steps between waves, and again while the wave it opened holds more than one
step releases (``--release-batch``).

The virtual vehicles call the server's functions directly, in this process
(``server.campaigns.checkin.check_in`` and ``server.campaigns.events.record_events``), not
over gRPC: the figures are the store's and the engine's, without RPC overhead (see
bench/checkin.py for that). Director signing is replaced by a stub that returns constant
metadata unless ``--sign`` is given (three Ed25519 signatures per first offer; see
bench/checkin.py), so the Director's one row per vehicle is not among the rows written.

Prints the time of every engine step over the fleet (idle steps too, also once the late-join
look-back settled, after an 11 s pause), the time per phase, and the rows each phase wrote
(INSERT, UPDATE and DELETE row counts by table, triggers not counted). Goal: one engine
step over 100,000 vehicles <= 1 s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import psycopg
from sqlalchemy import event
from sqlmodel import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.auth.roles import Principal, Role
from server.campaigns.checkin import check_in
from server.campaigns.engine import JOIN_LOOKBACK, RELEASE_BATCH, CampaignEngine
from server.campaigns.events import EventKind, FailureType, ReportedEvent, record_events
from server.campaigns.gates import Gate
from server.campaigns.lifecycle import CampaignActions
from server.campaigns.models import Assignment, AssignmentState
from server.campaigns.plan import CampaignPlan, WaveSpec
from server.campaigns.presence import LastSeenBuffer
from server.fleet.csv_import import import_vehicles
from server.fleet.registry import EcuSpec
from server.fleet.selectors import FleetSelector
from server.releases.catalog import create_bundle
from server.releases.models import Image
from server.repository.director import Director, DirectorTarget, SignedDirectorMetadata
from server.store import Database

STEP_GOAL = 1.0  # seconds for one engine step over the fleet on PostgreSQL
VARIANTS = ("gw-x1", "gw-x1;tcu-a", "gw-x2")  # 80 %, 17 %, 3 % of the fleet
OLD = {"gw-x1": "a1" * 32, "gw-x2": "a2" * 32, "tcu-a": "a3" * 32}
NEW = {"gw-x1": "b1" * 32, "gw-x2": "b2" * 32, "tcu-a": "b3" * 32}
SUCCESS = (
    EventKind.DOWNLOADED,
    EventKind.INSTALLED,
    EventKind.REBOOTED,
    EventKind.HEALTHY,
    EventKind.COMMITTED,
)
MANAGER = Principal("bench-manager", Role.RELEASE_MANAGER)
APPROVER = Principal("bench-approver", Role.APPROVER)
_WRITE = re.compile(r"^\s*(INSERT INTO|UPDATE|DELETE FROM)\s+\"?(\w+)", re.IGNORECASE)


def vin(n: int) -> str:
    """The VIN of virtual vehicle ``n``."""
    return f"WSF{n:014d}"


def hardware(n: int) -> list[str]:
    """The hardware ids of vehicle ``n``'s ECUs (the first is the primary)."""
    share = n % 100
    return VARIANTS[0 if share < 80 else 1 if share < 97 else 2].split(";")


def ecus(n: int, installed: dict[str, str]) -> list[EcuSpec]:
    """What vehicle ``n`` reports."""
    return [EcuSpec(f"{hw}-{n}", hw, i == 0, installed[hw]) for i, hw in enumerate(hardware(n))]


class StubDirector:
    """Stands in for the Director: constant metadata, no signature, no row."""

    def sign_for_vehicle(
        self, vin: str, targets: Sequence[DirectorTarget]
    ) -> SignedDirectorMetadata:
        """Constant metadata naming nothing (the bench never verifies it)."""
        del vin, targets
        return SignedDirectorMetadata(timestamp=b"{}", snapshot=b"{}", targets=b"{}", version=1)

    def offer(
        self, connection: Any, vin: str, targets: Sequence[DirectorTarget], **_: Any
    ) -> SignedDirectorMetadata:
        """The same constant metadata, inside the check-in's transaction (no row written)."""
        del connection
        return self.sign_for_vehicle(vin, targets)


@dataclass
class Writes:
    """Rows written, by table, while counting is on."""

    rows: Counter[str] = field(default_factory=Counter)

    def listen(self, database: Database) -> None:
        """Counts every INSERT, UPDATE and DELETE on ``database``'s engine."""

        def after(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            match = _WRITE.match(statement)
            if match is not None and cursor.rowcount and cursor.rowcount > 0:
                self.rows[match.group(2).lower()] += cursor.rowcount

        event.listen(database.engine, "after_cursor_execute", after)

    def take(self) -> Counter[str]:
        """The counts since the last call."""
        taken, self.rows = self.rows, Counter()
        return taken


@dataclass
class Report:
    """What one database's run measured."""

    backend: str
    phases: list[tuple[str, float, int, Counter[str]]] = field(default_factory=list)
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str, writes: Writes, vehicles: int = 0) -> Iterator[None]:
        """Times one phase and keeps the rows it wrote."""
        writes.take()
        started = time.perf_counter()
        yield
        self.phases.append((name, time.perf_counter() - started, vehicles, writes.take()))


def fleet_csv(size: int) -> bytes:
    """The fleet as the CSV import takes it."""
    lines = ["vin,model,region,site,tags,ecus"]
    for n in range(size):
        parts = [
            f"{hw}-{n}:{hw}" + (":primary" if i == 0 else "") for i, hw in enumerate(hardware(n))
        ]
        lines.append(f"{vin(n)},sedan,eu,plant-{n % 7},fleet,{';'.join(parts)}")
    return ("\n".join(lines) + "\n").encode()


def publish(database: Database) -> str:
    """Images 2.0 for each hardware id, and a bundle of them."""
    now = datetime.now(UTC)
    with database.session() as session:
        for hw, sha in NEW.items():
            session.add(
                Image(
                    target_name=f"{hw}-2.0", name=hw, version="2.0", hardware_id=hw,
                    release_counter=2, sha256=sha, length=1000, uploaded_at=now,
                )
            )  # fmt: skip
    return create_bundle(
        database, name="sedan-2", vehicle_model="sedan", target_names=[f"{hw}-2.0" for hw in NEW]
    ).bundle_id


def pending(database: Database, campaign: int) -> list[int]:
    """The vehicles whose assignments are released and not yet taken."""
    with database.session() as session:
        vins = session.exec(
            select(Assignment.vin).where(
                Assignment.campaign_id == campaign, Assignment.state == AssignmentState.PENDING
            )
        ).all()
    return sorted(int(v[3:]) for v in vins)


def run_backend(
    backend: str, url: str, size: int, *, sign: bool, keys: Path, release_batch: int
) -> Report:
    """The whole campaign on one database."""
    report = Report(backend)
    database = Database.from_url(url)
    writes = Writes()
    writes.listen(database)
    if sign:
        from keys.keyset import KeySet  # noqa: PLC0415 - only with --sign

        director = Director(database, KeySet.load(keys))
        director.initialize()
    else:
        director = cast(Director, StubDirector())
    engine = CampaignEngine(database, release_batch=release_batch)
    presence = LastSeenBuffer()

    def step(label: str) -> int:
        started = time.perf_counter()
        released = sum(outcome.released for outcome in engine.step())
        report.steps.append((label, time.perf_counter() - started))
        return released

    try:
        with report.phase("import the fleet (CSV)", writes, size):
            import_vehicles(database, fleet_csv(size))
        bundle = publish(database)
        actions = CampaignActions(database)
        plan = CampaignPlan(
            waves=tuple(WaveSpec(percent=p) for p in (1.0, 10.0, 50.0, 100.0)),
            gate=Gate(success_percent=90.0, max_failure_percent=5.0, min_reports=10),
        )
        created = actions.create(
            MANAGER, name="gw-2", bundle_id=bundle, selector=FleetSelector(tags=("fleet",)),
            plan=plan,
        )  # fmt: skip
        actions.approve(APPROVER, created.campaign_id)
        campaign = int(created.campaign_id[1:])
        with report.phase("start (plan waves, release wave 1)", writes, size):
            actions.start(MANAGER, created.campaign_id)
        for _ in range(3):
            step("idle, wave 1 released, no reports")
        # Once a step ran a full look-back after the newest change, steps look only past it:
        # the cost of every step of a running campaign in which nothing happens.
        time.sleep(JOIN_LOOKBACK.total_seconds() + 1)
        for _ in range(3):
            step("idle, look-back settled")
        for wave in (1, 2, 3, 4):
            numbers = pending(database, campaign)
            with report.phase(f"wave {wave}: check-ins (offers)", writes, len(numbers)):
                offers = {}
                for n in numbers:
                    answer = check_in(
                        database, director, vin=vin(n), ecus=ecus(n, OLD), nonce=os.urandom(16),
                        poll_seconds=300, presence=presence,
                    )  # fmt: skip
                    offers[n] = answer.assignment_id
                presence.flush(database)  # as the server does every few seconds
            with report.phase(f"wave {wave}: event reports (5 each)", writes, len(numbers)):
                for n, assignment in offers.items():
                    now = datetime.now(UTC)
                    record_events(
                        database,
                        vin(n),
                        [
                            ReportedEvent(
                                str(uuid.uuid4()), assignment, kind, FailureType.NONE, "", "", now
                            )
                            for kind in SUCCESS
                        ],
                    )
            with report.phase(f"wave {wave}: engine steps (gate, next wave)", writes):
                released = step(f"after wave {wave}'s reports")
                # A wave larger than the release batch opens over consecutive steps (the
                # server runs one every second).
                more = 1
                while released == release_batch:
                    more += 1
                    released = step(f"  wave {wave + 1}'s release, step {more}")
        for _ in range(2):
            step("idle, campaign completed")
    finally:
        database.dispose()
    return report


def print_report(report: Report, size: int) -> None:
    """The tables of one database."""
    print(f"\n{report.backend}: {size:,} vehicles, 4 waves (1 %, 10 %, 50 %, 100 %)")
    print(f"  {'phase':<42} {'seconds':>8} {'per vehicle':>12} {'rows written':>13}")
    total = 0.0
    for name, seconds, vehicles, rows in report.phases:
        total += seconds
        per = f"{seconds / vehicles * 1e3:.2f} ms" if vehicles else ""
        print(f"  {name:<42} {seconds:>8.2f} {per:>12} {sum(rows.values()):>13,}")
    print(f"  {'total':<42} {total:>8.2f}")
    rows_total: Counter[str] = Counter()
    for *_, rows in report.phases:
        rows_total.update(rows)
    print(
        "  rows written by table: " + ", ".join(f"{t} {n:,}" for t, n in rows_total.most_common())
    )
    print(f"  {'engine step':<42} {'seconds':>8}")
    for label, seconds in report.steps:
        print(f"  {label:<42} {seconds:>8.3f}")
    slowest = max(seconds for _, seconds in report.steps)
    verdict = "met" if slowest <= STEP_GOAL else "not met"
    goal = (
        f"goal <= {STEP_GOAL:.0f} s on PostgreSQL: {verdict}" if "Postgre" in report.backend else ""
    )
    print(f"  slowest step {slowest:.3f} s {goal}")


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str | None]:
    """A new PostgreSQL database, dropped afterwards; None when PostgreSQL is unreachable."""
    name = f"staffel_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        print(f"\nPostgreSQL at {admin_url} is not reachable ({error}): skipped")
        yield None
        return
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    """Runs the campaign on SQLite, then on PostgreSQL (or on one, with --backend)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="5,000 vehicles")
    parser.add_argument("--vehicles", type=int, help="fleet size (default 100,000)")
    parser.add_argument(
        "--postgres-admin",
        default=os.environ.get("STAFFEL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="where to create the scratch database (trust auth)",
    )  # fmt: skip
    parser.add_argument("--sign", action="store_true", help="sign Director metadata for real")
    parser.add_argument(
        "--backend", choices=("both", "sqlite", "postgresql"), default="both",
        help="which database(s) to run the campaign on",
    )  # fmt: skip
    parser.add_argument(
        "--release-batch", type=int, default=RELEASE_BATCH,
        help=f"most assignments one engine step releases (default {RELEASE_BATCH:,})",
    )  # fmt: skip
    args = parser.parse_args()
    size = args.vehicles or (5_000 if args.small else 100_000)
    print(
        f"check-ins and events called in-process (no gRPC); Director "
        f"{'signing for real' if args.sign else 'stubbed'}; {os.cpu_count()} cores; "
        f"release batch {args.release_batch:,} assignments a step"
    )
    with tempfile.TemporaryDirectory(prefix="staffel-campaign-") as tmp:
        root = Path(tmp)
        if args.sign:
            from keys.keyset import init_keyset  # noqa: PLC0415 - only with --sign

            init_keyset(root / "keys")
        if args.backend in ("both", "sqlite"):
            sqlite = run_backend(
                "SQLite", f"sqlite:///{root / 'staffel.db'}", size, sign=args.sign,
                keys=root / "keys", release_batch=args.release_batch,
            )  # fmt: skip
            print_report(sqlite, size)
        if args.backend == "sqlite":
            return 0
        with scratch_postgres(args.postgres_admin) as url:
            if url is not None:
                pg = run_backend(
                    "PostgreSQL", url, size, sign=args.sign, keys=root / "keys",
                    release_batch=args.release_batch,
                )  # fmt: skip
                print_report(pg, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
