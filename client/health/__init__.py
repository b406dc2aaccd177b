"""Health checks run after the vehicle booted a new slot."""

from __future__ import annotations

from client.health.check import HealthResult, run_health_check

__all__ = ["HealthResult", "run_health_check"]
