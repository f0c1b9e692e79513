"""The fingerprint registry as this process sees it: a short-lived memo of each model's
sightings, and the notes (recent keys, live fingerprints) written in one batch a second."""

from __future__ import annotations

import asyncio
import logging
import time

from . import drift
from .health import StoreHealth
from .lru import Lru
from .observe import Counters
from .policy import Sighting, merge_sightings, observe_sighting
from .store import Note, Seen, Store, StoreError

drift_log = logging.getLogger("seedproxy.drift")

SIGHTINGS_TTL = 1.0  # seconds a process trusts its copy of a model's fingerprint registry
MODELS = 512  # models whose registry a process keeps a copy of; model names are the clients'


class Registry:
    """Per-model sightings, read from the store at most once per :data:`SIGHTINGS_TTL`
    (kept for the :data:`MODELS` models used last), and what this process saw since its
    last :meth:`flush`, which readers see at once."""

    def __init__(self, store: Store, counters: Counters, health: StoreHealth) -> None:
        self.store = store
        self.counters = counters
        self.health = health
        self._memo: Lru[str, tuple[float, dict[str | None, Sighting]]] = Lru(entries=MODELS)
        self._unnoted: list[Note] = []  # gathered for the next flush()
        self._noting: list[Note] = []  # being written by it
        self._lock = asyncio.Lock()

    def unwritten(self) -> list[Note]:
        """Notes taken and not yet written, oldest first."""
        return [*self._noting, *self._unnoted]

    async def sightings(self, model: str, now: float) -> dict[str | None, Sighting]:
        memo = self._memo.get(model)
        if memo is not None and now - memo[0] < SIGHTINGS_TTL:
            return memo[1]
        table = await self.store.sightings(model)
        for note in self.unwritten():  # what this process saw live and has not written yet
            if note.see and note.model == model:  # (a count may run one ahead; only the
                table = observe_sighting(table, note.fingerprint, note.now)[0]  # store's shown)
        self._memo.put(model, (now, table))
        return table

    def note(self, note: Note) -> None:
        """Take a stored answer's note; its sighting counts in this process at once."""
        memo = self._memo.get(note.model)
        if note.see and memo is not None:
            table = observe_sighting(memo[1], note.fingerprint, note.now)[0]
            self._memo.put(note.model, (memo[0], table))
        self._unnoted.append(note)

    async def flush(self) -> None:
        """Write the notes gathered since the last flush (once a second, and before reports,
        so that store reads see them): one store transaction instead of one per miss.
        Flushes run one at a time, so sightings are written in the order they were seen."""
        async with self._lock:
            if not self._unnoted:
                return
            notes = self._noting = self._unnoted
            self._unnoted = []
            try:
                results = await self.store.note(notes)
            except StoreError as exc:  # these sightings are lost; entries never are
                self.health.failed(exc)
                return
            finally:
                self._noting = []
        latest: dict[str, Seen] = {}
        for note, seen in zip(notes, results, strict=True):
            if seen is None:
                continue
            latest[note.model] = seen
            if seen.is_new:
                await self._changed(note.model, seen.previous, note.fingerprint, note.now)
        for model, seen in latest.items():
            memo = self._memo.get(model)  # may already know of later sightings
            table = seen.sightings if memo is None else merge_sightings(seen.sightings, memo[1])
            self._memo.put(model, (time.time(), table))

    async def _changed(
        self, model: str, previous: str | None, fingerprint: str | None, now: float
    ) -> None:
        """A fingerprint new for ``model``: its own event, logged and kept."""
        event = drift.FingerprintChange(drift.new_id(), now, model, previous, fingerprint)
        self.counters.add("fingerprint_changes")
        drift_log.warning("fingerprint change", extra={"data": event.to_dict()})
        try:
            await self.store.add_event(event.to_dict())
        except StoreError as exc:  # logged above all the same
            self.health.failed(exc)
