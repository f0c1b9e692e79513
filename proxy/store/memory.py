"""A store in process memory, for a proxy that serves one cassette file: `seedproxy run
--cassette` and the pytest plugin load a cassette into it and write its entries back."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..policy import Sighting, observe_sighting
from . import Entry, Note, Seen
from .limits import MAX_EVENTS, MAX_MODELS, MAX_RECENT, MAX_VARIANTS, track_models


def _weight(variants: Iterable[Entry]) -> int:
    return sum(len(e.body) + len(e.request) + len(e.stream) for e in variants)


class MemoryStore:
    """The Store interface over dicts, with every part behaving as on the shared stores
    (one contract test runs them all). Keys keep the order they were first stored in, so a
    cassette written from it lists its recordings in recording order, and an answer
    recorded again keeps its place (a small diff in review)."""

    def __init__(self, max_variants: int = MAX_VARIANTS) -> None:
        # A cassette keeps one answer per request (1): a refreshed answer replaces it.
        self.max_variants = max_variants
        self._entries: dict[str, list[Entry]] = {}
        self._bytes = 0  # of every variant held: size() is read by each /metrics scrape
        self._sightings: dict[str, dict[str | None, Sighting]] = {}
        self._recent: dict[tuple[str, str], list[str]] = {}
        # the endpoints each model was noted under, least recently noted first: the
        # registry and recent keys of the least recently noted go beyond MAX_MODELS (model
        # names are the clients' to choose), as on disk: limits.track_models serves both
        self._models: dict[str, list[str]] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._counters: dict[str, int] = {}
        self._locks: dict[str, tuple[str, float]] = {}

    def replace(self, entries: Iterable[Entry]) -> None:
        """Hold ``entries`` (in order) and nothing else, each indexed among the recent keys
        as an import indexes it (so that a replay miss can name the nearest); the registry,
        events and counters stay: they describe what was seen live, not what a cassette
        holds."""
        self._entries.clear()
        self._bytes = 0
        self._recent.clear()
        for entry in entries:
            self._store(entry)
            self._note(
                Note(
                    entry.key, entry.endpoint, entry.model, entry.fingerprint, entry.created, False
                )
            )

    def entries(self) -> list[Entry]:
        """Every entry, keys in the order they were first stored, newest variant first."""
        return [entry for variants in self._entries.values() for entry in variants]

    def _store(self, entry: Entry) -> None:
        before = self._entries.get(entry.key, [])
        kept = [e for e in before if e.fingerprint != entry.fingerprint]
        variants = self._entries[entry.key] = [entry, *kept][: self.max_variants]
        self._bytes += _weight(variants) - _weight(before)

    async def variants(self, key: str) -> list[Entry]:
        return list(self._entries.get(key, ()))

    async def put(self, entry: Entry) -> None:
        self._store(entry)

    async def sightings(self, model: str) -> dict[str | None, Sighting]:
        return dict(self._sightings.get(model, {}))

    def _note(self, note: Note) -> Seen | None:
        """The key first among the recent ones of its (endpoint, model); with ``see``, its
        fingerprint seen live for the model."""
        name = (note.endpoint, note.model)
        recent = self._recent.get(name, [])
        self._recent[name] = [note.key, *(k for k in recent if k != note.key)][:MAX_RECENT]
        for model, endpoints in track_models(
            self._models, [(note.model, note.endpoint)], MAX_MODELS
        ):
            self._sightings.pop(model, None)
            for endpoint in endpoints:
                self._recent.pop((endpoint, model), None)
        if not note.see:
            return None
        table, previous, is_new = observe_sighting(
            self._sightings.get(note.model, {}), note.fingerprint, note.now
        )
        self._sightings[note.model] = table
        return Seen(dict(table), previous, is_new)

    async def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        return [self._note(note) for note in notes]

    async def add_event(self, event: Mapping[str, Any]) -> None:
        events = self._events.setdefault(event["kind"], [])
        events.append(dict(event))
        del events[:-MAX_EVENTS]

    async def events(self, kind: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        return list(reversed(self._events.get(kind, [])))[offset : offset + limit]

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        for name, delta in deltas.items():
            self._counters[name] = self._counters.get(name, 0) + delta

    async def counters(self) -> dict[str, int]:
        return dict(self._counters)

    async def keys(self) -> list[str]:
        return list(self._entries)

    async def delete(self, key: str, fingerprints: set[str | None] | None = None) -> int:
        variants = self._entries.pop(key, [])
        kept = (
            []
            if fingerprints is None
            else [e for e in variants if e.fingerprint not in fingerprints]
        )
        if kept:
            self._entries[key] = kept
        self._bytes -= _weight(variants) - _weight(kept)
        return len(variants) - len(kept)

    async def models(self) -> list[str]:
        return sorted(self._sightings)

    async def recent(self, endpoint: str, model: str) -> list[str]:
        return list(self._recent.get((endpoint, model), ()))

    async def size(self) -> tuple[int, int]:
        """(keys, bytes of their variants), as the shared stores count keys."""
        return len(self._entries), self._bytes

    def _holder(self, key: str) -> str | None:
        held = self._locks.get(key)
        if held is None or held[1] < time.monotonic():
            return None
        return held[0]

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        if self._holder(key) is not None:
            return False
        self._locks[key] = (token, time.monotonic() + ttl)
        return True

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        if self._holder(key) != token:
            return False
        self._locks[key] = (token, time.monotonic() + ttl)
        return True

    async def unlock(self, key: str, token: str) -> None:
        if self._holder(key) == token:
            del self._locks[key]

    async def locked(self, key: str) -> bool:
        return self._holder(key) is not None

    async def start(self) -> None:
        """Nothing to connect."""

    async def ping(self) -> None:
        """Always there: it is this process's memory."""

    async def checkpoint(self) -> None:
        """Nothing to fold or evict."""

    async def close(self) -> None:
        """Nothing to release: the owner writes the entries where they belong."""
