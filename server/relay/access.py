"""mTLS at the relay: TLS contexts from the fleet CA, and who may ask the relay for what.

With TLS configured, every peer must present a certificate issued by the fleet CA (the TLS
handshake refuses anyone else). The site policy then admits:

- vehicles of the relay's own site, and for gRPC only about their own VIN (the certificate's
  VIN must equal the request's);
- relays (a plant relay below a regional one), which pass on calls they already checked.

Without TLS (a lab or a test on loopback) every request is admitted.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from cryptography import x509

from keys.fleet_ca import FleetIdentity, identity_of, identity_of_pem
from server.relay.config import TlsFiles
from server.relay.errors import AccessDeniedError, RelayConfigError


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RelayConfigError(f"cannot read the {what} {path}: {exc}") from exc


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """The HTTPS context: the relay's certificate, client certificates required.

    Raises:
        RelayConfigError: A file is missing or does not load.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise RelayConfigError(f"cannot load the relay certificate {tls.cert_file}: {exc}") from exc
    return context


def client_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """The context for HTTPS to the upstream: trusts the fleet CA, presents our certificate.

    Raises:
        RelayConfigError: A file is missing or does not load.
    """
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise RelayConfigError(f"cannot load the relay certificate {tls.cert_file}: {exc}") from exc
    return context


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials that require a client certificate from the fleet CA."""
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file, "relay key"), _read(tls.cert_file, "relay certificate"))],
        root_certificates=_read(tls.ca_file, "fleet CA certificate"),
        require_client_auth=True,
    )


def grpc_channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """gRPC channel credentials for the upstream: trusts the fleet CA, presents our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "fleet CA certificate"),
        private_key=_read(tls.key_file, "relay key"),
        certificate_chain=_read(tls.cert_file, "relay certificate"),
    )


def identity_of_der(der: bytes | None) -> FleetIdentity | None:
    """The fleet identity of a peer's DER certificate (as ``ssl`` hands it out)."""
    if der is None:
        return None
    try:
        return identity_of(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


def grpc_peer_identity(auth_context: Mapping[str, Iterable[bytes]]) -> FleetIdentity | None:
    """The fleet identity of a gRPC peer, from its verified certificate."""
    pem = next(iter(auth_context.get("x509_pem_cert", ())), None)
    return identity_of_pem(pem) if pem is not None else None


class SitePolicy:
    """Decides whether a peer may be answered; enforced only when TLS is on."""

    def __init__(self, *, site: str, enforced: bool) -> None:
        """A policy for the relay of ``site``."""
        self.site = site
        self.enforced = enforced

    def admit(self, peer: FleetIdentity | None, *, vin: str | None = None) -> None:
        """Admits the peer, or raises.

        Args:
            peer: Who presented a fleet certificate (``None``: no usable identity).
            vin: The VIN a gRPC request is about, checked against a vehicle's certificate.

        Raises:
            AccessDeniedError: The peer has no fleet identity, belongs to another site, or
                asks about another vehicle. ``reason`` says which.
        """
        if not self.enforced:
            return
        if peer is None:
            raise AccessDeniedError(
                "no_identity", "the client certificate names no Staffel vehicle or relay"
            )
        if peer.kind == "relay":
            return
        if peer.site != self.site:
            raise AccessDeniedError(
                "other_site",
                f"vehicle {peer.name} belongs to site {peer.site!r}; this relay serves "
                f"{self.site!r}: connect to your site's relay",
            )
        if vin is not None and vin != peer.name:
            raise AccessDeniedError(
                "foreign_vin", f"the certificate of vehicle {peer.name} cannot speak for {vin}"
            )
