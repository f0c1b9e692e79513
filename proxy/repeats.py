"""``cache.repeat = "sequence"``: the n-th identical request is answered by the n-th
recording of it, so an unseeded sampler gets N different cached samples and an agent
that repeats a call gets the answers it got when recorded, in order. A request naming
server state that grows with each call (a Responses ``conversation``) is counted so
whatever ``cache.repeat`` says. The n-th repeat is just another key
(:func:`keys.occurrence_key`), so stores, coalescing and cassettes need nothing new; only
the counting lives here."""

from __future__ import annotations

from .keys import occurrence_key
from .lru import Lru
from .store import Store

LIMIT = 100_000  # keys counted at once; the least recently asked is forgotten first


class Occurrences:
    """How many times each key was asked since the start (or :meth:`reset`: a run's or a
    test's start). A bounded LRU: a key forgotten counts from the first answer again."""

    def __init__(self, sequence: bool, limit: int = LIMIT) -> None:
        self.sequence = sequence
        self._counts: Lru[str, int] = Lru(entries=limit)

    def peek(self, key: str) -> int:
        """Which repeat the next request for ``key`` will be, without counting it."""
        return self._counts.get(key) or 0

    def next(self, key: str, counted: bool = False) -> int:
        """Which repeat (from 0) this request for ``key`` is; always 0 with ``same`` unless
        the request is ``counted`` (one per occurrence whatever ``cache.repeat`` says)."""
        if not (self.sequence or counted):
            return 0
        n = self.peek(key)
        self._counts.put(key, n + 1)
        return n

    def reset(self) -> None:
        self._counts.clear()


async def recorded(store: Store, key: str, asked: int) -> int:
    """How many answers are recorded for the request with key ``key`` (repeat 0), looking
    no further than the ``asked``-th."""
    n = 0
    while n < asked and await store.variants(occurrence_key(key, n)):
        n += 1
    return n


def miss_note(asked: int, recorded: int, counted: bool = False) -> str:
    """What a replay miss of a repeat says first; ``counted``: counted because it names a
    conversation, not because of ``cache.repeat``."""
    answers = "1 answer was" if recorded == 1 else f"{recorded} answers were"
    why = (
        "a request naming a conversation is recorded once per occurrence"
        if counted
        else 'cache.repeat = "sequence"'
    )
    return (
        f"This is repeat {asked + 1} of an identical request since the proxy (or the run, "
        f"or the test) started, and {answers} recorded for it ({why}); answer {asked + 1} "
        "was asked for."
    )
