"""The proxy's wall clock: entries' times, ages, fingerprint windows and expiry read it.

One object that everything deciding by time shares, so a test moves time forward
(:meth:`Clock.advance`) instead of sleeping through a window."""

from __future__ import annotations

import time


class Clock:
    """Seconds since the epoch, ``time.time()`` plus what :meth:`advance` added."""

    __slots__ = ("_ahead",)

    def __init__(self) -> None:
        self._ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self._ahead

    def advance(self, seconds: float) -> None:
        """Move this clock ``seconds`` forward (tests: a window passes without a sleep)."""
        self._ahead += seconds
