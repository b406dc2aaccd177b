"""Schema migrations: an old database upgraded by `staffel-server migrate` serves its data.

Each test runs on SQLite and on the machine's PostgreSQL server, with the real Alembic
revisions and the real `staffel-server` processes.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, text

from server.errors import SchemaError
from server.sandbox import Sandbox, tool
from server.store import Database
from server.store.db import load_models
from server.store.migrations import (
    alembic_config,
    current_revision,
    head_revision,
    migration_engine,
    schema_differences,
)

SKELETON = "0001"
VIN = "WSF00000000000042"
SHA = "ab" * 32
STARTED = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _at_revision(url: str, revision: str) -> None:
    """Creates the schema of ``revision`` with Alembic, as an older Staffel left it."""
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
    finally:
        engine.dispose()


def _insert_skeleton_rows(url: str) -> None:
    """A vehicle, an image, a bundle and a running campaign with one assignment."""
    engine = migration_engine(url)
    rows = [
        (
            "INSERT INTO fleet_vehicle (vin, model, registered_at, last_seen) "
            "VALUES (:vin, 'roadster', :at, :at)",
            {},
        ),
        (
            'INSERT INTO fleet_ecu (serial, vin, hardware_id, "primary", installed_sha256) '
            "VALUES ('gw-000042', :vin, 'gw-v1', :yes, :sha)",
            {"yes": True},
        ),
        (
            "INSERT INTO release_image (target_name, name, version, hardware_id, "
            "release_counter, sha256, length, uploaded_at) VALUES "
            "('gateway-2.0.0', 'gateway', '2.0.0', 'gw-v1', 2, :sha, 4096, :at)",
            {},
        ),
        (
            "INSERT INTO release_bundle (id, name, vehicle_model, created_at) "
            "VALUES (7, 'roadster-2.0', 'roadster', :at)",
            {},
        ),
        ("INSERT INTO release_bundle_image VALUES (7, 'gateway-2.0.0')", {}),
        (
            "INSERT INTO campaign (id, name, bundle_id, selector_model, selector_vins, state, "
            "created_at, started_at) VALUES "
            "(3, 'spring', 7, 'roadster', :vin, 'RUNNING', :at, :at)",
            {},
        ),
        (
            "INSERT INTO campaign_assignment (id, campaign_id, vin, state, last_event, "
            "updated_at) VALUES (11, 3, :vin, 'IN_PROGRESS', 'DOWNLOADING', :at)",
            {},
        ),
    ]
    try:
        with engine.begin() as connection:
            for statement, extra in rows:
                connection.execute(
                    text(statement), {"vin": VIN, "at": STARTED, "sha": SHA, **extra}
                )
    finally:
        engine.dispose()


def _migrate(data_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("staffel-server"), "migrate", "--data-dir", str(data_dir), "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_old_database_migrated_then_served(tmp_path: Path, database_url: str) -> None:
    """Done when: a database of revision 0001 upgraded by `staffel-server migrate` serves."""
    _at_revision(database_url, SKELETON)
    _insert_skeleton_rows(database_url)

    migrated = _migrate(tmp_path / "server", database_url)
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema at revision {SKELETON}" in migrated.stdout
    assert f"schema now at revision {head_revision()} (newest)" in migrated.stdout

    with Sandbox(tmp_path / "sandbox", database_url=database_url) as sandbox:
        server = sandbox.start_server()
        sandbox.make_people(server)
        vehicles = json.loads(sandbox.staffel(server, "--json", "fleet", "list"))
        images = json.loads(sandbox.staffel(server, "--json", "image", "list"))
        campaign = json.loads(sandbox.staffel(server, "--json", "campaign", "status", "c3"))
        # The engine stepped the migrated campaign meanwhile without an error (log below).
        log = server.log_path
    text_of = json.dumps
    assert VIN in text_of(vehicles)
    assert "gw-v1" in text_of(vehicles)  # the variant computed from its ECUs
    assert "gateway-2.0.0" in text_of(images)
    assert SHA in text_of(images)
    assert campaign["name"] == "spring"
    assert campaign["state"] == "CAMPAIGN_STATE_RUNNING"
    assert VIN in text_of(campaign)
    assert "Traceback" not in log.read_text(errors="replace")


def test_migrate_twice_does_nothing_the_second_time(tmp_path: Path, database_url: str) -> None:
    """An empty database gets every revision; a second run finds nothing to do."""
    first = _migrate(tmp_path, database_url)
    assert first.returncode == 0, first.stderr
    assert "empty database" in first.stdout
    second = _migrate(tmp_path, database_url)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout


def test_server_refuses_a_database_behind(tmp_path: Path, database_url: str) -> None:
    """Without --auto-migrate, an older schema stops the server with what to run."""
    _at_revision(database_url, SKELETON)
    with pytest.raises(SchemaError, match="staffel-server migrate"):
        Database.from_url(database_url)
    arguments = [
        tool("staffel-server"), "--data-dir", str(tmp_path / "server"),
        "--database-url", database_url,
        "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
    ]  # fmt: skip
    server = subprocess.run(
        arguments,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert server.returncode == 1
    assert f"at revision {SKELETON}, older than this server's {head_revision()}" in server.stderr
    assert "run `staffel-server migrate" in server.stderr


def test_auto_migrate_upgrades_at_start(tmp_path: Path, database_url: str) -> None:
    """--auto-migrate brings an older schema to the newest revision before serving."""
    _at_revision(database_url, SKELETON)
    _insert_skeleton_rows(database_url)
    keys = tmp_path / "keys"
    subprocess.run([tool("staffel"), "keys", "init", "--dir", str(keys)], check=True)
    with Sandbox(tmp_path / "sandbox", database_url=database_url) as sandbox:
        sandbox.start(
            "server",
            tool("staffel-server"),
            "--data-dir", str(tmp_path / "server"), "--keys-dir", str(keys),
            "--database-url", database_url, "--auto-migrate",
            "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        )  # fmt: skip
    engine = migration_engine(database_url)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
    finally:
        engine.dispose()


def _triggers(connection: Connection) -> dict[str, str]:
    """Every trigger of the database (and its function on PostgreSQL), by name."""
    if connection.dialect.name == "sqlite":
        rows = connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        ).all()
        return {name: " ".join(sql.split()) for name, sql in rows}
    rows = connection.execute(
        text(
            "SELECT t.tgname, pg_get_triggerdef(t.oid), p.prosrc FROM pg_trigger t "
            "JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal"
        )
    ).all()
    return {name: f"{definition} {source}" for name, definition, source in rows}


def test_migrations_at_head_match_the_models(database_url: str, tmp_path: Path) -> None:
    """Fails when a model (or a trigger) changed without a new revision.

    If this fails: add a revision in server/store/migrations/versions/ that brings the
    previous head to the models (README, "Schema migrations"), snapshotting any trigger SQL.
    """
    result = _migrate(tmp_path, database_url)
    assert result.returncode == 0, result.stderr
    metadata = load_models()
    engine = migration_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = schema_differences(connection, metadata)
            assert not differences, (
                "the models differ from the schema the migrations make; add a revision "
                "(server/store/migrations/versions/) for:\n"
                + "\n".join(str(diff) for diff in differences)
            )
            migrated = _triggers(connection)
    finally:
        engine.dispose()
    # What the live code installs on a database at head must already be there.
    Database.from_url(database_url).dispose()
    engine = migration_engine(database_url)
    try:
        with engine.connect() as connection:
            installed = _triggers(connection)
    finally:
        engine.dispose()
    assert installed == migrated, (
        "the live code installs triggers the migrations do not make (or makes them "
        "differently); snapshot them into a new revision"
    )
