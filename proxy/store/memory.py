"""A store in process memory, for a proxy that serves one cassette file: `seedproxy run
--cassette` and the pytest plugin load a cassette into it and write its entries back."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..policy import Sighting, observe_sighting
from . import Entry, Note, Seen
from .disk import MAX_VARIANTS
from .diskmeta import MAX_EVENTS, MAX_RECENT


class MemoryStore:
    """The Store interface over dicts. Keys keep the order they were first stored in, so a
    cassette written from it lists its recordings in recording order, and an answer
    recorded again keeps its place (a small diff in review)."""

    def __init__(self, max_variants: int = MAX_VARIANTS) -> None:
        # A cassette keeps one answer per request (1): a refreshed answer replaces it.
        self.max_variants = max_variants
        self._entries: dict[str, list[Entry]] = {}
        self._sightings: dict[str, dict[str | None, Sighting]] = {}
        self._recent: dict[tuple[str, str], list[str]] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._counters: dict[str, int] = {}
        self._locks: dict[str, tuple[str, float]] = {}

    def replace(self, entries: Iterable[Entry]) -> None:
        """Hold ``entries`` (in order) and nothing else; the registry, events and counters
        stay: they describe what was seen live, not what a cassette holds."""
        self._entries.clear()
        self._recent.clear()
        for entry in entries:
            self._store(entry)

    def entries(self) -> list[Entry]:
        """Every entry, keys in the order they were first stored, newest variant first."""
        return [entry for variants in self._entries.values() for entry in variants]

    def _store(self, entry: Entry) -> None:
        kept = [e for e in self._entries.get(entry.key, ()) if e.fingerprint != entry.fingerprint]
        self._entries[entry.key] = [entry, *kept][: self.max_variants]
        recent = self._recent.setdefault((entry.endpoint, entry.model), [])
        self._recent[entry.endpoint, entry.model] = [
            entry.key,
            *(k for k in recent if k != entry.key),
        ][:MAX_RECENT]

    async def variants(self, key: str) -> list[Entry]:
        return list(self._entries.get(key, ()))

    async def put(self, entry: Entry) -> None:
        self._store(entry)

    async def sightings(self, model: str) -> dict[str | None, Sighting]:
        return dict(self._sightings.get(model, {}))

    async def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        seen: list[Seen | None] = []
        for note in notes:
            if not note.see:
                seen.append(None)
                continue
            table, previous, is_new = observe_sighting(
                self._sightings.get(note.model, {}), note.fingerprint, note.now
            )
            self._sightings[note.model] = table
            seen.append(Seen(dict(table), previous, is_new))
        return seen

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
        return len(variants) - len(kept)

    async def models(self) -> list[str]:
        return sorted(self._sightings)

    async def recent(self, endpoint: str, model: str) -> list[str]:
        return list(self._recent.get((endpoint, model), ()))

    async def size(self) -> tuple[int, int]:
        entries = self.entries()
        return len(entries), sum(len(e.body) + len(e.request) + len(e.stream) for e in entries)

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
