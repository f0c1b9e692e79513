"""The shared store: Redis, one server or a Redis Cluster, so several proxy processes and
hosts share one cache.

Layout (every key under ``seedproxy:``; ``<meta>`` is ``{meta}:`` on a cluster, else empty):
  e:<key>                    hash fingerprint -> one encoded entry (an entry TTL may apply)
  lock:<key>                 the in-flight marker that coalesces misses across processes
  <meta>fp:<model>           hash fingerprint -> [first_seen, last_seen, count]
  <meta>models               set of models with a registry
  <meta>recent:<ep>:<model>  list of keys, newest first (explains replay misses)
  <meta>events:<kind>        list of JSON events, newest first, trimmed
  <meta>counters             hash name -> count
fp, models and recent keys expire META_TTL after their last write, so that a model no
longer used goes, and ``volatile-lru`` may evict them under ``maxmemory``.
A cluster places a key by the hash of its name, or of the part in braces when it has one.
Entries and markers, the bulk and the hot path, have none, so they spread over every master;
each transaction touches them one key at a time. The registry, recent keys, events and
counters change together (a fingerprint with its model's membership, a second's notes in
one transaction), so on a cluster they share the ``{meta}`` tag and its one slot: they are
small and written about once a second. One Redis keeps the names earlier versions wrote,
so an upgrade keeps its registry, events and counters. Fingerprints are stored JSON-encoded
so that ``null`` is a value like any other."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    WatchError,
)

from ..policy import Sighting, observe_sighting
from ..urls import masked_url
from . import Entry, Note, Seen, StoreError, StoreWriteError
from .limits import MAX_EVENTS, MAX_RECENT, MAX_VARIANTS
from .record import RecordError, decode, encode

PREFIX = "seedproxy:"
META_TTL = 30 * 86400  # seconds a model's registry and recent keys outlive their last write
CLUSTER_META = PREFIX + "{meta}:"
SIZE_MEMO = 10.0  # seconds a counted size is reused (counting scans every key)
# A store that cannot answer must fail fast, so that a request goes on without it: redis-py's
# own defaults retry ten times with backoff up to a second, five seconds per socket wait.
CONNECT_TIMEOUT = 1.0  # seconds
COMMAND_TIMEOUT = 3.0  # seconds; a whole entry is one reply
RETRIES = 2  # after the first try; on a cluster each one first re-reads the slot map
# Delete the lock only if it is still ours.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end"
)


def _fp(fingerprint: str | None) -> bytes:
    return orjson.dumps(fingerprint)


def _text(reply: bytes | str) -> str:
    """A reply item as text (redis-py types items as either; without decode_responses,
    which this store never sets, they are bytes)."""
    return reply.decode() if isinstance(reply, bytes) else reply


def _connect(url: str, cluster: bool) -> aioredis.Redis | RedisCluster:
    """A client with bounded waits: a dead server, or a cluster slot whose master died and
    has no successor yet, fails a command within seconds; once the cluster has promoted a
    replica, the cluster client's next try reads the new slot map and goes on by itself."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), RETRIES),
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


# Redis answering reads and refusing writes: out of memory under noeviction, a read-only
# replica, or a failing snapshot with stop-writes-on-bgsave-error (also inside a MULTI).
_REFUSALS = ("OOM ", "READONLY ", "MISCONF ")


def refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a write, not failing."""
    if isinstance(exc, (OutOfMemoryError, ReadOnlyError)):
        return True
    text = str(exc)  # a pipeline's error names the command first: "... caused error: OOM ..."
    return isinstance(exc, ResponseError) and any(
        text.startswith(r) or f"error: {r}" in text for r in _REFUSALS
    )


class RedisStore:
    """The Store interface over ``redis.asyncio``; safe for any number of processes.
    ``cluster``: ``url`` names one node of a Redis Cluster, which leads to the others."""

    def __init__(
        self, url: str, entry_ttl: float = 0.0, maxmemory: int = 0, cluster: bool = False
    ) -> None:
        self.url = url
        self._meta = CLUSTER_META if cluster else PREFIX
        self.entry_ttl = entry_ttl
        self.maxmemory = maxmemory
        self._size: tuple[float, tuple[int, int]] | None = None
        with self._errors("cache.redis_url: {where}: {error}"):  # a cluster has only db 0
            self.redis = _connect(url, cluster)
        self._unlock = self.redis.register_script(_UNLOCK)
        self._extend = self.redis.register_script(_EXTEND)

    @contextlib.contextmanager
    def _errors(self, message: str = "Redis at {where} failed: {error}") -> Iterator[None]:
        """Every Redis failure (down, timed out, a cluster slot without a master) as the
        store's own error, which the request path knows how to go on without; the URL's
        password masked. Every method runs in it, as the disk store's do in its own."""
        try:
            yield
        except (RedisError, RedisClusterException, OSError) as exc:
            text = message.format(where=masked_url(self.url), error=exc)
            if refuses_writes(exc):
                raise StoreWriteError(text) from None
            raise StoreError(text) from None

    async def start(self) -> None:
        """Check the connection and the kind of server; apply the memory bound if one is
        configured."""
        with self._errors("cache.redis_url: cannot reach {where}: {error}"):
            await self.redis.ping()  # a cluster client learns every node and slot here
            cluster_enabled = (await self.redis.info("cluster")).get("cluster_enabled")
        if cluster_enabled and not isinstance(self.redis, RedisCluster):
            raise StoreError(
                f"cache.redis_url: {masked_url(self.url)} is a Redis Cluster node; "
                "set cache.redis_cluster = true"
            )
        if self.maxmemory:
            # Only keys with a TTL (entries) are evicted; registry and events are kept.
            # Managed Redis often forbids CONFIG. On a cluster every node needs the bound,
            # replicas too: one may become a master.
            with self._errors(
                "cache.redis_maxmemory: cannot set it on {where}: {error}; "
                "set it on the server and leave this 0"
            ):
                for name, value in (
                    ("maxmemory", self.maxmemory),
                    ("maxmemory-policy", "volatile-lru"),
                ):
                    if isinstance(self.redis, RedisCluster):
                        await self.redis.config_set(
                            name, value, target_nodes=RedisCluster.ALL_NODES
                        )
                    else:
                        await self.redis.config_set(name, value)

    async def variants(self, key: str) -> list[Entry]:
        with self._errors():
            rows = await self.redis.hgetall(PREFIX + "e:" + key)
        entries = []
        for raw in rows.values():
            try:
                entries.extend(decode(key, raw if isinstance(raw, bytes) else raw.encode()))
            except RecordError:
                continue  # never serve a damaged record
        return sorted(entries, key=lambda e: e.created, reverse=True)

    async def put(self, entry: Entry) -> None:
        name = PREFIX + "e:" + entry.key
        with self._errors():
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
        with self._errors():
            return self._table(await self.redis.hgetall(self._meta + "fp:" + model))

    @staticmethod
    def _table(rows: Mapping[bytes | str, bytes | str]) -> dict[str | None, Sighting]:
        table = {}
        for field, raw in rows.items():
            fingerprint = orjson.loads(field)
            table[fingerprint] = Sighting(fingerprint, *orjson.loads(raw))
        return table

    async def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        with self._errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for note in notes:
                    recent = f"{self._meta}recent:{note.endpoint}:{note.model}"
                    pipe.lrem(recent, 0, note.key)
                    pipe.lpush(recent, note.key)
                    pipe.ltrim(recent, 0, MAX_RECENT - 1)
                    pipe.expire(recent, META_TTL)
                await pipe.execute()
            seen: list[Seen | None] = [None] * len(notes)
            for model in {note.model for note in notes if note.see}:
                at = [i for i, note in enumerate(notes) if note.see and note.model == model]
                for i, one in zip(at, await self._see(model, [notes[i] for i in at]), strict=True):
                    seen[i] = one
            return seen

    async def _see(self, model: str, notes: list[Note]) -> list[Seen]:
        name = self._meta + "fp:" + model
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
                    pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                    for fingerprint in {note.fingerprint for note in notes}:
                        s = table[fingerprint]
                        pipe.hset(
                            name,
                            _fp(fingerprint),
                            orjson.dumps([s.first_seen, s.last_seen, s.count]),
                        )
                    pipe.expire(name, META_TTL)
                    pipe.sadd(self._meta + "models", model)
                    pipe.expire(self._meta + "models", META_TTL)
                    await pipe.execute()
                    return seen
                except WatchError:
                    continue  # another process saw a fingerprint at the same moment

    async def add_event(self, event: Mapping[str, Any]) -> None:
        name = self._meta + "events:" + event["kind"]
        with self._errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(name, orjson.dumps(event))
                pipe.ltrim(name, 0, MAX_EVENTS - 1)
                await pipe.execute()

    async def events(self, kind: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        with self._errors():
            rows = await self.redis.lrange(
                self._meta + "events:" + kind, offset, offset + limit - 1
            )
        return [orjson.loads(raw) for raw in rows]

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        with self._errors():
            async with self.redis.pipeline(transaction=True) as pipe:
                for name, delta in deltas.items():
                    pipe.hincrby(self._meta + "counters", name, delta)
                await pipe.execute()

    async def counters(self) -> dict[str, int]:
        with self._errors():
            rows = await self.redis.hgetall(self._meta + "counters")
        return {_text(k): int(v) for k, v in rows.items()}

    async def keys(self) -> list[str]:
        start = len(PREFIX) + 2
        with self._errors():  # on a cluster, every master in turn
            return [
                _text(k)[start:] async for k in self.redis.scan_iter(PREFIX + "e:*", count=1000)
            ]

    async def delete(self, key: str, fingerprints: set[str | None] | None = None) -> int:
        name = PREFIX + "e:" + key
        with self._errors():
            if fingerprints is None:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hlen(name)
                    pipe.delete(name)
                    count, _ = await pipe.execute()
                return int(count)
            return int(await self.redis.hdel(name, *(_fp(f) for f in fingerprints)))

    async def models(self) -> list[str]:
        with self._errors():
            members = await self.redis.smembers(self._meta + "models")
        return sorted(_text(m) for m in members)

    async def recent(self, endpoint: str, model: str) -> list[str]:
        with self._errors():
            rows = await self.redis.lrange(f"{self._meta}recent:{endpoint}:{model}", 0, -1)
        return [_text(r) for r in rows]

    async def size(self) -> tuple[int, int]:
        """(keys, bytes): keys are counted (memoized briefly), bytes are the servers'
        ``used_memory`` (every master's, on a cluster): Redis does not know what one prefix
        occupies."""
        now = time.monotonic()
        if self._size is None or now - self._size[0] > SIZE_MEMO:
            count = len(await self.keys())
            with self._errors():
                if isinstance(self.redis, RedisCluster):
                    per_node = await self.redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
                    memory = sum(int(info["used_memory"]) for info in per_node.values())
                else:
                    memory = int((await self.redis.info("memory"))["used_memory"])
            self._size = (now, (count, memory))
        return self._size[1]

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        with self._errors():
            return bool(
                await self.redis.set(PREFIX + "lock:" + key, token, nx=True, px=int(ttl * 1000))
            )

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        with self._errors():
            return bool(
                await self._extend(keys=[PREFIX + "lock:" + key], args=[token, int(ttl * 1000)])
            )

    async def unlock(self, key: str, token: str) -> None:
        with self._errors():
            await self._unlock(keys=[PREFIX + "lock:" + key], args=[token])

    async def locked(self, key: str) -> bool:
        with self._errors():
            return bool(await self.redis.exists(PREFIX + "lock:" + key))

    async def ping(self) -> None:
        with self._errors():
            await self.redis.ping()

    async def checkpoint(self) -> None:
        """Nothing to do: Redis persists on its own schedule."""

    async def close(self) -> None:
        with self._errors():
            await self.redis.aclose()
