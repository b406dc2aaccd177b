"""The relay's configuration: one frozen dataclass, every limit bounded and with its unit."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from server.relay.errors import RelayConfigError

_KIB = 1024
_GIB = 1024**3


@dataclass(frozen=True)
class ListenAddress:
    """A host and TCP port to bind (port 0 lets the kernel choose)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, option: str) -> ListenAddress:
        """Parses ``HOST:PORT`` (IPv6 hosts in brackets, ``[::1]:7001``).

        Args:
            text: The address as given on the command line.
            option: The option's name, for the error message.

        Raises:
            RelayConfigError: The address is not ``HOST:PORT`` with a port in 0..65535.
        """
        host, sep, port_text = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise RelayConfigError(
                f"{option} must be HOST:PORT with a port in 0..65535, got {text!r}"
            )
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        """``HOST:PORT``, with an IPv6 host in brackets."""
        return _join(self.host, self.port)

    def connectable(self, port: int) -> str:
        """``HOST:PORT`` that a local peer can connect to, for a port actually bound.

        A wildcard host (``0.0.0.0``, ``::``) is reported as the loopback address.
        """
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return _join(self.host, port)
        if ip.is_unspecified:
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        return _join(str(ip), port)


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """The relay's mTLS material (PEM files), issued by the fleet CA (``staffel keys fleet``).

    Attributes:
        ca_file: The fleet CA certificate: peers (vehicles, relays, the upstream) must chain
            to it.
        cert_file: This relay's certificate (server and client use).
        key_file: This relay's private key.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """Everything one relay process needs; checked on construction.

    Attributes:
        upstream_url: Base URL of the upstream HTTP server (central server or a regional relay).
        upstream_grpc: ``HOST:PORT`` of the upstream gRPC ``VehicleService``.
        cache_dir: Where blobs and metadata are kept across restarts.
        grpc_listen: Where vehicles reach the relay's gRPC service.
        http_listen: Where vehicles fetch metadata and blobs.
        ready_file: Written atomically with the bound addresses once the relay serves.
        connect_timeout: Seconds to open a connection to the upstream.
        read_timeout: Seconds without a byte from the upstream before a fetch is abandoned.
        timestamp_timeout: Seconds for the whole upstream fetch of ``timestamp.json``; on
            expiry the last cached copy is served.
        rpc_deadline: Seconds an upstream gRPC call may take.
        shutdown_grace: Seconds in-flight requests get to finish on SIGTERM.
        timestamp_max_bytes: Largest ``timestamp.json`` accepted from the upstream.
        metadata_max_bytes: Largest versioned metadata file accepted from the upstream.
        blob_max_bytes: Largest blob accepted from the upstream.
        resume_window: Seconds an interrupted upstream transfer keeps being resumed (with
            backoff) before the waiting vehicles get an error.
        cache_budget_bytes: Disk budget for cached blobs; least recently used blobs that no
            staging plan pins are evicted to stay within it.
        site: The site this relay serves (``plant-munich``); with TLS, only certificates
            of this site are answered. Also names the relay's staging plan.
        relay_id: This relay's name towards the server (staging readiness).
        tls: Certificates for mTLS towards vehicles and the upstream; ``None`` for plain TCP.
        staging_interval: Seconds between two fetches of the staging plan (0 disables it).
        flush_interval: Seconds between two attempts to forward queued events while the
            uplink is down.
    """

    upstream_url: str
    upstream_grpc: str
    cache_dir: Path
    grpc_listen: ListenAddress = ListenAddress(host="127.0.0.1", port=7001)
    http_listen: ListenAddress = ListenAddress(host="127.0.0.1", port=7002)
    ready_file: Path | None = None
    connect_timeout: float = 5.0  # seconds
    read_timeout: float = 60.0  # seconds
    timestamp_timeout: float = 3.0  # seconds
    rpc_deadline: float = 10.0  # seconds
    shutdown_grace: float = 5.0  # seconds
    timestamp_max_bytes: int = 16 * _KIB  # bytes, as python-tuf's UpdaterConfig
    metadata_max_bytes: int = 5_000_000  # bytes, python-tuf's largest (targets)
    blob_max_bytes: int = 16 * _GIB  # bytes
    resume_window: float = 120.0  # seconds
    cache_budget_bytes: int = 64 * _GIB  # bytes
    site: str = ""
    relay_id: str = ""
    tls: TlsFiles | None = None
    staging_interval: float = 0.0  # seconds; 0 = no staging
    flush_interval: float = 2.0  # seconds

    def __post_init__(self) -> None:
        url = urlsplit(self.upstream_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise RelayConfigError(
                f"--upstream must be an http(s) URL such as http://server:8080, "
                f"got {self.upstream_url!r}"
            )
        ListenAddress.parse(self.upstream_grpc, option="--upstream-grpc")
        for name, low, high in (
            ("connect_timeout", 0.1, 300.0),
            ("read_timeout", 0.1, 3600.0),
            ("timestamp_timeout", 0.1, 60.0),
            ("rpc_deadline", 0.1, 300.0),
            ("shutdown_grace", 0.0, 300.0),
            ("timestamp_max_bytes", 1, 1024 * _KIB),
            ("metadata_max_bytes", 1, 100_000_000),
            ("blob_max_bytes", 1, 1024 * _GIB),
            ("resume_window", 0.0, 86_400.0),
            ("cache_budget_bytes", 1, 1024**5),
            ("staging_interval", 0.0, 86_400.0),
            ("flush_interval", 0.05, 3600.0),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise RelayConfigError(f"{name} must lie in {low}..{high}, got {value}")

    @property
    def upstream_tls(self) -> bool:
        """True when the upstream is reached over HTTPS (and its gRPC over TLS)."""
        return self.upstream_url.startswith("https:")

    @property
    def upstream_base(self) -> str:
        """The upstream URL without a trailing slash, ready for appending paths."""
        return self.upstream_url.rstrip("/")
