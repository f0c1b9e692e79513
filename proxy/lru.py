"""A map that forgets its least recently used items past a count or a total size. Pure."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Up to ``entries`` items (no count limit if None) whose sizes, as ``size`` gives
    them, add up to at most ``budget``; an item larger than ``largest`` is never kept."""

    def __init__(
        self,
        budget: int,
        largest: int,
        size: Callable[[K, V], int],
        entries: int | None = None,
    ) -> None:
        self.budget, self.largest, self.entries = budget, largest, entries
        self._size = size
        self._map: OrderedDict[K, V] = OrderedDict()
        self.held = 0  # the sizes of the items kept, added up

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: K) -> V | None:
        value = self._map.get(key)
        if value is not None:
            self._map.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` unless it is too large or ``key`` is kept already; the least
        recently used go while over the limits."""
        size = self._size(key, value)
        if size > self.largest or key in self._map:
            return
        self._map[key] = value
        self.held += size
        while self.held > self.budget or (self.entries is not None and len(self) > self.entries):
            old, dropped = self._map.popitem(last=False)
            self.held -= self._size(old, dropped)
