"""The vehicle client's configuration: one TOML file, read into frozen, bounded dataclasses.

Relative paths in the file resolve against the file's folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import ConfigError

VIN = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
HOST_PORT = re.compile(r"\S+:\d{1,5}")
_SLOT_BACKENDS = ("file", "grub", "uboot")


@dataclass(frozen=True)
class EcuConfig:
    """One ECU of the vehicle.

    Attributes:
        serial: The ECU's serial, as the Director names it.
        hardware_id: The ECU's hardware id, as images declare it.
        primary: Whether this ECU is the Uptane primary (the gateway running this client).
        address: Where a secondary's ``SecondaryService`` listens (``host:port`` on the
            vehicle bus); empty for the primary.
        key_file: The ECU's private key (PEM), made at provisioning, whose public key the
            server registered; it signs the ECU's version reports. None: a key made on the
            ECU at first use (a vehicle registered without keys).
    """

    serial: str
    hardware_id: str
    primary: bool = False
    address: str = ""
    key_file: Path | None = None


@dataclass(frozen=True)
class SlotsConfig:
    """A/B boot control.

    Attributes:
        backend: The boot-control backend: ``file`` (a JSON state file, for simulations),
            ``grub`` (a GRUB environment block) or ``uboot`` (a U-Boot environment).
        directory: Where the slots ``A.img`` and ``B.img`` (files, or symlinks to the
            partitions), the slot inventory and the ``file`` backend's state live.
        env: The GRUB environment block (``grub``) or the ``fw_env.config`` (``uboot``).
        max_tries: Boots the bootloader tries a new slot before it falls back (1 to 10).
    """

    backend: str
    directory: Path
    env: Path | None = None
    max_tries: int = 3


@dataclass(frozen=True)
class HealthConfig:
    """The health check run after booting a new slot.

    Besides the built-in checks (the boot state is sane: the new slot booted and holds
    the verified image), every configured command must exit 0 within its timeout and
    every listed service must be running.

    Attributes:
        command: The program and its arguments (no shell unless the command names one),
            empty for none.
        timeout_seconds: How long each command may run before it counts as failed
            (1 to 3600).
        commands: Further commands, each checked like ``command``.
        services: Services that must be running (systemd units where systemd runs,
            otherwise process names).
    """

    command: tuple[str, ...] = ()
    timeout_seconds: int = 30
    commands: tuple[tuple[str, ...], ...] = ()
    services: tuple[str, ...] = ()

    @property
    def all_commands(self) -> tuple[tuple[str, ...], ...]:
        """Every configured command, ``command`` first."""
        return ((self.command,) if self.command else ()) + self.commands


@dataclass(frozen=True)
class TlsConfig:
    """mTLS towards the site relay with the vehicle's fleet certificate.

    Attributes:
        ca_file: The fleet CA certificate (PEM), the only CA the vehicle trusts.
        cert_file: The vehicle's certificate (PEM) from ``staffel keys fleet vehicle``;
            None presents no certificate (a relay with mTLS then refuses the vehicle).
        key_file: The certificate's private key (PEM); given exactly when ``cert_file`` is.
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def describe(self) -> str:
        """The files, for error messages."""
        files = [self.ca_file, self.cert_file, self.key_file]
        return ", ".join(str(path) for path in files if path is not None)


@dataclass(frozen=True)
class ClientConfig:
    """Everything the vehicle client needs, as provisioned on the vehicle.

    Attributes:
        vin: The vehicle identification number (17 characters).
        grpc_target: The relay's (or central server's) gRPC endpoint, ``host:port``.
        repo_url: The relay's (or central server's) HTTP base URL.
        fallback_repo_url: The central server's HTTP base URL, used for image downloads
            when the site relay (``repo_url``) fails; empty for none.
        state_dir: Where the journal, the event outbox and the TUF metadata caches live.
        image_root: The Image repository root metadata pinned at provisioning.
        director_root: The Director repository root metadata pinned at provisioning.
        ecus: The vehicle's ECUs; exactly one is the primary.
        slots: A/B boot control.
        health: The post-boot health check.
        poll_interval_seconds: Check-in interval when the server names none (10 to 86400).
        network_timeout_seconds: Connect and read timeout of each network call (1 to 600).
        tls: mTLS with the fleet certificate (``[tls]``; ``repo_url`` is then https);
            None for plain TCP.
    """

    vin: str
    grpc_target: str
    repo_url: str
    state_dir: Path
    image_root: Path
    director_root: Path
    ecus: tuple[EcuConfig, ...]
    slots: SlotsConfig
    health: HealthConfig
    poll_interval_seconds: int = 60
    network_timeout_seconds: int = 30
    fallback_repo_url: str = ""
    tls: TlsConfig | None = None

    @property
    def repo_urls(self) -> tuple[str, ...]:
        """Where images are downloaded from, in order of preference."""
        return (
            (self.repo_url, self.fallback_repo_url) if self.fallback_repo_url else (self.repo_url,)
        )

    @property
    def secondary_ecus(self) -> tuple[EcuConfig, ...]:
        """The secondary ECUs, each reached at its address."""
        return tuple(ecu for ecu in self.ecus if not ecu.primary)

    @property
    def primary_ecu(self) -> EcuConfig:
        """The primary ECU (validated to exist exactly once)."""
        return next(ecu for ecu in self.ecus if ecu.primary)


