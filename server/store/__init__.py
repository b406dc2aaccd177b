"""Persistence: one SQL database (SQLite by default, PostgreSQL in production)."""

from server.store.db import Database

__all__ = ["Database"]
