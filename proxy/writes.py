"""``server.write_timeout``: a connection whose client has read nothing for that long,
while the proxy has bytes waiting for it, is cut, and what was held for it is freed."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

log = logging.getLogger("seedproxy.server")


class WriteWatch:
    """The connections requests came on, and since when each has had bytes waiting in
    its write buffer without any of them leaving. One sweep a fraction of the timeout
    apart costs each request nothing but a dict entry, whatever it writes (a hit, a
    relayed stream, a passthrough download, an error page); the writer itself awaits
    each drain, so a client that stops reading stops it, and this cuts it loose."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # transport -> (bytes waiting at the last sweep, since when unchanged)
        self._seen: dict[asyncio.BaseTransport, tuple[int, float]] = {}

    @property
    def interval(self) -> float:
        return min(1.0, self.timeout / 4)

    def add(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and transport not in self._seen:
            self._seen[transport] = (0, 0.0)

    def sweep(self, now: float) -> int:
        """Cut the connections stuck for the timeout; how many were."""
        cut = 0
        for transport, (before, since) in list(self._seen.items()):
            if transport.is_closing():
                del self._seen[transport]
                continue
            # uvloop's transports are not asyncio.WriteTransport instances, but write alike
            writer = cast(asyncio.WriteTransport, transport)
            waiting = writer.get_write_buffer_size()
            if waiting == 0 or waiting != before:  # all sent, or some left since last time
                self._seen[transport] = (waiting, now)
            elif now - since >= self.timeout:
                writer.abort()  # not close(): that would wait to send what is waiting
                del self._seen[transport]
                cut += 1
        if cut:
            log.info(
                "connections cut: their clients read nothing for server.write_timeout",
                extra={"data": {"connections": cut, "write_timeout": self.timeout}},
            )
        return cut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep(loop.time())
            except Exception:  # the next sweep tries again; nothing here may stop them
                log.exception("write_timeout sweep failed")
