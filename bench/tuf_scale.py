"""Image repository at fleet scale: what a vehicle downloads, and what one publication costs.

    python bench/tuf_scale.py [--small] [--images N] [--bin-bits B]

Builds an Image repository of 100,000 images (``--small``: 2,000) in hashed bins (TAP 15,
1,024 bins), in SQLite in a temporary folder, serves it over real HTTP on 127.0.0.1 with
the server's routes, and lets python-tuf's ngclient (bootstrapped with root version 1, as a
provisioned vehicle is) look up one image. Then it publishes one more image and looks that
one up from the same metadata cache. Prints the bytes each refresh downloaded and the time
the publication took, against the goals (refresh after one image <= 64 KiB, publish <= 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keys.keyset import init_keyset
from server.repository.blobs import BlobStore
from server.repository.director import Director
from server.repository.http import add_routes
from server.repository.image_repo import ImageRepository, ImageTarget
from server.store import Database

REFRESH_GOAL = 64 * 1024  # bytes
PUBLISH_GOAL = 1.0  # seconds
BATCH = 10_000  # images per publication while building
HARDWARE_IDS = 40
ECU_TYPES = ("gateway", "brake", "infotainment", "adas", "body", "powertrain")


class CountingFetcher(FetcherInterface):
    """Fetches over HTTP and counts every byte and request."""

    def __init__(self) -> None:
        self._inner = Urllib3Fetcher(app_user_agent="staffel-bench")
        self.bytes = 0
        self.files: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.files.append(url.rsplit("/", 1)[-1])
        for chunk in self._inner.fetch(url):
            self.bytes += len(chunk)
            yield chunk


def image(number: int) -> ImageTarget:
    """A made-up image with the Uptane custom fields a real one carries."""
    name = f"{ECU_TYPES[number % len(ECU_TYPES)]}-fw-{number:06d}"
    return ImageTarget(
        target_name=f"{name}-1.0",
        sha256=hashlib.sha256(name.encode()).hexdigest(),
        length=1_048_576 + number,
        custom={
            "name": name,
            "version": "1.0",
            "hardware_ids": [f"hw-{number % HARDWARE_IDS:02d}"],
            "release_counter": 1,
            "ecu_type": ECU_TYPES[number % len(ECU_TYPES)],
        },
    )


def serve(
    app: web.Application,
) -> tuple[str, asyncio.AbstractEventLoop, threading.Thread, web.AppRunner]:
    """Serves ``app`` on a loopback port from a background thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}", loop, thread, runner


def look_up(metadata_dir: Path, base_url: str, root: bytes, name: str) -> CountingFetcher:
    """One vehicle refresh plus the lookup of ``name``; returns what it downloaded."""
    fetcher = CountingFetcher()
    updater = Updater(
        str(metadata_dir), f"{base_url}/image/metadata/", fetcher=fetcher, bootstrap=root
    )
    updater.refresh()
    if updater.get_targetinfo(name) is None:
        raise SystemExit(f"the client did not find {name}")
    return fetcher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2,000 images, for a quick run")
    parser.add_argument("--images", type=int, help="how many images (default 100,000)")
    parser.add_argument("--bin-bits", type=int, default=10, help="2^B hashed bins (default 10)")
    args = parser.parse_args()
    count = args.images or (2_000 if args.small else 100_000)
    with tempfile.TemporaryDirectory(prefix="staffel-tuf-scale-") as temp:
        root_dir = Path(temp)
        database = Database.in_data_dir(root_dir / "data")
        keys = init_keyset(root_dir / "keys")
        repo = ImageRepository(database, keys, bin_bits=args.bin_bits)
        director = Director(database, keys)
        repo.initialize()
        director.initialize()
        started = time.perf_counter()
        for first in range(0, count, BATCH):
            repo.add_images([image(n) for n in range(first, min(first + BATCH, count))])
        build_seconds = time.perf_counter() - started

        app = web.Application()
        add_routes(app, image_repo=repo, director=director, blobs=BlobStore(root_dir / "blobs"))
        base_url, loop, thread, runner = serve(app)
        try:
            metadata_dir = root_dir / "vehicle"
            metadata_dir.mkdir()
            root = repo.metadata("1.root.json")
            assert root is not None
            first_refresh = look_up(metadata_dir, base_url, root, image(count // 2).target_name)
            started = time.perf_counter()
            repo.add_images([image(count)])
            publish_seconds = time.perf_counter() - started
            after_one = look_up(metadata_dir, base_url, root, image(count).target_name)
        finally:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
        database.dispose()

    print(f"Image repository: {count:,} images in {2**args.bin_bits:,} hashed bins "
          f"(built in {build_seconds:.1f} s, {BATCH:,} images per publication)")  # fmt: skip
    print(f"first refresh + lookup:       {first_refresh.bytes:>9,} bytes in "
          f"{len(first_refresh.files)} requests ({', '.join(first_refresh.files)})")  # fmt: skip
    ok_refresh = after_one.bytes <= REFRESH_GOAL
    ok_publish = publish_seconds <= PUBLISH_GOAL
    print(f"refresh after one new image:  {after_one.bytes:>9,} bytes in "
          f"{len(after_one.files)} requests ({', '.join(after_one.files)})  "
          f"goal <= {REFRESH_GOAL:,}: {'met' if ok_refresh else 'MISSED'}")  # fmt: skip
    print(f"publish one image:            {publish_seconds:>9.3f} s  "
          f"goal <= {PUBLISH_GOAL:.0f} s: {'met' if ok_publish else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
