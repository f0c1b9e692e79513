"""Whether the cache store answers: a store outage is the cache's problem, not the
clients', so it is logged once, reported by /healthz and /_seedproxy/stats, and ends by
itself when the store answers again."""

from __future__ import annotations

import logging

from .errors import ProxyError
from .store import StoreError

log = logging.getLogger("seedproxy")


class StoreHealth:
    """The store's state as the last call to it found it."""

    def __init__(self) -> None:
        self.error: str | None = None  # why the store is unavailable, while it is

    def failed(self, exc: StoreError) -> None:
        """A store call failed: warn once per outage, not once per request."""
        if self.error is None:
            log.warning(
                "cache store unavailable: answering live without caching until it is back",
                extra={"data": {"error": str(exc)}},
            )
        self.error = str(exc)

    def ok(self) -> None:
        """A store call succeeded: an outage, if any, is over."""
        if self.error is not None:
            log.info("cache store available again", extra={"data": {"was": self.error}})
            self.error = None

    def report(self) -> dict[str, str]:
        """The store's part of /healthz and /_seedproxy/stats."""
        if self.error is None:
            return {"store": "ok"}
        return {"store": "unavailable", "store_error": self.error}


def unavailable(exc: StoreError) -> ProxyError:
    """The 503 a request gets when only the store could answer it (replay)."""
    return ProxyError(
        503,
        f"seedproxy's cache store is unavailable ({exc}) and this request can only be "
        "answered from it; try again once the store is back.",
        code="store_unavailable",
        headers={"x-should-retry": "true"},
    )
