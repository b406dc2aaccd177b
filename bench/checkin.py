"""Check-in throughput of real staffel-server processes, beside a no-op RPC on the same ones.

    python bench/checkin.py [--small] [--database-url URL] [--seconds S] [--clients N]

Starts ``staffel-server`` (SQLite in a temporary folder, or an empty database at
``--database-url``), registers 100,000 vehicles (``--small``: 5,000) through the fleet CSV
import, and starts a campaign for 5,000 of them (``--small``: 500), and later a second
campaign for 10,000 more (``--small``: 1,000). Load generators
(``--clients`` processes, each with several gRPC channels over loopback and many calls in
flight) then measure, each for ``--seconds``:

- the baseline: the standard gRPC health ``Check`` (a dictionary look-up behind the same
  interceptors as every call) on the same server process;
- "nothing to do" check-ins: from the database (the first check-in after the server
  started or the offer epoch moved) and from memory (every later one), for vehicles
  imported without ECU keys and for vehicles provisioned with a key whose every check-in
  carries a signed version manifest (one ECU; pre-signed by the load generators before
  the window opens, so their signing does not take the server's CPU); and the same
  vehicles with heartbeats: each load process first checks each of its vehicles in once
  with a signed manifest committing to a hash chain (checked to be held by the server),
  then the window sends each vehicle's chain links in order instead of manifests;
- assignment check-ins: first offers with the Director metadata signed at the check-in
  (three Ed25519 signatures and a database write; the server started with
  ``--presign-interval 0``, first campaign), repeat offers (the stored metadata), and
  first offers after the server pre-signed the released assignments in the background
  (the default; restarted with it, the second campaign is started, and the bench waits
  until the server's metrics say it is done and reports how fast it signed): for half of
  the second campaign's vehicles, which checked in ("nothing to do") before it started,
  as a fleet polling every few minutes does, and for the other half, never seen by the
  server process before their first offer;
- the baseline and quiet check-ins again with one and then two server processes sharing
  the port (``staffel-server --reuse-port``), driven once by the Python load generators
  and once by h2load (nghttp2's C load generator, Debian's nghttp2-client, installed when
  absent), which takes a small share of the 2 cores, so that the servers get the rest.
  h2load sends one request body over and over: the health ``Check``, and the check-in of
  one quiet vehicle without keys (a fixed nonce is allowed: only signed manifests carry
  the nonces the server refuses to see twice); each kind is first checked to answer
  "serving" / "nothing to do" through a real gRPC client.

The two "nothing to do" rows the goal is judged on (from memory without keys, and
heartbeats) are measured in windows that alternate with windows of the no-op (six of each,
1.7 s long; ``--small``: three of 1 s), and each is judged against the no-op windows it
alternated with: a machine whose speed drifts by 15 % in a minute moves both alike. The
ratio of each pair of windows is printed too, to show how much the machine wandered.

Every warm pass (the first check-in of each vehicle, which may store a manifest) is
followed by a few seconds in which the server writes what the pass left behind (its
batched last-seen moments, a checkpoint of the SQLite log), so that no window is charged
with it. Rates are completed calls per second of wall time. "server CPU" is the CPU time of the
server process(es) per call (from /proc), a figure that does not depend on how much of
the machine the load generators take. Last, the cost of verifying a signed vehicle version
manifest (3 ECUs) in-process. Prints tables; exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import ClassVar

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc
from securesystemslib.signer import CryptoSigner
from staffel.v1 import (
    campaign_pb2,
    campaign_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    release_pb2,
    release_pb2_grpc,
    vehicle_pb2,
    vehicle_pb2_grpc,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from debian_tools import debian_tool  # bench/, the script's own folder

from client.uptane.heartbeat import HeartbeatChain
from client.uptane.manifest import EcuKey, ecu_version_report, sign_report, vehicle_manifest
from keys.keyset import init_keyset
from server.repository.manifests import verify_manifest
from server.sandbox import tool

READY_TIMEOUT = 120.0  # seconds a server may take to start
CHANNELS_PER_CLIENT = 4  # separate TCP connections, so SO_REUSEPORT spreads them
H2LOAD_CONNECTIONS = 64  # many, so that SO_REUSEPORT's hash spreads them evenly
H2LOAD_STREAMS = 4  # calls in flight per connection
HARDWARE = "gw-x1"
SIGNED_BASE = 900_000_000  # numbers of the vehicles provisioned with ECU keys start here
SIGNING_US = 400  # a load generator's pre-signing cost per manifest, for its lead time
MAX_RATE = 3_000  # calls/s a window is pre-signed for; beyond it manifests are signed live
# Calls/s a heartbeat window is sized for: several times what 2 cores answer, so no chain
# runs out (one that would stops the bench with a message).
HEARTBEAT_RATE = 20_000
# Seconds a warm pass is given to settle before a window: the server's last-seen flush
# (every 5 s) and log checkpoint (every 1 s) write what the pass left, charged to no row.
SETTLE_SECONDS = 6.0
# Windows of the no-op and of a goal's check-in, taken in turn (see alternate()): at least
# this many of each, each at least WINDOW_SECONDS long (more windows, shorter: a change of
# the machine's speed within the run is shared more evenly).
ALTERNATIONS = 3
WINDOW_SECONDS = 1.5


def vin(n: int) -> str:
    """The VIN of virtual vehicle ``n``."""
    return f"WSF{n:014d}"


@dataclass(frozen=True)
class Sizes:
    """How big one run is."""

    fleet: int
    assigned: int  # the first vehicles of the fleet: in the two campaigns (later_wave)
    working_set: int  # quiet vehicles the load cycles through
    signed: int  # vehicles provisioned with an ECU key (signed manifests)
    seconds: float
    clients: int
    concurrency: int  # calls in flight per client process


@dataclass(frozen=True)
class Figure:
    """One measured row."""

    name: str
    calls: int
    seconds: float
    errors: int
    latencies: list[float]
    server_cpu: float  # CPU seconds of the server process(es) during the window
    generator_cpu: float = float("nan")  # CPU seconds of the load generator (h2load rows)
    # Heartbeat rows: links of its chain each vehicle has revealed so far.
    walked: dict[int, int] = field(default_factory=dict)
    # A row merged from alternating windows: each window's rate, in order.
    window_rates: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        """Completed calls per second."""
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        """The q-th latency percentile in milliseconds."""
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000

    @property
    def cpu_per_call_us(self) -> float:
        """Server CPU microseconds per call."""
        return self.server_cpu / self.calls * 1e6 if self.calls else float("nan")


class Server:
    """One ``staffel-server`` process."""

    # Started and not stopped yet: stopped on the way out, even when the bench fails.
    running: ClassVar[list[Server]] = []

    def __init__(self, root: Path, name: str, args: Sequence[str]) -> None:
        ready = root / f"{name}.ready"
        ready.unlink(missing_ok=True)
        self.log = root / f"{name}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [tool("staffel-server"), *args, "--ready-file", str(ready)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        Server.running.append(self)
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"staffel-server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process (all its threads) so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pin(self, cpu: int) -> None:
        """Confines the process, every thread it has and every one it starts, to ``cpu``."""
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self in Server.running:
            Server.running.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        """Stops every server still running."""
        for server in list(cls.running):
            server.stop()


H2LOAD_NONCE = bytes(range(16))


def check_in_request(
    n: int, manifest: bytes = b"", nonce: bytes | None = None, heartbeat: bytes = b""
) -> vehicle_pb2.CheckInRequest:
    """What virtual vehicle ``n`` sends (one gateway ECU, nothing installed yet)."""
    return vehicle_pb2.CheckInRequest(
        vin=vin(n),
        nonce=nonce or os.urandom(16),
        ecus=[vehicle_pb2.EcuVersion(serial=f"gw-{n}", hardware_id=HARDWARE, primary=True)],
        manifest=manifest,
        heartbeat=heartbeat,
    )


def ecu_key(n: int) -> EcuKey:
    """The gateway key of signed vehicle ``n``, derived from ``n`` so every process has it."""
    seed = n.to_bytes(32, "big")
    return EcuKey(CryptoSigner(ed25519.Ed25519PrivateKey.from_private_bytes(seed)))


def signed_manifest(n: int, key: EcuKey, chain: HeartbeatChain | None = None) -> bytes:
    """A fresh version manifest of signed vehicle ``n`` (its gateway, nothing installed),
    committing to ``chain`` when given."""
    report = sign_report(ecu_version_report(f"gw-{n}", "", 0, ""), key)
    heartbeat = chain.commitment() if chain is not None else None
    return vehicle_manifest(vin(n), f"gw-{n}", [report], key, heartbeat=heartbeat)


def heartbeat_chain(n: int, length: int) -> HeartbeatChain:
    """Signed vehicle ``n``'s heartbeat chain, from a seed derived from ``n`` (every load
    process makes the same one: the warm pass commits to it, the window walks it)."""
    seed = hashlib.sha256(f"staffel bench heartbeat {n}".encode()).digest()
    return HeartbeatChain(seed, length, 0, {f"gw-{n}": ""}, held=True)


def chain_links(chain: HeartbeatChain) -> list[bytes]:
    """The links a vehicle reveals, in order: h_(N-1), h_(N-2), ..., h_0."""
    links = [chain.seed]
    for _ in range(chain.length - 1):
        links.append(hashlib.sha256(links[-1]).digest())
    return links[::-1]


def heartbeat_length(sizes: Sizes, vehicles: int) -> int:
    """Links per chain so that a window at ``HEARTBEAT_RATE`` calls/s never runs out."""
    return -(-HEARTBEAT_RATE * int(sizes.seconds + 1) // vehicles) + 1


@dataclass(frozen=True)
class Load:
    """What one load-generator process does: ``kind`` calls over ``numbers`` in a window."""

    target: str
    kind: str  # noop, quiet, first_quiet (each vehicle once), first (once), repeat
    numbers: list[int]
    start_at: float  # time.time() when the window opens
    seconds: float
    concurrency: int
    manifests_per_vehicle: int = 0  # > 0: signed vehicles, manifests pre-signed per vehicle
    heartbeat_links: int = 0  # > 0: manifests commit to chains of this length (heartbeat walks)
    heartbeat_from: dict[int, int] | None = None  # links each vehicle revealed in earlier windows


Driven = tuple[int, int, list[float], float, dict[int, int]]


async def _drive(load: Load) -> Driven:
    target, kind, numbers = load.target, load.kind, load.numbers
    start_at, seconds, concurrency = load.start_at, load.seconds, load.concurrency
    channels = [
        grpc.aio.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1), ("bench.lane", i)]
        )
        for i in range(CHANNELS_PER_CLIENT)
    ]
    health = [health_pb2_grpc.HealthStub(c) for c in channels]
    vehicles = [vehicle_pb2_grpc.VehicleServiceStub(c) for c in channels]
    once = kind in ("first", "first_quiet")
    expected = "nothing_to_do" if kind in ("quiet", "first_quiet", "heartbeat") else "update"
    chains = {n: heartbeat_chain(n, load.heartbeat_links) for n in numbers}
    committing = load.heartbeat_links > 0 and kind == "first_quiet"
    start = load.heartbeat_from or {}
    walked = {n: start.get(n, 0) for n in numbers} if kind == "heartbeat" else {}
    walks = {n: iter(chain_links(chains[n])[walked[n] :]) for n in walked}
    keys = {n: ecu_key(n) for n in numbers} if load.manifests_per_vehicle else {}
    ready = {
        n: [
            signed_manifest(n, key, chains[n] if committing else None)
            for _ in range(load.manifests_per_vehicle)
        ]
        for n, key in keys.items()
    }
    latencies: list[float] = []
    calls = errors = 0
    position = 0
    last_done = start_at
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds

    async def lane(index: int) -> None:
        nonlocal calls, errors, position, last_done
        while time.time() < end:
            if once and position >= len(numbers):
                return
            n = numbers[position % len(numbers)]
            position += 1
            lane_no = (index + position) % len(channels)
            started = time.perf_counter()
            try:
                if kind == "noop":
                    await health[lane_no].Check(health_pb2.HealthCheckRequest(service=""))
                    good = True
                else:
                    manifest = heartbeat = b""
                    if n in keys:
                        pool = ready[n]
                        manifest = pool.pop(0) if pool else signed_manifest(n, keys[n])
                    if walks:
                        heartbeat = next(walks[n], b"")
                        walked[n] += 1
                        if not heartbeat:
                            raise RuntimeError(
                                f"the heartbeat chain of vehicle {n} ran out: raise HEARTBEAT_RATE"
                            )
                    request = check_in_request(n, manifest, heartbeat=heartbeat)
                    answer = await vehicles[lane_no].CheckIn(request)
                    good = answer.WhichOneof("outcome") == expected
                    # A committing manifest must leave the chain held for the window.
                    good = good and (answer.heartbeat_chain_held or not committing)
            except grpc.aio.AioRpcError:
                good = False
            done = time.time()
            if done <= end:
                latencies.append(time.perf_counter() - started)
                calls += 1
                errors += not good
                last_done = max(last_done, done)

    await asyncio.gather(*(lane(i) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    sample = latencies[:: max(1, len(latencies) // 20_000)]
    return calls, errors, sample, last_done, walked


def drive(load: Load) -> Driven:
    """One load-generator process: calls, errors, sampled latencies, when the last ended,
    and for heartbeats the links each vehicle has revealed."""
    return asyncio.run(_drive(load))


def measure(
    pool: ProcessPoolExecutor,
    servers: Sequence[Server],
    target: str,
    *,
    name: str,
    kind: str,
    numbers: list[int],
    sizes: Sizes,
    signed: bool = False,
    heartbeat_links: int = 0,
    heartbeat_from: dict[int, int] | None = None,
    seconds: float | None = None,
) -> Figure:
    """Runs every load generator over one window (``seconds``, default the sizes'), each on
    its own share of ``numbers``; heartbeats continue each chain from ``heartbeat_from``."""
    window = seconds or sizes.seconds
    per_vehicle = -(-MAX_RATE * int(window) // len(numbers)) + 1 if signed else 0
    presign = per_vehicle * len(numbers) / sizes.clients * SIGNING_US / 1e6
    start_at = time.time() + 2.0 + presign  # the load generators are up (and signed) by then
    shares = [numbers[i :: sizes.clients] for i in range(sizes.clients)]
    futures = [
        pool.submit(
            drive,
            Load(
                target,
                kind,
                share,
                start_at,
                window,
                sizes.concurrency,
                per_vehicle,
                heartbeat_links=heartbeat_links,
                heartbeat_from=heartbeat_from,
            ),
        )
        for share in shares
    ]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = sum(s.cpu_seconds() for s in servers)
    # First offers may all be answered before the window ends: the server's CPU is read
    # when the load processes are done, so an idle tail is not counted against the calls.
    wait_for(futures, timeout=max(0.0, start_at + window - time.time()))
    cpu_after = sum(s.cpu_seconds() for s in servers)
    results = [f.result() for f in futures]
    # First offers stop when every vehicle has had its offer, maybe before the window ends.
    elapsed = window if kind != "first" else max(r[3] for r in results) - start_at
    return Figure(
        name=name,
        calls=sum(r[0] for r in results),
        seconds=elapsed,
        errors=sum(r[1] for r in results),
        latencies=[x for r in results for x in r[2]],
        server_cpu=cpu_after - cpu_before,
        walked={n: used for r in results for n, used in r[4].items()},
    )


def merged(name: str, figures: Sequence[Figure]) -> Figure:
    """Several windows of one kind as one row."""
    return Figure(
        name=name,
        calls=sum(f.calls for f in figures),
        seconds=sum(f.seconds for f in figures),
        errors=sum(f.errors for f in figures),
        latencies=[x for f in figures for x in f.latencies],
        server_cpu=sum(f.server_cpu for f in figures),
        generator_cpu=sum(f.generator_cpu for f in figures),
        window_rates=tuple(f.rate for f in figures),
    )


def alternations(sizes: Sizes) -> int:
    """How many windows of each kind :func:`alternate` takes in ``sizes.seconds``."""
    return max(ALTERNATIONS, int(sizes.seconds / WINDOW_SECONDS))


def alternate(
    pool: ProcessPoolExecutor,
    servers: Sequence[Server],
    target: str,
    *,
    name: str,
    kind: str,
    numbers: list[int],
    sizes: Sizes,
    heartbeat_links: int = 0,
) -> tuple[Figure, Figure]:
    """The no-op and one kind of check-in in alternating windows (:func:`alternations` of
    each, ``sizes.seconds`` in all for each), so that a drift of the machine's speed during
    the run moves both alike: (no-op, the kind), each merged over its windows."""
    count = alternations(sizes)
    window = sizes.seconds / count
    baselines: list[Figure] = []
    rows: list[Figure] = []
    walked: dict[int, int] = {}
    for _ in range(count):
        baselines.append(
            measure(
                pool, servers, target, name="no-op", kind="noop", numbers=numbers, sizes=sizes,
                seconds=window,
            )
        )  # fmt: skip
        rows.append(
            measure(
                pool, servers, target, name=name, kind=kind, numbers=numbers, sizes=sizes,
                heartbeat_links=heartbeat_links, heartbeat_from=walked, seconds=window,
            )
        )  # fmt: skip
        walked = rows[-1].walked
    return merged("no-op, in turn with the next row", baselines), merged(name, rows)


def warm(
    pool: ProcessPoolExecutor,
    target: str,
    numbers: list[int],
    sizes: Sizes,
    *,
    signed: bool = False,
    name: str = "nothing to do, from the database",
    heartbeat_links: int = 0,
) -> Figure:
    """One pass of quiet check-ins over ``numbers`` (each from the database): timed; then
    ``SETTLE_SECONDS`` for the server to write what the pass left behind.

    With ``heartbeat_links`` each signed manifest commits to the vehicle's heartbeat chain,
    and an answer counts as good only when the server holds it.
    """
    per_vehicle = 1 if signed else 0
    start_at = time.time() + 2.0 + len(numbers) / sizes.clients * SIGNING_US / 1e6 * per_vehicle
    shares = [numbers[i :: sizes.clients] for i in range(sizes.clients)]
    futures = [
        pool.submit(
            drive,
            Load(
                target,
                "first_quiet",
                share,
                start_at,
                3600.0,
                sizes.concurrency,
                per_vehicle,
                heartbeat_links=heartbeat_links,
            ),
        )
        for share in shares
    ]
    results = [f.result() for f in futures]
    # Measured before the server settles: the writes a pass leaves are its own cost.
    seconds = max(r[3] for r in results) - start_at
    time.sleep(SETTLE_SECONDS)
    return Figure(
        name=name,
        calls=sum(r[0] for r in results),
        seconds=seconds,
        errors=sum(r[1] for r in results),
        latencies=[x for r in results for x in r[2]],
        server_cpu=float("nan"),
    )


async def _chunks(data: bytes) -> AsyncIterator[fleet_pb2.ImportVehiclesChunk]:
    for start in range(0, len(data), 1 << 20):
        yield fleet_pb2.ImportVehiclesChunk(csv=data[start : start + (1 << 20)])


async def _image() -> AsyncIterator[release_pb2.UploadImageChunk]:
    yield release_pb2.UploadImageChunk(
        header=release_pb2.ImageHeader(
            name="gw", version="2.0", hardware_id=HARDWARE, release_counter=2
        )
    )
    yield release_pb2.UploadImageChunk(data=b"gateway firmware 2.0\n" * 1000)


def later_wave(sizes: Sizes) -> tuple[list[int], list[int], list[int]]:
    """The assigned vehicles in three groups: the campaign started at once, and the second
    campaign's vehicles that poll before it starts and that it finds never seen."""
    third = sizes.assigned // 3
    return (
        list(range(third)),
        list(range(third, 2 * third)),
        list(range(2 * third, sizes.assigned)),
    )


async def start_campaign(
    channel: grpc.aio.Channel, manager: str, approver: str, bundle_id: int, tag: str
) -> None:
    """Creates, approves and starts a one-wave campaign for the vehicles tagged ``tag``."""
    as_manager = [("authorization", f"Bearer {manager}")]
    campaigns = campaign_pb2_grpc.CampaignServiceStub(channel)
    created = await campaigns.CreateCampaign(
        campaign_pb2.CreateCampaignRequest(
            name=f"gw-2-{tag}",
            bundle_id=bundle_id,
            selector=campaign_pb2.FleetSelector(tags=[tag]),
            waves=[campaign_pb2.WaveSpec(percent=100)],
        ),
        metadata=as_manager,
    )
    await campaigns.ApproveCampaign(
        campaign_pb2.CampaignAction(campaign_id=created.campaign_id),
        metadata=[("authorization", f"Bearer {approver}")],
    )
    await campaigns.StartCampaign(
        campaign_pb2.StartCampaignRequest(campaign_id=created.campaign_id),
        metadata=as_manager,
    )


async def start_later_campaign(target: str, manager: str, approver: str, bundle_id: int) -> None:
    """Starts the second campaign (the vehicles tagged ``later``)."""
    async with grpc.aio.insecure_channel(target) as channel:
        await start_campaign(channel, manager, approver, bundle_id, "later")


async def prepare(target: str, manager: str, approver: str, sizes: Sizes) -> tuple[float, int]:
    """Imports the fleet and starts the first campaign; returns the import's seconds and
    the bundle's id."""
    first, _, _ = later_wave(sizes)
    rows = ["vin,model,region,site,tags,ecus"]
    for n in range(sizes.fleet):
        tag = "assign" if n < len(first) else "later" if n < sizes.assigned else "quiet"
        rows.append(f"{vin(n)},sedan,eu,plant-{n % 7},{tag},gw-{n}:{HARDWARE}:primary")
    data = ("\n".join(rows) + "\n").encode()
    as_manager = [("authorization", f"Bearer {manager}")]
    async with grpc.aio.insecure_channel(target) as channel:
        started = time.monotonic()
        imported = await fleet_pb2_grpc.FleetServiceStub(channel).ImportVehicles(
            _chunks(data), metadata=as_manager
        )
        import_seconds = time.monotonic() - started
        assert imported.imported == sizes.fleet
        releases = release_pb2_grpc.ReleaseServiceStub(channel)
        await releases.UploadImage(_image(), metadata=as_manager)
        bundle = await releases.CreateBundle(
            release_pb2.CreateBundleRequest(
                name="sedan-2", vehicle_model="sedan", image_target_names=["gw-2.0"]
            ),
            metadata=as_manager,
        )
        fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        for n in range(SIGNED_BASE, SIGNED_BASE + sizes.signed):
            key = ecu_key(n).public_key_json()
            await fleet.ProvisionVehicle(
                fleet_pb2.ProvisionVehicleRequest(
                    vin=vin(n), model="sedan", site=f"plant-{n % 7}", tags=["signed"],
                    ecus=[fleet_pb2.Ecu(serial=f"gw-{n}", hardware_id=HARDWARE, primary=True,
                                        public_key=key)],
                ),
                metadata=as_manager,
            )  # fmt: skip
        await start_campaign(channel, manager, approver, bundle.bundle_id, "assign")
    return import_seconds, bundle.bundle_id


def manifest_figures(root: Path, rounds: int) -> list[tuple[str, float]]:
    """Microseconds to verify a vehicle version manifest in-process, by ECU count and path."""
    figures = []
    for count in (1, 3):
        keys = {}
        reports = []
        serials = ["gw-1", "tcu-1", "bms-1"][:count]
        for serial in serials:
            key = EcuKey.generate(root / f"{count}-{serial}.pem")
            keys[serial] = key.public_key
            reports.append(sign_report(ecu_version_report(serial, "img-1.0", 10, "ab" * 32), key))
        data = vehicle_manifest(vin(1), "gw-1", reports, EcuKey.load(root / f"{count}-gw-1.pem"))
        for covered in (False, True):
            started = time.perf_counter()
            for _ in range(rounds):
                verify_manifest(data, vin=vin(1), ecu_keys=keys, primary_report_covered=covered)
            seconds = (time.perf_counter() - started) / rounds
            signatures = count + 1 - covered
            figures.append(
                (
                    f"{count} ECU{'s' if count > 1 else ''}, "
                    f"{'quiet (primary report covered)' if covered else 'full'}: "
                    f"{signatures} signature{'s' if signatures > 1 else ''}",
                    seconds * 1e6,
                )
            )
    return figures


def _grpc_body(message: health_pb2.HealthCheckRequest | vehicle_pb2.CheckInRequest) -> bytes:
    """A gRPC request body: uncompressed flag, big-endian length, the message."""
    raw = message.SerializeToString()
    return struct.pack(">BI", 0, len(raw)) + raw


def h2load_measure(
    h2load: str,
    servers: Sequence[Server],
    target: str,
    *,
    name: str,
    method: str,
    body: Path,
    seconds: float,
    cpus: set[int] | None = None,
) -> Figure:
    """One window of h2load against ``method`` (gRPC over h2c), one thread; confined to
    ``cpus`` when given."""
    command = [
        h2load, "-t", "1", "-c", str(H2LOAD_CONNECTIONS), "-m", str(H2LOAD_STREAMS),
        "--warm-up-time", "1", "-D", str(int(max(1, seconds))), "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{target}{method}",
    ]  # fmt: skip
    cpu_before = sum(s.cpu_seconds() for s in servers)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    cpu_after = sum(s.cpu_seconds() for s in servers)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    generator = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    finished = re.search(r"finished in ([\d.]+)s", done.stdout)
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", done.stdout
    )
    if done.returncode != 0 or finished is None or counts is None:
        raise SystemExit(f"h2load failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    calls, failed = int(counts.group(1)), int(counts.group(2))
    # The CPU window includes h2load's 1 s warm-up; scale it to the measured part.
    measured = float(finished.group(1))
    share = measured / (measured + 1.0)
    return Figure(
        name=name,
        calls=calls,
        seconds=measured,
        errors=failed,
        latencies=[],
        server_cpu=(cpu_after - cpu_before) * share,
        generator_cpu=generator * share,
    )


def h2load_rows(
    h2load: str,
    servers: Sequence[Server],
    target: str,
    *,
    label: str,
    bodies: tuple[Path, Path, Path],
    seconds: float,
    cpus: set[int] | None = None,
) -> tuple[Figure, Figure, Figure]:
    """h2load's no-op, nothing-to-do and repeat-offer windows (``bodies`` in that order)."""
    noop_body, quiet_body, repeat_body = bodies
    check_in = "/staffel.v1.VehicleService/CheckIn"
    return (
        h2load_measure(
            h2load, servers, target, name=f"h2load no-op, {label}",
            method="/grpc.health.v1.Health/Check", body=noop_body, seconds=seconds, cpus=cpus,
        ),
        h2load_measure(
            h2load, servers, target, name=f"h2load nothing to do, {label}", method=check_in,
            body=quiet_body, seconds=seconds, cpus=cpus,
        ),
        h2load_measure(
            h2load, servers, target, name=f"h2load repeat offer, {label}", method=check_in,
            body=repeat_body, seconds=seconds, cpus=cpus,
        ),
    )  # fmt: skip


async def _answers(target: str, quiet_number: int, offered_number: int) -> tuple[str, str, str]:
    """What h2load's three requests answer: health Check, quiet and offered check-ins."""
    async with grpc.aio.insecure_channel(target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        vehicles = vehicle_pb2_grpc.VehicleServiceStub(channel)
        quiet = await vehicles.CheckIn(check_in_request(quiet_number, nonce=H2LOAD_NONCE))
        offer = await vehicles.CheckIn(check_in_request(offered_number, nonce=H2LOAD_NONCE))
    return (
        health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
        str(quiet.WhichOneof("outcome")),
        str(offer.WhichOneof("outcome")),
    )


def check_h2load_answers(target: str, quiet_number: int, offered_number: int) -> None:
    """Stops the bench unless h2load's three requests answer what their rows say."""
    answers = asyncio.run(_answers(target, quiet_number, offered_number))
    if answers != ("SERVING", "nothing_to_do", "update"):
        raise SystemExit(f"h2load's requests would not measure what they say: {answers}")


def _metric(http_port: int, name: str) -> float:
    """One unlabelled sample of the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_presigned(http_port: int, released: int) -> tuple[int, float]:
    """Waits until the server has pre-signed the ``released`` assignments just released.

    Done when nothing is left waiting after a round that ended after the release and
    signed that many more, or after two such rounds (some may have been signed before).
    Returns (vehicles signed, seconds since the call, which include the wait for the
    server's next round).
    """
    started = time.monotonic()
    signed_before = _metric(http_port, "staffel_director_presigned_total")
    rounds_before = _metric(http_port, "staffel_director_presign_rounds_total")
    while True:
        signed = int(_metric(http_port, "staffel_director_presigned_total") - signed_before)
        rounds = _metric(http_port, "staffel_director_presign_rounds_total") - rounds_before
        waiting = _metric(http_port, "staffel_director_presign_waiting")
        if waiting == 0 and (rounds >= 2 or (rounds >= 1 and signed >= released)):
            return signed, time.monotonic() - started
        if time.monotonic() - started > 1800:
            raise SystemExit("pre-signing did not finish within 30 minutes")
        time.sleep(0.2)


def pinned_rows(
    pool: ProcessPoolExecutor,
    h2load: str,
    root: Path,
    stored: list[str],
    *,
    quiet: list[int],
    offered: list[int],
    bodies: tuple[Path, Path, Path],
    sizes: Sizes,
) -> dict[int, tuple[Figure, Figure, Figure]]:
    """h2load's rows for 1 and 2 server processes, one per core (``stored``: the servers'
    data and database options)."""
    pinned: dict[int, tuple[Figure, Figure, Figure]] = {}
    # One process per core: each server confined to a core of its own, h2load to
    # the next core where there is one (the 2-process run on 2 cores: none). Both
    # groups run at once, each on a port of its own, and their windows alternate,
    # so that a change of the machine's speed moves both alike.
    groups: dict[int, tuple[str, list[Server]]] = {}
    for count in (1, 2):
        address = f"127.0.0.1:{_free_port()}"
        own = [*stored, "--grpc-listen", address]
        own += ["--http-listen", f"127.0.0.1:{_free_port()}"]
        servers = [
            Server(root, f"pinned-{count}-{i}", [*own, "--reuse-port"]) for i in range(count)
        ]
        for cpu, each in enumerate(servers):
            each.pin(cpu)
        for _ in range(2 * count):
            warm(pool, address, quiet, sizes)
        check_h2load_answers(address, quiet[0], offered[0])
        groups[count] = (address, servers)
    turns = alternations(sizes)
    windows: dict[int, list[tuple[Figure, Figure, Figure]]] = {1: [], 2: []}
    for _ in range(turns):
        for count, (address, servers) in groups.items():
            spare = {count} if (os.cpu_count() or 1) > count else None
            label = f"{count} process{'es' if count > 1 else ''}, pinned"
            windows[count].append(
                h2load_rows(
                    h2load, servers, address, label=label, bodies=bodies,
                    seconds=max(1.0, round(sizes.seconds / turns)), cpus=spare,
                )
            )  # fmt: skip
    for count, (_, servers) in groups.items():
        for each in servers:
            each.stop()
        rows = windows[count]
        pinned[count] = (
            merged(rows[0][0].name, [row[0] for row in rows]),
            merged(rows[0][1].name, [row[1] for row in rows]),
            merged(rows[0][2].name, [row[2] for row in rows]),
        )
    return pinned


def cores_busy(rows: dict[int, tuple[Figure, Figure, Figure]]) -> None:
    """Prints how many cores the servers and h2load kept busy in each h2load window."""
    for figure in (*rows[1], *rows[2]):
        servers_busy = figure.server_cpu / figure.seconds
        generator_busy = figure.generator_cpu / figure.seconds
        print(
            f"  {figure.name:<46} cores busy: servers {servers_busy:.2f} + h2load "
            f"{generator_busy:.2f} = {servers_busy + generator_busy:.2f} of {os.cpu_count()}"
        )


def table(title: str, figures: Sequence[Figure], baseline: float) -> None:
    """Prints one table; ``baseline`` is the no-op rate the ratios refer to."""
    print(f"\n{title}")
    print(
        f"  {'call':<42} {'calls/s':>9} {'x no-op':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU us':>10} {'errors':>6}"
    )
    for f in figures:
        print(
            f"  {f.name:<42} {f.rate:>9.0f} {f.rate / baseline:>8.2f} {f.percentile(50):>8.2f} "
            f"{f.percentile(99):>8.2f} {f.cpu_per_call_us:>10.0f} {f.errors:>6}"
        )


def _token(data_dir: Path, database_url: str | None, name: str, role: str) -> str:
    command = [tool("staffel-server"), "create-token", "--data-dir", str(data_dir)]
    command += ["--name", name, "--role", role]
    if database_url:
        command += ["--database-url", database_url]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(sizes: Sizes, database_url: str | None) -> None:
    """The whole benchmark."""
    with tempfile.TemporaryDirectory(prefix="staffel-bench-") as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        init_keyset(root / "keys")
        grpc_port, http_port = _free_port(), _free_port()
        target = f"127.0.0.1:{grpc_port}"
        stored = ["--data-dir", str(data_dir), "--keys-dir", str(root / "keys")]
        if database_url:
            stored += ["--database-url", database_url]
        common = [*stored, "--grpc-listen", target, "--http-listen", f"127.0.0.1:{http_port}"]
        # Pre-signing off in this process, so its first offers sign at the check-in.
        server = Server(root, "server", [*common, "--presign-interval", "0"])
        manager = _token(data_dir, database_url, "bench-manager", "release_manager")
        approver = _token(data_dir, database_url, "bench-approver", "approver")
        import_seconds, bundle_id = asyncio.run(prepare(target, manager, approver, sizes))
        print(
            f"fleet: {sizes.fleet:,} vehicles imported in {import_seconds:.1f} s; "
            f"{sizes.assigned:,} in a running campaign; database: "
            f"{'PostgreSQL' if database_url else 'SQLite'}; {os.cpu_count()} cores; "
            f"{sizes.clients} load processes x {sizes.concurrency} calls in flight"
        )
        quiet = list(range(sizes.assigned, sizes.assigned + sizes.working_set))
        context = get_context("spawn")
        with ProcessPoolExecutor(max_workers=sizes.clients, mp_context=context) as pool:
            one = [server]
            noop = measure(
                pool, one, target, name="no-op (health Check)", kind="noop", numbers=quiet,
                sizes=sizes,
            )  # fmt: skip
            cold = warm(pool, target, quiet, sizes)
            quiet_noop, warm_quiet = alternate(
                pool, one, target, name="nothing to do, from memory", kind="quiet",
                numbers=quiet, sizes=sizes,
            )  # fmt: skip
            signed = list(range(SIGNED_BASE, SIGNED_BASE + sizes.signed))
            signed_cold = warm(
                pool, target, signed, sizes, signed=True,
                name="signed manifest, nothing to do, from DB",
            )  # fmt: skip
            signed_quiet = measure(
                pool, one, target, name="signed manifest, nothing to do, memory",
                kind="quiet", numbers=signed, sizes=sizes, signed=True,
            )  # fmt: skip
            # The same vehicles: one manifest each committing to a chain, then heartbeats.
            links = heartbeat_length(sizes, len(signed))
            committed = warm(
                pool, target, signed, sizes, signed=True, heartbeat_links=links,
                name="signed manifest committing to a chain",
            )  # fmt: skip
            if committed.errors or committed.calls != len(signed):
                raise SystemExit(
                    f"{committed.errors} of {committed.calls} manifests committing to a "
                    f"heartbeat chain were not answered 'nothing to do' with the chain held"
                )
            heartbeat_noop, signed_heartbeat = alternate(
                pool, one, target, name="signed manifest, nothing to do, heartbeat",
                kind="heartbeat", numbers=signed, sizes=sizes, heartbeat_links=links,
            )  # fmt: skip
            at_once, polled, unseen = later_wave(sizes)
            first = measure(
                pool, one, target, name="first offer, signed at check-in", kind="first",
                numbers=at_once, sizes=sizes,
            )  # fmt: skip
            offered = at_once[: first.calls]
            repeat = measure(
                pool, one, target, name="assignment, repeat offer", kind="repeat",
                numbers=offered, sizes=sizes,
            )  # fmt: skip
            noop2 = measure(
                pool, one, target, name="no-op (health Check), again", kind="noop",
                numbers=quiet, sizes=sizes,
            )  # fmt: skip
            server.stop()
            # The same database with pre-signing on. As in the field, most vehicles of a
            # wave polled ("nothing to do") before it opened; the rest were never seen by
            # this process (it restarted, or they were off).
            server = Server(root, "presigning", common)
            warm(pool, target, polled, sizes, name="second campaign's vehicles, before it")
            asyncio.run(start_later_campaign(target, manager, approver, bundle_id))
            presigned, presign_seconds = wait_presigned(http_port, len(polled) + len(unseen))
            first_polled = measure(
                pool, [server], target, name="first offer, pre-signed, polled before",
                kind="first", numbers=polled, sizes=sizes,
            )  # fmt: skip
            first_unseen = measure(
                pool, [server], target, name="first offer, pre-signed, never seen",
                kind="first", numbers=unseen, sizes=sizes,
            )  # fmt: skip
            server.stop()
            baseline = (noop.rate + noop2.rate) / 2
            table(
                "One server process (ratios against the mean of the two no-op rows)",
                [noop, cold, quiet_noop, warm_quiet, signed_cold, signed_quiet, heartbeat_noop,
                 signed_heartbeat, first, repeat, noop2, first_polled, first_unseen],
                baseline,
            )  # fmt: skip
            for row, paired in ((warm_quiet, quiet_noop), (signed_heartbeat, heartbeat_noop)):
                each = zip(row.window_rates, paired.window_rates, strict=True)
                print(
                    f"  {row.name}: {row.rate:,.0f}/s against {paired.rate:,.0f}/s no-op in "
                    f"{len(row.window_rates)} alternating windows each: "
                    f"{row.rate / paired.rate:.2f}x (window by window "
                    f"{', '.join(f'{mine / theirs:.2f}' for mine, theirs in each)}); "
                    f"server CPU {row.cpu_per_call_us:.0f} against {paired.cpu_per_call_us:.0f} "
                    f"us a call ({paired.cpu_per_call_us / row.cpu_per_call_us:.2f}x)"
                )
            print(
                f"  pre-signing the second campaign: {presigned:,} vehicles' Director metadata "
                f"in {presign_seconds:.1f} s from its start "
                f"({presigned / presign_seconds:.0f}/s; it takes at most half of one thread)"
            )

            h2load = debian_tool("h2load", ("nghttp2-client",))
            noop_body, quiet_body = root / "noop.grpc", root / "quiet.grpc"
            repeat_body = root / "repeat.grpc"
            noop_body.write_bytes(_grpc_body(health_pb2.HealthCheckRequest(service="")))
            quiet_body.write_bytes(_grpc_body(check_in_request(quiet[0], nonce=H2LOAD_NONCE)))
            repeat_body.write_bytes(_grpc_body(check_in_request(offered[0], nonce=H2LOAD_NONCE)))
            bodies = (noop_body, quiet_body, repeat_body)
            scaled: dict[int, tuple[Figure, Figure]] = {}
            light: dict[int, tuple[Figure, Figure, Figure]] = {}
            for count in (1, 2):
                servers = [
                    Server(root, f"reuse-{count}-{i}", [*common, "--reuse-port"])
                    for i in range(count)
                ]
                for _ in range(2 * count):  # every process sees every vehicle once
                    warm(pool, target, quiet, sizes)
                label = f"{count} process{'es' if count > 1 else ''}"
                scaled[count] = (
                    measure(
                        pool, servers, target, name=f"no-op, {label}", kind="noop",
                        numbers=quiet, sizes=sizes,
                    ),
                    measure(
                        pool, servers, target, name=f"nothing to do, {label}", kind="quiet",
                        numbers=quiet, sizes=sizes,
                    ),
                )  # fmt: skip
                check_h2load_answers(target, quiet[0], offered[0])
                light[count] = h2load_rows(
                    h2load, servers, target, label=label, bodies=bodies, seconds=sizes.seconds
                )
                for each in servers:
                    each.stop()
            pinned = pinned_rows(
                pool, h2load, root, stored, quiet=quiet, offered=offered, bodies=bodies,
                sizes=sizes,
            )  # fmt: skip
        base1 = scaled[1][0].rate
        table(
            "Processes sharing the port (--reuse-port); ratios against the 1-process no-op",
            [*scaled[1], *scaled[2]],
            base1,
        )
        print(
            f"  scaling 1 -> 2 processes: no-op {scaled[2][0].rate / scaled[1][0].rate:.2f}x, "
            f"nothing to do {scaled[2][1].rate / scaled[1][1].rate:.2f}x "
            f"(the load generators share the same {os.cpu_count()} cores)"
        )
        table(
            f"The same with h2load ({H2LOAD_CONNECTIONS} connections x {H2LOAD_STREAMS} "
            f"streams, one C thread; one vehicle's check-in); ratios against its 1-process no-op",
            [*light[1], *light[2]],
            light[1][0].rate,
        )
        print(
            "  (with --reuse-port the port is shared, so a check-in may reach either process; "
            "a process answers a vehicle new to it from the database once)"
        )
        cores_busy(light)
        light_scaling = light[2][1].rate / light[1][1].rate
        offer_scaling = light[2][2].rate / light[1][2].rate
        print(
            f"  scaling 1 -> 2 processes: no-op {light[2][0].rate / light[1][0].rate:.2f}x, "
            f"nothing to do {light_scaling:.2f}x, repeat offer {offer_scaling:.2f}x"
        )
        table(
            "One process per core: each server confined to its own core, h2load to a spare "
            "core where there is one (none for 2 processes on 2 cores); the 1- and 2-process "
            "windows alternate; ratios against the 1-process no-op",
            [*pinned[1], *pinned[2]],
            pinned[1][0].rate,
        )
        cores_busy(pinned)
        pinned_scaling = [pinned[2][i].rate / pinned[1][i].rate for i in range(3)]
        print(
            f"  scaling 1 -> 2 processes, one per core: no-op {pinned_scaling[0]:.2f}x, "
            f"nothing to do {pinned_scaling[1]:.2f}x, repeat offer {pinned_scaling[2]:.2f}x"
        )
        print("\nVehicle version manifest verified in-process (microseconds each)")
        for label, micros in manifest_figures(root, 200 if sizes.fleet < 50_000 else 2000):
            print(f"  {label:<48} {micros:>8.0f}")
        ratio = warm_quiet.rate / quiet_noop.rate
        signed_ratio = signed_quiet.rate / baseline
        heartbeat_ratio = signed_heartbeat.rate / heartbeat_noop.rate
        print(
            f"\nGoals: nothing to do >= 0.8 x no-op (each against the no-op windows it "
            f"alternated with): {ratio:.2f} without keys, "
            f"{heartbeat_ratio:.2f} with keys and a heartbeat "
            f"({'met' if min(ratio, heartbeat_ratio) >= 0.8 else 'not met'}; "
            f"{signed_ratio:.2f} when every check-in signs a manifest); "
            f"assignment >= 1,000/s: first {first.rate:.0f}/s signed at check-in, "
            f"{first_polled.rate:.0f}/s pre-signed ({first_unseen.rate:.0f}/s for vehicles "
            f"never seen), repeat {repeat.rate:.0f}/s "
            f"({light[1][2].rate:.0f}/s with h2load); "
            f"1 -> 2 processes >= 1.7x, one per core (h2load): nothing to do "
            f"{pinned_scaling[1]:.2f}x, repeat offer {pinned_scaling[2]:.2f}x "
            f"({'met' if min(pinned_scaling[1:]) >= 1.7 else 'not met'}); unconfined "
            f"(a single process also uses part of the second core): nothing to do "
            f"{light_scaling:.2f}x, repeat offer {offer_scaling:.2f}x; "
            f"{scaled[2][1].rate / scaled[1][1].rate:.2f}x with the Python load generators"
        )


def main() -> int:
    """Parses the options and runs the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="5,000 vehicles, short windows")
    parser.add_argument("--database-url", help="an empty database (default: SQLite in a tmp dir)")
    parser.add_argument("--seconds", type=float, help="length of each window (default 10, small 3)")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight per process")
    args = parser.parse_args()
    if args.small:
        sizes = Sizes(5_000, 1_500, 3_500, 500, 3.0, args.clients, args.concurrency)
    else:
        sizes = Sizes(100_000, 15_000, 20_000, 2_000, 10.0, args.clients, args.concurrency)
    if args.seconds:
        sizes = replace(sizes, seconds=args.seconds)
    # A bench stopped half-way (Ctrl-C, SIGTERM, an error) leaves no server running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        run(sizes, args.database_url)
    finally:
        Server.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
