"""The health check: exit status, timeouts, output tail, missing programs."""

from __future__ import annotations

import time

from client.health import run_health_check


def test_exit_status_zero_is_healthy() -> None:
    assert run_health_check(("/bin/sh", "-c", "exit 0"), 5).healthy


def test_a_failing_command_reports_its_status_and_last_output() -> None:
    script = "for i in 1 2 3 4 5 6 7; do echo line $i; done; echo oops >&2; exit 3"
    result = run_health_check(("/bin/sh", "-c", script), 5)

    assert not result.healthy
    assert result.reason == "exit status 3"
    assert result.output.splitlines() == ["line 4", "line 5", "line 6", "line 7", "oops"]
    assert result.detail.startswith("exit status 3; last output:\nline 4")


def test_a_hanging_command_and_its_children_are_killed_at_the_timeout() -> None:
    started = time.monotonic()
    result = run_health_check(("/bin/sh", "-c", "sleep 30 & sleep 30"), 0.5)

    assert not result.healthy
    assert result.reason == "timed out after 0.5 s"
    assert time.monotonic() - started < 10


def test_a_missing_program_is_unhealthy() -> None:
    result = run_health_check(("/nonexistent/check",), 5)
    assert not result.healthy
    assert result.reason.startswith("cannot run /nonexistent/check")
