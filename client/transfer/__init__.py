"""Fetching images from the relay or the central server."""

from __future__ import annotations

from client.transfer.download import ChunkSink, ImageDownloader

__all__ = ["ChunkSink", "ImageDownloader"]
