"""``staffel-client --config FILE [--once | status | check | install --offline DIR]``.

The vehicle's update agent: a daemon by default (poll interval from the server, jitter,
backoff), or one-shot commands for a technician: ``status`` prints the boot state, the
slots and the update in progress; ``check`` runs one cycle now (like ``--once``);
``install --offline DIR`` installs the update in DIR, verified like one from the network.

Exit codes: 0 when the cycle (``--once``) completed and every event was delivered, or when
the daemon stopped on SIGTERM; 1 on a config error or when a cycle left work or events
undone; 2 on bad command-line arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from client.agent import Agent, CycleResult
from client.config import ClientConfig, load_config
from client.errors import ClientError
from client.logs import configure_logging
from client.metrics import ClientMetrics
from client.technician import install_offline, status_lines
from client.watchdog import Watchdog

logger = logging.getLogger(__name__)

JITTER = 0.1  # the next check-in is delayed by up to this fraction of the interval
BACKOFF_FIRST_SECONDS = 5
STOP_POLL_SECONDS = 0.5  # how soon a stop signal takes effect while sleeping


def main(argv: list[str] | None = None) -> int:
    """Run the vehicle client.

    Args:
        argv: Command-line arguments without the program name (default: ``sys.argv``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(prog="staffel-client", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the client's TOML config")
    parser.add_argument("--once", action="store_true", help="run one cycle, then exit")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--metrics-file",
        type=Path,
        help="write metrics here after each cycle (node-exporter textfile, e.g. .../staffel.prom)",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("status", help="print the boot state, slots and update in progress")
    commands.add_parser("check", help="check in and run the update cycle now")
    install = commands.add_parser("install", help="install an update from a folder")
    install.add_argument("--offline", required=True, type=Path, help="the update folder")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, os.environ.get("STAFFEL_LOG_LEVEL", "WARNING"))
    try:
        config = load_config(args.config)
    except ClientError as exc:
        print(f"staffel-client: {exc}", file=sys.stderr)
        return 1

    def say(line: str) -> None:
        print(f"{config.vin}: {line}", flush=True)

    try:
        if args.command == "status":
            for line in status_lines(config):
                say(line)
            return 0
        if args.command == "install":
            return install_offline(config, args.offline, say)
        agent = Agent.from_config(config, say=say)
    except ClientError as exc:
        print(f"staffel-client: {exc}", file=sys.stderr)
        return 1
    metrics = None if args.metrics_file is None else ClientMetrics(args.metrics_file, config.vin)
    try:
        if args.once or args.command == "check":
            result = agent.run_cycle()
            _record(metrics, result, result.next_poll_seconds)
            return 0 if result.ok else 1
        return _run_daemon(agent, config, metrics)
    finally:
        agent.close()


def next_delay(result: CycleResult, *, failures: int, config: ClientConfig) -> float:
    """Return the seconds until the next cycle.

    Args:
        result: How the last cycle ended.
        failures: How many cycles in a row did not end ok (including the last).
        config: The client's configuration (poll interval).

    Returns:
        The server's interval plus jitter, or an exponential backoff (capped at the poll
        interval) after failures.
    """
    if failures == 0:
        base = float(result.next_poll_seconds)
    else:
        base = min(
            float(config.poll_interval_seconds), BACKOFF_FIRST_SECONDS * 2.0 ** (failures - 1)
        )
    return base * (1 + random.uniform(0, JITTER))  # noqa: S311 - jitter, not a secret


def _record(metrics: ClientMetrics | None, result: CycleResult, delay: float) -> None:
    if metrics is None:
        return
    try:
        metrics.record_cycle(ok=result.ok, delivered=result.delivered, next_poll_seconds=delay)
    except OSError as exc:
        logger.warning("cannot write metrics to %s: %s", metrics.path, exc)


def _run_daemon(agent: Agent, config: ClientConfig, metrics: ClientMetrics | None) -> int:
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after the current step", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    watchdog = Watchdog()
    watchdog.ready()
    failures = 0
    while not stop.is_set():
        with watchdog.during_cycle():
            result = agent.run_cycle()
        failures = 0 if result.ok else failures + 1
        delay = next_delay(result, failures=failures, config=config)
        _record(metrics, result, delay)
        _sleep(stop, delay, watchdog)
    watchdog.stopping()
    return 0


def _sleep(stop: threading.Event, seconds: float, watchdog: Watchdog) -> None:
    # The signal may land on a grpc thread, which does not wake a long wait of the main
    # thread; short slices let the Python-level handler run promptly.
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
        watchdog.ping()
        stop.wait(min(remaining, STOP_POLL_SECONDS))
