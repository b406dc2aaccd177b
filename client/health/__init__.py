"""Post-boot health checks: configured commands with timeouts, and built-in checks."""

from __future__ import annotations

from client.health.check import HealthResult, run_health_check
from client.health.services import check_services

__all__ = ["HealthResult", "check_services", "run_health_check"]
