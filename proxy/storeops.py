"""The store work behind ``seedproxy export``, ``import`` and ``purge``, apart from the
command line (which parses options and prints), so it is tested on any store without
click."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import cassette, human
from .config import Settings
from .store import Entry, Note, Store


async def exported(
    store: Store, settings: Settings, name: str, model: str | None, after: float | None
) -> tuple[cassette.Dumped, int]:
    """The entries of ``model`` (any when None) stored at or after ``after``, in recording
    order, as the bytes of a file named ``name``; and how many entries were selected."""
    entries = [
        entry
        for key in await store.keys()
        for entry in await store.variants(key)
        if (model is None or entry.model == model) and (after is None or entry.created >= after)
    ]
    entries.sort(key=lambda e: e.created)  # recording order
    return cassette.dump(name, [cassette.Recording(e) for e in entries], settings), len(entries)


@dataclass(frozen=True, slots=True)
class Imported:
    """What an import did: of ``total`` entries, ``added`` new, ``replaced`` changed, the
    rest already there as they are."""

    total: int
    added: int
    replaced: int

    @property
    def there(self) -> int:
        return self.total - self.added - self.replaced


async def imported(store: Store, data: bytes, settings: Settings) -> Imported:
    """Load a cassette or JSON Lines export into ``store``, keyed with ``settings``; an
    entry stored as it is already is left alone, so importing a file twice changes
    nothing. Raises :class:`~proxy.cassette.CassetteError` for a file it cannot read."""
    recordings = await asyncio.to_thread(cassette.loads, data, settings)
    entries = [recording.entry for recording in recordings]
    added = replaced = 0
    for entry in entries:
        stored = [e for e in await store.variants(entry.key) if e.fingerprint == entry.fingerprint]
        if stored == [entry]:
            continue
        await store.put(entry)
        added, replaced = (added, replaced + 1) if stored else (added + 1, replaced)
    # indexed among the recent keys, so that a replay miss can name the nearest of them
    await store.note(
        [Note(e.key, e.endpoint, e.model, e.fingerprint, e.created, False) for e in entries]
    )
    return Imported(len(entries), added, replaced)


async def purged(
    store: Store, model: str | None, fingerprint: str | None, cutoff: float | None
) -> list[Entry]:
    """Delete the entries of ``model``, with ``fingerprint`` (``human.NO_FINGERPRINT``:
    none), created before ``cutoff`` (each filter None: any), and return them."""
    wanted_fp = None if fingerprint == human.NO_FINGERPRINT else fingerprint
    removed: list[Entry] = []
    for key in await store.keys():
        victims = {
            e.fingerprint
            for e in await store.variants(key)
            if (model is None or e.model == model)
            and (fingerprint is None or e.fingerprint == wanted_fp)
            and (cutoff is None or e.created < cutoff)
        }
        if victims:
            gone = [e for e in await store.variants(key) if e.fingerprint in victims]
            await store.delete(key, victims)
            removed += gone
    return removed
