"""What the flow tells a store about the traffic it carries, for stores that tune their
own housekeeping to it (the disk store's writes and checkpoints). Nothing else reads it."""

from __future__ import annotations

import asyncio


class Traffic:
    """Requests going upstream now, and a way to wait for the moment one has just left."""

    def __init__(self) -> None:
        self.live = 0  # upstream calls in progress in this process
        self._sent: asyncio.Event | None = None  # set as a request goes upstream, if asked

    @property
    def busy(self) -> bool:
        """Whether other requests are in progress besides the caller's own."""
        return self.live > 1

    def sent(self) -> None:
        """A request has just been sent upstream (its answer is a round trip away)."""
        if self._sent is not None:  # set once the sending task waits for the answer
            asyncio.get_running_loop().call_soon(self._sent.set)

    async def quiet_moment(self, wait: float = 1.0) -> None:
        """Return once a request has just gone upstream, so that work started now can end
        before its answer (at c=1, before any answer) comes; or after ``wait`` seconds."""
        sent = self._sent = asyncio.Event()
        try:
            async with asyncio.timeout(wait):
                await sent.wait()
        except TimeoutError:
            pass
        finally:
            self._sent = None
