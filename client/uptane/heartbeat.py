"""Heartbeat check-ins: a hash chain the signed manifest commits to, revealed link by link.

Signing and sending a vehicle version manifest at every check-in costs the server a
signature check and a JSON parse each time. Instead, when the primary signs a manifest it
makes a fresh chain: h_0 = 32 random bytes (the seed, kept in the state folder),
h_(i+1) = SHA-256(h_i), and puts ``{"anchor": hex(h_N), "length": N}`` in the manifest's
signed part (:meth:`HeartbeatChain.commitment`). Once the server confirmed it holds that
chain (``CheckInResponse.heartbeat_chain_held``), each later check-in whose ECU reports are
the same as the manifest's sends, instead of a manifest, the next unrevealed link:
h_(N-1), then h_(N-2), ... Only the holder of the seed can make the next link, and the
server takes each link once, so a captured heartbeat is worth nothing.

The chain and how many links were revealed are written durably (:class:`HeartbeatStore`)
*before* a link is sent, so that a power cut never makes the vehicle reveal a link twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from client.atomicfile import write_atomically
from client.errors import StateError

CHAIN_LENGTH: Final = 1024  # links per chain: at a 1-minute poll, about 17 hours of heartbeats
SEED_BYTES: Final = 32
STATE_FILE: Final = "heartbeat.json"


def chain_link(seed: bytes, index: int) -> bytes:
    """h_index of the chain grown from ``seed``: SHA-256 applied ``index`` times."""
    link = seed
    for _ in range(index):
        link = hashlib.sha256(link).digest()
    return link


@dataclass(frozen=True)
class HeartbeatChain:
    """One chain: its seed, length, how many links were revealed, and what it vouches for.

    Attributes:
        seed: h_0, secret.
        length: N; the anchor is h_N.
        revealed: Links sent so far (the next one is h_(N - revealed - 1)).
        inventory: ECU serial -> installed SHA-256 the committing manifest reported.
        held: The server confirmed it holds the chain (heartbeats may be sent).
    """

    seed: bytes
    length: int
    revealed: int
    inventory: Mapping[str, str]
    held: bool = False

    @classmethod
    def new(cls, inventory: Mapping[str, str], length: int = CHAIN_LENGTH) -> HeartbeatChain:
        """A fresh chain from a random seed, for a manifest reporting ``inventory``."""
        return cls(os.urandom(SEED_BYTES), length, 0, dict(inventory))

    def commitment(self) -> dict[str, Any]:
        """What the manifest's signed part carries: ``{"anchor": hex(h_N), "length": N}``."""
        return {"anchor": chain_link(self.seed, self.length).hex(), "length": self.length}

    def usable_for(self, inventory: Mapping[str, str]) -> bool:
        """Whether a heartbeat may stand for a check-in reporting ``inventory``."""
        return self.held and self.revealed < self.length and dict(inventory) == self.inventory

    def advanced(self) -> tuple[HeartbeatChain, bytes]:
        """The chain with one more link revealed, and that link."""
        revealed = self.revealed + 1
        return replace(self, revealed=revealed), chain_link(self.seed, self.length - revealed)

    def to_json(self) -> bytes:
        """The state file's content."""
        return json.dumps(
            {
                "seed": self.seed.hex(),
                "length": self.length,
                "revealed": self.revealed,
                "inventory": dict(self.inventory),
                "held": self.held,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> HeartbeatChain:
        """Reads the state file's content.

        Raises:
            ValueError, KeyError, TypeError: The content is malformed.
        """
        raw = json.loads(data)
        seed = bytes.fromhex(raw["seed"])
        if len(seed) != SEED_BYTES:
            raise ValueError(f"the seed has {len(seed)} bytes, not {SEED_BYTES}")
        return cls(
            seed=seed,
            length=int(raw["length"]),
            revealed=int(raw["revealed"]),
            inventory={str(k): str(v) for k, v in dict(raw["inventory"]).items()},
            held=bool(raw["held"]),
        )


class HeartbeatStore:
    """The vehicle's current chain, in ``heartbeat.json`` of the state folder (mode 0600)."""

    def __init__(self, state_dir: Path) -> None:
        """Keep the chain in ``state_dir``."""
        self._path = state_dir / STATE_FILE

    def read(self) -> HeartbeatChain | None:
        """The chain kept, or None (none yet, or an unreadable file: a manifest is signed).

        Raises:
            StateError: The file exists but cannot be read.
        """
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self._path}: {exc}; move it aside") from exc
        try:
            return HeartbeatChain.from_json(data)
        except (ValueError, KeyError, TypeError):
            return None  # a signed manifest with a new chain replaces it

    def write(self, chain: HeartbeatChain) -> None:
        """Replaces the kept chain durably (temporary file, fsync, rename).

        Raises:
            StateError: The file cannot be written.
        """
        try:
            write_atomically(self._path, chain.to_json())
        except OSError as exc:
            raise StateError(f"cannot write {self._path}: {exc}") from exc

    def drop(self) -> None:
        """Forgets the chain: the next check-in signs a manifest with a new one."""
        self._path.unlink(missing_ok=True)
