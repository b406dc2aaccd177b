"""Installing images: the streaming writer into the inactive slot."""

from __future__ import annotations

from client.install.writer import SlotWriter

__all__ = ["SlotWriter"]
