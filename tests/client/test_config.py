"""Reading the client's config file: defaults, relative paths and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import load_config
from client.errors import ConfigError
from tests.client.support import write_config


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "image-root.json").write_text("{}")
    (tmp_path / "director-root.json").write_text("{}")
    path = tmp_path / "client.toml"
    write_config(
        path,
        grpc_target="127.0.0.1:7001",
        repo_url="http://127.0.0.1:7002/",
        health_command=["/bin/true"],
    )
    return path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_reads_a_valid_config_and_resolves_relative_paths(config_path: Path) -> None:
    config = load_config(config_path)

    folder = config_path.parent.resolve()
    assert config.vin == "WVWZZZ1KZ00000001"
    assert config.repo_url == "http://127.0.0.1:7002"
    assert config.state_dir == folder / "state"
    assert config.image_root == folder / "image-root.json"
    assert config.slots.directory == folder / "slots"
    assert config.slots.max_tries == 3
    assert config.health.command == ("/bin/true",)
    assert config.primary_ecu.serial == "gw-0001"
    assert config.network_timeout_seconds == 5


def test_defaults_apply_to_optional_fields(config_path: Path) -> None:
    _edit(config_path, "poll_interval_seconds = 60\nnetwork_timeout_seconds = 5\n", "")
    _edit(config_path, "max_tries = 3\n", "")

    config = load_config(config_path)

    assert (config.poll_interval_seconds, config.network_timeout_seconds) == (60, 30)
    assert config.slots.max_tries == 3


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_reported(config_path: Path) -> None:
    config_path.write_text("vin = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(config_path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('vin = "WVWZZZ1KZ00000001"\n', "", "'vin' is required"),
        ('vin = "WVWZZZ1KZ00000001"', 'vin = "SHORT"', "'vin' must be 17 characters"),
        ('grpc_target = "127.0.0.1:7001"', 'grpc_target = "nowhere"', "'grpc_target' must be"),
        ('repo_url = "http://', 'repo_url = "ftp://', "'repo_url' must start with http"),
        ("poll_interval_seconds = 60", "poll_interval_seconds = 1", "from 10 to 86400; got 1"),
        ("poll_interval_seconds = 60", 'poll_interval_seconds = "60"', "must be an integer"),
        ("max_tries = 3", "max_tries = 0", "'slots.max_tries' must be an integer from 1 to 10"),
        ('backend = "file"', 'backend = "lilo"', "'slots.backend' must be one of"),
        ('command = ["/bin/true"]', "command = []", "'health.command' must be a non-empty"),
        ('command = ["/bin/true"]', 'command = "/bin/true"', "'health.command' must be"),
        ("primary = true", "primary = false", "exactly one \\[\\[ecus\\]\\] entry"),
        ("primary = true", 'primary = "yes"', "'ecus\\[0\\].primary' must be true or false"),
        ('hardware_id = "gateway-x1"\n', "", "'ecus\\[0\\].hardware_id' is required"),
        ('image_root = "image-root.json"', 'image_root = "gone.json"', "not a file"),
        ("[slots]", "[slotz]", "the \\[slots\\] table is required"),
    ],
)
def test_invalid_fields_are_named(config_path: Path, old: str, new: str, message: str) -> None:
    _edit(config_path, old, new)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(config_path)
    assert str(config_path) in str(caught.value)


def test_duplicate_ecu_serials_are_refused(config_path: Path) -> None:
    config_path.write_text(
        config_path.read_text() + '\n[[ecus]]\nserial = "gw-0001"\nhardware_id = "gateway-x1"\n'
    )
    with pytest.raises(ConfigError, match="ECU serials must be unique"):
        load_config(config_path)


def _add_tls(config_path: Path, table: str) -> None:
    for name in ("ca.crt", "vehicle.crt", "vehicle.key"):
        (config_path.parent / name).write_text("PEM\n")
    _edit(config_path, 'repo_url = "http://', 'repo_url = "https://')
    config_path.write_text(config_path.read_text() + f"\n[tls]\n{table}")


def test_a_tls_table_names_the_fleet_ca_and_the_vehicle_certificate(config_path: Path) -> None:
    _add_tls(
        config_path, 'ca_file = "ca.crt"\ncert_file = "vehicle.crt"\nkey_file = "vehicle.key"\n'
    )

    tls = load_config(config_path).tls

    folder = config_path.parent.resolve()
    assert tls is not None
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        folder / "ca.crt",
        folder / "vehicle.crt",
        folder / "vehicle.key",
    )


def test_tls_is_off_without_the_table(config_path: Path) -> None:
    assert load_config(config_path).tls is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('cert_file = "vehicle.crt"\nkey_file = "vehicle.key"\n', r"'tls.ca_file' is required"),
        ('ca_file = "ca.crt"\ncert_file = "vehicle.crt"\n', r"give both or neither"),
        ('ca_file = "missing.crt"\n', r"'tls.ca_file' names .*missing.crt, which is not a file"),
    ],
)
def test_invalid_tls_tables_are_named(config_path: Path, table: str, message: str) -> None:
    _add_tls(config_path, table)

    with pytest.raises(ConfigError, match=message):
        load_config(config_path)


def test_tls_needs_an_https_repo_url(config_path: Path) -> None:
    _add_tls(config_path, 'ca_file = "ca.crt"\n')
    _edit(config_path, 'repo_url = "https://', 'repo_url = "http://')

    with pytest.raises(ConfigError, match=r"with \[tls\], 'repo_url' must start with https://"):
        load_config(config_path)
