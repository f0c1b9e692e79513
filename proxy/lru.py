"""A map that forgets its least recently used items past a count or a total size. Pure.

Every in-process map whose keys a client chooses (parsed requests, model names, repeat
counts, decoded store records, synthesized streams) is one of these, so that none grows
with what clients send."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(key: object, value: object) -> int:
    return 1


class Lru(Generic[K, V]):
    """Up to ``entries`` items (no count limit if None) whose sizes, as ``size`` gives
    them (1 each if None), add up to at most ``budget`` (no size limit if None); an item
    larger than ``largest`` is never kept. At least one of the limits is required."""

    def __init__(
        self,
        budget: int | None = None,
        largest: int | None = None,
        size: Callable[[K, V], int] | None = None,
        entries: int | None = None,
    ) -> None:
        if budget is None and entries is None:
            raise ValueError("an Lru needs a budget or an entry limit")
        self.budget, self.entries = budget, entries
        self.largest = budget if largest is None else largest
        self._size: Callable[[K, V], int] = size or _one
        self._map: OrderedDict[K, tuple[V, int]] = OrderedDict()  # (value, its size)
        self.held = 0  # the sizes of the items kept, added up

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[K]:
        """Keys, least recently used first."""
        return iter(self._map)

    def get(self, key: K) -> V | None:
        """The value of ``key``, now the most recently used; None if not kept."""
        item = self._map.get(key)
        if item is None:
            return None
        self._map.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` (replacing what was there), unless it is larger than
        ``largest``; the least recently used go while over the limits."""
        size = self._size(key, value)
        self.pop(key)
        if self.largest is not None and size > self.largest:
            return
        self._map[key] = (value, size)
        self.held += size
        while (self.budget is not None and self.held > self.budget) or (
            self.entries is not None and len(self._map) > self.entries
        ):
            self.held -= self._map.popitem(last=False)[1][1]

    def pop(self, key: K) -> V | None:
        """Forget ``key``; its value if it was kept."""
        item = self._map.pop(key, None)
        if item is None:
            return None
        self.held -= item[1]
        return item[0]

    def clear(self) -> None:
        self._map.clear()
        self.held = 0
