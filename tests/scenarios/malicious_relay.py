"""Attack scenarios: an honest Image repository and Director behind a malicious relay.

The vehicle runs its real client (``staffel-client --once``, in-process) against:

- an Image repository (real TUF metadata and blobs, real keys) served over HTTP on
  127.0.0.1, with an aiohttp *relay* in front of it that passes every byte through until a
  test tells it to tamper, replay, freeze, mix or inflate what it serves;
- a ``VehicleService`` on a real gRPC server that plays the Director: honest, or
  compromised when a test makes it offer metadata of its choosing.

``AttackBench.assert_refused`` holds the line of every attack: nothing installed, the active
slot and the boot state unchanged, and a FAILED event that names the attack.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web
from securesystemslib.signer import Signer
from staffel.v1 import vehicle_pb2, vehicle_pb2_grpc
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from client.main import main
from client.slots import FileBootControl
from tests.client.support import (
    FACTORY_IMAGE,
    DirectorRepository,
    ImageRepository,
    QuietHandler,
    RecordingVehicleService,
    Repositories,
    Vehicle,
    write_vehicle,
)

Tamper = Callable[[str, bytes], bytes]


class MaliciousRelay:
    """An HTTP relay on 127.0.0.1 that serves what ``tamper`` makes of each upstream answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.tamper: Tamper | None = None
        self.requests: list[str] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Serve on a free loopback port."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        """Stop serving and end the relay's thread."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _start(self) -> None:
        self._client = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _relay(self, request: web.Request) -> web.Response:
        path = request.path
        self.requests.append(path)
        assert self._client is not None
        async with self._client.get(self.upstream + path) as upstream:
            body = await upstream.read()
            if upstream.status != 200:
                return web.Response(status=upstream.status, body=body)
        if self.tamper is not None:
            body = self.tamper(path, body)
        return web.Response(body=body, content_type="application/octet-stream")


def signed_bytes(metadata: Metadata[Root] | Metadata[object]) -> bytes:
    """Metadata serialized as the test repositories write it."""
    return bytes(metadata.to_bytes(JSONSerializer(compact=False)))


def resign(data: bytes, signers: list[Signer]) -> bytes:
    """``data`` with its signatures replaced by those of ``signers``."""
    metadata = Metadata[Root].from_bytes(data)
    metadata.signatures.clear()
    for signer in signers:
        metadata.sign(signer, append=True)
    return signed_bytes(metadata)


@dataclass
class AttackBench:
    """The honest repositories, the relay, the Director service and one vehicle."""

    repositories: Repositories
    relay: MaliciousRelay
    director: RecordingVehicleService
    vehicle: Vehicle
    honest_url: str
    root_version: dict[str, int] = field(default_factory=lambda: {"image": 1, "director": 1})

    @property
    def image(self) -> ImageRepository:
        """The honest Image repository."""
        return self.repositories.image

    def metadata_file(self, name: str) -> bytes:
        """An Image repository metadata file as the honest repository serves it."""
        return (self.image.metadata_dir / name).read_bytes()

    def offer(self, target_name: str, *, assignment_id: str = "1") -> None:
        """The Director offers the Image repository's ``target_name`` to the vehicle."""
        target = self.image.targets[target_name]
        self.director.offer(assignment_id, self.repositories.director.metadata_for([target]))

    def run_cycle(self) -> int:
        """One client cycle (``staffel-client --once``); its exit code."""
        return main(["--config", str(self.vehicle.config_path), "--once"])

    def rotate_image_root(self, role: str, signers: list[Signer], *, threshold: int) -> None:
        """Publishes the next Image root: ``role`` trusts exactly ``signers``' keys.

        The root key is unchanged, so the new root is signed by the old and new root keys.
        """
        version = self.root_version["image"]
        path = self.image.metadata_dir / f"{version}.root.json"
        root = Metadata[Root].from_bytes(path.read_bytes())
        signed = root.signed
        for keyid in list(signed.roles[role].keyids):
            signed.revoke_key(keyid, role)
        for signer in signers:
            signed.add_key(signer.public_key, role)
        signed.roles[role].threshold = threshold
        signed.version = version + 1
        new = Metadata(signed)
        new.sign(self.image.signers["root"])
        (self.image.metadata_dir / f"{version + 1}.root.json").write_bytes(signed_bytes(new))
        self.root_version["image"] = version + 1

    def boot_files(self) -> tuple[object, bytes]:
        """What decides what the vehicle boots: the boot state and the active slot A.

        (The inactive slot B may hold the refused bytes; it is never marked to boot.)
        """
        state = FileBootControl(self.vehicle.slots_dir).read_state()
        return state, self.vehicle.slot("A")

    def assert_refused(self, before: tuple[object, bytes], *words: str) -> str:
        """Nothing installed, boot state and active slot unchanged, the attack reported.

        Returns:
            The reported failure's detail.
        """
        assert self.boot_files() == before
        assert self.vehicle.slot("A") == FACTORY_IMAGE
        kinds = self.director.kinds()
        assert "INSTALLED" not in kinds and "COMMITTED" not in kinds, kinds
        assert kinds[-1] == "FAILED", kinds
        failure = self.director.events[-1]
        detail = failure.detail
        for word in words:
            assert word.lower() in detail.lower(), detail
        assert vehicle_pb2.FailureType.Name(failure.failure_type) in (
            "FAILURE_TYPE_VERIFICATION",
            "FAILURE_TYPE_DOWNLOAD",
        )
        return detail


@contextmanager
def attack_bench(tmp_path: Path) -> Iterator[AttackBench]:
    """Starts the repositories, the relay and the Director service; provisions a vehicle."""
    served = tmp_path / "served"
    served.mkdir()
    repositories = Repositories(
        url="", image=ImageRepository(served), director=DirectorRepository(served)
    )
    http = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    http_thread = threading.Thread(target=http.serve_forever, daemon=True)
    http_thread.start()
    honest_url = f"http://127.0.0.1:{http.server_address[1]}"
    relay = MaliciousRelay(honest_url)
    relay.start()
    repositories.url = relay.url
    service = RecordingVehicleService()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vehicle_pb2_grpc.add_VehicleServiceServicer_to_server(service, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        vehicle = write_vehicle(tmp_path / "vehicle", repositories, f"127.0.0.1:{port}")
        bench = AttackBench(
            repositories=repositories,
            relay=relay,
            director=service,
            vehicle=vehicle,
            honest_url=honest_url,
        )
        # A first, quiet cycle: the vehicle has booted and holds its boot state.
        assert bench.run_cycle() == 0
        yield bench
    finally:
        grpc_server.stop(grace=None).wait()
        relay.stop()
        http.shutdown()
        http.server_close()
        http_thread.join()


def expired(hours: int = 1) -> datetime:
    """A moment ``hours`` in the past, as TUF writes expiry."""
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0)
