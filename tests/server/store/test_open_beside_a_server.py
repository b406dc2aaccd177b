"""Opening the database while a server writes to it takes no table lock (PostgreSQL): a
replica starting or a CLI command must neither queue behind live transactions nor
deadlock with them."""

from __future__ import annotations

from sqlalchemy import text

from server.store import Database


def test_opening_beside_an_open_write_transaction_waits_for_no_lock(postgres_url: str) -> None:
    serving = Database.from_url(postgres_url)  # creates the tables and the epoch triggers
    try:
        with serving.engine.connect() as writer, writer.begin():
            # A live check-in's transaction: a write lock on the assignments table.
            writer.execute(text("UPDATE campaign_assignment SET state = state WHERE id = -1"))
            # Another process opens the same database, unwilling to wait for any lock.
            impatient = f"{postgres_url}?options=-c%20lock_timeout%3D1000"
            opened = Database.from_url(impatient)
            try:
                with opened.engine.connect() as connection:
                    epoch = connection.execute(
                        text("SELECT value FROM campaign_offer_epoch WHERE id = 1")
                    ).scalar_one()
                assert epoch == 0
            finally:
                opened.dispose()
        with serving.engine.connect() as connection:
            triggers = connection.execute(
                text("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'offer_epoch_%'")
            ).scalar_one()
        assert triggers == 6, "the epoch triggers are in place"
    finally:
        serving.dispose()