def load_config(path: Path) -> ClientConfig:
    """Read and validate the client's config file.

    Args:
        path: The TOML config file.

    Returns:
        The validated configuration, with every path made absolute.

    Raises:
        ConfigError: The file is missing, is not TOML, or a field is missing or invalid;
            the message names the file and the field.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        return _parse(raw, base=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _parse(raw: dict[str, Any], *, base: Path) -> ClientConfig:
    vin = _string(raw, "vin")
    if not VIN.fullmatch(vin):
        raise ConfigError(f"'vin' must be 17 characters A-Z/0-9 without I, O, Q; got {vin!r}")
    grpc_target = _string(raw, "grpc_target")
    if not HOST_PORT.fullmatch(grpc_target):
        raise ConfigError(f"'grpc_target' must be host:port; got {grpc_target!r}")
    repo_url = _url(raw, "repo_url")
    tls = _tls(raw["tls"], base) if "tls" in raw else None
    if tls is not None and not repo_url.startswith("https://"):
        raise ConfigError(f"with [tls], 'repo_url' must start with https://; got {repo_url!r}")
    return ClientConfig(
        vin=vin,
        grpc_target=grpc_target,
        repo_url=repo_url,
        state_dir=_path(raw, "state_dir", base),
        image_root=_existing_file(raw, "image_root", base),
        director_root=_existing_file(raw, "director_root", base),
        ecus=_ecus(raw, base),
        slots=_slots(_table(raw, "slots"), base),
        health=_health(_table(raw, "health")),
        poll_interval_seconds=_integer(raw, "poll_interval_seconds", 60, 10, 86400),
        network_timeout_seconds=_integer(raw, "network_timeout_seconds", 30, 1, 600),
        fallback_repo_url=_url(raw, "fallback_repo_url") if "fallback_repo_url" in raw else "",
        tls=tls,
    )


def _tls(raw: Any, base: Path) -> TlsConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[tls] must be a table")
    if ("cert_file" in raw) != ("key_file" in raw):
        raise ConfigError("'tls.cert_file' and 'tls.key_file' go together: give both or neither")
    with_certificate = "cert_file" in raw
    return TlsConfig(
        ca_file=_existing_file(raw, "ca_file", base, "tls."),
        cert_file=_existing_file(raw, "cert_file", base, "tls.") if with_certificate else None,
        key_file=_existing_file(raw, "key_file", base, "tls.") if with_certificate else None,
    )


def _url(raw: dict[str, Any], key: str) -> str:
    url = _string(raw, key).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"'{key}' must start with http:// or https://; got {url!r}")
    return url


def _ecus(raw: dict[str, Any], base: Path) -> tuple[EcuConfig, ...]:
    entries = raw.get("ecus")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("at least one [[ecus]] entry is required")
    ecus: list[EcuConfig] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"[[ecus]] entry {index + 1} must be a table")
        primary = entry.get("primary", False)
        if not isinstance(primary, bool):
            raise ConfigError(f"'ecus[{index}].primary' must be true or false")
        address = entry.get("address", "")
        if not isinstance(address, str) or (address and not HOST_PORT.fullmatch(address)):
            raise ConfigError(f"'ecus[{index}].address' must be host:port; got {address!r}")
        ecus.append(
            EcuConfig(
                serial=_string(entry, "serial", f"ecus[{index}]."),
                hardware_id=_string(entry, "hardware_id", f"ecus[{index}]."),
                primary=primary,
                address=address,
                key_file=_path(entry, "key_file", base, f"ecus[{index}].")
                if "key_file" in entry
                else None,
            )
        )
    serials = [ecu.serial for ecu in ecus]
    if len(set(serials)) != len(serials):
        raise ConfigError(f"ECU serials must be unique; got {serials}")
    if sum(ecu.primary for ecu in ecus) != 1:
        raise ConfigError("exactly one [[ecus]] entry must have primary = true")
    for ecu in ecus:
        if not ecu.primary and not ecu.address:
            raise ConfigError(
                f"ECU {ecu.serial} is a secondary: give its 'address' (host:port of its "
                "SecondaryService on the vehicle bus)"
            )
    return tuple(ecus)


def _slots(raw: dict[str, Any], base: Path) -> SlotsConfig:
    backend = _string(raw, "backend", "slots.")
    if backend not in _SLOT_BACKENDS:
        raise ConfigError(f"'slots.backend' must be one of {_SLOT_BACKENDS}; got {backend!r}")
    if backend != "file" and "env" not in raw:
        raise ConfigError(f"'slots.env' is required for the {backend} backend")
    return SlotsConfig(
        backend=backend,
        directory=_path(raw, "directory", base, "slots."),
        env=_path(raw, "env", base, "slots.") if "env" in raw else None,
        max_tries=_integer(raw, "max_tries", 3, 1, 10, prefix="slots."),
    )


def _health(raw: dict[str, Any]) -> HealthConfig:
    command = _command(raw["command"], "health.command") if "command" in raw else ()
    commands = raw.get("commands", [])
    services = raw.get("services", [])
    if not isinstance(commands, list):
        raise ConfigError("'health.commands' must be a list of commands")
    if not isinstance(services, list) or not all(
        isinstance(name, str) and name for name in services
    ):
        raise ConfigError("'health.services' must be a list of non-empty strings")
    return HealthConfig(
        command=command,
        timeout_seconds=_integer(raw, "timeout_seconds", 30, 1, 3600, prefix="health."),
        commands=tuple(
            _command(entry, f"health.commands[{index}]") for index, entry in enumerate(commands)
        ),
        services=tuple(services),
    )


def _command(value: Any, key: str) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(part, str) and part for part in value)
    ):
        raise ConfigError(f"'{key}' must be a non-empty list of non-empty strings")
    return tuple(value)


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"the [{key}] table is required")
    return value


def _string(raw: dict[str, Any], key: str, prefix: str = "") -> str:
    value = raw.get(key)
    if value is None:
        raise ConfigError(f"'{prefix}{key}' is required")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'{prefix}{key}' must be a non-empty string")
    return value


def _integer(
    raw: dict[str, Any], key: str, default: int, low: int, high: int, *, prefix: str = ""
) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"'{prefix}{key}' must be an integer from {low} to {high}; got {value!r}")
    return value


def _path(raw: dict[str, Any], key: str, base: Path, prefix: str = "") -> Path:
    return base / Path(_string(raw, key, prefix)).expanduser()


def _existing_file(raw: dict[str, Any], key: str, base: Path, prefix: str = "") -> Path:
    path = _path(raw, key, base, prefix)
    if not path.is_file():
        raise ConfigError(f"'{prefix}{key}' names {path}, which is not a file")
    return path


def string_field(raw: dict[str, Any], key: str) -> str:
    """A required non-empty string (shared with the secondary's config)."""
    return _string(raw, key)


def path_field(raw: dict[str, Any], key: str, base: Path) -> Path:
    """A required path, relative to ``base`` (shared with the secondary's config)."""
    return _path(raw, key, base)


def existing_file_field(raw: dict[str, Any], key: str, base: Path) -> Path:
    """A required path naming an existing file (shared with the secondary's config)."""
    return _existing_file(raw, key, base)


def slots_table(raw: dict[str, Any], base: Path) -> SlotsConfig:
    """The required ``[slots]`` table (shared with the secondary's config)."""
    return _slots(_table(raw, "slots"), base)


def health_table(raw: dict[str, Any]) -> HealthConfig:
    """The optional ``[health]`` table (shared with the secondary's config)."""
    return _health(raw.get("health", {}))
