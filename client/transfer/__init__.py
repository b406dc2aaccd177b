"""Fetching images from the relay or the central server."""

from __future__ import annotations

from client.transfer.download import ImageDownloader, ResumableSink, RetryPolicy

__all__ = ["ImageDownloader", "ResumableSink", "RetryPolicy"]
