"""The ``staffel-client`` command: exit codes, config errors, daemon stop, poll delays."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from client.agent import CycleResult
from client.config import load_config
from client.main import main, next_delay
from tests.client.support import VIN, Vehicle, VehicleServer


def test_a_config_error_exits_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "missing.toml"), "--once"]) == 1
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_an_unreachable_server_exits_1(
    vehicle: Vehicle, vehicle_server: VehicleServer, capsys: pytest.CaptureFixture[str]
) -> None:
    text = vehicle.config_path.read_text().replace(vehicle_server.target, "127.0.0.1:9")
    vehicle.config_path.write_text(text)

    assert main(["--config", str(vehicle.config_path), "--once"]) == 1
    assert f"{VIN}: cannot reach the server: check-in at 127.0.0.1:9 failed: UNAVAILABLE" in (
        capsys.readouterr().out
    )


def test_the_daemon_polls_and_stops_cleanly_on_sigterm(
    vehicle: Vehicle, vehicle_server: VehicleServer
) -> None:
    client = Path(sys.executable).with_name("staffel-client")
    process = subprocess.Popen(
        [str(client), "--config", str(vehicle.config_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        assert line == f"{VIN}: checked in, nothing to do (next check-in in 60 s)\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    assert len(vehicle_server.service.check_ins) == 1


def test_delays_follow_the_server_with_jitter_and_back_off_on_failures(
    vehicle: Vehicle,
) -> None:
    config = load_config(vehicle.config_path)
    ok = CycleResult(completed=True, delivered=True, next_poll_seconds=100)
    failed = CycleResult(completed=False, delivered=True, next_poll_seconds=100)

    assert 100 <= next_delay(ok, failures=0, config=config) <= 110
    assert 5 <= next_delay(failed, failures=1, config=config) <= 5.5
    assert 20 <= next_delay(failed, failures=3, config=config) <= 22
    assert 60 <= next_delay(failed, failures=30, config=config) <= 66


def test_the_daemon_tells_systemd_it_is_ready_and_pings_the_watchdog(
    vehicle: Vehicle, vehicle_server: VehicleServer, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    client = Path(sys.executable).with_name("staffel-client")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    process = subprocess.Popen(
        [str(client), "--config", str(vehicle.config_path)], stdout=subprocess.DEVNULL, env=env
    )
    try:
        messages = [listener.recv(4096).decode() for _ in range(4)]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
        listener.close()
    assert messages[0] == "READY=1"
    assert messages[1:] == ["WATCHDOG=1"] * 3


def test_the_unit_runs_the_daemon_under_a_watchdog() -> None:
    unit = Path(__file__).parents[2] / "deploy" / "systemd" / "staffel-client.service"
    lines = unit.read_text().splitlines()

    assert "Type=notify" in lines
    assert any(line.startswith("WatchdogSec=") for line in lines)
