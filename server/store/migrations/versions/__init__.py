"""Alembic revisions of the server's schema, oldest first (``rev_NNNN_*.py``).

A revision is a snapshot: it never imports the live models or their SQL, so it means the
same thing however the code changes later.
"""
