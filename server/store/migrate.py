"""``staffel-server migrate``: brings the server's database to the newest schema revision."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.errors import StaffelError
from server.store.db import load_models
from server.store.migrations import MigrationReport, upgrade


def database_url(data_dir: Path, url: str | None) -> str:
    """The URL the server uses: ``url``, else the SQLite file inside ``data_dir``."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'staffel.db'}"


def migrate(url: str) -> MigrationReport:
    """Upgrades the database at ``url`` to the newest revision; says what it did."""
    return upgrade(url, load_models())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="staffel-server migrate",
        description="Upgrade the database to the schema this server needs (Alembic "
        "revisions shipped with Staffel). Safe to repeat; replicas on PostgreSQL take turns.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the server's data dir")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in --data-dir)")
    return parser


def migrate_command(argv: list[str]) -> int:
    """Entry point of ``staffel-server migrate``: prints each revision it applied."""
    args = _parser().parse_args(argv)
    try:
        report = migrate(database_url(args.data_dir, args.database_url))
    except StaffelError as error:
        print(f"staffel-server: {error}", file=sys.stderr)
        return 1
    print(report.describe())
    return 0
