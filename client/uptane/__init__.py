"""Uptane full verification of update offers (Director and Image repository)."""

from __future__ import annotations

from client.uptane.fetcher import DirectorFetcher, DirectorMetadata
from client.uptane.verifier import UptaneVerifier

__all__ = ["DirectorFetcher", "DirectorMetadata", "UptaneVerifier"]
