"""systemd readiness and watchdog pings (``sd_notify``) over ``$NOTIFY_SOCKET``.

A few lines over a unix datagram socket instead of a dependency. Outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing. The daemon sends ``READY=1`` once it runs and
``WATCHDOG=1`` at least twice per ``$WATCHDOG_USEC``. During an update cycle a keeper thread
goes on pinging, but only up to ``cycle_limit_seconds``: a cycle stuck for longer stops the
pings, and systemd restarts the agent (the journal resumes where it stood).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

logger = logging.getLogger(__name__)

DEFAULT_CYCLE_LIMIT_SECONDS = 6 * 3600  # the longest an update cycle may keep pinging


class Watchdog:
    """Sends ``sd_notify`` messages to the socket systemd names in the environment."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        cycle_limit_seconds: float = DEFAULT_CYCLE_LIMIT_SECONDS,
    ) -> None:
        """Read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` from ``environ`` (default: os.environ).

        Args:
            environ: The process environment.
            cycle_limit_seconds: How long a cycle may run while the keeper thread pings.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the abstract namespace (a leading NUL byte).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.interval_seconds = int(usec) / 2_000_000 if usec.isdigit() and int(usec) else 0.0
        self._cycle_limit = cycle_limit_seconds
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        """systemd listens (``$NOTIFY_SOCKET`` is set)."""
        return bool(self._address)

    def notify(self, message: str) -> None:
        """Send one ``sd_notify`` message; a failure is logged, never raised."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            logger.warning("cannot notify systemd at %s: %s", self._address, exc)

    def ready(self) -> None:
        """Tell systemd the daemon runs (``READY=1``), with a first watchdog ping."""
        self.notify("READY=1")
        self.ping(force=True)

    def ping(self, *, force: bool = False) -> None:
        """Send ``WATCHDOG=1`` when half the watchdog interval has passed (or ``force``)."""
        if not self.enabled or not (force or self.interval_seconds):
            return
        now = time.monotonic()
        if force or now - self._last_ping >= self.interval_seconds:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd the daemon stops (``STOPPING=1``)."""
        self.notify("STOPPING=1")

    @contextmanager
    def during_cycle(self) -> Iterator[None]:
        """Keep pinging from a thread while the block runs, up to the cycle limit."""
        if not self.enabled or not self.interval_seconds:
            yield
            return
        done = threading.Event()
        deadline = time.monotonic() + self._cycle_limit

        def keep_alive() -> None:
            while not done.wait(self.interval_seconds / 2):
                if time.monotonic() > deadline:
                    logger.error(
                        "the update cycle runs longer than %d s; no more watchdog pings, "
                        "systemd will restart the agent",
                        self._cycle_limit,
                    )
                    return
                self.ping(force=True)

        keeper = threading.Thread(target=keep_alive, name="watchdog", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()
