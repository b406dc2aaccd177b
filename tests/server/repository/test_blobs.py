"""The blob store: content addressing, atomic commit, size bound."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from server.errors import InvalidArgumentError
from server.repository.blobs import BlobInfo, BlobStore

IMAGE = b"\x7fELF image " * 1000


def store_image(blobs: BlobStore, data: bytes, max_length: int = 1 << 20) -> BlobInfo:
    with blobs.writer(max_length) as writer:
        for start in range(0, len(data), 4096):
            writer.write(data[start : start + 4096])
        return writer.commit()


def incoming(root: Path) -> list[Path]:
    return list((root / "incoming").iterdir())


def test_commit_stores_the_blob_under_its_sha256(blobs: BlobStore) -> None:
    info = store_image(blobs, IMAGE)

    digest = hashlib.sha256(IMAGE).hexdigest()
    assert info == BlobInfo(sha256=digest, length=len(IMAGE))
    path = blobs.path(digest)
    assert path == blobs.root / "sha256" / digest[:2] / digest
    assert path.read_bytes() == IMAGE
    assert blobs.exists(digest)
    assert incoming(blobs.root) == []


def test_storing_the_same_content_twice_keeps_one_blob(blobs: BlobStore) -> None:
    first = store_image(blobs, IMAGE)
    path = blobs.path(first.sha256)
    assert path is not None
    inode = path.stat().st_ino

    assert store_image(blobs, IMAGE) == first
    assert path.stat().st_ino == inode
    assert incoming(blobs.root) == []


def test_empty_blob(blobs: BlobStore) -> None:
    info = store_image(blobs, b"")
    assert info.length == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()


def test_a_blob_larger_than_max_length_is_refused_and_leaves_nothing(blobs: BlobStore) -> None:
    writer = blobs.writer(max_length=10)
    writer.write(b"0123456789")
    with pytest.raises(InvalidArgumentError, match="larger than the allowed 10 bytes"):
        writer.write(b"x")

    assert incoming(blobs.root) == []
    assert not (blobs.root / "sha256").exists()
    with pytest.raises(InvalidArgumentError):
        writer.commit()


def test_exactly_max_length_is_accepted(blobs: BlobStore) -> None:
    assert store_image(blobs, b"0123456789", max_length=10).length == 10


def test_a_blob_is_invisible_until_committed(blobs: BlobStore) -> None:
    digest = hashlib.sha256(IMAGE).hexdigest()
    writer = blobs.writer(len(IMAGE))
    writer.write(IMAGE)
    assert blobs.path(digest) is None

    writer.commit()
    assert blobs.path(digest) is not None


def test_abort_and_leaving_the_block_without_commit_discard_the_blob(blobs: BlobStore) -> None:
    writer = blobs.writer(100)
    writer.write(b"partial")
    writer.abort()
    writer.abort()
    with blobs.writer(100) as other:
        other.write(b"partial")

    assert incoming(blobs.root) == []
    assert not blobs.exists(hashlib.sha256(b"partial").hexdigest())


def test_unknown_and_malformed_digests(blobs: BlobStore) -> None:
    assert blobs.path("0" * 64) is None
    for malformed in ("A" * 64, "0" * 63, "../" + "0" * 61, ""):
        with pytest.raises(InvalidArgumentError, match="64 lowercase hex digits"):
            blobs.path(malformed)
