"""A whole Staffel installation on loopback: server, relay and vehicles as real processes.

Used by ``make demo`` and by the end-to-end tests. Every process binds port 0 and reports
its addresses through a ready file; every process is stopped when the sandbox closes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from keys.fleet_ca import FleetCA
from server.errors import StaffelError

READY_TIMEOUT_SECONDS = 30.0


def tool(name: str) -> str:
    """The path of one of Staffel's console scripts, next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Service:
    """A background process and the addresses it reported."""

    name: str
    process: subprocess.Popen[bytes]
    grpc: str
    http: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a power cut or a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class VehicleSetup:
    """Where one simulated vehicle keeps its config, state and slots."""

    vin: str
    directory: Path
    serial: str
    hardware_id: str

    @property
    def config(self) -> Path:
        """The client's config file."""
        return self.directory / "client.toml"

    @property
    def slots(self) -> Path:
        """The folder holding the file-backed A/B slot pair."""
        return self.directory / "slots"


@dataclass
class Sandbox:
    """Starts Staffel's processes under ``root`` and stops them all on exit."""

    root: Path
    database_url: str | None = None
    services: list[Service] = field(default_factory=list)
    # Bearer tokens by person, made by make_people(); staffel() uses "release-manager".
    tokens: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> Sandbox:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for service in reversed(self.services):
            service.stop()

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs a command to completion and returns its output."""
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
        if check and result.returncode != 0:
            raise StaffelError(
                f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def start(self, name: str, *command: str) -> Service:
        """Starts a long-running process that writes ``--ready-file`` and waits for it."""
        ready = self.root / f"{name}.ready"
        ready.unlink(missing_ok=True)
        log_path = self.root / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*command, "--ready-file", str(ready)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise StaffelError(f"{name} did not start; its log ends with:\n{tail}")
            time.sleep(0.05)
        addresses = json.loads(ready.read_text())
        service = Service(name, process, addresses["grpc"], addresses["http"], log_path)
        self.services.append(service)
        return service

    def init_keys(self) -> Path:
        """Creates the key set of both repositories (outside any git tree)."""
        keys = self.root / "keys"
        if not (keys / "keyset.json").exists():
            self.run(tool("staffel"), "keys", "init", "--dir", str(keys))
        return keys

    def start_server(
        self, name: str = "server", poll_seconds: int = 5, staging_wait: float | None = None
    ) -> Service:
        """Starts the central server on free loopback ports.

        Args:
            name: The service's name (its data folder, log and ready file).
            poll_seconds: The vehicles' poll interval.
            staging_wait: Seconds a site's relay that has not staged a wave may hold it
                there; None keeps the server's default.
        """
        command = [
            tool("staffel-server"),
            "--data-dir", str(self.root / name),
            "--keys-dir", str(self.init_keys()),
            "--grpc-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--poll-seconds", str(poll_seconds),
        ]  # fmt: skip
        if self.database_url:
            command += ["--database-url", self.database_url]
        if staging_wait is not None:
            command += ["--staging-wait", str(staging_wait)]
        return self.start(name, *command)

    def fleet_ca(self) -> FleetCA:
        """The sandbox's fleet CA (``ROOT/fleet-ca``), created on first use."""
        directory = self.root / "fleet-ca"
        if (directory / "ca.key").exists():
            return FleetCA.load(directory)
        return FleetCA.create(directory)

    def relay_tls_options(self, name: str, *, site: str) -> tuple[str, ...]:
        """Issues relay ``name`` a fleet certificate for ``site``; its mTLS options."""
        issued = self.fleet_ca().issue_relay(name, site=site, hosts=("127.0.0.1",))
        return (
            "--site", site,
            "--tls-ca", str(self.fleet_ca().cert_path),
            "--tls-cert", str(issued.cert),
            "--tls-key", str(issued.key),
        )  # fmt: skip

    def start_relay(
        self,
        upstream: Service,
        name: str = "relay",
        *,
        options: Sequence[str] = (),
        listen_like: Service | None = None,
        tls_site: str = "",
    ) -> Service:
        """Starts an edge relay in front of ``upstream`` (the server, or a regional relay).

        Args:
            upstream: What the relay fetches from and forwards to.
            name: The service's name; its cache is ``ROOT/NAME/cache`` (kept across restarts).
            options: More ``staffel-relay`` options (``--relay-id``, ``--staging-interval``, ...).
            listen_like: A stopped relay whose ports the new one takes (a restart).
            tls_site: Serve this site with mTLS: the relay gets a fleet certificate (see
                :meth:`relay_tls_options`) and answers only that site's vehicles.
        """
        grpc_listen, http_listen = "127.0.0.1:0", "127.0.0.1:0"
        if listen_like is not None:
            grpc_listen = listen_like.grpc
            http_listen = listen_like.http.split("://", 1)[-1]
        if tls_site:
            options = (*self.relay_tls_options(name, site=tls_site), *options)
        return self.start(
            name,
            tool("staffel-relay"),
            "--upstream", upstream.http,
            "--upstream-grpc", upstream.grpc,
            "--cache-dir", str(self.root / name / "cache"),
            "--grpc-listen", grpc_listen,
            "--http-listen", http_listen,
            *options,
        )  # fmt: skip

    def create_admin_token(self, name: str = "server") -> str:
        """Bootstraps an admin token straight into the server's store."""
        command = [
            tool("staffel-server"), "create-token", "--data-dir", str(self.root / name),
            "--name", "admin", "--role", "admin",
        ]  # fmt: skip
        if self.database_url:
            command += ["--database-url", self.database_url]
        return self.run(*command).stdout.strip()

    def make_people(self, server: Service) -> None:
        """An admin, a release manager and an approver, each with a token."""
        self.tokens["admin"] = self.create_admin_token(server.name)
        for person, role in (("release-manager", "release_manager"), ("approver", "approver")):
            self.tokens[person] = self.staffel(
                server, "token", "create", "--name", person, "--role", role, who="admin"
            ).strip()

    def staffel(self, server: Service, *arguments: str, who: str = "release-manager") -> str:
        """Runs the release managers' CLI as ``who`` against ``server``; returns its output."""
        token = self.tokens.get(who, "")
        return self.run(
            tool("staffel"), "--server", server.grpc, "--token", token, *arguments
        ).stdout

    def start_campaign(
        self, server: Service, *create_arguments: str, wait_released: bool = True
    ) -> str:
        """Creates a campaign, has the approver approve it, starts it; returns its id.

        With ``wait_released`` it returns only once the engine released wave 1 (its next
        step after the start), so a vehicle checking in right away is offered its update.
        """
        created = json.loads(
            self.staffel(server, "--json", "campaign", "create", *create_arguments)
        )
        campaign_id: str = created["campaignId"]
        self.staffel(server, "campaign", "approve", campaign_id, who="approver")
        self.staffel(server, "campaign", "start", campaign_id)
        if wait_released:
            self.wait_released(server, campaign_id)
        return campaign_id

    def wait_released(self, server: Service, campaign_id: str, timeout: float = 60.0) -> None:
        """Waits until no vehicle of the campaign's wave 1 is still queued."""
        deadline = time.monotonic() + timeout
        while True:
            campaign = json.loads(self.staffel(server, "--json", "campaign", "status", campaign_id))
            queued = [
                a
                for a in campaign.get("assignments", [])
                if a.get("state") == "ASSIGNMENT_STATE_QUEUED" and a.get("wave", 0) <= 1
            ]
            if not queued:
                return
            if time.monotonic() > deadline:
                raise StaffelError(
                    f"campaign {campaign_id}: {len(queued)} vehicle(s) of wave 1 still queued "
                    f"after {timeout:.0f} s; is the engine stepping?"
                )
            time.sleep(0.1)

    def provision_vehicle(
        self,
        server: Service,
        via: Service,
        *,
        vin: str,
        model: str,
        hardware_id: str,
        health_command: Sequence[str] = ("/bin/true",),
        site: str = "",
        certificate_site: str | None = None,
    ) -> VehicleSetup:
        """Registers a vehicle with one gateway ECU and writes its client config.

        The vehicle talks to ``via`` (a relay, or the server itself); ``staffel fleet
        provision`` makes the gateway's key pair (``ecu-keys/SERIAL.pem``) and registers
        its public key, and the config names the key file. When ``via`` serves https (a
        relay with mTLS) the vehicle trusts the sandbox's fleet CA (``[tls]``).

        Args:
            server: Where the vehicle is registered.
            via: Where the vehicle checks in and downloads.
            vin: The vehicle's VIN.
            model: Its model.
            hardware_id: Its gateway's hardware id.
            health_command: The post-boot health check.
            site: The site it is registered at.
            certificate_site: Give the vehicle a fleet certificate naming this site
                (normally ``site``); None: no certificate.
        """
        directory = self.root / "vehicles" / vin
        serial = f"gw-{vin[-6:].lower()}"
        self.staffel(
            server, "fleet", "provision", "--vin", vin, "--model", model,
            "--ecu", f"{serial}:{hardware_id}:primary", "--out", str(directory),
            "--site", site,
        )  # fmt: skip
        vehicle = VehicleSetup(vin=vin, directory=directory, serial=serial, hardware_id=hardware_id)
        vehicle.slots.mkdir(parents=True, exist_ok=True)
        health = ", ".join(json.dumps(part) for part in health_command)
        vehicle.config.write_text(
            f'vin = "{vin}"\n'
            f'grpc_target = "{via.grpc}"\n'
            f'repo_url = "{via.http}"\n'
            'state_dir = "state"\n'
            'image_root = "image-root.json"\n'
            'director_root = "director-root.json"\n'
            "poll_interval_seconds = 10\n\n"
            "[[ecus]]\n"
            f'serial = "{serial}"\n'
            f'hardware_id = "{hardware_id}"\n'
            "primary = true\n"
            f'key_file = "ecu-keys/{serial}.pem"\n\n'
            "[slots]\n"
            'backend = "file"\n'
            'directory = "slots"\n'
            "max_tries = 3\n\n"
            "[health]\n"
            f"command = [{health}]\n"
            "timeout_seconds = 30\n" + self._vehicle_tls(vehicle, via, certificate_site)
        )
        return vehicle

    def _vehicle_tls(self, vehicle: VehicleSetup, via: Service, site: str | None) -> str:
        """The ``[tls]`` table of a vehicle's config (empty when ``via`` is plain HTTP)."""
        if site is None and not via.http.startswith("https://"):
            return ""
        ca = self.fleet_ca()
        fleet = vehicle.directory / "fleet"
        fleet.mkdir(parents=True, exist_ok=True)
        (fleet / "ca.crt").write_bytes(ca.cert_path.read_bytes())
        table = '\n[tls]\nca_file = "fleet/ca.crt"\n'
        if site is not None:
            ca.issue_vehicle(vehicle.vin, site=site, out=fleet)
            table += (
                f'cert_file = "fleet/{vehicle.vin}.crt"\nkey_file = "fleet/{vehicle.vin}.key"\n'
            )
        return table

    def client_once(self, vehicle: VehicleSetup) -> subprocess.Popen[str]:
        """Starts one update cycle of a vehicle's client; its stdout is a pipe."""
        return subprocess.Popen(
            [tool("staffel-client"), "--config", str(vehicle.config), "--once"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stream_lines(processes: Sequence[subprocess.Popen[str]]) -> Iterator[str]:
    """Yields the output lines of several processes as they come, until all have exited."""
    import selectors  # noqa: PLC0415 - only the demo and tests stream output

    selector = selectors.DefaultSelector()
    for process in processes:
        if process.stdout is not None:
            selector.register(process.stdout, selectors.EVENT_READ)
    while selector.get_map():
        for key, _ in selector.select(timeout=1.0):
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if line:
                yield line.rstrip("\n")
            else:
                selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
    for process in processes:
        process.wait()
