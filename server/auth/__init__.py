"""People and scripts that manage releases: tokens, roles, and the append-only audit log."""
