"""HTTP routes of the repositories, exactly as laid out in docs/architecture.md.

    /image/metadata/N.root.json | N.targets.json | N.snapshot.json   immutable
    /image/metadata/N.bins.json | N.bin-NNN.json (hashed bins)       immutable
    /image/metadata/timestamp.json                                   no-cache
    /image/targets/SHA256.TARGETNAME                                 immutable, Range
    /director/metadata/N.root.json                                   immutable

Names are matched against strict patterns before anything is looked up: a
malformed name is answered 400, a well-formed but unknown one 404.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from aiohttp import web

from server.repository.blobs import BlobStore
from server.repository.director import Director
from server.repository.image_repo import TIMESTAMP_FILE, ImageRepository

IMMUTABLE: Final = "public, max-age=31536000, immutable"
_VERSION: Final = r"[1-9][0-9]{0,18}"
_ROLE: Final = r"(?:root|targets|snapshot|bins|bin-[0-9a-f]{1,8}|supplier-[a-z0-9-]{1,64})"
_IMAGE_METADATA: Final = re.compile(rf"(?:{_VERSION}\.{_ROLE}|timestamp)\.json")
_DIRECTOR_ROOT: Final = re.compile(rf"({_VERSION})\.root\.json")
_IMAGE_TARGET: Final = re.compile(r"([0-9a-f]{64})\.([A-Za-z0-9_-][A-Za-z0-9._-]{0,127})")
_JSON: Final = "application/json"


class _Routes:
    """The request handlers, bound to the repositories they serve."""

    def __init__(
        self, *, image_repo: ImageRepository, director: Director, blobs: BlobStore
    ) -> None:
        self._image_repo = image_repo
        self._director = director
        self._blobs = blobs

    async def image_metadata(self, request: web.Request) -> web.Response:
        filename = request.match_info["filename"]
        if _IMAGE_METADATA.fullmatch(filename) is None:
            raise web.HTTPBadRequest(text=f"not an Image repository metadata file: {filename}")
        data = self._image_repo.metadata(filename)
        if data is None:
            raise web.HTTPNotFound(text=f"no such metadata: {filename}")
        if filename == TIMESTAMP_FILE:
            return web.Response(
                body=data, content_type=_JSON, headers={"Cache-Control": "no-cache"}
            )
        return _immutable_json(data)

    async def image_target(self, request: web.Request) -> web.FileResponse:
        filename = request.match_info["filename"]
        match = _IMAGE_TARGET.fullmatch(filename)
        if match is None:
            raise web.HTTPBadRequest(text=f"not a SHA256.TARGETNAME image file name: {filename}")
        path = self._blobs.path(match.group(1))
        if path is None:
            raise web.HTTPNotFound(text=f"no such image: {filename}")
        # FileResponse supplies Range, conditional requests and sendfile; it sets a
        # strong ETag of its own (mtime and size), which its conditional handling uses.
        return web.FileResponse(path, headers={"Cache-Control": IMMUTABLE})

    async def director_root(self, request: web.Request) -> web.Response:
        filename = request.match_info["filename"]
        match = _DIRECTOR_ROOT.fullmatch(filename)
        if match is None:
            raise web.HTTPBadRequest(text=f"not a Director root file name: {filename}")
        data = self._director.root_metadata(int(match.group(1)))
        if data is None:
            raise web.HTTPNotFound(text=f"no such Director root: {filename}")
        return _immutable_json(data)


def add_routes(
    app: web.Application,
    *,
    image_repo: ImageRepository,
    director: Director,
    blobs: BlobStore,
) -> None:
    """Adds the Image repository, image blob and Director root routes to ``app``."""
    routes = _Routes(image_repo=image_repo, director=director, blobs=blobs)
    app.router.add_get("/image/metadata/{filename}", routes.image_metadata)
    app.router.add_get("/image/targets/{filename}", routes.image_target)
    app.router.add_get("/director/metadata/{filename}", routes.director_root)


def _immutable_json(data: bytes) -> web.Response:
    etag = hashlib.sha256(data).hexdigest()
    return web.Response(
        body=data, content_type=_JSON, headers={"Cache-Control": IMMUTABLE, "ETag": f'"{etag}"'}
    )
