"""The disk store's small data beside the entries: the fingerprint registry, the recent
keys of each (endpoint, model), events, counters and in-flight markers. Blocking calls,
which the disk store runs in its thread pool."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import diskcache
import orjson

from ..policy import Sighting, observe_sighting
from . import Note, Seen
from .limits import MAX_EVENTS, MAX_MODELS, MAX_RECENT, track_models


class Meta:
    """One diskcache for the registry, recent keys, counters and markers, and one bounded
    deque per event kind."""

    def __init__(self, cache: diskcache.Cache, events: Mapping[str, diskcache.Cache]) -> None:
        self.cache = cache
        self._events = {
            kind: diskcache.Deque.fromcache(store, maxlen=MAX_EVENTS)
            for kind, store in events.items()
        }

    @property
    def directory(self) -> str:
        return str(self.cache.directory)

    def recent(self, endpoint: str, model: str, cache: diskcache.Cache | None = None) -> list[str]:
        """The keys last recorded for (``endpoint``, ``model``), newest first; read on
        ``cache``, another connection to this store, when given."""
        raw = (self.cache if cache is None else cache).get(f"recent:{endpoint}:{model}")
        return orjson.loads(raw) if raw else []

    def models(self) -> list[str]:
        return sorted(k[3:] for k in self.cache.iterkeys() if isinstance(k, str) and k[:3] == "fp:")

    def sightings(self, model: str) -> dict[str | None, Sighting]:
        raw = self.cache.get(f"fp:{model}")
        rows = orjson.loads(raw) if raw else []
        return {row[0]: Sighting(*row) for row in rows}

    def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        """Apply the notes in one transaction: each key first among its recent ones, each
        live fingerprint seen."""
        recent: dict[str, list[str]] = {}
        tables: dict[str, dict[str | None, Sighting]] = {}
        seen: list[Seen | None] = []
        with self.cache.transact():
            for note in notes:
                name = f"recent:{note.endpoint}:{note.model}"
                keys = recent.get(name)
                if keys is None:
                    keys = orjson.loads(self.cache.get(name, b"[]"))
                recent[name] = [note.key, *(k for k in keys if k != note.key)][:MAX_RECENT]
                if not note.see:
                    seen.append(None)
                    continue
                table = tables.get(note.model)
                if table is None:
                    table = self.sightings(note.model)
                table, previous, is_new = observe_sighting(table, note.fingerprint, note.now)
                tables[note.model] = table
                seen.append(Seen(table, previous, is_new))
            for name, keys in recent.items():
                self.cache.set(name, orjson.dumps(keys))
            for model, table in tables.items():
                rows = [[s.fingerprint, s.first_seen, s.last_seen, s.count] for s in table.values()]
                self.cache.set(f"fp:{model}", orjson.dumps(rows))
            self._track(notes)
        return seen

    def _track(self, notes: Sequence[Note]) -> None:
        """Index each noted model with the endpoints it was noted under, least recently
        noted first (JSON keeps the order), and drop the registry and recent keys of the
        least recently noted beyond MAX_MODELS."""
        tracked: dict[str, list[str]] = orjson.loads(self.cache.get("models", b"{}"))
        noted = ((note.model, note.endpoint) for note in notes)
        for model, endpoints in track_models(tracked, noted, MAX_MODELS):
            self.cache.delete(f"fp:{model}")
            for endpoint in endpoints:
                self.cache.delete(f"recent:{endpoint}:{model}")
        self.cache.set("models", orjson.dumps(tracked))

    def add_event(self, event: Mapping[str, Any]) -> None:
        self._events[event["kind"]].append(orjson.dumps(event))

    def events(self, kind: str, limit: int, offset: int) -> list[dict[str, Any]]:
        newest = reversed(self._events[kind])  # lazily, from the end
        return [orjson.loads(raw) for raw in itertools.islice(newest, offset, offset + limit)]

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        with self.cache.transact():
            for name, delta in deltas.items():
                self.cache.incr(f"c:{name}", delta)

    def counters(self) -> dict[str, int]:
        return {
            k[2:]: self.cache.get(k)
            for k in self.cache.iterkeys()
            if isinstance(k, str) and k[:2] == "c:"
        }

    def lock(self, key: str, token: str, ttl: float) -> bool:
        return bool(self.cache.add(f"lock:{key}", token, expire=ttl))

    def extend(self, key: str, token: str, ttl: float) -> bool:
        with self.cache.transact():
            return self.cache.get(f"lock:{key}") == token and bool(
                self.cache.touch(f"lock:{key}", expire=ttl)
            )

    def unlock(self, key: str, token: str) -> None:
        with self.cache.transact():
            if self.cache.get(f"lock:{key}") == token:
                self.cache.delete(f"lock:{key}")

    def locked(self, key: str) -> bool:
        return self.cache.get(f"lock:{key}") is not None

    def close(self) -> None:
        self.cache.close()
        for deque in self._events.values():
            deque.cache.close()
