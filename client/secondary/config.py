"""A secondary ECU's configuration: one TOML file, as provisioned on the ECU.

Example::

    vin = "WSF00000000000071"
    serial = "body-0001"
    hardware_id = "body-y1"
    listen = "127.0.0.1:7301"          # where the primary reaches it on the vehicle bus
    state_dir = "state"
    director_root = "director-root.json"

    [slots]
    backend = "file"
    directory = "slots"

    [health]
    command = ["/usr/bin/body-selftest"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import config as client_config
from client.config import HealthConfig, SlotsConfig
from client.errors import ConfigError
from client.secondary.partial import SecondaryIdentity


@dataclass(frozen=True)
class SecondaryConfig:
    """Everything a secondary needs.

    Attributes:
        identity: Its VIN, serial and hardware id.
        listen: The ``host:port`` its ``SecondaryService`` listens on (port 0: any).
        state_dir: Where its journal and its ECU key live.
        director_root: The Director root pinned at provisioning.
        slots: Its A/B boot control.
        health: Its post-boot health check.
    """

    identity: SecondaryIdentity
    listen: str
    state_dir: Path
    director_root: Path
    slots: SlotsConfig
    health: HealthConfig


def load_secondary_config(path: Path) -> SecondaryConfig:
    """Read and validate a secondary's config file.

    Raises:
        ConfigError: The file is missing, not TOML, or a field is missing or invalid.
    """
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    base = path.resolve().parent
    try:
        vin = client_config.string_field(raw, "vin")
        if not client_config.VIN.fullmatch(vin):
            raise ConfigError(f"'vin' must be 17 characters A-Z/0-9 without I, O, Q; got {vin!r}")
        listen = client_config.string_field(raw, "listen")
        if not client_config.HOST_PORT.fullmatch(listen):
            raise ConfigError(f"'listen' must be host:port; got {listen!r}")
        return SecondaryConfig(
            identity=SecondaryIdentity(
                vin=vin,
                serial=client_config.string_field(raw, "serial"),
                hardware_id=client_config.string_field(raw, "hardware_id"),
            ),
            listen=listen,
            state_dir=client_config.path_field(raw, "state_dir", base),
            director_root=client_config.existing_file_field(raw, "director_root", base),
            slots=client_config.slots_table(raw, base),
            health=client_config.health_table(raw),
        )
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
