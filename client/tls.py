"""mTLS towards the site relay: one fleet certificate for gRPC, blobs and metadata.

The vehicle trusts only the fleet CA (not the system's CAs) and presents the certificate
the fleet CA issued for its VIN and site (``staffel keys fleet vehicle``). Files are read
once, here, and turned into what grpc and urllib3 take.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from client.config import TlsConfig
from client.errors import ConfigError


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from exc


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The HTTPS context: trusts the fleet CA only, presents the vehicle's certificate.

    Raises:
        ConfigError: A file is missing or does not load.
    """
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the fleet TLS files ({tls.describe()}): {exc}") from exc
    return context


def grpc_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """gRPC channel credentials: the fleet CA as the only root, the vehicle's certificate.

    Raises:
        ConfigError: A file cannot be read.
    """
    private_key = certificate = None
    if tls.cert_file is not None and tls.key_file is not None:
        private_key = _read(tls.key_file, "vehicle key")
        certificate = _read(tls.cert_file, "vehicle certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "fleet CA certificate"),
        private_key=private_key,
        certificate_chain=certificate,
    )
