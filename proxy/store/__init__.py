"""The store protocols, one per concern (entries; sightings and the recent keys; events;
counters; markers), ``Store`` their union, and the stored Entry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..config import Settings
from ..policy import Sighting
from ..traffic import Traffic


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored upstream answer for (key, fingerprint). Never holds credentials."""

    key: str
    fingerprint: str | None
    created: float
    status: int
    content_type: str
    endpoint: str
    model: str
    seed: int | None
    prompt_tokens: int
    completion_tokens: int
    body: bytes  # the response, ready to send
    request: bytes  # the request body as sent upstream (for export and re-verification)
    stream: bytes = b""  # the raw SSE events, for endpoints whose streams replay verbatim


class Note(NamedTuple):
    """A stored answer to index: its key among the recent ones of (endpoint, model) and,
    with ``see``, its fingerprint as seen live for the model at ``now``."""

    key: str
    endpoint: str
    model: str
    fingerprint: str | None
    now: float
    see: bool


@dataclass(frozen=True, slots=True)
class Seen:
    """A fingerprint sighting's outcome: the model's registry after it, the latest
    fingerprint before it, and whether it was new for the model."""

    sightings: dict[str | None, Sighting]
    previous: str | None
    is_new: bool


class StoreError(RuntimeError):
    """The store cannot be used; the message says which one, why, and what to do."""


class StoreWriteError(StoreError):
    """The store refuses writes though it may answer reads: a full disk, a read-only
    directory, Redis out of memory under ``noeviction`` or a read-only replica. The store
    is degraded until a write succeeds again."""


class CorruptStoreError(StoreError):
    """The store's files cannot be read; the message names them and how to recover."""


class Entries(Protocol):
    """The stored answers, by key and fingerprint."""

    async def variants(self, key: str) -> list[Entry]:
        """All entries stored for ``key``, newest first."""
        ...

    async def put(self, entry: Entry) -> None:
        """Durably store ``entry``, replacing the one with the same key and fingerprint."""
        ...

    async def keys(self) -> list[str]:
        """Every stored key (for reports, export and purge; not for the hot path)."""
        ...

    async def delete(self, key: str, fingerprints: set[str | None] | None = None) -> int:
        """Remove the entries of ``key`` (only those ``fingerprints`` if given); return how many."""
        ...

    async def size(self) -> tuple[int, int]:
        """(entries, bytes) currently stored."""
        ...


class Sightings(Protocol):
    """The fingerprint registry per model and the recent keys per (endpoint, model)."""

    async def sightings(self, model: str) -> dict[str | None, Sighting]:
        """The fingerprint registry for ``model``."""
        ...

    async def note(self, notes: Sequence[Note]) -> list[Seen | None]:
        """Apply ``notes`` in order, after their puts; one result per note: the model's
        registry after it if it ``see``s, else None."""
        ...

    async def models(self) -> list[str]:
        """Models that have a fingerprint registry."""
        ...

    async def recent(self, endpoint: str, model: str) -> list[str]:
        """Keys most recently stored for (endpoint, model), newest first."""
        ...


class Events(Protocol):
    """Drift and fingerprint-change events."""

    async def add_event(self, event: Mapping[str, Any]) -> None:
        """Keep a drift or fingerprint-change event (``event["kind"]``)."""
        ...

    async def events(self, kind: str, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """The newest ``limit`` events of ``kind`` after the ``offset`` newest, newest first
        (only those are read: a page costs the same however many are kept)."""
        ...


class Tallies(Protocol):
    """The counters shared by every process on the store."""

    async def add_counters(self, deltas: Mapping[str, int]) -> None:
        """Add to the shared counters."""
        ...

    async def counters(self) -> dict[str, int]: ...


class Markers(Protocol):
    """In-flight markers: which process is fetching a key (coalescing across processes)."""

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        """Take the in-flight marker of ``key`` for ``ttl`` seconds unless another holds it."""
        ...

    async def extend(self, key: str, token: str, ttl: float) -> bool:
        """Keep holding the marker (if still ours) for another ``ttl`` seconds."""
        ...

    async def unlock(self, key: str, token: str) -> None:
        """Drop the marker if it is still ours."""
        ...

    async def locked(self, key: str) -> bool: ...


class Lifecycle(Protocol):
    """Opening, checking, housekeeping and closing a store."""

    async def ping(self) -> None:
        """A cheap read that raises StoreError while the store cannot be used."""
        ...

    async def start(self) -> None:
        """Connect and check; raise with a clear message when the store cannot be used."""
        ...

    async def checkpoint(self) -> None:
        """Periodic housekeeping, run every second off the request path."""
        ...

    async def close(self) -> None: ...


class Store(Entries, Sightings, Events, Tallies, Markers, Lifecycle, Protocol):
    """Every part at once: what the pipeline and the reports are given."""


def open_store(settings: Settings, traffic: Traffic | None = None) -> Store:
    """The store ``cache.backend`` names, opened on ``settings``; ``traffic`` is what the
    flow says of its requests, for a store that tunes its own work to it (disk)."""
    if settings.cache.backend == "redis":
        from .redis import RedisStore

        return RedisStore(
            settings.cache.redis_url,
            settings.cache.redis_entry_ttl,
            settings.cache.redis_maxmemory,
            cluster=settings.cache.redis_cluster,
        )
    from .disk import DiskStore

    return DiskStore(settings.cache_dir, settings.cache.size_limit, traffic or Traffic())
