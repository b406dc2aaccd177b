"""Built-in health checks: the configured services are running."""

from __future__ import annotations

import subprocess
from pathlib import Path

from client.health.check import HealthResult

SYSTEMD_RUNTIME = Path("/run/systemd/system")
PROC = Path("/proc")
SYSTEMCTL_TIMEOUT_SECONDS = 10.0


def _process_names() -> set[str]:
    names: set[str] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            names.add((entry / "comm").read_text(encoding="utf-8").strip())
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue  # the process ended while we looked
        names.add(Path(argv0.decode(errors="replace")).name)
    return names


def _unit_active(name: str) -> bool:
    try:
        result = subprocess.run(
            ["systemctl", "is-active", "--quiet", name],
            timeout=SYSTEMCTL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def check_services(services: tuple[str, ...]) -> HealthResult:
    """Check that every service in ``services`` runs.

    Where systemd manages the machine a service is a unit (``systemctl is-active``);
    elsewhere it is a process name (``/proc/PID/comm`` or the program's file name).

    Returns:
        Healthy when all run, otherwise the services that do not.
    """
    if not services:
        return HealthResult(healthy=True)
    if SYSTEMD_RUNTIME.is_dir():
        missing = [name for name in services if not _unit_active(name)]
    else:
        running = _process_names()
        missing = [name for name in services if name not in running]
    if missing:
        return HealthResult(healthy=False, reason=f"services not running: {', '.join(missing)}")
    return HealthResult(healthy=True)
