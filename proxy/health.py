"""Whether the cache store answers and takes writes: a store outage is the cache's
problem, not the clients', so it is logged once when it starts and once when it ends,
reported by /healthz and /_seedproxy/stats, and ends by itself. A store that reads but
cannot write (full, read-only) is ``degraded``: only a write that succeeds ends that."""

from __future__ import annotations

import logging

from .errors import ProxyError
from .store import StoreError, StoreWriteError

log = logging.getLogger("seedproxy")


class StoreHealth:
    """The store's state as the last calls to it found it."""

    def __init__(self) -> None:
        self.error: str | None = None  # why the store is unavailable, while it is
        self.write_error: str | None = None  # why it cannot write, while it cannot

    def failed(self, exc: StoreError) -> None:
        """A store call failed: warn once per outage, not once per request."""
        if isinstance(exc, StoreWriteError):
            if self.write_error is None:
                log.warning(
                    "cache store degraded: it cannot write, so answers are live and not "
                    "cached until a write succeeds",
                    extra={"data": {"error": str(exc)}},
                )
            self.write_error = str(exc)
            return
        if self.error is None:
            log.warning(
                "cache store unavailable: answering live without caching until it is back",
                extra={"data": {"error": str(exc)}},
            )
        self.error = str(exc)

    def ok(self) -> None:
        """A store read succeeded: an outage, if any, is over; a write outage is not."""
        if self.error is not None:
            log.info("cache store available again", extra={"data": {"was": self.error}})
            self.error = None

    def wrote(self) -> None:
        """A store write succeeded: the store is whole again, whatever failed before."""
        if self.write_error is not None:
            log.info("cache store writable again", extra={"data": {"was": self.write_error}})
            self.write_error = None
        self.ok()

    def report(self) -> dict[str, str]:
        """The store's part of /healthz and /_seedproxy/stats."""
        if self.error is not None:
            return {"store": "unavailable", "store_error": self.error}
        if self.write_error is not None:
            return {"store": "degraded", "store_error": self.write_error}
        return {"store": "ok"}


def unavailable(exc: StoreError) -> ProxyError:
    """The 503 a request gets when only the store could answer it (replay)."""
    return ProxyError(
        503,
        f"seedproxy's cache store is unavailable ({exc}) and this request can only be "
        "answered from it; try again once the store is back.",
        code="store_unavailable",
        headers={"x-should-retry": "true"},
    )
