"""The server's wall clock: UTC, whole seconds, and never behind the real time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from server.clock import system_clock


def test_the_system_clock_is_utc_to_the_second_and_follows_the_wall_clock() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    moment = system_clock()
    after = datetime.now(UTC)
    assert moment.tzinfo is UTC
    assert moment.microsecond == 0
    assert before <= moment <= after

    # Asked again in a later second (the answer is kept for the second it was made in).
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    floor = datetime.now(UTC).replace(microsecond=0)
    later = system_clock()
    assert floor <= later <= datetime.now(UTC)
    assert later >= moment + timedelta(seconds=1)
