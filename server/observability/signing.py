"""How long signing takes: a seam between the repositories, which sign, and the metrics.

The repositories wrap each signature in ``timed_signing``; the server subscribes its
histogram with ``observe_signing`` for as long as it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Called with (repository, role, seconds) after each signed metadata file.
SigningObserver = Callable[[str, str, float], None]

_observers: list[SigningObserver] = []


def observe_signing(observer: SigningObserver) -> Callable[[], None]:
    """Calls ``observer`` after each signing until the returned function is called."""
    _observers.append(observer)

    def stop() -> None:
        if observer in _observers:
            _observers.remove(observer)

    return stop


@contextmanager
def timed_signing(repository: str, role: str) -> Iterator[None]:
    """Times the block (one metadata file signed) and tells every observer."""
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    for observer in list(_observers):
        observer(repository, role, elapsed)
