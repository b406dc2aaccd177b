"""Staging: which blobs each site's relay must hold before a wave opens there, and readiness."""
