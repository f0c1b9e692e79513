"""Coalescing identical misses: one upstream call per key at a time, in this process
(a future the others await) and across the processes sharing a store (its lock)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from .fetch import Live
from .health import StoreHealth
from .observe import Counters
from .store import Entry, Store, StoreError
from .traffic import Traffic

log = logging.getLogger("seedproxy.pipeline")
LOCK_POLL = 0.02  # seconds between looks for an entry another process is fetching
Go = Callable[[], Awaitable[Live]]


class Flights:
    """The upstream calls in progress, by key and credential scope
    (:func:`~proxy.scope.credential_scope`: a live answer in flight, its Set-Cookie or a
    401 naming its key, is handed only to requests sent with the same credential). ``shared``: other
    processes use the store too, so a call also holds the marker of its key and scope in
    it."""

    def __init__(
        self,
        store: Store,
        counters: Counters,
        traffic: Traffic,
        health: StoreHealth,
        lock_ttl: float,
        shared: bool,
    ) -> None:
        self.store = store
        self.counters = counters
        self.traffic = traffic
        self.health = health
        self.lock_ttl = lock_ttl
        self.shared = shared
        self._inflight: dict[tuple[str, str], asyncio.Future[Live]] = {}

    def joined(self, key: str, scope: str) -> asyncio.Future[Live] | None:
        """The call in progress for ``key`` in ``scope``, if any (counted as coalesced)."""
        waiting = self._inflight.get((key, scope))
        if waiting is not None:
            self.counters.add("coalesced")
        return waiting

    async def fly(self, key: str, scope: str, go: Go) -> Live:
        """``go()`` in this task, with a future that identical requests await meanwhile."""
        future: asyncio.Future[Live] = asyncio.get_running_loop().create_future()
        self._inflight[key, scope] = future
        self.traffic.live += 1
        try:
            live = await self._once(key, scope, go)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only those who wait re-raise it
            raise
        except BaseException:  # cancelled: the server is shutting down
            future.cancel()
            raise
        finally:
            if self._inflight.get((key, scope)) is future:
                del self._inflight[key, scope]
            self.traffic.live -= 1
        future.set_result(live)
        return live

    def launch(self, key: str, scope: str, go: Go) -> asyncio.Task[Live]:
        """``go()`` in a task of its own, which a client that leaves does not cancel (a
        stream); identical requests await the task."""
        task = asyncio.ensure_future(self._once(key, scope, go))
        self._inflight[key, scope] = task
        self.traffic.live += 1
        task.add_done_callback(lambda t: self._landed((key, scope), t))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        return task

    def _landed(self, key: tuple[str, str], task: asyncio.Future[Live]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        self.traffic.live -= 1

    async def _once(self, key: str, scope: str, go: Go) -> Live:
        """On a shared store, one process per key goes upstream: it holds the key's marker
        (renewed while it works); the others wait for its entry, and go themselves if the
        marker vanishes without one (an error, or a crashed holder)."""
        if not self.shared:
            return await go()
        token, marker = uuid.uuid4().hex, f"{key}|{scope}"
        try:
            other = await self._wait_turn(key, marker, token)
        except StoreError as exc:  # no coalescing across processes while the store is out
            self.health.failed(exc)
            return await go()
        if other is not None:
            self.counters.add("coalesced")
            return Live.of(other)
        keeper = asyncio.ensure_future(self._keep(marker, token))
        try:
            return await go()
        finally:
            keeper.cancel()
            try:
                await self.store.unlock(marker, token)
            except StoreError as exc:  # the marker expires by itself
                self.health.failed(exc)

    async def _wait_turn(self, key: str, marker: str, token: str) -> Entry | None:
        """Take the ``marker`` of the key (None), or the entry its holder stored meanwhile."""
        # what was stored before; hosts' clocks differ, so no timestamps are compared
        before = {(e.fingerprint, e.created) for e in await self.store.variants(key)}
        said = False
        while True:
            if await self.store.lock(marker, token, self.lock_ttl):
                return None
            if not said:  # once: what an operator (or a test) sees of a wait across processes
                said = True
                log.debug("waiting for another process's answer (key %s)", key)
            entry = await self._other(key, marker, before)
            if entry is not None:
                return entry

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            try:
                await self.store.extend(key, token, self.lock_ttl)
            except StoreError as exc:  # held on; at worst another process goes too
                self.health.failed(exc)

    async def _other(
        self, key: str, marker: str, before: set[tuple[str | None, float]]
    ) -> Entry | None:
        """The entry another process stores for ``key`` (one not in ``before``), or None
        once its ``marker`` is gone without one."""
        while True:
            held = await self.store.locked(marker)  # looked at first: a holder stores, then lets go
            for entry in await self.store.variants(key):
                if (entry.fingerprint, entry.created) not in before:
                    return entry
            if not held:
                return None
            await asyncio.sleep(LOCK_POLL)
