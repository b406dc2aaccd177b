"""The HTTP layout: paths, status codes, cache headers, Range."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest
from multidict import CIMultiDict

from server.repository.blobs import BlobStore
from server.repository.director import Director
from server.repository.http import IMMUTABLE
from server.repository.image_repo import ImageRepository

IMAGE = bytes(range(256)) * 64


async def get(
    url: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers.copy(), await response.read()


async def test_versioned_metadata_is_immutable_and_timestamp_is_not_cached(
    image_repo: ImageRepository, base_url: str
) -> None:
    status, headers, body = await get(f"{base_url}/image/metadata/1.root.json")
    assert status == 200
    assert body == image_repo.root()
    assert headers["Cache-Control"] == IMMUTABLE
    assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert headers["Content-Type"] == "application/json"

    for filename in ("1.targets.json", "1.snapshot.json"):
        status, headers, body = await get(f"{base_url}/image/metadata/{filename}")
        assert (status, headers["Cache-Control"]) == (200, IMMUTABLE)
        assert body == image_repo.metadata(filename)

    status, headers, body = await get(f"{base_url}/image/metadata/timestamp.json")
    assert (status, headers["Cache-Control"]) == (200, "no-cache")
    assert body == image_repo.metadata("timestamp.json")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/image/metadata/2.root.json", 404),
        ("/image/metadata/7.targets.json", 404),
        ("/image/metadata/0.root.json", 400),
        ("/image/metadata/01.root.json", 400),
        ("/image/metadata/root.json", 400),
        ("/image/metadata/1.mirrors.json", 400),
        ("/image/metadata/..%2F..%2Fstaffel.db", 400),
        ("/image/metadata/1.root.json.bak", 400),
        ("/image/targets/" + "0" * 64 + ".boot-2.1", 404),
        ("/image/targets/" + "A" * 64 + ".boot-2.1", 400),
        ("/image/targets/" + "0" * 63 + ".boot-2.1", 400),
        ("/image/targets/" + "0" * 64, 400),
        ("/image/targets/" + "0" * 64 + "...%2Fetc", 400),
        ("/director/metadata/2.root.json", 404),
        ("/director/metadata/timestamp.json", 400),
        ("/director/metadata/1.targets.json", 400),
    ],
)
async def test_malformed_names_are_400_and_absent_files_404(
    base_url: str, path: str, status: int
) -> None:
    assert (await get(f"{base_url}{path}"))[0] == status


async def test_image_blob_is_served_whole_and_by_range(blobs: BlobStore, base_url: str) -> None:
    with blobs.writer(len(IMAGE)) as writer:
        writer.write(IMAGE)
        info = writer.commit()
    url = f"{base_url}/image/targets/{info.sha256}.boot-2.1"

    status, headers, body = await get(url)
    assert (status, body) == (200, IMAGE)
    assert headers["Cache-Control"] == IMMUTABLE
    assert headers["Accept-Ranges"] == "bytes"
    assert "ETag" in headers

    status, headers, body = await get(url, {"Range": "bytes=1000-"})
    assert (status, body) == (206, IMAGE[1000:])
    assert headers["Content-Range"] == f"bytes 1000-{len(IMAGE) - 1}/{len(IMAGE)}"

    status, _, _ = await get(url, {"If-None-Match": headers["ETag"]})
    assert status == 304


async def test_director_root_chain_is_served(director: Director, base_url: str) -> None:
    status, headers, body = await get(f"{base_url}/director/metadata/1.root.json")
    assert (status, body) == (200, director.root())
    assert headers["Cache-Control"] == IMMUTABLE
