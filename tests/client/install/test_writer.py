"""The streaming slot writer: hashing, the length cap, endless data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from client.errors import DownloadError, VerificationError
from client.images import Image
from client.install import SlotWriter

DATA = bytes(range(256)) * 40


def _image(data: bytes = DATA) -> Image:
    return Image(
        target="app-1.1",
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        release_counter=1,
    )


def test_writes_chunks_and_accepts_the_signed_hash(tmp_path: Path) -> None:
    slot = tmp_path / "B.img"
    with SlotWriter(slot, _image()) as writer:
        for start in range(0, len(DATA), 1000):
            writer.write(DATA[start : start + 1000])
        writer.finish()

    assert slot.read_bytes() == DATA
    assert writer.received == len(DATA)


def test_refuses_content_whose_hash_differs(tmp_path: Path) -> None:
    tampered = bytearray(DATA)
    tampered[100] ^= 1
    with SlotWriter(tmp_path / "B.img", _image()) as writer:
        writer.write(bytes(tampered))
        with pytest.raises(VerificationError, match=r"SHA-256 is .* but the Director and Image"):
            writer.finish()


def test_refuses_one_byte_past_the_signed_length(tmp_path: Path) -> None:
    with SlotWriter(tmp_path / "B.img", _image()) as writer:
        writer.write(DATA)
        with pytest.raises(DownloadError, match="more than the signed 10240 bytes"):
            writer.write(b"x")
    assert (tmp_path / "B.img").stat().st_size == len(DATA)


def test_refuses_a_short_image(tmp_path: Path) -> None:
    with SlotWriter(tmp_path / "B.img", _image()) as writer:
        writer.write(DATA[:-1])
        with pytest.raises(DownloadError, match="ended after 10239 of 10240 bytes"):
            writer.finish()
