"""The post-boot health check: run the configured command with a time limit."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4096  # how much of the command's output is kept for the report
OUTPUT_TAIL_LINES = 5


@dataclass(frozen=True)
class HealthResult:
    """What the health check found.

    Attributes:
        healthy: True when the command exited with status 0 in time.
        reason: Why it failed, e.g. ``exit status 1`` or ``timed out after 30 s``.
        output: The last lines of the command's combined stdout and stderr.
    """

    healthy: bool
    reason: str = ""
    output: str = ""

    @property
    def detail(self) -> str:
        """The reason followed by the last output lines, for the event report."""
        if not self.output:
            return self.reason
        return f"{self.reason}; last output:\n{self.output}"


def run_health_check(command: tuple[str, ...], timeout_seconds: float) -> HealthResult:
    """Run the health command in its own process group and judge its exit status.

    The command runs without a shell unless it names one. On timeout the whole process
    group is killed, so children left behind by a shell cannot outlive the check.

    Args:
        command: The program and its arguments.
        timeout_seconds: How long it may run.

    Returns:
        Healthy on exit status 0, otherwise the reason and the last lines of output.
    """
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return HealthResult(healthy=False, reason=f"cannot run {command[0]}: {exc.strerror}")
        try:
            status = process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            reason = f"timed out after {timeout_seconds:g} s"
        else:
            if status == 0:
                return HealthResult(healthy=True)
            reason = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        output.seek(max(0, output.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES))
        tail = output.read().decode(errors="replace").splitlines()[-OUTPUT_TAIL_LINES:]
    logger.info("health check %s failed: %s", command, reason)
    return HealthResult(healthy=False, reason=reason, output="\n".join(tail))
