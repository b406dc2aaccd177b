"""The fleet PKI: a CA that issues vehicle and relay certificates for mTLS.

A certificate names its holder in URI subject alternative names, which relays check::

    urn:staffel:vehicle:VIN     a vehicle (client use only)
    urn:staffel:relay:NAME      a relay (server and client use: it serves vehicles or relays
                                below it and calls its own upstream)
    urn:staffel:site:SITE       the site the holder belongs to

Layout of a CA directory (never inside a git tree)::

    ca.crt  ca.key                        the fleet CA (key mode 0600)
    vehicles/VIN.crt  vehicles/VIN.key    issued vehicle certificates
    relays/NAME.crt   relays/NAME.key     issued relay certificates (DNS/IP names included)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.errors import KeyToolError

_PREFIX = "urn:staffel:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class FleetIdentity:
    """Who a fleet certificate belongs to.

    Attributes:
        kind: ``vehicle`` or ``relay``.
        name: The VIN of a vehicle, the name of a relay.
        site: The holder's site.
    """

    kind: str
    name: str
    site: str


@dataclass(frozen=True)
class IssuedFiles:
    """Where an issued certificate and its key were written."""

    cert: Path
    key: Path


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise KeyToolError(
            f"{what} {value!r} must be 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def identity_of(cert: x509.Certificate) -> FleetIdentity | None:
    """The fleet identity a certificate names, or ``None`` when it names none (or two)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    holders: list[tuple[str, str]] = []
    sites: list[str] = []
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
        kind, _, name = uri.removeprefix(_PREFIX).partition(":")
        if not uri.startswith(_PREFIX) or not name:
            continue
        if kind == "site":
            sites.append(name)
        elif kind in ("vehicle", "relay"):
            holders.append((kind, name))
    if len(holders) != 1 or len(sites) != 1:
        return None
    return FleetIdentity(kind=holders[0][0], name=holders[0][1], site=sites[0])


def identity_of_pem(pem: bytes) -> FleetIdentity | None:
    """``identity_of`` for a PEM-encoded certificate (``None`` when it does not parse)."""
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class FleetCA:
    """A fleet CA loaded from (or created in) a directory."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        """Wraps a loaded CA; prefer ``FleetCA.create`` or ``FleetCA.load``."""
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def cert_path(self) -> Path:
        """The CA certificate file (what peers trust)."""
        return self.directory / "ca.crt"

    @classmethod
    def create(cls, directory: Path, *, name: str = "Staffel fleet CA") -> FleetCA:
        """Creates a new CA in ``directory``.

        Raises:
            KeyToolError: The directory already holds a CA.
        """
        if (directory / "ca.key").exists():
            raise KeyToolError(f"{directory} already holds a fleet CA; use another --dir")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_key(directory / "ca.key", key)
        _write_cert(directory / "ca.crt", cert)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> FleetCA:
        """Loads the CA of ``directory``.

        Raises:
            KeyToolError: There is no CA there, or its files do not parse.
        """
        try:
            cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            key = serialization.load_pem_private_key(
                (directory / "ca.key").read_bytes(), password=None
            )
        except FileNotFoundError:
            raise KeyToolError(
                f"{directory} holds no fleet CA; create one with 'staffel keys fleet init'"
            ) from None
        except ValueError as exc:
            raise KeyToolError(f"the fleet CA in {directory} does not load: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyToolError(f"the fleet CA key in {directory} is not an EC key")
        return cls(directory, cert, key)

    def issue_vehicle(self, vin: str, *, site: str, out: Path | None = None) -> IssuedFiles:
        """Issues a vehicle's client certificate (written to ``vehicles/`` or ``out``)."""
        _check_name(vin, "VIN")
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(f"{_PREFIX}vehicle:{vin}"),
            x509.UniformResourceIdentifier(f"{_PREFIX}site:{_check_name(site, 'site')}"),
        ]
        return self._issue(vin, names, server=False, out=out or self.directory / "vehicles")

    def issue_relay(
        self, name: str, *, site: str, hosts: tuple[str, ...] = (), out: Path | None = None
    ) -> IssuedFiles:
        """Issues a relay's certificate, valid for serving at ``hosts`` and as a client."""
        _check_name(name, "relay name")
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(f"{_PREFIX}relay:{name}"),
            x509.UniformResourceIdentifier(f"{_PREFIX}site:{_check_name(site, 'site')}"),
        ]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(name, names, server=True, out=out or self.directory / "relays")

    def _issue(
        self, common_name: str, names: list[x509.GeneralName], *, server: bool, out: Path
    ) -> IssuedFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        files = IssuedFiles(cert=out / f"{common_name}.crt", key=out / f"{common_name}.key")
        _write_key(files.key, key)
        _write_cert(files.cert, cert)
        return files
