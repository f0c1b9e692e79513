"""The shared store: Redis, so several proxy processes and hosts share one cache.

Layout (every key under ``seedproxy:``):
  e:<key>              hash fingerprint -> one encoded entry (an entry TTL may apply)
  fp:<model>           hash fingerprint -> [first_seen, last_seen, count]
  models               set of models with a registry
  recent:<ep>:<model>  list of keys, newest first (explains replay misses)
  events:<kind>        list of JSON events, newest first, trimmed
  counters             hash name -> count
  lock:<key>           the in-flight marker that coalesces misses across processes
Fingerprints are stored JSON-encoded so that ``null`` is a value like any other."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError, WatchError

from ..policy import Sighting, observe_sighting
from . import Entry, Note, Seen, StoreError, redact
from .disk import MAX_EVENTS, MAX_RECENT, MAX_VARIANTS
from .record import RecordError, decode, encode

PREFIX = "seedproxy:"
SIZE_MEMO = 10.0  # seconds a counted size is reused (counting scans every key)
# Delete the lock only if it is still ours.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end"
)


def _fp(fingerprint: str | None) -> bytes:
    return orjson.dumps(fingerprint)


class RedisStore:
    """The Store interface over ``redis.asyncio``; safe for any number of processes."""

    def __init__(self, url: str, entry_ttl: float = 0.0, maxmemory: int = 0) -> None:
        self.redis = aioredis.Redis.from_url(url)
        self.url = url
        self.entry_ttl = entry_ttl
        self.maxmemory = maxmemory
        self._size: tuple[float, tuple[int, int]] | None = None
        self._unlock = self.redis.register_script(_UNLOCK)
        self._extend = self.redis.register_script(_EXTEND)

    async def start(self) -> None:
        """Check the connection; apply the memory bound if one is configured."""
        where = redact(self.url)
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"cache.redis_url: cannot reach {where}: {exc}") from None
        if self.maxmemory:
            try:
                await self.redis.config_set("maxmemory", self.maxmemory)
                # only keys with a TTL (entries) are evicted; registry and events are kept
                await self.redis.config_set("maxmemory-policy", "volatile-lru")
            except ResponseError as exc:  # managed Redis often forbids CONFIG
                raise StoreError(
                    f"cache.redis_maxmemory: cannot set it on {where}: {exc}; "
                    "set it on the server and leave this 0"
                ) from None

    async def variants(self, key: str) -> list[Entry]:
        rows = await self.redis.hgetall(PREFIX + "e:" + key)
        entries = []
        for raw in rows.values():
            try:
                entries.extend(decode(key, raw))
            except RecordError:
                continue  # never serve a damaged record
        return sorted(entries, key=lambda e: e.created, reverse=True)

    async def put(self, entry: Entry, busy: bool = True) -> None:
        name = PREFIX + "e:" + entry.key
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, _fp(entry.fingerprint), encode([entry]))
            if self.entry_ttl:
                pipe.expire(name, int(self.entry_ttl) or 1)
            pipe.hlen(name)
            *_, count = await pipe.execute()
        if count > MAX_VARIANTS:
            oldest = (await self.variants(entry.key))[MAX_VARIANTS:]
            await self.redis.hdel(name, *(_fp(e.fingerprint) for e in oldest))

    async def sightings(self, model: str) -> dict[str | None, Sighting]:
        rows = await self.redis.hgetall(PREFIX + "fp:" + model)
        return self._table(rows)

    @staticmethod
    def _table(rows: Mapping[bytes, bytes]) -> dict[str | None, Sighting]:
        table = {}
        for field, raw in rows.items():
            fingerprint = orjson.loads(field)
            table[fingerprint] = Sighting(fingerprint, *orjson.loads(raw))
        return table

    async def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        async with self.redis.pipeline(transaction=True) as pipe:
            for note in notes:
                recent = f"{PREFIX}recent:{note.endpoint}:{note.model}"
                pipe.lrem(recent, 0, note.key)
                pipe.lpush(recent, note.key)
                pipe.ltrim(recent, 0, MAX_RECENT - 1)
            await pipe.execute()
        seen: list[Seen | None] = [None] * len(notes)
        for model in {note.model for note in notes if note.see}:
            at = [i for i, note in enumerate(notes) if note.see and note.model == model]
            for i, one in zip(at, await self._see(model, [notes[i] for i in at]), strict=True):
                seen[i] = one
        return seen

    async def _see(self, model: str, notes: list[Note]) -> list[Seen]:
        name = PREFIX + "fp:" + model
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    table = self._table(await pipe.hgetall(name))
                    seen = []
                    for note in notes:
                        table, previous, is_new = observe_sighting(
                            table, note.fingerprint, note.now
                        )
                        seen.append(Seen(table, previous, is_new))
                    pipe.multi()
                    for fingerprint in {note.fingerprint for note in notes}:
                        s = table[fingerprint]
                        pipe.hset(
                            name,
                            _fp(fingerprint),
                            orjson.dumps([s.first_seen, s.last_seen, s.count]),
                        )
                    pipe.sadd(PREFIX + "models", model)
                    await pipe.execute()
                    return seen
                except WatchError:
                    continue  # another process saw a fingerprint at the same moment

    async def add_event(self, event: Mapping[str, Any]) -> None:
        name = PREFIX + "events:" + event["kind"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(name, orjson.dumps(event))
            pipe.ltrim(name, 0, MAX_EVENTS - 1)
            await pipe.execute()

    async def events(self, kind: str, limit: int = 100) -> list[dict[str, Any]]:
        return [
            orjson.loads(raw)
            for raw in await self.redis.lrange(PREFIX + "events:" + kind, 0, limit - 1)
        ]

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, delta in deltas.items():
                pipe.hincrby(PREFIX + "counters", name, delta)
            await pipe.execute()

    async def counters(self) -> dict[str, int]:
        rows = await self.redis.hgetall(PREFIX + "counters")
        return {k.decode(): int(v) for k, v in rows.items()}

    async def keys(self) -> list[str]:
        start = len(PREFIX) + 2
        return [k.decode()[start:] async for k in self.redis.scan_iter(PREFIX + "e:*", count=1000)]

    async def delete(self, key: str, fingerprints: set[str | None] | None = None) -> int:
        name = PREFIX + "e:" + key
        if fingerprints is None:
            count = await self.redis.hlen(name)
            await self.redis.delete(name)
            return int(count)
        return int(await self.redis.hdel(name, *(_fp(f) for f in fingerprints)))

    async def models(self) -> list[str]:
        return sorted(m.decode() for m in await self.redis.smembers(PREFIX + "models"))

    async def recent(self, endpoint: str, model: str) -> list[str]:
        rows = await self.redis.lrange(f"{PREFIX}recent:{endpoint}:{model}", 0, -1)
        return [r.decode() for r in rows]

    async def size(self) -> tuple[int, int]:
        """(keys, bytes): keys are counted (memoized briefly), bytes are the server's
        ``used_memory``: Redis does not know what one prefix occupies."""
        now = time.monotonic()
        if self._size is None or now - self._size[0] > SIZE_MEMO:
            count = len(await self.keys())
            memory = (await self.redis.info("memory"))["used_memory"]
            self._size = (now, (count, int(memory)))
        return self._size[1]

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        return bool(
            await self.redis.set(PREFIX + "lock:" + key, token, nx=True, px=int(ttl * 1000))
        )

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        return bool(
            await self._extend(keys=[PREFIX + "lock:" + key], args=[token, int(ttl * 1000)])
        )

    async def unlock(self, key: str, token: str) -> None:
        await self._unlock(keys=[PREFIX + "lock:" + key], args=[token])

    async def locked(self, key: str) -> bool:
        return bool(await self.redis.exists(PREFIX + "lock:" + key))

    async def checkpoint(self, moment: Callable[[], Awaitable[None]] | None = None) -> None:
        """Nothing to do: Redis persists on its own schedule."""

    async def close(self) -> None:
        await self.redis.aclose()


def _guarded(fn: Any) -> Any:
    """Redis failing mid-request becomes a StoreError (answered 503), with the URL redacted."""

    @functools.wraps(fn)
    async def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(self, *args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis at {redact(self.url)} failed: {exc}") from None

    return wrapper


for _name in (
    "variants",
    "put",
    "note",
    "sightings",
    "add_event",
    "events",
    "add_counters",
    "counters",
    "keys",
    "delete",
    "models",
    "recent",
    "size",
    "lock",
    "extend",
    "unlock",
    "locked",
):
    setattr(RedisStore, _name, _guarded(getattr(RedisStore, _name)))
