"""Decoded records of recently read keys, kept while the store is unchanged. Pure."""

from __future__ import annotations

from collections.abc import Hashable

from ..lru import Lru
from . import Entry

SEEN = 8192  # keys remembered as read once, so that their next read is kept


def _held(key: str, record: tuple[list[Entry], int]) -> int:
    return record[1]


class HotRecords:
    """Up to ``limit`` bytes of decoded records, by key, least recently used dropped first.
    A key is kept from its second read on, so keys read once (most misses, a CI run's
    replays) never cost a version check. Each lookup names the store's current version;
    when that differs from the version the records were read under, they are all
    forgotten, so nothing outlives a commit."""

    def __init__(self, limit: int) -> None:
        # a large record would push out many small ones
        self._records: Lru[str, tuple[list[Entry], int]] = Lru(limit, limit // 16, _held)
        self._version: Hashable = None
        self._seen: Lru[str, bool] = Lru(entries=SEEN)

    def first_read(self, key: str) -> bool:
        """Whether ``key`` is neither kept nor read lately; if so, it is remembered now."""
        if key in self._records or key in self._seen:
            return False
        self._seen.put(key, True)
        return True

    def get(self, key: str, version: Hashable) -> list[Entry] | None:
        """The records of ``key`` if read under ``version``; a new version empties the memory."""
        if version != self._version:
            self._records.clear()
            self._version = version
            return None
        found = self._records.get(key)
        return None if found is None else found[0]

    def put(self, key: str, entries: list[Entry], size: int) -> None:
        """Keep what was read, after the last :meth:`get`, under the version it named
        (callers never mutate the list they are given back)."""
        self._seen.pop(key)
        self._records.put(key, (entries, size))
